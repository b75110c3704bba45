"""Error types raised by slimtorch.

Bad configuration values raise the built-in ``ValueError`` (DESIGN.md, API style 1). Problems with
files, data or models that the user handed us raise :class:`SlimtorchError`, a ``ValueError`` subclass,
so ``except ValueError`` still catches everything a user did wrong.
"""


class SlimtorchError(ValueError):
    """A user-facing error: the message says what was given, what was expected and how to fix it."""
