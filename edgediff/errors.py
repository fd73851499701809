"""One exception type for the train stage (docs/design.md section 6).

Every error a user can cause carries a one-line message that names the problem and the fix;
the CLI prints it without a traceback and exits with code 2.
"""


class EdgediffError(Exception):
    """A user-facing error of the train stage: one line, names the problem and the fix."""

    exit_code = 2
