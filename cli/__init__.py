"""The `jrt` command line (installed as the import package ``jrt_cli``)."""
