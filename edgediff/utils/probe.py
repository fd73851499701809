"""Probe an output location before long work: create and remove a real file there.

`os.access` is not enough: it says yes to root on a read-only mount or a full disk. Creating a
temporary file is the check the later atomic write will face. Nothing is left behind: a missing
output folder is not created here (the atomic write creates it); its nearest existing ancestor
is probed instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgediff.errors import EdgediffError


def _existing_ancestor(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return Path(folder.anchor or ".")


def probe_output(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Fail early, in one line, when `out` (a file or folder to be written) cannot be written.

    Returns the resolved parent folder of `out`.
    """
    out = Path(out).expanduser()
    parent = out.resolve().parent
    here = _existing_ancestor(parent)
    if not here.is_dir():
        raise EdgediffError(f"{flag} {out}: {here} is a file, not a folder; choose another location")
    try:
        fd, name = tempfile.mkstemp(prefix=".edgediff-probe-", dir=here)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise EdgediffError(
            f"{flag} {out}: cannot write in {here} ({exc.strerror or exc}); choose another location"
        ) from exc
    return parent
