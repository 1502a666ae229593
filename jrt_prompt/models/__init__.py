"""Models: the roster, one adapter per family, checkpoint conversion and the project's own modeling code."""
