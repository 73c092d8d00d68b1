"""Energy sweep: accuracy vs modelled Loihi energy of LaSNN students trained with the energy term.

The unregularised student (``energy_weight`` 0) is the default ``lasnn distill`` run of the teacher's data
set, or ``--base STUDENT.pt`` (an already trained student, e.g. the CIFAR table's); every other student
fine-tunes it (``--init``) for a few epochs with ``--energy-weight W`` (seed fixed). Each student is
exported, run on the bit-exact emulator over the whole test set, and priced with the Loihi model
(first layer on the host, ``lasnn report``'s default) and every other model. Writes
``OUT/energy_<dataset>.json`` (one row per student: energy_weight, test_accuracy,
loihi_energy_per_inference_j, its ratio to the teacher ANN under each ANN model, the exact command) and
``OUT/energy_<dataset>.png`` (the Pareto plot). All energies are modelled.

    python bench/energy_sweep.py --teacher runs/t/teacher.pt --weights 0.1,0.3,1,3 --out bench/results
    python bench/energy_sweep.py --teacher runs/cifar10/teacher \
        --base runs/cifar10/student_lasnn_T4/student.pt --weights 0.3,1 \
        --finetune-epochs 1 --work runs/energy_cifar10
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_table import _atomic_text, machine  # noqa: E402  (bench/ is a folder of scripts)

LASNN = [sys.executable, "-m", "lasnn.cli"]


def _run(cmd: list[str]) -> float:
    print("+", shlex.join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _shown(cmd: list[str]) -> str:
    return shlex.join(["lasnn", *cmd[len(LASNN) :]])


def student_row(
    student: Path,
    weight: float,
    command: str,
    seconds: float,
    models: list[str],
    data: list[str],
    finetune_epochs: int = 0,
) -> dict:
    """Export, simulate on the emulator (full test set) and price one student."""
    from lasnn.hardware.energy import load_model, snn_energy
    from lasnn.hardware.workload import neurobench_metrics

    graph, run_json = student.with_suffix(".nir"), student.parent / "emulator.json"
    _run([*LASNN, "export", str(student), "-o", str(graph)])
    _run([*LASNN, "simulate", str(graph), "--backend", "emulator", *data, "-o", str(run_json), "--quiet"])
    run = json.loads(run_json.read_text())
    constant = run["encoding"] == "direct"
    energy = {
        m: snn_energy(run["layers"], load_model(m), run["timesteps"], constant)["total"] for m in models
    }
    return {
        "energy_weight": weight,
        "finetune_epochs": finetune_epochs,
        "test_accuracy": run["accuracy"],
        "loihi_energy_per_inference_j": energy["loihi"]["energy"],
        "loihi_chip_energy_per_inference_j": energy["loihi"]["chip_energy"],
        "loihi_host_energy_per_inference_j": energy["loihi"]["host_energy"],
        "energy_per_inference_j": {m: e["energy"] for m, e in energy.items()},
        "spikes_per_inference": sum(layer["spikes"] for layer in run["layers"]),
        "neurobench": neurobench_metrics(run["layers"], run["timesteps"], constant),
        "samples": run["samples"],
        "timesteps": run["timesteps"],
        "command": command,
        "train_seconds": seconds,
        "student": str(student),
    }


def _teacher_dataset(teacher: str) -> str:
    from lasnn.distill.checkpoints import load_teacher, teacher_path_of

    return load_teacher(teacher_path_of(teacher))[1]["metadata"]["dataset"]


def _base_command(student: Path) -> str:
    """The command that trained a given base student: its benchmark row's record, else its folder's."""
    row = student.parent / "bench_row.json"
    if row.is_file():
        return json.loads(row.read_text())["command"]
    return f"(trained elsewhere: {student})"


def _train_seconds(student: Path) -> float | None:
    """Training time as the run recorded it (summed over resumed pieces), not this invocation's wall time."""
    metrics = student.parent / "metrics.json"
    return json.loads(metrics.read_text()).get("train_seconds") if metrics.is_file() else None


def _atomic_json(path: Path, blob: dict) -> None:
    _atomic_text(path, json.dumps(blob, indent=1) + "\n")


