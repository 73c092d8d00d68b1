"""``lasnn demo``: the whole toolchain end to end on the embedded ``digits`` data set, in a few minutes.

teach (ANN teacher) -> distill (LaSNN student) -> convert (ANN-to-SNN baseline at the T it needs) ->
export both SNNs to NIR -> simulate (the bit-exact emulator on the full test set, Lava's Loihi simulator
on a subset, the float reference) -> report (energy, latency, spikes; md/html/json/png).

It calls the same functions as the individual verbs, so every artifact it leaves under ``--out`` is one a
user could have made by hand, and prints the report's summary table and path at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from lasnn.artifacts import check_writable, write_json
from lasnn.errors import LasnnError

DATASET = "digits"
# Settings of a full and a --quick demo; None: the per-data-set defaults of lasnn.distill.
SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(
        teach_epochs=None,
        distill_epochs=None,
        widths=None,
        convert_timesteps=(1, 2, 4, 8, 16, 32, 64, 128),
        convert_test_samples=None,
        emulator_samples=None,
        lava_samples=200,
        float_samples=None,
    ),
    "quick": dict(
        teach_epochs=1,
        distill_epochs=4,
        widths="8,16",
        convert_timesteps=(1, 2, 4, 8, 16),
        convert_test_samples=100,
        emulator_samples=60,
        lava_samples=8,
        float_samples=60,
    ),
}


def run_demo(
    out: str | os.PathLike = "runs/demo",
    quick: bool = False,
    seed: int = 0,
    device: str = "cpu",
    lava_samples: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every stage on digits; returns ``{"summary": [...], "report": path, "runs": {...}}``."""
    from lasnn.distill.commands import distill, teach
    from lasnn.distill.conversion_commands import convert_teacher
    from lasnn.distill.training import resolve_device
    from lasnn.export.commands import export_student
    from lasnn.reports.report import make_report
    from lasnn.sims.run_simulation import simulate

    # refuse bad options before minutes of training, and before creating anything
    resolve_device(device)
    if lava_samples is not None and lava_samples < 1:
        raise LasnnError(f"--lava-samples is {lava_samples}; expected a positive number of samples.")
    s = SETTINGS["quick" if quick else "full"]
    out = Path(out)
    check_writable(out, directory=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def stage(name: str) -> None:
        seconds[name] = round(time.perf_counter() - started - sum(seconds.values()), 2)
        if progress:
            print(f"[demo] {name} done ({seconds[name]:.1f} s)", flush=True)

    teacher_dir, student_dir, converted_dir = out / "teacher", out / "student", out / "converted"
    teacher_metrics = teach(
        dataset=DATASET, out=teacher_dir, epochs=s["teach_epochs"], seed=seed, device=device
    )
    stage("teach")
    student_metrics = distill(
        teacher=teacher_dir,
        out=student_dir,
        widths=s["widths"],
        epochs=s["distill_epochs"],
        seed=seed,
        device=device,
    )
    stage("distill")
    convert_metrics = convert_teacher(
        teacher_dir,
        s["convert_timesteps"],
        out=converted_dir,
        test_samples=s["convert_test_samples"],
        seed=seed,
        progress=progress,
    )
    stage("convert")
    student_nir, converted_nir = out / "student.nir", out / "converted.nir"
    export_student(student_dir / "student.pt", student_nir)
    export_student(converted_dir / "student.pt", converted_nir)
    stage("export")

    runs_dir = out / "runs"
    plan = [  # (key, graph, backend, samples, label)
        ("student_lava", student_nir, "lava", lava_samples or s["lava_samples"], "LaSNN student (Lava)"),
        ("student_emulator", student_nir, "emulator", s["emulator_samples"], "LaSNN student (emulator)"),
        ("student_float", student_nir, "float", s["float_samples"], "LaSNN student (float)"),
        ("converted_emulator", converted_nir, "emulator", s["emulator_samples"], "converted SNN (emulator)"),
    ]
    runs: dict[str, dict] = {}
    spike_files = {key: runs_dir / f"{key}_spikes.npz" for key in ("student_lava", "student_emulator")}
    for key, graph, backend, samples, _ in plan:
        runs[key] = simulate(
            graph,
            backend=backend,
            samples=samples,
            out=runs_dir / f"{key}.json",
            save_spikes=spike_files.get(key),
            seed=seed,
            progress=progress,
        )
        stage(f"simulate {key}")
    agreement = compare_spikes(spike_files["student_lava"], spike_files["student_emulator"])
    report = make_report(
        [runs_dir / f"{key}.json" for key, *_ in plan],
        out / "report",
        teacher=teacher_dir / "teacher.pt",
        labels=[label for *_, label in plan],
    )
    stage("report")
    summary = {
        "dataset": DATASET,
        "quick": quick,
        "seconds": seconds,
        "teacher_accuracy": teacher_metrics.get("test_accuracy"),
        "student_accuracy_torch": student_metrics.get("test_accuracy"),
        "converted_timesteps": convert_metrics.get("chosen_timesteps"),
        "converted_curve": convert_metrics.get("curve"),
        "runs": {
            key: {k: runs[key].get(k) for k in ("backend", "samples", "timesteps", "accuracy")}
            for key in runs
        },
        "lava_vs_emulator": agreement,
        "report": report["files"]["report.html"],
    }
    write_json(out / "summary.json", summary)
    return {"summary": summary, "report": report, "runs": runs}


def compare_spikes(lava_file: str | os.PathLike, emulator_file: str | os.PathLike) -> dict[str, Any]:
    """Compare Lava's spike trains with the emulator's on the samples both ran (the first ones, in the same
    order): the emulator claims to be bit-exact, and the demo shows it on every layer."""
    import numpy as np

    with np.load(lava_file) as lava, np.load(emulator_file) as emulator:
        layers = sorted(k for k in lava.files if k != "output")
        n = min(lava[layers[0]].shape[0], emulator[layers[0]].shape[0]) if layers else 0
        differing = {k: int((lava[k][:n] != emulator[k][:n]).sum()) for k in layers}
        spikes = sum(int(lava[k][:n].sum()) for k in layers)
    return {
        "samples": n,
        "layers": len(layers),
        "spikes": spikes,
        "differing_spikes": differing,
        "identical": all(v == 0 for v in differing.values()),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="teach -> distill -> convert -> export -> simulate -> report on digits, end to end",
        description="Run the whole toolchain on scikit-learn's digits: an ANN teacher, a LaSNN student, an "
        "ANN-to-SNN converted baseline, NIR export, simulation (emulator on the full test set, Lava on a "
        "subset, float reference) and an energy/latency report.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument(
        "--quick", action="store_true", help="few epochs and samples: a smoke test of the pipeline"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of training, conversion and encodings")
    p.add_argument("--device", default="cpu", help="training device: cpu, cuda[:N] or auto (default cpu)")
    p.add_argument("--lava-samples", type=int, help="test samples run through Lava (default 200, quick 8)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from lasnn.reports.commands import format_table
    from lasnn.reports.report import summary_rows

    result = run_demo(
        args.out, quick=args.quick, seed=args.seed, device=args.device, lava_samples=args.lava_samples
    )
    summary = result["summary"]
    header, rows = summary_rows(result["report"]["report"])
    print()
    print(format_table(header, rows))
    print(
        f"\nconverted SNN needs T = {summary['converted_timesteps']} (smallest T within 1 point of the "
        "teacher on the conversion's test subset, else the largest tried)"
    )
    agreement = summary["lava_vs_emulator"]
    print(
        f"Lava vs emulator spike trains on the first {agreement['samples']} samples, {agreement['layers']} "
        f"layers, {agreement['spikes']} spikes: {'identical' if agreement['identical'] else 'DIFFERENT'}"
    )
    print(f"stage times (s): {json.dumps(summary['seconds'])}")
    print(f"report: {summary['report']}")
    return 0
