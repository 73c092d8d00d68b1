"""Artifacts between stages: atomic writes and versioned, self-describing checkpoints.

Every file lasnn writes goes through ``atomic_write`` (temporary file in the same directory, fsync,
``os.replace``), so a crash never leaves a half-written artifact under the final name.

Checkpoints (``.pt``) are dicts ``{"format": "lasnn", "format_version": 1, "kind": KIND, "metadata":
{...}, ...payload}``; ``load_checkpoint`` checks all of it before anything uses the payload.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lasnn.errors import LasnnError

FORMAT = "lasnn"
FORMAT_VERSION = 1
KINDS = ("teacher", "student", "converted", "training_state")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise LasnnError(f"Cannot write {path}: it is a folder; pass a file path to write.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise LasnnError(
            f"Cannot write {path}: {error.strerror or error}; choose a writable output path."
        ) from error
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; an artifact gets the usual permissions
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise LasnnError(
                f"Cannot write {path}: {error.strerror or error}; check free space and permissions."
            ) from error
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``atomic_write`` leaves beside ``path`` when a process is killed
    (SIGKILL) in the middle of a write; returns what was removed. Only our own ``.NAME.*.tmp`` pattern
    is touched."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, directory: bool = False) -> None:
    """Refuse, before any long work, an output path that cannot be created: a file path that is a folder
    (or a folder path that is a file), an ancestor that is a regular file, or a nearest existing ancestor
    that is not writable. Creates nothing, so a refused run leaves no trace."""
    path = Path(path)
    want = "folder" if directory else "file"
    if path.exists() and path.is_dir() != directory:
        raise LasnnError(f"Cannot write {path}: it exists and is not a {want}; choose another output path.")
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LasnnError(
            f"Cannot write {path}: {ancestor} is a file, not a folder; choose a writable output path."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LasnnError(
            f"Cannot write {path}: the folder {ancestor} is not writable; choose another output path."
        )


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of the libraries an artifact depends on, recorded in its metadata."""
    import nir
    import norse

    from lasnn import __version__

    return {
        "lasnn": __version__,
        "torch": torch.__version__,
        "norse": getattr(norse, "__version__", "?"),
        "nir": getattr(nir, "__version__", "?"),
        "python": platform.python_version(),
    }


def save_checkpoint(path: str | os.PathLike, kind: str, metadata: dict[str, Any], **payload: Any) -> None:
    """Write a versioned checkpoint atomically. ``metadata`` should name dataset, input_shape,
    num_classes, timesteps, encoding, dt, seed where they apply; library versions are added."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "metadata": {**metadata, "versions": versions()},
        **payload,
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, kinds: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    """Load and validate a checkpoint: lasnn format, supported version, one of ``kinds``, the
    ``required`` payload keys present, and every tensor in a ``state_dict`` finite."""
    path = Path(path)
    expected = " or ".join(kinds)
    if not path.is_file():
        raise LasnnError(f"{path} does not exist or is not a file; pass a {expected} checkpoint (.pt).")
    if path.stat().st_size == 0:
        raise LasnnError(f"{path} is empty; pass a {expected} checkpoint written by lasnn.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for corrupt files
        raise LasnnError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}); pass a "
            f"{expected} checkpoint written by lasnn."
        ) from error
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise LasnnError(
            f"{path} is not a lasnn checkpoint (no 'format': 'lasnn' field); pass a {expected} "
            "checkpoint written by lasnn."
        )
    if blob.get("format_version") != FORMAT_VERSION:
        raise LasnnError(
            f"{path} has checkpoint format version {blob.get('format_version')!r}, this lasnn "
            f"reads version {FORMAT_VERSION}; re-create it with this lasnn version."
        )
    if blob.get("kind") not in kinds:
        raise LasnnError(
            f"{path} is a {blob.get('kind')!r} checkpoint, but a {expected} checkpoint is needed here."
        )
    missing = [key for key in ("metadata", *required) if key not in blob]
    if missing:
        raise LasnnError(
            f"{path} lacks the field(s) {', '.join(missing)}; the file is damaged or from "
            "another tool, re-create it."
        )
    for name, value in (blob.get("state_dict") or {}).items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise LasnnError(
                f"{path} has non-finite (NaN or Inf) values in '{name}'; training diverged, "
                "retrain with a lower learning rate or resume from an earlier checkpoint."
            )
    return blob


def finite(x: float) -> bool:
    return math.isfinite(x)
