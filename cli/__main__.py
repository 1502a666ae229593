"""``python -m jrt_cli``: the same command line as the ``jrt`` script."""

from .main import app

app()
