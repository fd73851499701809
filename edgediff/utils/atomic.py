"""Atomic writes: build in a temporary sibling, then rename, so a failure leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgediff.errors import EdgediffError
from edgediff.utils.probe import probe_output


def _umask_mode(mode: int) -> int:
    """`mode` filtered by the process umask (mkstemp/mkdtemp create 0600/0700 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def check_writable(out: Path, flag: str = "--out") -> Path:
    """Fail early (before long work) when `out` cannot be written: a real file is created and
    removed there (`probe_output`); nothing is created. Returns `out`'s parent folder."""
    return probe_output(out, flag)


def _check_parent(out: Path) -> Path:
    parent = probe_output(out)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgediffError(
            f"cannot create output folder {parent}: {exc.strerror}; choose another --out"
        ) from exc
    return parent


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `out`; on success replace `out` with it, else delete it."""
    out = Path(out)
    parent = _check_parent(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        backup = parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, backup)
        os.replace(tmp, out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temporary path next to `out`; on success rename it to `out`, else delete it."""
    out = Path(out)
    parent = _check_parent(out)
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
