"""The CIFAR-10 table of issue 13, from nothing: teachers, conversions and students, every row resumable.

Each row is one ``lasnn`` command (teach, convert or distill) run as its own process in ``--work``; the
row's result is read from the ``metrics.json`` that command writes. Training checkpoints after every epoch,
so a run that is killed resumes where it stopped: run the same ``python bench/cifar10_table.py ...`` line
again and finished rows are reused (their recorded command must match), the unfinished one continues with
``--resume``, and the rest follow. ``--rows`` picks rows by name; ``--budget-minutes`` stops before
starting a row once that much wall time has passed (a row itself is never cut).

Profiles (``--profile``):
- ``cpu``: sized for this project's 2-core CPU: the full-width airbench teacher (10 epochs), a half-width
  QCFS teacher converted two ways (QCFS's reset by subtraction with half-threshold start, and Loihi's reset
  to zero), half-width spiking airbench students (LaSNN, KD-only and CE-only at T = 4 and 2), and a LaSNN
  student initialised from the QCFS conversion.
- ``gpu``: the same table at full length and full width for a GPU (e.g. 10 minutes of an H200).
- ``tinyimagenet``: the same rows on the shared Tiny ImageNet subset (64x64, 200 classes, 200 training
  images per class) at the budget that fits this CPU: half-width airbench teacher, 3 epochs; 1-epoch
  students. The airbench recipe, batch 512 and the CIFAR attention weight (0.3) are passed explicitly,
  since lasnn's Tiny ImageNet defaults are the ResNet-18 literature recipe (100 epochs).
- ``smoke``: digits-sized, seconds per row; used by the tests.

Outputs (``--results``, default ``bench/results/cifar10_<profile>``): ``.json`` (one row per model and T,
with the machine, date and the exact command), ``.md`` (the table and the latency ratios) and ``.png``
(accuracy against T).

    python bench/cifar10_table.py --profile cpu --data-root ../shared/datasets/cifar10
    python bench/cifar10_table.py --profile gpu --data-root ../shared/datasets/cifar10 --device cuda
    python bench/cifar10_table.py --profile tinyimagenet --rows teacher,student_lasnn_T4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
WITHIN = 0.01  # "within 1 point" of the issue
CONVERT_T = "1,2,4,8,16,32,64,128"


@dataclass(frozen=True)
class Row:
    """One lasnn command and how its metrics become table rows."""

    name: str
    kind: str  # teacher / converted / student
    loss: str
    verb: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()
    timesteps: int | None = None


def _profile(
    name: str,
    work: str,
    data: tuple[str, ...],
    device: tuple[str, ...],
    student_epochs: int | None = None,
    student_extra: tuple[str, ...] = (),
    convert_extra: tuple[str, ...] = (),
    qcfs_extra: tuple[str, ...] = (),
    qcfs_width: str | None = None,
    qcfs_from_teacher: int | None = None,
    qcfs_kd: bool = False,
) -> list[Row]:
    """The rows of a profile, in the order they run (what the comparison needs most comes first);
    ``work`` holds every row's output folder. ``student_epochs`` shortens (or lengthens) every student;
    such rows get their own folders (suffix ``_e<epochs>``); so does ``qcfs_width`` (the QCFS teacher's
    width, default half) for the QCFS teacher, its conversions and their students (suffix ``_w<width>``),
    and ``qcfs_from_teacher`` (the QCFS teacher fine-tuned that many epochs from the trained teacher row,
    ``teach --init-from``; suffix ``_ft<epochs>``; needs the QCFS width to equal the teacher's), and
    ``qcfs_kd`` (the QCFS teacher also learns the teacher row's logits, ``teach --kd-from``; suffix
    ``_kd``)."""
    sizes = {
        # name: (teacher width, student widths, teacher epochs, student epochs, init-from epochs)
        "cpu": ("1.0", "32,128,128", "10", "10", "5"),
        "gpu": ("1.0", "64,256,256", "40", "100", "30"),
        "smoke": ("0.25", "4,8", "2", "2", "1"),
        "tinyimagenet": ("0.5", "32,128,128", "3", "1", "1"),
    }[name]
    teacher_width, widths, teacher_epochs, epochs, init_epochs = sizes
    suffix = ""
    if student_epochs is not None:
        epochs, init_epochs, suffix = (
            str(student_epochs),
            str(max(1, student_epochs // 2)),
            f"_e{student_epochs}",
        )
    smoke = name == "smoke"
    # smoke: digits nets, with the airbench recipe (the CIFAR default) named so that it is exercised
    teacher_arch = ("--arch", "small_cnn", "--recipe", "airbench") if smoke else ("--arch", "airbench")
    student = ("--student", "vgg", "--recipe", "airbench") if smoke else ("--student", "airbench")
    if name == "tinyimagenet":  # not lasnn's Tiny ImageNet defaults (ResNet-18, SGD): the CIFAR recipe
        recipe = ("--recipe", "airbench", "--batch-size", "512")
        teacher_arch, student = (*teacher_arch, *recipe), (*student, *recipe, "--beta", "0.3")
    qsuffix = f"_w{qcfs_width}" if qcfs_width else ""
    qcfs_width = qcfs_width or ("0.25" if smoke else "0.5")
    qcfs_epochs, qcfs_needs, qcfs_start = teacher_epochs, (), ()
    if qcfs_from_teacher is not None:
        qsuffix += f"_ft{qcfs_from_teacher}"
        qcfs_width = teacher_width  # --init-from needs the teacher's width
        qcfs_epochs, qcfs_needs = str(qcfs_from_teacher), ("teacher",)
        qcfs_start = ("--init-from", f"{work}/teacher")
    if qcfs_kd:
        qsuffix += "_kd"
        qcfs_needs = ("teacher",)
        qcfs_start += ("--kd-from", f"{work}/teacher")
    qcfs_teacher = f"teacher_qcfs{qsuffix}"
    if student_extra:  # other student options: their own folders too
        suffix += "_" + "".join(c if c.isalnum() else "-" for c in "".join(student_extra).strip("-"))

    def out(row: str) -> tuple[str, str]:
        return ("--out", f"{work}/{row}")

    # the cpu profile's teacher is lasnn's CIFAR default (airbench, width 1, 10 epochs): its command says so
    sized = () if name == "cpu" else ("--width", teacher_width, "--epochs", teacher_epochs)
    rows = [
        Row("teacher", "teacher", "ce", "teach", (*data, *teacher_arch, *sized, *device, *out("teacher"))),
        Row(
            qcfs_teacher,
            "teacher",
            "ce (QCFS activation)",
            "teach",
            (
                *data,
                *teacher_arch,
                "--activation",
                "qcfs",
                "--width",
                qcfs_width,
                "--epochs",
                qcfs_epochs,
                *qcfs_start,
                *qcfs_extra,
                *device,
                *out(qcfs_teacher),
            ),
            needs=qcfs_needs,
        ),
    ]
    conversions = {
        "converted_qcfs": ("QCFS conversion (reset by subtraction, half-threshold start)", "subtract", True),
        "converted_loihi": ("conversion, reset to zero (Loihi)", "zero", False),
    }
    for row, (loss, reset, shift) in conversions.items():
        row += qsuffix
        args = ["--teacher", f"{work}/{qcfs_teacher}", "--reset", reset]
        if "--timesteps" not in convert_extra:
            args += ["--timesteps", CONVERT_T]
        if shift:
            args.append("--shift")
        args += convert_extra
        rows.append(
            Row(row, "converted", loss, "convert", (*args, *device, *out(row)), needs=(qcfs_teacher,))
        )
    common = (
        "--teacher",
        f"{work}/teacher",
        *student,
        "--widths",
        widths,
        "--epochs",
        epochs,
        *student_extra,
        *device,
    )
    students = []
    for timesteps in (4, 2):
        for loss in ("lasnn", "ce", "kd"):
            row = f"student_{loss}_T{timesteps}{suffix}"
            args = (*common, "--loss", loss, "--timesteps", str(timesteps), *out(row))
            students.append(
                Row(row, "student", loss, "distill", args, needs=("teacher",), timesteps=timesteps)
            )
    rows = rows[:1] + students[:3] + rows[1:] + students[3:]
    # the converted net trained on with the LaSNN loss: at the recipe's rate (measured on CIFAR: it fell to
    # chance within the epoch), at a tenth of it (a fine-tune, as the energy sweep's) and at a hundredth
    from lasnn.distill.airbench_recipe import HYPER

    for tag, divisor, source, loss, timesteps in (
        ("", None, "converted_qcfs", "lasnn", 4),
        ("_lr0.1x", 10, "converted_qcfs", "lasnn", 4),
        # a hundredth: the conversion of the QCFS teacher with lambda starting at 3 (77.7 % at T = 4) fell
        # to 34.1 % within one epoch at a tenth of the rate (before the decay fix; 80.3 % at a hundredth)
        ("_lr0.01x", 100, "converted_qcfs", "lasnn", 4),
        ("_lr0.03x", 100 / 3, "converted_qcfs", "lasnn", 4),  # between the two
        # the same fine-tune without the attention term (kd) and without the teacher (ce): does it earn
        # its place when the student starts from a conversion?
        ("_lr0.01x", 100, "converted_qcfs", "kd", 4),
        ("_lr0.01x", 100, "converted_qcfs", "ce", 4),
        # from the Loihi conversion (reset to zero): the one whose student exports to NIR and Loihi
        ("_loihi_lr0.01x", 100, "converted_loihi", "lasnn", 4),
        # two steps: the conversion is weakest there (70.7 % against 77.7 % at T = 4), the fine-tune cheapest
        ("_lr0.01x", 100, "converted_qcfs", "lasnn", 2),
        ("_lr0.01x", 100, "converted_qcfs", "kd", 2),
        ("_lr0.01x", 100, "converted_qcfs", "ce", 2),
    ):
        source += qsuffix
        lr = ("--lr", f"{HYPER.lr_per_1024 / divisor:g}") if divisor else ()
        name = f"student_{loss}_T{timesteps}_from_converted{qsuffix}{tag}{suffix}"
        init = (
            "--teacher",
            f"{work}/teacher",
            "--init-from",
            f"{work}/{source}/student.pt",
            "--epochs",
            init_epochs,
            "--timesteps",
            str(timesteps),
            *(("--loss", loss) if loss != "lasnn" else ()),
            *lr,
            *student_extra,  # e.g. --seed: the folder suffix says so, the command must too
            *device,
            *out(name),
        )
        origin = "QCFS conversion" if source.startswith("converted_qcfs") else "reset-to-zero conversion"
        label = f"{loss} (initialised from the {origin}" + (f", lr x{1 / divisor:g})" if divisor else ")")
        needs = ("teacher", source)
        rows.append(Row(name, "student", label, "distill", init, needs=needs, timesteps=timesteps))
    return rows


def machine() -> str:
    """CPU model and core count, plus the GPU when one is used."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def _lasnn() -> list[str]:
    script = Path(sys.executable).with_name("lasnn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lasnn.cli"]


def command_of(row: Row) -> str:
    """The row's command as a user types it (the table records this)."""
    return shlex.join(["lasnn", row.verb, *row.args])


def _out_dir(row: Row) -> Path:
    return Path(row.args[row.args.index("--out") + 1])


def _done(row: Row) -> dict[str, Any] | None:
    """The row's finished metrics, if its folder holds those of the same command."""
    record = _out_dir(row) / "bench_row.json"
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    return saved if saved.get("command") == command_of(row) else None


def run_row(row: Row, log_dir: Path) -> dict[str, Any]:
    """Run (or resume) one row's command; returns its metrics plus the command and timing."""
    out = _out_dir(row)
    # a training checkpoint resumes (the command refuses one of other settings); a finished one only
    # reloads and re-evaluates, which also adopts a run started by hand with the same command
    resume = ["--resume"] if row.verb in ("teach", "distill") and (out / "checkpoint.pt").is_file() else []
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log_dir / f"{row.name}.log", "a") as log:
        log.write(f"\n$ {command_of(row)} {' '.join(resume)}\n")
        log.flush()
        code = subprocess.call([*_lasnn(), row.verb, *row.args, *resume], stdout=log, stderr=log)
    if code != 0:
        raise SystemExit(f"bench: row {row.name} failed (exit {code}); see {log_dir / (row.name + '.log')}")
    metrics = json.loads((out / "metrics.json").read_text())
    record = {
        "command": command_of(row),
        "metrics": metrics,
        "wall_seconds_last_invocation": time.time() - started,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
    }
    tmp = out / "bench_row.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out / "bench_row.json")
    return record


