"""Atomic writes: the one way xrimpute writes a file or folder, so that nobody ever reads half of one.

It sits below every other module (no torch, no xarray), so that the numeric
core writes its checkpoints and model files through it too.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, exclusive: bool = False):
    """Yield a fresh path beside ``path`` to write a file or folder to; on success it becomes ``path`` at once.

    A reader (or a crash) sees the old content or the new, never half of it:
    the new one is renamed onto ``path`` when the block ends without error,
    and removed otherwise. A folder at ``path`` is moved aside first (a folder
    cannot be renamed onto another) and removed after. With ``exclusive`` an
    existing ``path`` wins and the new file is dropped, atomically (a record
    written once, whoever finishes first). The writer creates the file itself,
    so it gets the umask's default permissions.

    Examples
    --------
    >>> with atomic_write("model.xri") as partial:  # doctest: +SKIP
    ...     torch.save(payload, partial)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        yield partial
        if exclusive:
            with contextlib.suppress(FileExistsError):
                os.link(partial, path)
        elif partial.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.old")
            os.replace(path, old)
            os.replace(partial, path)
            _remove(old)
        else:
            os.replace(partial, path)
    finally:
        _remove(partial)


__all__ = ["atomic_write"]
