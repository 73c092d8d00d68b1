"""PNG plots of a report (matplotlib, Agg canvas: no display, no global pyplot state).

Each function takes the report dict built by ``lasnn.reports.report.build_report`` and returns PNG bytes;
the caller writes them atomically and embeds them in the HTML.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _joules(value: float) -> str:
    for unit, scale in (("mJ", 1e-3), ("µJ", 1e-6), ("nJ", 1e-9)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-12:.3g} pJ"


def layer_activity_plot(run: dict) -> bytes:
    """Spikes and synaptic ops per layer per inference of one run (log scale: layers differ by decades)."""
    layers = run["layers"]
    names = [layer["name"] for layer in layers]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 3), 4.2))
    axes = fig.subplots(1, 2)
    series = (
        ("spikes", "spikes per inference", "#d95f02"),
        ("synaptic_ops", "synaptic ops per inference", "#1b9e77"),
    )
    for ax, (key, title, color) in zip(axes, series, strict=True):
        values = np.array([float(layer[key]) for layer in layers])
        ax.bar(x, np.maximum(values, 1e-12), color=color)
        if key == "synaptic_ops":
            macs = np.array([float(layer.get("macs", 0.0)) for layer in layers])
            if macs.any():
                ax.bar(x, np.maximum(macs, 1e-12), color="#7570b3", label="of which MACs (graded input)")
                ax.legend(fontsize=8)
        ax.set_yscale("log")
        positive = values[values > 0]
        if positive.size:
            ax.set_ylim(positive.min() / 3, positive.max() * 3)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{run['label']}: activity per layer (T = {run['timesteps']})", fontsize=11)
    return _png(fig)


def energy_plot(report: dict) -> bytes:
    """Energy per inference of every run, one panel per cost model, stacked by term; the teacher ANN (MACs)
    in the panel of its own cost model."""
    teacher = report.get("teacher")
    models = [  # a panel per model that prices something shown
        m
        for m in report["energy_models"]
        if any(m in r["energy"] for r in report["runs"]) or (teacher and m in teacher["energy"])
    ]
    colors = {
        "synaptic": "#1b9e77",
        "neuron": "#7570b3",
        "spike": "#d95f02",
        "host (first layer)": "#e6ab02",
        "ANN": "#666666",
    }
    rows = len(report["runs"]) + (1 if teacher else 0)
    fig = Figure(figsize=(10.0, 1.2 + 0.5 * rows * len(models) + 0.8 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models, strict=True):
        bars: list[tuple[str, dict[str, float]]] = []
        for run in report["runs"]:
            if model not in run["energy"]:
                continue
            e = run["energy"][model]
            parts = {
                "synaptic": e["synaptic_energy"],
                "neuron": e["neuron_energy"],
                "spike": e["spike_energy"],
            }
            parts["host (first layer)"] = e.get("host_energy", 0.0)
            bars.append((run["label"], parts))
        if teacher and model in teacher["energy"]:
            bars.append((teacher["label"], {"ANN": teacher["energy"][model]}))
        y = np.arange(len(bars))[::-1]
        left = np.zeros(len(bars))
        for term, color in colors.items():
            widths = np.array([parts.get(term, 0.0) for _, parts in bars]) * 1e9  # nJ
            if widths.any():
                ax.barh(y, widths, left=left, color=color, label=term)
                left += widths
        for yi, total in zip(y, left, strict=True):
            ax.text(total, yi, f" {_joules(total * 1e-9)}", va="center", fontsize=8)
        ax.set_yticks(y, [name for name, _ in bars], fontsize=8)
        ax.set_xlim(0, left.max() * 1.25 if left.size and left.max() > 0 else 1)
        ax.set_xlabel("energy per inference (nJ, modelled)", fontsize=9)
        ax.set_title(f"cost model: {model}", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Energy per inference", fontsize=11)
    return _png(fig)


def accuracy_energy_points(report: dict) -> list[dict]:
    """The points of the accuracy-vs-energy plot: every run (and the teacher) with an accuracy, once per
    cost model that gives it a positive energy. A run simulated without labels has no accuracy, and a log
    axis cannot show an energy of zero, so those are left out; with no point left there is no plot."""
    points = []
    models = list(report["energy_models"])
    for i, run in enumerate(report["runs"]):
        if run.get("accuracy") is None:
            continue
        for j, model in enumerate(models):
            energy = run["energy"].get(model, {}).get("energy")
            if energy is not None and energy > 0:
                points.append({"run": i, "model": j, "energy": energy, "accuracy": run["accuracy"]})
    teacher = report.get("teacher")
    if teacher and teacher.get("accuracy") is not None:
        for model, energy in teacher["energy"].items():
            if energy > 0:
                points.append(
                    {"run": None, "model": model, "energy": energy, "accuracy": teacher["accuracy"]}
                )
    return points


def accuracy_energy_plot(report: dict) -> bytes:
    """Accuracy against energy per inference: one colour per run (star: the teacher ANN), one marker per
    cost model. Call it only when ``accuracy_energy_points`` is not empty (a log axis needs a point)."""
    points = accuracy_energy_points(report)
    if not points:
        raise ValueError("no run with an accuracy and a positive energy to plot")
    markers = ["o", "s", "^", "D", "v"]
    models = list(report["energy_models"])
    fig = Figure(figsize=(8.0, 4.8), layout="constrained")
    ax = fig.subplots()
    palette = [f"C{i}" for i in range(10)]
    labelled: set[int] = set()
    for p in points:
        if p["run"] is None:
            teacher = report["teacher"]
            ax.scatter(
                p["energy"] * 1e9,
                100 * p["accuracy"],
                marker="*",
                s=160,
                color="black",
                label=f"{teacher['label']} [{p['model']}]",
            )
            continue
        ax.scatter(
            p["energy"] * 1e9,
            100 * p["accuracy"],
            color=palette[p["run"] % 10],
            marker=markers[p["model"] % len(markers)],
            s=55,
            alpha=0.85,
            label=report["runs"][p["run"]]["label"] if p["run"] not in labelled else None,
        )
        labelled.add(p["run"])
    for j, model in enumerate(models):  # marker legend entries
        ax.scatter([], [], marker=markers[j % len(markers)], color="grey", label=f"cost model {model}")
    ax.set_xscale("log")
    ax.set_xlabel("energy per inference (nJ, modelled, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs energy per inference", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def pareto_plot(rows: list[dict]) -> bytes:
    """Accuracy against modelled Loihi energy of an energy sweep's students, with the Pareto front (no cheaper
    student is as accurate); the unregularised student (weight 0) in orange."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    pts = sorted(
        ((r["loihi_energy_per_inference_j"] * 1e6, 100 * r["test_accuracy"], r) for r in rows),
        key=lambda p: (p[0], -p[1]),
    )
    front, best = [], -1.0
    for e, a, _ in pts:
        if a > best:
            front.append((e, a))
            best = a
    ax.plot(
        [e for e, _ in front], [a for _, a in front], "-", color="#1b9e77", alpha=0.6, label="Pareto front"
    )
    for e, a, r in pts:
        ax.scatter(e, a, color="#d95f02" if r["energy_weight"] == 0 else "#1b9e77", s=40, zorder=3)
        tuned = f" (+{r['finetune_epochs']} ep)" if r.get("finetune_epochs") else ""
        ax.annotate(
            f"w={r['energy_weight']:g}{tuned}", (e, a), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    ax.set_xlabel("energy per inference, Loihi model (µJ, modelled)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Energy sweep: accuracy vs energy (orange: no energy term)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
