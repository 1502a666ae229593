"""User-facing errors.

Every error a user can cause (a bad option, a missing file, an unknown model, a malformed row)
is raised as :class:`JRTError` with a one-line message that names the input and says how to fix
it. The command line prints the message alone and exits non-zero; Python callers can catch it.

An invalid argument value (a repeat count below 1, an unknown mode or metric, an empty question)
is a :class:`JRTArgumentError`, which is also a :class:`ValueError`, as Python callers expect.
Messages name the argument by its Python name (``repeat``, ``device``); the command line's flags
use the same words (``--repeat``, ``--device``).
"""


class JRTError(Exception):
    """An error caused by the user's input; its message is one line naming the input and the fix."""


class JRTArgumentError(JRTError, ValueError):
    """An argument has an invalid value (also a ``ValueError``)."""


class ModelNotFoundError(JRTError):
    """No local weights were found for a model name or path."""


class UnsupportedModelError(JRTError):
    """The model exists but no adapter of this project can load it."""


class ReuseUnsupported(JRTError):
    """The model's cache cannot be read once and copied per question (a document state)."""
