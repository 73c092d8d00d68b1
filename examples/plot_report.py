"""Example 4: read a lasnn report's JSON and plot accuracy against modelled energy per inference.

    python examples/plot_report.py runs/examples/foreign/report/report.json --model loihi

``report.json`` is what ``lasnn report`` / ``lasnn.energy_report(..., out=...)`` writes (example 3 makes
one with a T sweep). Each run is one point: its accuracy and its energy per inference under the chosen cost
model (every figure is modelled from counted activity, not measured). Writes ``accuracy_energy.png`` and
``points.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def points(report: dict, model: str) -> list[dict]:
    """(label, T, backend, accuracy, energy) of every run that has an accuracy, under ``model``."""
    if model not in report["energy_models"]:
        raise SystemExit(
            f"the report has no cost model {model!r}; it has {', '.join(report['energy_models'])}."
        )
    return [
        {
            "label": run["label"],
            "timesteps": run["timesteps"],
            "backend": run["backend"],
            "samples": run["samples"],
            "accuracy": run["accuracy"],
            "energy_j": run["energy"][model]["energy"],
        }
        for run in report["runs"]
        if run.get("accuracy") is not None and model in run["energy"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default="runs/examples/foreign/report/report.json")
    parser.add_argument("--model", default="loihi", help="cost model to plot (default loihi)")
    parser.add_argument("--out", default="runs/examples/plot")
    args = parser.parse_args()
    path = Path(args.report)
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; run examples/foreign_nir.py first or pass a report.json.")
    report = json.loads(path.read_text())
    pts = points(report, args.model)

    fig, ax = plt.subplots(figsize=(6, 4))
    for backend, marker in (("emulator", "o"), ("lava", "s"), ("float", "^")):
        mine = [p for p in pts if p["backend"] == backend]
        if mine:
            ax.plot(
                [p["energy_j"] * 1e6 for p in mine],
                [100 * p["accuracy"] for p in mine],
                marker,
                label=backend,
            )
    for p in pts:
        ax.annotate(
            f"T={p['timesteps']}",
            (p["energy_j"] * 1e6, 100 * p["accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"energy per inference, uJ (modelled, {args.model})")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("accuracy vs modelled energy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "accuracy_energy.png", dpi=120)
    (out / "points.json").write_text(
        json.dumps({"report": str(path), "model": args.model, "points": pts}, indent=2)
    )
    for p in pts:
        energy = f"{p['energy_j'] * 1e6:.3g} uJ"
        print(f"{p['label']}: {100 * p['accuracy']:.2f} %, {energy} (modelled, {args.model})")
    print(f"wrote {out / 'accuracy_energy.png'} and {out / 'points.json'}")


if __name__ == "__main__":
    main()
