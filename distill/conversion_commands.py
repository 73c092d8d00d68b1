"""``lasnn convert``: ANN->SNN conversion of a teacher and its accuracy-vs-time-steps curve.

``convert_teacher(...)`` (also what ``lasnn demo`` and ``bench/latency_vs_accuracy.py`` call) converts
``teacher.pt`` with thresholds balanced on a calibration subset of the training split, measures test
accuracy at every requested T in one run at the largest T (exact for IF neurons with direct input, see
``lasnn.distill.conversion``), and writes ``OUT/metrics.json`` and ``OUT/student.pt`` (kind "converted")
at the chosen T: the smallest T within 1 point of the teacher's accuracy on the same images, else the
largest T evaluated.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from lasnn.artifacts import check_writable, write_json
from lasnn.data import load_dataset
from lasnn.distill.checkpoints import data_metadata, load_teacher, save_student, teacher_path_of
from lasnn.distill.conversion import (
    CURVE_CHUNK,
    POOLINGS,
    RESETS,
    convert,
    eval_batch_size,
    evaluate_curve,
)
from lasnn.distill.training import resolve_device
from lasnn.errors import LasnnError

DEFAULT_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128)
WITHIN = 0.01  # "within 1 point" of accuracy


def parse_timesteps(text: str | Sequence[int]) -> list[int]:
    """``"1,2,4"`` (or a list of ints) -> sorted unique positive ints, with a one-sentence error."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        values = []
    if not values or any(v < 1 for v in values):
        raise LasnnError(
            f"--timesteps {text!r} is not a comma-separated list of positive integers like "
            "'1,2,4,8,16,32,64,128'."
        )
    return sorted(set(values))


