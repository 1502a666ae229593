"""One module per model family; each defines ``ADAPTER`` (see :mod:`.base`)."""
