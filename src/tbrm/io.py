"""Files other programs read later, written whole or not at all.

Every such file (checkpoints, ``status.json``, ``summary.json``, report files, evaluation tables)
is written to a temporary name in the same folder, flushed to disk and renamed over the target
(``os.replace``, atomic on POSIX and Windows). A crash, a kill or a full disk leaves the old file
or none, never a truncated one. Lightning's own checkpoint writer stages the file in the system's
temporary folder and *copies* it into place when that is another file system, which is not
atomic; :class:`AtomicCheckpointIO` replaces it (``trainer.plugins`` in ``conf/trainer/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; when the block ends without an error, the file
    written there is synced and renamed to ``path``; on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as file:  # what was written reaches the disk before the rename
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside ``path``; when the block ends without an error it takes the
    place of ``path`` (an older ``path`` is removed after the swap); on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, record: Any) -> Path:
    """``record`` as indented JSON at ``path``, atomically."""
    return write_text(path, json.dumps(record, indent=2))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON at ``path``; an empty or malformed file fails naming the file and the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); it was probably cut short by a crash or a full disk. "
            "Delete it, or rerun the job that writes it."
        ) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints saved to a temporary file beside the target, then renamed."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import torch

        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r}).")
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as file:  # closed on a failure too: its space is freed
                torch.save(checkpoint, file)
        except (OSError, RuntimeError) as err:  # torch's zip writer turns ENOSPC into "unexpected pos"
            free = shutil.disk_usage(Path(path).parent).free / 2**20
            raise OSError(
                f"could not write the checkpoint {path} ({type(err).__name__}: {err}); {free:.1f} MiB are free "
                "there, so the disk is probably full. Nothing was left half-written: the previous checkpoint, if "
                "any, is intact. Free space, or move paths.log_dir to a disk with room, and resume."
            ) from err
