"""The one exception type of the run stage (docs/design.md section 6).

Every failure a user can cause raises :class:`RuntimeStageError` with a one-line message that
names the problem and the fix; ``edgediff-run`` prints ``error: <message>`` to stderr without a
traceback and exits with :attr:`RuntimeStageError.exit_code`.
"""

from __future__ import annotations


class RuntimeStageError(Exception):
    """A user-facing error of the run stage: one line, names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would break the CLI's `error: ...` contract.
        super().__init__(" ".join(str(message).split()))
