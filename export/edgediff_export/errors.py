"""One exception type for the export stage (docs/design.md section 6)."""

from edgediff.errors import EdgediffError


class ExportError(EdgediffError):
    """A user-facing export error: one line, names the problem and the fix; exit code 2."""
