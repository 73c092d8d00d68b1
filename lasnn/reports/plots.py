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
    """Energy per inference of every run under every model (stacked by term), and the teacher ANN."""
    bars: list[tuple[str, dict[str, float]]] = []
    for run in report["runs"]:
        for model, energy in run["energy"].items():
            bars.append(
                (
                    f"{run['label']}\n[{model}]",
                    {
                        "synaptic": energy["synaptic_energy"],
                        "neuron": energy["neuron_energy"],
                        "spike": energy["spike_energy"],
                    },
                )
            )
    teacher = report.get("teacher")
    if teacher:
        for model, energy in teacher["energy"].items():
            bars.append((f"{teacher['label']}\n[{model}]", {"MAC": energy}))
    colors = {"synaptic": "#1b9e77", "neuron": "#7570b3", "spike": "#d95f02", "MAC": "#666666"}
    fig = Figure(figsize=(max(6.0, 1.3 * len(bars) + 2), 4.6))
    ax = fig.subplots()
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for term, color in colors.items():
        heights = np.array([parts.get(term, 0.0) for _, parts in bars]) * 1e9  # nJ
        if heights.any():
            ax.bar(x, heights, bottom=bottom, color=color, label=term)
            bottom += heights
    for xi, total in zip(x, bottom, strict=True):
        ax.text(xi, total, f"{total:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [name for name, _ in bars], fontsize=8)
    ax.set_ylabel("energy per inference (nJ)")
    ax.set_title("Energy per inference by run and cost model", fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def accuracy_energy_plot(report: dict) -> bytes:
    """Accuracy against energy per inference: SNN runs under each model, the teacher ANN under MACs."""
    markers = {"loihi": "o", "cmos45": "s"}
    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.subplots()
    for run in report["runs"]:
        if run.get("accuracy") is None:
            continue
        for model, energy in run["energy"].items():
            ax.scatter(energy["energy"] * 1e9, 100 * run["accuracy"], marker=markers.get(model, "^"), s=50)
            ax.annotate(
                f"{run['label']} [{model}]",
                (energy["energy"] * 1e9, 100 * run["accuracy"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    teacher = report.get("teacher")
    if teacher and teacher.get("accuracy") is not None:
        for model, energy in teacher["energy"].items():
            ax.scatter(energy * 1e9, 100 * teacher["accuracy"], marker="*", s=120, color="black")
            ax.annotate(
                f"{teacher['label']} [{model}]",
                (energy * 1e9, 100 * teacher["accuracy"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("energy per inference (nJ, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs energy per inference", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)
