"""Atomic file writes for the run stage: temp file in the same folder, then ``os.replace``.

A failed run therefore never leaves a partial image, plot or JSON report behind
(task contract: "no partial output").
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgediff_runtime.errors import RuntimeStageError


def _umask_mode(mode: int) -> int:
    """`mode` filtered by the process umask (mkstemp/mkdtemp create 0600/0700 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def probe_dir(folder: Path, what: str = "output folder") -> None:
    """Create and remove a real file in ``folder`` (``os.access`` says yes to root on a read-only
    mount or a full disk); raise a one-line error when that fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=".edgediff-probe-", dir=folder)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise RuntimeStageError(
            f"{what} {folder} is not writable ({exc.strerror or exc}); choose another path"
        ) from exc


def _parent(out: Path) -> Path:
    parent = out.resolve().parent
    if not parent.is_dir():
        raise RuntimeStageError(f"output folder {parent} does not exist; create it or choose another path")
    probe_dir(parent)
    return parent


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it onto ``out`` on success, delete it on failure."""
    out = Path(out)
    parent = _parent(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=out.suffix, dir=parent)
    os.close(fd)
    os.chmod(name, _umask_mode(0o666))
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)


def write_bytes(out: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``out`` atomically."""
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)


def write_json(out: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, standard JSON (no NaN/Infinity) to ``out`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_bytes(out, text.encode("utf-8"))