def table_rows(row: Row, record: dict[str, Any], teacher_records: dict[str, dict]) -> list[dict[str, Any]]:
    """The result rows of one finished command (a conversion gives one row per T)."""
    metrics = record["metrics"]
    base = {
        "model": row.name,
        "kind": row.kind,
        "loss": row.loss,
        "machine": record["machine"],
        "date": record["date"],
        "command": record["command"],
    }
    if row.verb == "convert":
        source = teacher_records.get(row.needs[0], {}).get("metrics", {})
        subset = metrics.get("test_samples")  # None (or the split's size): the whole test split
        subset = None if subset == metrics.get("test_set_size") else subset
        return [
            {
                **base,
                "timesteps": point["timesteps"],
                "epochs": source.get("epochs"),
                "train_seconds": source.get("train_seconds"),
                "test_accuracy": point["test_accuracy"],
                "test_images": subset,
                "note": f"no training of its own; epochs and train_seconds are those of {row.needs[0]}",
            }
            for point in metrics["curve"]
        ]
    return [
        {
            **base,
            "timesteps": metrics.get("timesteps"),
            "epochs": metrics["epochs"],
            "train_seconds": metrics["train_seconds"],
            "test_accuracy": metrics["test_accuracy"],
            "test_images": None,  # the whole test split
        }
    ]


