"""Digits energy sweep: accuracy vs modelled Loihi energy of LaSNN students trained with the energy term.

The unregularised student (``energy_weight`` 0) is the default ``lasnn distill`` run; every other student
fine-tunes it (``--init``) for a few epochs with ``--energy-weight W`` (seed fixed). Each student is
exported, run on the bit-exact emulator over the whole test set, and priced with the Loihi model
(first layer on the host, ``lasnn report``'s default). Writes ``OUT/energy_digits.json`` (one row per student:
energy_weight, test_accuracy, loihi_energy_per_inference_j, the exact command) and ``OUT/energy_digits.png``
(the Pareto plot). All energies are modelled.

    python bench/energy_sweep.py --teacher runs/t/teacher.pt --weights 0.1,0.3,1,3 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

LASNN = [sys.executable, "-m", "lasnn.cli"]


def _run(cmd: list[str]) -> float:
    print("+", shlex.join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _shown(cmd: list[str]) -> str:
    return shlex.join(["lasnn", *cmd[len(LASNN) :]])


def student_row(student: Path, weight: float, command: str, seconds: float, models: list[str]) -> dict:
    """Export, simulate on the emulator (full test set) and price one student."""
    from lasnn.hardware.energy import load_model, snn_energy
    from lasnn.hardware.workload import neurobench_metrics

    graph, run_json = student.with_suffix(".nir"), student.parent / "emulator.json"
    _run([*LASNN, "export", str(student), "-o", str(graph)])
    _run([*LASNN, "simulate", str(graph), "--backend", "emulator", "-o", str(run_json), "--quiet"])
    run = json.loads(run_json.read_text())
    constant = run["encoding"] == "direct"
    energy = {
        m: snn_energy(run["layers"], load_model(m), run["timesteps"], constant)["total"] for m in models
    }
    return {
        "energy_weight": weight,
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


def pareto_plot(rows: list[dict], path: Path) -> None:
    from lasnn.reports.plots import pareto_plot as plot

    path.write_bytes(plot(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="digits teacher.pt (lasnn teach --dataset digits)")
    p.add_argument("--weights", default="0.1,0.3,1,3", help="energy weights of the fine-tuned students")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/energy_sweep", help="folder for the students")
    p.add_argument("--out", default="bench/results", help="folder for energy_digits.json and .png")
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    models = ["loihi", "compute_fp32", "compute_int8", "memory"]
    base = work / "w0"
    cmd = [*LASNN, "distill", "--teacher", args.teacher, "--seed", str(args.seed), "--out", str(base)]
    rows = [student_row(base / "student.pt", 0.0, _shown(cmd), _run(cmd), models)]
    for w in [float(x) for x in args.weights.split(",")]:
        folder = work / f"w{w:g}"
        cmd = [*LASNN, "distill", "--teacher", args.teacher, "--init", str(base / "student.pt")]
        cmd += ["--epochs", str(args.finetune_epochs), "--energy-weight", f"{w:g}"]
        cmd += ["--seed", str(args.seed), "--out", str(folder)]
        rows.append(student_row(folder / "student.pt", w, _shown(cmd), _run(cmd), models))
    from lasnn.hardware.energy import load_model
    from lasnn.reports.report import teacher_summary

    teacher = teacher_summary(
        args.teacher, [load_model(m) for m in ["compute_fp32", "compute_int8", "memory", "eyeriss"]]
    )
    base_row = rows[0]
    good = [
        r
        for r in rows[1:]
        if r["test_accuracy"] >= base_row["test_accuracy"] - 0.01
        and r["loihi_energy_per_inference_j"] <= 0.5 * base_row["loihi_energy_per_inference_j"]
    ]
    result = {
        "what": "digits LaSNN students with the energy term; energies modelled (Loihi 1 model of Davies "
        "et al. 2018, first layer as host MACs), emulator on the whole test set",
        "date": time.strftime("%Y-%m-%d"),
        "machine": "2-core AMD EPYC, no GPU (shared with a CIFAR training job)",
        "teacher": {
            "path": args.teacher,
            "accuracy": teacher["accuracy"],
            "energy_per_inference_j": teacher["energy"],
        },
        "rows": rows,
        "goal": "a student within 1 point of the unregularised student's accuracy at <= half its Loihi "
        "energy",
        "goal_met_by": [r["energy_weight"] for r in good],
    }
    (out / "energy_digits.json").write_text(json.dumps(result, indent=2) + "\n")
    pareto_plot(rows, out / "energy_digits.png")
    for r in rows:
        print(
            f"w={r['energy_weight']:g}: {100 * r['test_accuracy']:.2f} %, "
            f"{r['loihi_energy_per_inference_j'] * 1e6:.2f} µJ (Loihi model)"
        )
    print(f"goal met by weights {result['goal_met_by']}; wrote {out / 'energy_digits.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
