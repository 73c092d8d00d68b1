"""``lasnn report run.json [run2.json ...] [--teacher T] -o REPORT_DIR``: energy/latency report folder."""

from __future__ import annotations

import argparse

from lasnn.hardware.energy import BUILTIN_MODELS, FIRST_LAYER_MODES
from lasnn.reports.report import DEFAULT_MODELS, summary_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="energy/latency report (md, html, json, png) from run.json files",
        description="Price the per-layer activity of simulated runs with cited per-operation costs (Loihi, "
        "45 nm CMOS), estimate Loihi latency, compare with the teacher ANN, and write report.md, a "
        "self-contained report.html, report.json and PNG plots.",
    )
    p.add_argument("runs", nargs="+", help="run.json files written by lasnn simulate")
    p.add_argument("--teacher", help="teacher.pt (or its directory) to price the ANN by its MACs")
    p.add_argument("--label", action="append", help="label of each run, in order (repeat once per run)")
    p.add_argument(
        "--energy-model",
        action="append",
        dest="energy_models",
        help=f"cost model (modelled, cited): {', '.join(BUILTIN_MODELS)} (memory@8KB / memory@1MB pick "
        "another SRAM) or a JSON file of the same shape (repeatable; default: all built-in models; each "
        "prices the SNN, the teacher ANN or both)",
    )
    p.add_argument(
        "--first-layer",
        choices=FIRST_LAYER_MODES,
        default="host",
        help="how a direct-encoded first layer is charged: host (its MACs on the host, once per inference, "
        "under each model's host MAC cost; its own line), chip (as graded synaptic ops every step, the old "
        "count) or none (default host)",
    )
    p.add_argument(
        "--sweep",
        help="an energy sweep (bench/energy_sweep.py's energy_digits.json) to plot as a Pareto curve",
    )
    p.add_argument("-o", "--out", required=True, help="report folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lasnn.api import energy_report  # the verb is a thin caller of the Python API

    report = energy_report(
        args.runs,
        args.out,
        teacher=args.teacher,
        labels=args.label,
        energy_models=args.energy_models or DEFAULT_MODELS,
        first_layer=args.first_layer,
        sweep=args.sweep,
    )
    for line in report["headlines"]:
        print(line)
    header, rows = summary_rows(report)
    print(format_table(header, rows))
    print(f"wrote {report['files']['report.html']} (and report.md, report.json, plots)")
    return 0


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table for the terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