def needed_steps(curve: list[dict[str, Any]], target: float) -> int | None:
    """The smallest T at which a conversion comes within 1 point of ``target``, None if never."""
    for row in sorted(curve, key=lambda r: r["timesteps"]):
        if row["test_accuracy"] >= target - WITHIN:
            return int(row["timesteps"])
    return None


def _from_conversion(row: dict[str, Any]) -> bool:
    """A student trained on from a converted network (conversion + distillation)."""
    return row["kind"] == "student" and "from_converted" in row["model"]


def _conversion_steps(rows: list[dict[str, Any]], target: float) -> dict[str, tuple[int | None, int]]:
    """Per conversion present: the T it needs to come within 1 point of ``target`` and its largest T."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "converted":
            curves.setdefault(r["model"], []).append(r)
    return {
        conversion: (needed_steps(curve, target), max(int(r["timesteps"]) for r in curve))
        for conversion, curve in sorted(curves.items(), reverse=True)
    }


def summary(rows: list[dict[str, Any]], chance: float = 0.1) -> dict[str, Any]:
    """The latency ratios and the attention term's gains, from the rows present. A student within 1 point
    of ``chance`` (1 / classes) gets no latency ratio: any conversion "matches" it at T = 1."""
    at_chance = "student at chance: no latency ratio"
    students = {
        (r["loss"], r["timesteps"]): r for r in rows if r["kind"] == "student" and not _from_conversion(r)
    }
    out: dict[str, Any] = {}
    for t in (4, 2):
        lasnn = students.get(("lasnn", t))
        if lasnn is None:
            continue
        for other in ("kd", "ce"):
            if (other, t) in students:
                gain = lasnn["test_accuracy"] - students[(other, t)]["test_accuracy"]
                out[f"lasnn_minus_{other}_T{t}_points"] = round(100 * gain, 2)
        if lasnn["test_accuracy"] < chance + WITHIN:
            out[f"latency_ratio_vs_lasnn_T{t}"] = at_chance
            continue
        for conversion, (need, largest) in _conversion_steps(rows, lasnn["test_accuracy"]).items():
            out[f"{conversion}_T_within_1pt_of_lasnn_T{t}"] = need if need else f"> {largest}"
            out[f"{conversion}_latency_ratio_vs_lasnn_T{t}"] = need / t if need else f"> {largest / t:g}"
    from_conversion = {r["model"]: r for r in rows if _from_conversion(r)}
    # the same fine-tune with another loss: the attention term's gain when starting from a conversion
    for model, student in from_conversion.items():
        if not model.startswith("student_lasnn_"):
            continue
        fine_tune = model.removeprefix("student_lasnn_")
        for other in ("kd", "ce"):
            if (twin := from_conversion.get(f"student_{other}_{fine_tune}")) is not None:
                gain = round(100 * (student["test_accuracy"] - twin["test_accuracy"]), 2)
                out[f"lasnn_minus_{other}_{fine_tune}_points"] = gain
    for student in from_conversion.values():
        if student["test_accuracy"] < chance + WITHIN:
            out[f"latency_ratio_vs_{student['model']}"] = at_chance
            continue
        for conversion, (need, largest) in _conversion_steps(rows, student["test_accuracy"]).items():
            out[f"{conversion}_T_within_1pt_of_{student['model']}"] = need if need else f"> {largest}"
    return out


def _chance(profile: str) -> float:
    """Top-1 of a guess: 1 / classes (Tiny ImageNet's 200, else CIFAR-10's or digits' 10)."""
    return 1 / 200 if profile == "tinyimagenet" else 1 / 10


def _dataset_name(profile: str) -> str:
    return "Tiny ImageNet (shared subset)" if profile == "tinyimagenet" else "CIFAR-10"


def write_results(stem: Path, rows: list[dict[str, Any]], profile: str) -> None:
    """``stem.json``, ``stem.md`` and ``stem.png``, each written whole (temporary file, then rename)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    info = summary(rows, _chance(profile))
    blob = {"profile": profile, "rows": rows, "summary": info}
    _atomic_text(stem.with_suffix(".json"), json.dumps(blob, indent=1) + "\n")
    lines = [
        f"# {_dataset_name(profile)} table, profile {profile}",
        "",
        "Test images: all of the test split (CIFAR-10: 10,000, the shared JPEG-stored copy; Tiny ImageNet:",
        "the 10,000-image val split) unless the column gives a number (a fixed random subset,",
        "`convert --test-samples`); no test-time augmentation.",
        "Written by `bench/cifar10_table.py`; each row's command reproduces it.",
        "",
        "| model | kind | loss | T | epochs | train s | top-1 % | test images | machine | date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seconds = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['loss']} | {r['timesteps'] or '-'} | {r['epochs']} | "
            f"{seconds} | {100 * r['test_accuracy']:.2f} | {r.get('test_images') or 'all'} | "
            f"{r['machine']} | {r['date']} |"
        )
    lines += ["", "## Commands", ""]
    for command in dict.fromkeys(r["command"] for r in rows):
        lines.append(f"- `{command}`")
    lines += ["", "## Summary", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()] or ["- (no complete comparison yet)"]
    _atomic_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    _plot(stem.with_suffix(".png"), rows, _dataset_name(profile))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _plot(path: Path, rows: list[dict[str, Any]], dataset: str = "CIFAR-10") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    for model in dict.fromkeys(r["model"] for r in rows if r["kind"] == "converted"):
        curve = sorted((r for r in rows if r["model"] == model), key=itemgetter("timesteps"))
        ax.plot(
            [r["timesteps"] for r in curve],
            [100 * r["test_accuracy"] for r in curve],
            "o-",
            label=curve[0]["loss"],
        )
    # one series per student `loss` text (it names the loss and, for a fine-tune, the conversion it
    # started from): a LaSNN / KD-only / CE-only comparison at several T reads as three lines
    markers = {"lasnn": "*", "kd": "s", "ce": "^"}
    for label in dict.fromkeys(r["loss"] for r in rows if r["kind"] == "student"):
        points = sorted(
            (r for r in rows if r["kind"] == "student" and r["loss"] == label), key=itemgetter("timesteps")
        )
        loss = label.split()[0]
        ax.plot(
            [r["timesteps"] for r in points],
            [100 * r["test_accuracy"] for r in points],
            marker=markers.get(loss, "D"),
            markersize=11 if loss == "lasnn" else 8,
            linestyle=":" if _from_conversion(points[0]) else "--",
            label=f"student, {label}",
        )
    for r in rows:
        if r["kind"] == "teacher":
            ax.axhline(100 * r["test_accuracy"], linestyle=":", color="gray")
            ax.annotate(
                f"{r['model']} {100 * r['test_accuracy']:.1f} %", (1, 100 * r["test_accuracy"]), fontsize=8
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps T")
    ax.set_ylabel(f"{dataset} test top-1 (%)")
    subsets = sorted({r["test_images"] for r in rows if r.get("test_images")})
    where = f"; conversions on {', '.join(map(str, subsets))} test images" if subsets else ""
    ax.set_title(f"Accuracy against time steps (whole test split{where})", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # below the axes: with conversion + distillation rows the legend would cover the curves
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=("cpu", "gpu", "tinyimagenet", "smoke"), default="cpu")
    parser.add_argument(
        "--data-root",
        help="data folder (default ../shared/datasets/cifar10; tinyimagenet: ../shared/datasets)",
    )
    parser.add_argument("--work", help="folder of the rows' outputs (default runs/cifar10[_<profile>])")
    parser.add_argument("--results", help="results stem (default bench/results/cifar10_<profile>)")
    parser.add_argument("--device", help="passed to every command (default: each command's auto)")
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--student-epochs", type=int, help="epochs of every student (default: the profile's)")
    parser.add_argument(
        "--student-args", default="", help="extra distill options for every student, e.g. '--recipe sgd'"
    )
    parser.add_argument(
        "--convert-args",
        default="",
        help="extra convert options, e.g. '--timesteps 1,2,4,8,16,32 --test-samples 2000' (the default, "
        "the T <= 128 curve on all 10,000 test images, took ~30 min per conversion on the 2-core CPU)",
    )
    parser.add_argument(
        "--qcfs-args",
        default="",
        help="extra teach options for the QCFS teacher, e.g. '--qcfs-threshold 3' (give it its own --work)",
    )
    parser.add_argument(
        "--qcfs-width",
        help="width of the QCFS teacher (default 0.5); its rows, conversions and their students get the "
        "suffix _w<width>",
    )
    parser.add_argument(
        "--qcfs-from-teacher",
        type=int,
        metavar="EPOCHS",
        help="fine-tune the QCFS teacher this many epochs from the trained teacher row (teach --init-from, "
        "lambdas calibrated) instead of training it from scratch; its rows get the suffix _ft<EPOCHS>",
    )
    parser.add_argument(
        "--qcfs-kd",
        action="store_true",
        help="the QCFS teacher also learns the teacher row's softened logits (teach --kd-from); its rows "
        "get the suffix _kd",
    )
    parser.add_argument("--budget-minutes", type=float, help="start no new row after this much wall time")
    args = parser.parse_args(argv)
    work = args.work or {"cpu": "runs/cifar10", "tinyimagenet": "runs/tinyimagenet"}.get(
        args.profile, f"runs/cifar10_{args.profile}"
    )
    if args.profile == "smoke":
        data: tuple[str, ...] = ("--dataset", "digits")
    elif args.profile == "tinyimagenet":
        data = ("--dataset", "tinyimagenet", "--data-root", args.data_root or "../shared/datasets")
    else:
        data = ("--dataset", "cifar10", "--data-root", args.data_root or "../shared/datasets/cifar10")
    device = ("--device", args.device) if args.device else ()
    extra = tuple(shlex.split(args.student_args))
    convert_extra = tuple(shlex.split(args.convert_args))
    qcfs_extra = tuple(shlex.split(args.qcfs_args))
    if args.qcfs_from_teacher is not None and args.qcfs_from_teacher < 1:
        parser.error(f"--qcfs-from-teacher is {args.qcfs_from_teacher}; expected a positive number of epochs")
    options = (args.student_epochs, extra, convert_extra, qcfs_extra, args.qcfs_width, args.qcfs_from_teacher)
    rows = _profile(args.profile, work, data, device, *options, qcfs_kd=args.qcfs_kd)
    names = {r.name for r in rows}
    wanted = args.rows.split(",") if args.rows else [r.name for r in rows]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; expected some of {', '.join(sorted(names))}")
    suffix = rows[2].name.removeprefix("student_ce_T4")  # the students' folder suffix
    default_stem = "tinyimagenet_cpu" if args.profile == "tinyimagenet" else f"cifar10_{args.profile}"
    stem = Path(args.results) if args.results else RESULTS / f"{default_stem}{suffix}"
    started = time.time()
    # every finished row first, so that the results files always hold the whole table done so far
    records: dict[str, dict[str, Any]] = {r.name: rec for r in rows if (rec := _done(r)) is not None}

    def write() -> None:
        finished = [done for done in rows if done.name in records]
        table = [r for done in finished for r in table_rows(done, records[done.name], records)]
        write_results(stem, table, args.profile)

    if records:
        write()
    for row in rows:
        if row.name in records or row.name not in wanted:
            continue
        missing = [n for n in row.needs if n not in records]
        if missing:
            print(f"bench: skipping {row.name}: needs {', '.join(missing)} first", flush=True)
            continue
        if args.budget_minutes is not None and time.time() - started > 60 * args.budget_minutes:
            print(f"bench: budget of {args.budget_minutes} min spent; stopping before {row.name}", flush=True)
            break
        print(f"bench: running {row.name}: {command_of(row)}", flush=True)
        records[row.name] = run_row(row, Path(work) / "logs")
        write()
    print(f"bench: {len(records)} of {len(rows)} rows done; results in {stem}.{{json,md,png}}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