def pareto_plot(rows: list[dict], path: Path) -> None:
    from lasnn.reports.plots import pareto_plot as plot

    path.write_bytes(plot(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="teacher.pt (or its folder) written by lasnn teach")
    p.add_argument("--base", help="the unregularised student.pt (default: train it with lasnn distill)")
    p.add_argument(
        "--weights",
        default="0.1,0.3,1,3",
        help="energy weights of the fine-tuned students (0: the same fine-tune without the term, a control)",
    )
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="data folder for the emulator runs (default: the student's)")
    p.add_argument("--distill-args", default="", help="extra options of every fine-tune, e.g. '--lr 1.15'")
    p.add_argument("--work", default="runs/energy_sweep", help="folder for the students")
    p.add_argument("--out", default="bench/results", help="folder for energy_digits.json and .png")
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    dataset = _teacher_dataset(args.teacher)
    data = ["--data-root", args.data_root] if args.data_root else []
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    models = ["loihi", "compute_fp32", "compute_int8", "memory"]
    if args.base:
        base_student = Path(args.base)
        command, seconds = _base_command(base_student), _train_seconds(base_student)
        rows = [student_row(base_student, 0.0, command, seconds, models, data)]
    else:
        base_student = work / "w0" / "student.pt"
        cmd = [*LASNN, "distill", "--teacher", args.teacher, "--seed", str(args.seed)]
        cmd += ["--out", str(base_student.parent)]
        rows = [student_row(base_student, 0.0, _shown(cmd), _run(cmd), models, data)]
    for w in [float(x) for x in args.weights.split(",")]:
        folder = work / f"w{w:g}"
        cmd = [*LASNN, "distill", "--teacher", args.teacher, "--init", str(base_student)]
        cmd += ["--epochs", str(args.finetune_epochs), "--energy-weight", f"{w:g}"]
        cmd += [*shlex.split(args.distill_args), "--seed", str(args.seed), "--out", str(folder)]
        record = folder / "sweep_row.json"  # a finished row of the same command and data is reused whole
        saved = json.loads(record.read_text()) if record.is_file() else {}
        if saved.get("key") == [_shown(cmd), data]:
            rows.append(saved["row"])
            continue
        # --resume: a killed fine-tune continues from its checkpoint; a finished one is only re-evaluated
        wall = _run([*cmd, "--resume"])
        seconds = _train_seconds(folder / "student.pt") or wall
        row = student_row(folder / "student.pt", w, _shown(cmd), seconds, models, data, args.finetune_epochs)
        _atomic_json(record, {"key": [_shown(cmd), data], "row": row})
        rows.append(row)
    from lasnn.hardware.energy import load_model
    from lasnn.reports.report import teacher_summary

    teacher = teacher_summary(
        args.teacher, [load_model(m) for m in ["compute_fp32", "compute_int8", "memory", "eyeriss"]]
    )
    for r in rows:  # the student's chip energy against the ANN under each ANN model (who wins, plainly)
        r["loihi_over_teacher"] = {
            m: r["loihi_energy_per_inference_j"] / e for m, e in teacher["energy"].items()
        }
        r["same_model_over_teacher"] = {
            m: r["energy_per_inference_j"][m] / teacher["energy"][m]
            for m in r["energy_per_inference_j"]
            if m in teacher["energy"]
        }
    base_row = rows[0]
    # weight 0 in --weights is the control: the same fine-tune without the energy term, so that an extra
    # epoch's own gain is not credited to the term; the goals are judged against the base student
    good = [
        r
        for r in rows[1:]
        if r["energy_weight"] > 0
        and r["test_accuracy"] >= base_row["test_accuracy"] - 0.01
        and r["loihi_energy_per_inference_j"] <= 0.5 * base_row["loihi_energy_per_inference_j"]
    ]
    result = {
        "what": f"{dataset} LaSNN students with the energy term; energies modelled (Loihi 1 model of "
        "Davies et al. 2018, first layer as host MACs), emulator on the whole test set",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": shlex.join(["python", "bench/energy_sweep.py", *(sys.argv[1:] if argv is None else argv)]),
        "teacher": {
            "path": args.teacher,
            "accuracy": teacher["accuracy"],
            "energy_per_inference_j": teacher["energy"],
        },
        "rows": rows,
        "goal": "a student within 1 point of the unregularised student's accuracy at <= half its Loihi "
        "energy",
        "goal_met_by": [r["energy_weight"] for r in good],
        "within_1_point_at_most_0.2x_teacher_memory_model": [
            r["energy_weight"]
            for r in rows[1:]
            if r["energy_weight"] > 0
            and r["test_accuracy"] >= base_row["test_accuracy"] - 0.01
            and r["loihi_over_teacher"].get("memory", float("inf")) <= 0.2
        ],
    }
    _atomic_json(out / f"energy_{dataset}.json", result)
    pareto_plot(rows, out / f"energy_{dataset}.png")
    for r in rows:
        print(
            f"w={r['energy_weight']:g} (+{r['finetune_epochs']} ep): {100 * r['test_accuracy']:.2f} %, "
            f"{r['loihi_energy_per_inference_j'] * 1e6:.2f} µJ (Loihi model)"
        )
    print(f"goal met by weights {result['goal_met_by']}; wrote {out / f'energy_{dataset}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
