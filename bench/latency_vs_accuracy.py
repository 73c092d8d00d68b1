"""Accuracy against time steps: teacher, ANN->SNN conversion, and LaSNN / KD / CE students, in one run.

The paper's headline is that a LaSNN student matches a converted SNN's accuracy with about 20x fewer time
steps. This benchmark measures that on the user's data set:

- trains (or reuses) a teacher with ``lasnn.distill.commands.teach``;
- trains (or reuses) students with ``distill`` for each loss in {lasnn, kd, ce} and T in {1, 2, 4, 8};
- converts the teacher with ``convert_teacher`` (reset to zero, Loihi's; by subtraction, norse only; and
  by subtraction with membranes starting at half threshold) and measures its accuracy at T = 1..256 in one
  run at the largest T;
- evaluates every model on the same test images and writes ``bench/results/latency_vs_accuracy_<ds>.png``,
  ``.json`` and ``.md``, and prints the ratio: the T a converted SNN needs to come within 1 point of the
  LaSNN student's accuracy, divided by the student's T.

Reuse: the work directory keeps every checkpoint (``teacher/``, ``students/<loss>_T<T>/``,
``converted_<variant>/``); a rerun reuses those whose settings match and only trains what is missing.

    python bench/latency_vs_accuracy.py --dataset digits
    python bench/latency_vs_accuracy.py --dataset cifar10 --data-root ../shared/datasets --test-samples 1000

Cost: digits took 39 min on the shared 2-core CPU (teacher 20 epochs, 12 students of 10 epochs, three
conversions to T=256 on the 360 test images). cifar10 with its preset trains 12 students on 50,000 images:
hours on such a CPU, minutes on a GPU (``--device cuda``); to shorten a CPU run, pass e.g.
``--student-timesteps 1,2,4 --epochs 1 --test-samples 500``, or reuse checkpoints (``--teacher``, ``--work``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lasnn.artifacts import write_bytes, write_json
from lasnn.data import load_dataset
from lasnn.distill.checkpoints import load_student, load_teacher
from lasnn.distill.commands import distill, teach
from lasnn.distill.conversion_commands import _batches, convert_teacher, parse_timesteps, subset_indices
from lasnn.distill.training import resolve_device
from lasnn.errors import LasnnError

RESULTS = Path(__file__).resolve().parent / "results"
LOSSES = ("lasnn", "kd", "ce")
WITHIN = 0.01
# Conversion variants: name -> (reset, shift, plot colour, label). "zero" is the one Loihi runs.
VARIANTS = {
    "zero": ("zero", False, "tab:gray", "converted SNN, reset to zero (Loihi)"),
    "subtract": ("subtract", False, "tab:brown", "converted SNN, reset by subtraction (norse)"),
    "subtract_shift": ("subtract", True, "tab:purple", "converted SNN, subtraction + half-threshold start"),
}
# CPU-sized defaults per data set (digits: minutes; cifar10: sized for about an hour on a 2-core CPU with
# --test-samples 1000, far less on a GPU). Anything can be overridden on the command line.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        arch="small_cnn",
        width=1.0,
        teacher_epochs=20,
        student="vgg",
        widths="32,64",
        epochs=10,
        conversion_timesteps="1,2,4,8,16,32,64,128,256",
        test_samples=None,
    ),
    "cifar10": dict(
        arch="vgg11",
        width=0.25,
        teacher_epochs=8,
        student="vgg",
        widths="32,64",
        epochs=2,
        conversion_timesteps="1,2,4,8,16,32,64,128",
        test_samples=1000,
    ),
}


REUSED: list[str] = []  # checkpoints this invocation reused instead of training


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _teacher(args: argparse.Namespace, work: Path, device: str) -> Path:
    if args.teacher:
        return Path(args.teacher)
    path = work / "teacher" / "teacher.pt"
    metrics = _read_json(work / "teacher" / "metrics.json")
    if (
        path.is_file()
        and metrics
        and metrics.get("arch") == args.arch
        and metrics.get("epochs") == args.teacher_epochs
    ):
        print(f"reusing teacher {path} (test accuracy {metrics['test_accuracy']:.4f})")
        REUSED.append("teacher")
        return path
    teach(
        dataset=args.dataset,
        out=work / "teacher",
        data_root=args.data_root,
        arch=args.arch,
        width=args.width,
        epochs=args.teacher_epochs,
        seed=args.seed,
        device=device,
    )
    return path


def _student(args: argparse.Namespace, teacher: Path, loss: str, t: int, work: Path, device: str) -> Path:
    out = work / "students" / f"{loss}_T{t}"
    metrics = _read_json(out / "metrics.json")
    if (
        (out / "student.pt").is_file()
        and metrics
        and metrics.get("loss") == loss
        and metrics.get("timesteps") == t
        and len(metrics.get("history", [])) == args.epochs
    ):
        print(f"reusing student {out} (test accuracy {metrics['test_accuracy']:.4f})")
        REUSED.append(f"student {loss} T={t}")
        return out / "student.pt"
    distill(
        teacher=teacher,
        out=out,
        student=args.student,
        widths=args.widths,
        timesteps=t,
        loss=loss,
        epochs=args.epochs,
        seed=args.seed,
        device=device,
        data_root=args.data_root,
    )
    return out / "student.pt"


def _converted(args: argparse.Namespace, teacher: Path, variant: str, work: Path, device: str) -> dict:
    reset, shift = VARIANTS[variant][:2]
    out = work / f"converted_{variant}"
    steps = parse_timesteps(args.conversion_timesteps)
    metrics = _read_json(out / "metrics.json")
    if (
        metrics
        and [p["timesteps"] for p in metrics.get("curve", [])] == steps
        and metrics.get("test_samples") == (args.test_samples or metrics.get("test_set_size"))
        and metrics.get("percentile") == args.percentile
        and metrics.get("shift", False) == shift
        and (out / "student.pt").is_file()
    ):
        print(f"reusing converted SNN {out}")
        REUSED.append(f"converted {variant}")
        return metrics
    return convert_teacher(
        teacher,
        steps,
        out,
        percentile=args.percentile,
        reset=reset,
        calibration_samples=args.calibration_samples,
        test_samples=args.test_samples,
        data_root=args.data_root,
        seed=args.seed,
        device=device,
        shift=shift,
    )


def _accuracy(model: torch.nn.Module, test_set, indices: torch.Tensor, device: str) -> float:
    model = model.to(device).eval()
    correct = 0
    with torch.no_grad():
        for images, labels in _batches(test_set, indices, 128):
            correct += int((model(images.to(device)).argmax(-1).cpu() == labels).sum())
    model.cpu()
    return correct / len(indices)


def needed_ratio(curve: dict[int, float], target: float, student_t: int) -> dict[str, Any]:
    """The T a converted SNN needs to reach ``target - 1 point``, and that T divided by ``student_t``;
    when no evaluated T reaches it, a lower bound (``> max T / student_t``)."""
    good = [t for t in sorted(curve) if curve[t] >= target - WITHIN]
    if good:
        return {"converted_timesteps": good[0], "ratio": good[0] / student_t, "lower_bound": False}
    return {"converted_timesteps": None, "ratio": max(curve) / student_t, "lower_bound": True}


def _plot(path: Path, result: dict) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(100 * result["teacher_accuracy"], color="black", linestyle="--", label="ANN teacher")
    for variant, conv in result["converted"].items():
        color, label = VARIANTS[variant][2:]
        ts = [p["timesteps"] for p in conv["curve"]]
        ax.plot(ts, [100 * p["test_accuracy"] for p in conv["curve"]], "o-", color=color, label=label)
    colors = {"lasnn": "tab:red", "kd": "tab:blue", "ce": "tab:green"}
    names = {"lasnn": "LaSNN student", "kd": "KD student", "ce": "CE student"}
    for loss, points in result["students"].items():
        ts = sorted(int(t) for t in points)
        ax.plot(
            ts, [100 * points[str(t)] for t in ts], "s-", color=colors.get(loss), label=names.get(loss, loss)
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{result['dataset']}: accuracy vs. time steps ({result['test_samples']} test images)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _markdown(result: dict, command: str) -> str:
    conv_ts = [p["timesteps"] for p in next(iter(result["converted"].values()))["curve"]]
    lines = [
        f"# Accuracy vs. time steps on {result['dataset']}",
        "",
        f"Command: `{command}`  ",
        f"Test images: {result['test_samples']} of {result['test_set_size']}; "
        f"device: {result['device']}; wall time of this invocation: {result['seconds'] / 60:.1f} min"
        + (
            f" (reused {len(result['reused'])} checkpoints of an earlier run: {', '.join(result['reused'])})."
            if result["reused"]
            else "."
        ),
        "",
        "| model | " + " | ".join(f"T={t}" for t in conv_ts) + " |",
        "| --- | " + " | ".join("---" for _ in conv_ts) + " |",
    ]
    lines.append(
        "| ANN teacher | " + " | ".join(f"{100 * result['teacher_accuracy']:.2f}" for _ in conv_ts) + " |"
    )
    for variant, conv in result["converted"].items():
        acc = {p["timesteps"]: p["test_accuracy"] for p in conv["curve"]}
        lines.append(
            f"| converted ({variant}) | " + " | ".join(f"{100 * acc[t]:.2f}" for t in conv_ts) + " |"
        )
    for loss, points in result["students"].items():
        cells = [f"{100 * points[str(t)]:.2f}" if str(t) in points else "" for t in conv_ts]
        lines.append(f"| {loss} student | " + " | ".join(cells) + " |")
    lines += [
        "",
        "T a converted SNN needs to come within 1 point of the LaSNN student, divided by the student's T:",
        "",
        "| LaSNN T | LaSNN acc | "
        + " | ".join(f"converted ({v}) T | ratio" for v in result["converted"])
        + " |",
        "| --- | --- | " + " | ".join("--- | ---" for _ in result["converted"]) + " |",
    ]
    for row in result["ratios"]:
        cells = [str(row["student_timesteps"]), f"{100 * row['student_accuracy']:.2f}"]
        for variant in result["converted"]:
            r = row.get(variant)
            if r is None:
                cells += ["", ""]
            elif r["lower_bound"]:
                cells += [f"> {max(conv_ts)}", f"> {r['ratio']:g}"]
            else:
                cells += [str(r["converted_timesteps"]), f"{r['ratio']:g}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", result["headline"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(PRESETS))
    parser.add_argument("--data-root", help="data folder (cifar10: the folder holding cifar10/train.zip)")
    parser.add_argument("--work", help="work directory for checkpoints (default runs/latency_<dataset>)")
    parser.add_argument("--teacher", help="an existing teacher.pt to use instead of training one")
    parser.add_argument("--arch", help="teacher architecture (default per data set)")
    parser.add_argument("--width", type=float, help="teacher width multiplier (default per data set)")
    parser.add_argument("--teacher-epochs", type=int)
    parser.add_argument("--student", help="student architecture, vgg or resnet (default per data set)")
    parser.add_argument("--widths", help="student widths (default per data set)")
    parser.add_argument("--epochs", type=int, help="student training epochs (default per data set)")
    parser.add_argument("--student-timesteps", default="1,2,4,8")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--conversion-timesteps", help="T values of the conversion curve")
    parser.add_argument("--percentile", type=float, default=99.9)
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--test-samples", type=int, help="fixed random test subset (default per data set)")
    parser.add_argument("--headline-timesteps", type=int, default=4, help="LaSNN T of the printed ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.dataset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    losses = [s for s in args.losses.split(",") if s]
    if not set(losses) <= set(LOSSES) or "lasnn" not in losses:
        raise LasnnError(f"--losses {args.losses!r} must be a subset of {','.join(LOSSES)} containing lasnn.")
    student_ts = parse_timesteps(args.student_timesteps)
    device = resolve_device(args.device)
    work = Path(args.work or f"runs/latency_{args.dataset}")
    started = time.perf_counter()

    teacher_path = _teacher(args, work, device)
    converted = {v: _converted(args, teacher_path, v, work, device) for v in VARIANTS}
    # T-major, so that a run cut short still holds complete comparisons at the smaller T
    student_paths = {
        (loss, t): _student(args, teacher_path, loss, t, work, device) for t in student_ts for loss in losses
    }

    teacher, meta = load_teacher(teacher_path)
    test_set, _ = load_dataset(
        args.dataset, "test", args.data_root or meta["metadata"].get("data_root"), augment=False
    )
    indices = subset_indices(len(test_set), args.test_samples, args.seed + 1)  # the conversion's images
    teacher_acc = _accuracy(teacher, test_set, indices, device)
    students: dict[str, dict[str, float]] = {loss: {} for loss in losses}
    for (loss, t), path in student_paths.items():
        students[loss][str(t)] = _accuracy(load_student(path)[0], test_set, indices, device)

    ratios = []
    for t in student_ts:
        acc = students["lasnn"][str(t)]
        row: dict[str, Any] = {"student_timesteps": t, "student_accuracy": acc}
        for reset, conv in converted.items():
            curve = {p["timesteps"]: p["test_accuracy"] for p in conv["curve"]}
            row[reset] = needed_ratio(curve, acc, t)
        ratios.append(row)
    head_t = args.headline_timesteps if args.headline_timesteps in student_ts else student_ts[-1]
    head = next(r for r in ratios if r["student_timesteps"] == head_t)

    def phrase(variant: str) -> str:
        r = head[variant]
        if r["lower_bound"]:
            t_max = max(p["timesteps"] for p in converted[variant]["curve"])
            return f"more than {r['ratio']:g}x (not reached by T={t_max})"
        return f"{r['ratio']:g}x (T={r['converted_timesteps']} vs T={head_t})"

    # the strongest norse conversion (fewest steps needed) gives the conservative figure
    best = min(("subtract", "subtract_shift"), key=lambda v: (head[v]["lower_bound"], head[v]["ratio"]))
    headline = (
        f"{args.dataset}: the LaSNN student at T={head_t} reaches {100 * head['student_accuracy']:.2f}% "
        f"(teacher {100 * teacher_acc:.2f}%); to come within 1 point of it the best converted SNN "
        f"({best}) needs {phrase(best)}, the Loihi-exportable one (reset to zero) {phrase('zero')}. "
        "The paper reports about 20x."
    )
    result = {
        "dataset": args.dataset,
        "test_samples": len(indices),
        "test_set_size": len(test_set),
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "teacher": str(teacher_path),
        "teacher_accuracy": teacher_acc,
        "teacher_config": meta["config"],
        "student": {"arch": args.student, "widths": args.widths, "epochs": args.epochs},
        "students": students,
        "converted": {
            r: {
                k: c.get(k, False if k == "shift" else None)
                for k in (
                    "curve",
                    "percentile",
                    "reset",
                    "shift",
                    "calibration_samples",
                    "chosen_timesteps",
                    "thresholds",
                )
            }
            for r, c in converted.items()
        },
        "ratios": ratios,
        "headline_timesteps": head_t,
        "headline": headline,
        "seconds": round(time.perf_counter() - started, 1),
        "reused": list(REUSED),
    }
    out_dir = Path(args.out_dir)
    stem = out_dir / f"latency_vs_accuracy_{args.dataset}"
    command = "python bench/latency_vs_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["command"] = command
    write_json(stem.with_suffix(".json"), result)
    _plot(stem.with_suffix(".png"), result)
    write_bytes(stem.with_suffix(".md"), _markdown(result, command).encode())
    print(_markdown(result, command))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LasnnError as error:
        print(f"latency_vs_accuracy: error: {error}", file=sys.stderr)
        sys.exit(2)
