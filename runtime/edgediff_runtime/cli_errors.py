"""The one error path of every edgediff command line (``edgediff`` and ``edgediff-run``).

docs/design.md section 6: a user error is one line on stderr (``error: ...``), no traceback, exit
code 2; an interrupt is one line and exit code 130. This module is torch-free and imports nothing
heavy, so a usage error is reported before any stage is imported. ``edgediff`` (the full toolchain)
imports it from here because the run stage is the one package every CLI may depend on.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from typing import NoReturn

INTERRUPTED_EXIT = 130
_FIXES = {
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some space or choose another location",
    errno.EACCES: "choose a location you can write to",
    errno.EPERM: "choose a location you can write to",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "the path is a folder; name a file",
    errno.EEXIST: "remove it or choose another name",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with the one-line contract: a usage error is ``error: ...; see `PROG --help``` and
    exit 2, never a usage dump. Sub-parsers made with ``add_subparsers`` inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path, the cause (strerror and errno name) and the fix."""
    path = exc.filename if exc.filename is not None else None
    cause = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or -1)
    where = f"{path}: " if path is not None else ""
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}: "
    fix = _FIXES.get(exc.errno or -1, "check the path and try again")
    text = f"cannot access {where}{cause}" + (f" ({code})" if code else "") + f"; {fix}"
    return " ".join(text.split())


def _close_progress_bars() -> None:
    """Close every open tqdm bar (they leave no line behind) so the error line starts a clean line."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ())):
        bar.close()


def run_guarded(
    func: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    handled: tuple[type[BaseException], ...],
) -> int:
    """Run one parsed command: ``handled`` errors and OSErrors print one line (exit 2, or the
    error's ``exit_code``); an interrupt prints one line and returns 130."""
    try:
        return int(func(args) or 0)
    except handled as exc:
        _close_progress_bars()
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except OSError as exc:
        _close_progress_bars()
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("error: interrupted; nothing was written", file=sys.stderr)
        return INTERRUPTED_EXIT


def parse_or_exit_code(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """Parse ``argv``; on ``--help``/``--version`` or a usage error return the exit code instead."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
