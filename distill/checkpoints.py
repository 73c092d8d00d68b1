"""Teacher and student checkpoints: the model's config dict and state dict plus the metadata later stages
need (data set, input shape, normalisation, seed; for students T, encoding, dt, loss and teacher).

Built on ``lasnn.artifacts`` (atomic, versioned, validated); this module adds the model-specific checks:
the metadata keys are present and the state dict fits the architecture the config describes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lasnn.artifacts import load_checkpoint, save_checkpoint
from lasnn.distill.students import SpikingStudent, build_student
from lasnn.distill.teachers import build_teacher
from lasnn.errors import LasnnError

COMMON_METADATA = ("dataset", "data_root", "input_shape", "num_classes", "mean", "std", "seed")
STUDENT_METADATA = (*COMMON_METADATA, "timesteps", "encoding", "dt", "loss", "teacher")


def _check_metadata(path: str | os.PathLike, metadata: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in metadata]
    if missing:
        raise LasnnError(
            f"{where} {path} lacks the metadata field(s) {', '.join(missing)}; re-create it with "
            "this lasnn version."
        )


def _load_state(path: str | os.PathLike, model: nn.Module, state_dict: dict) -> None:
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise LasnnError(
            f"{path} has weights that do not fit its architecture config ({first}); the file "
            "is damaged, re-create it."
        ) from error


def save_teacher(path: str | os.PathLike, model: nn.Module, config: dict, metadata: dict[str, Any]) -> None:
    """Write ``teacher.pt`` (kind "teacher"): config, state dict and metadata (see module doc)."""
    _check_metadata(path, metadata, COMMON_METADATA, "Teacher metadata for")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, "teacher", metadata, config=dict(config), state_dict=state)


def data_metadata(dataset: str, data_root: str | os.PathLike | None, info: Any, seed: int) -> dict[str, Any]:
    """The data-set part of every checkpoint's metadata (``info`` is a ``lasnn.data.DatasetInfo``), so
    that later stages rebuild the same inputs without repeated flags."""
    return dict(
        dataset=dataset,
        data_root=None if data_root is None else str(data_root),
        input_shape=list(info.input_shape),
        num_classes=info.num_classes,
        mean=list(info.mean),
        std=list(info.std),
        class_names=list(info.class_names),
        seed=seed,
    )


def load_teacher(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a teacher checkpoint, rebuild its model (eval mode) and return it with the raw blob."""
    blob = load_checkpoint(path, ("teacher",), required=("config", "state_dict"))
    _check_metadata(path, blob["metadata"], COMMON_METADATA, "Teacher checkpoint")
    try:
        model = build_teacher(blob["config"])
    except (KeyError, TypeError, ValueError, LasnnError) as error:
        raise LasnnError(
            f"{path} has an unusable teacher config ({str(error).rstrip('.')}); "
            "re-create it with lasnn teach."
        ) from error
    _load_state(path, model, blob["state_dict"])
    return model.eval(), blob


def save_student(
    path: str | os.PathLike, student: SpikingStudent, metadata: dict[str, Any], kind: str = "student"
) -> None:
    """Write a student (kind "student") or converted SNN (kind "converted") with its config."""
    if kind not in ("student", "converted"):
        raise ValueError(f"student checkpoint kind must be 'student' or 'converted', not {kind!r}")
    metadata = {"timesteps": student.timesteps, "encoding": student.encoding, **metadata}
    _check_metadata(path, metadata, STUDENT_METADATA, "Student metadata for")
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    save_checkpoint(path, kind, metadata, config=dict(student.config), state_dict=state)


def load_student(path: str | os.PathLike) -> tuple[SpikingStudent, dict]:
    """Load a distilled ("student") or converted ("converted") SNN, rebuilt at its recorded T and encoding."""
    blob = load_checkpoint(path, ("student", "converted"), required=("config", "state_dict"))
    meta = blob["metadata"]
    _check_metadata(path, meta, STUDENT_METADATA, "Student checkpoint")
    timesteps, encoding = meta["timesteps"], meta["encoding"]
    if not isinstance(timesteps, int) or timesteps < 1:
        raise LasnnError(f"{path} has metadata timesteps={timesteps!r}; expected a positive integer.")
    try:
        if blob["kind"] == "converted" or blob["config"].get("arch") == "converted":  # or trained from one
            from lasnn.distill.conversion import build_converted  # helper module, imported only when needed

            student = build_converted(blob["config"], timesteps, encoding)
        else:
            student = build_student(blob["config"], timesteps, encoding)
    except (KeyError, TypeError, ValueError) as error:
        raise LasnnError(
            f"{path} has an unusable student config ({type(error).__name__}: {error}); "
            "re-create it with lasnn distill."
        ) from error
    _load_state(path, student, blob["state_dict"])
    return student.eval(), blob


def teacher_path_of(path: str | os.PathLike) -> Path:
    """Accept either a teacher file or the directory ``lasnn teach --out`` wrote."""
    path = Path(path)
    return path / "teacher.pt" if path.is_dir() else path


def init_student_weights(net: SpikingStudent, path: str | os.PathLike) -> None:
    """Start a distillation from a trained student's weights (``--init``: fine-tuning, e.g. with an energy
    term); the architecture must be the same."""
    if not Path(path).is_file():
        raise LasnnError(f"--init {path} does not exist; pass a student.pt written by lasnn distill.")
    trained, _ = load_student(path)
    if trained.config != net.config:
        raise LasnnError(
            f"--init {path} is a student of another architecture ({trained.config.get('arch')}, widths "
            f"{trained.config.get('widths')}); pass the same --student/--widths/--blocks/--neuron it has."
        )
    net.load_state_dict(trained.state_dict())