def subset_indices(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    """A fixed random subset (data sets stored class by class would bias a leading slice)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _stack(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def _batches(
    dataset: Dataset, indices: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(indices), batch_size):
        yield _stack(dataset, indices[start : start + batch_size])


def _teacher_accuracy(teacher: torch.nn.Module, dataset: Dataset, indices: torch.Tensor) -> float:
    correct = 0
    with torch.no_grad():
        for images, labels in _batches(dataset, indices, 256):
            correct += int((teacher(images).argmax(-1) == labels).sum())
    return correct / max(1, len(indices))


def choose_timesteps(curve: dict[int, float], target: float, within: float = WITHIN) -> int:
    """The smallest T whose accuracy is at least ``target - within``; the largest T when none is."""
    good = [t for t in sorted(curve) if curve[t] >= target - within]
    return good[0] if good else max(curve)


def convert_teacher(
    teacher_path: str | os.PathLike,
    timesteps_list: str | Sequence[int] = DEFAULT_TIMESTEPS,
    out: str | os.PathLike = "runs/converted",
    percentile: float = 99.9,
    reset: str = "zero",
    pooling: str = "avg",
    calibration_samples: int = 256,
    test_samples: int | None = None,
    data_root: str | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    shift: bool = False,
) -> dict[str, Any]:
    """Convert a teacher checkpoint, evaluate the accuracy curve, write ``out/metrics.json`` and
    ``out/student.pt``; returns the metrics dict."""
    steps = parse_timesteps(timesteps_list)
    if not isinstance(calibration_samples, int) or calibration_samples < 1:
        raise LasnnError(f"--calibration-samples is {calibration_samples!r}; expected a positive integer.")
    if test_samples is not None and (not isinstance(test_samples, int) or test_samples < 1):
        raise LasnnError(f"--test-samples is {test_samples!r}; expected a positive integer.")
    teacher_file = teacher_path_of(teacher_path)
    teacher, blob = load_teacher(teacher_file)
    meta = blob["metadata"]
    dataset = meta["dataset"]
    data_root = data_root if data_root is not None else meta.get("data_root")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LasnnError(f"--out {out} exists and is not a directory; choose a directory path.")
    check_writable(out, directory=True)  # before the (long) conversion, not after it
    started = time.perf_counter()
    train_set, info = load_dataset(dataset, "train", data_root, augment=False)
    test_set, _ = load_dataset(dataset, "test", data_root, augment=False)
    if info.num_classes != meta["num_classes"] or list(info.input_shape) != list(meta["input_shape"]):
        raise LasnnError(
            f"Data set {dataset} has {info.num_classes} classes of shape {tuple(info.input_shape)}, "
            f"but the teacher {teacher_file} expects {meta['num_classes']} classes of shape "
            f"{tuple(meta['input_shape'])}; pass the teacher's --data-root."
        )
    calibration, _ = _stack(train_set, subset_indices(len(train_set), calibration_samples, seed))
    student = convert(teacher, calibration, max(steps), percentile, reset, pooling, shift)
    test_idx = subset_indices(len(test_set), test_samples, seed + 1)
    teacher_acc = _teacher_accuracy(teacher, test_set, test_idx)
    batch = eval_batch_size(student, min(CURVE_CHUNK, max(steps)))  # T runs in chunks (evaluate_curve)
    with tqdm(
        total=len(test_idx),
        desc=f"convert: accuracy at T={steps[0]}..{max(steps)}",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        curve = evaluate_curve(student.to(device), _batches(test_set, test_idx, batch), steps, bar, device)
    student.cpu()
    chosen = choose_timesteps(curve, teacher_acc)
    student.timesteps = chosen
    metadata = dict(
        **data_metadata(dataset, data_root, info, seed),
        timesteps=chosen,
        encoding="direct",
        dt=student.neuron_layers()[0][1].config.dt if student.neuron_layers() else 1e-3,
        loss="conversion",
        teacher=str(teacher_file),
        test_accuracy=curve[chosen],
        teacher_accuracy=teacher_acc,
        percentile=float(percentile),
        reset=reset,
        shift=bool(shift),
        pooling=pooling,
    )
    out.mkdir(parents=True, exist_ok=True)
    save_student(out / "student.pt", student, metadata, kind="converted")
    metrics = {
        "curve": [{"timesteps": t, "test_accuracy": curve[t]} for t in steps],
        "teacher_accuracy": teacher_acc,
        "teacher_accuracy_recorded": meta.get("test_accuracy"),
        "chosen_timesteps": chosen,
        "chosen_rule": f"smallest T within {WITHIN * 100:g} point of the teacher, else the largest T",
        "test_samples": len(test_idx),
        "test_set_size": len(test_set),
        "calibration_samples": calibration.shape[0],
        "percentile": float(percentile),
        "reset": reset,
        "shift": bool(shift),
        "pooling": pooling,
        "encoding": "direct",
        "exportable_to_loihi": reset == "zero",
        "thresholds": student.config["thresholds"],
        "replaced_layers": student.config["replaced"],
        "dataset": dataset,
        "teacher": str(teacher_file),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` verb."""
    p = subparsers.add_parser(
        "convert",
        help="convert a teacher to an integrate-and-fire SNN (baseline)",
        description="ANN->SNN conversion of a teacher (BN folded, threshold balancing at a percentile of "
        "activations, max pooling -> average pooling); writes OUT/metrics.json with the accuracy "
        "at every T and OUT/student.pt (kind 'converted').",
    )
    p.add_argument("--teacher", required=True, help="teacher.pt written by lasnn teach (or its directory)")
    p.add_argument(
        "--timesteps",
        "-T",
        default=",".join(map(str, DEFAULT_TIMESTEPS)),
        help="comma-separated T values to evaluate (default 1,2,4,...,128)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--percentile",
        type=float,
        default=99.9,
        help="activation percentile that sets each layer's threshold (default 99.9)",
    )
    p.add_argument(
        "--reset",
        default="zero",
        choices=RESETS,
        help="zero (Loihi, exportable) or subtract (more accurate, norse only; default zero)",
    )
    p.add_argument(
        "--pooling", default="avg", choices=POOLINGS, help="spike-compatible pooling (default avg)"
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=256,
        help="training images used for threshold balancing (default 256)",
    )
    p.add_argument("--test-samples", type=int, help="evaluate on a fixed random subset of the test split")
    p.add_argument("--data-root", help="data folder (default: the teacher's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration and test subsets")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the evaluation (default cpu)")
    p.add_argument(
        "--shift",
        action="store_true",
        help="start membranes at half threshold (QCFS's shift; needs --reset subtract, norse only)",
    )
    p.set_defaults(func=_convert_cli)


def _convert_cli(args: argparse.Namespace) -> int:
    metrics = convert_teacher(
        args.teacher,
        args.timesteps,
        args.out,
        args.percentile,
        args.reset,
        args.pooling,
        args.calibration_samples,
        args.test_samples,
        args.data_root,
        args.seed,
        device=resolve_device(args.device),
        shift=args.shift,
    )
    curve = ", ".join(f"T={p['timesteps']}: {p['test_accuracy']:.4f}" for p in metrics["curve"])
    print(
        f"converted SNN accuracy {curve} (teacher {metrics['teacher_accuracy']:.4f}); wrote "
        f"{Path(args.out) / 'student.pt'} at T={metrics['chosen_timesteps']}"
    )
    return 0


def student_from_converted(
    path: str | os.PathLike,
    input_shape: Sequence[int],
    num_classes: int,
    timesteps: int,
    encoding: str,
    neuron: str | None,
) -> torch.nn.Module:
    """The student ``lasnn distill --init-from converted.pt`` trains: the converted network's architecture
    and weights (``conversion.trainable_from_converted``), checked against the data set."""
    from lasnn.distill.checkpoints import load_student
    from lasnn.distill.conversion import trainable_from_converted

    if not Path(path).is_file():
        raise LasnnError(f"--init-from {path} does not exist; pass the student.pt written by lasnn convert.")
    converted, blob = load_student(path)
    if blob["kind"] != "converted":
        raise LasnnError(
            f"--init-from {path} is a distilled student, not a converted network; pass lasnn convert's "
            "student.pt (or use --init to fine-tune a distilled student)."
        )
    meta = blob["metadata"]
    if list(meta["input_shape"]) != list(input_shape) or int(meta["num_classes"]) != int(num_classes):
        raise LasnnError(
            f"--init-from {path} was converted for {meta['num_classes']} classes of shape "
            f"{tuple(meta['input_shape'])}, but the data set has {num_classes} of shape {tuple(input_shape)}."
        )
    if neuron not in (None, "if", "lifbox", "cubalif"):
        raise LasnnError(f"--neuron {neuron!r} is unknown; expected if, lifbox or cubalif with --init-from.")
    if not isinstance(timesteps, int) or timesteps < 1:
        raise LasnnError(f"--timesteps is {timesteps!r}; expected a positive integer.")
    student = trainable_from_converted(converted, timesteps, encoding, neuron)
    student.config["init_from"] = str(path)
    return student
