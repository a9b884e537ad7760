"""User-facing errors."""


class HspecError(ValueError):
    """A user-facing error: one clear message naming the culprit."""
