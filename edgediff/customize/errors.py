"""The error type of customization (a one-line `EdgediffError`)."""

from edgediff.errors import EdgediffError


class CustomizeError(EdgediffError):
    """A bad customization input (mask, image, missing condition): one line naming the fix."""
