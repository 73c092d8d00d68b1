"""Energy, latency and spike-count reports from ``run.json`` files (and optionally the teacher ANN).

``make_report`` reads one or more runs written by ``lasnn simulate`` (per-layer spikes, synaptic ops and
neuron updates per inference), prices them with the cost models of ``lasnn.hardware.energy`` (every
constant cited), estimates the latency on Loihi, counts the teacher's MACs, and writes into one folder:

- ``report.json``: every figure, the constants used with their sources, and the formulas;
- ``report.md``: the same as tables, with the plots linked;
- ``report.html``: self-contained (CSS inline, plots embedded as base64 PNG data URIs, no external
  assets), so it can be mailed or archived as one file;
- ``layers_<i>.png``, ``energy.png`` and (with two or more runs, or a run and the teacher, of which at
  least one has an accuracy) ``accuracy_energy.png``; without one the report says why.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
from pathlib import Path
from typing import Any

from lasnn.artifacts import check_writable, write_bytes, write_json
from lasnn.errors import LasnnError
from lasnn.hardware.energy import (
    ann_energy,
    count_macs,
    covers,
    latency,
    load_model,
    snn_energy,
    static_energy,
)
from lasnn.hardware.workload import neurobench_metrics
from lasnn.reports import plots

REPORT_FORMAT = "lasnn-report"
REPORT_VERSION = 1
DEFAULT_MODELS = ("loihi", "compute_fp32", "compute_int8", "memory", "eyeriss")
LAYER_KEYS = ("name", "neurons", "spikes", "synaptic_ops", "neuron_updates")
ENERGY_FORMULA = (
    "SNN: E = sum over layers of [ (synaptic_ops - macs) * e_synop + spikes * e_neuron_active "
    "+ (neuron_updates - spikes) * e_neuron_inactive + spikes * e_spike ] + host MACs * e_host_mac "
    "(first layer 'host'; 'chip': macs * e_graded instead); ANN: E = sum over layers of [ MACs * e_mac "
    "+ weights * e_weight + inputs * e_input + outputs * e_output ]; each e = sum of multiplier x cited "
    "constant (the model's charges); all figures modelled"
)


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``run.json`` written by ``lasnn simulate``."""
    path = Path(path)
    if not path.is_file():
        raise LasnnError(
            f"{path} does not exist or is not a file; pass a run.json written by lasnn simulate."
        )
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LasnnError(
            f"{path} is not valid JSON ({error}); pass a run.json written by lasnn simulate."
        ) from error
    if not isinstance(run, dict):
        raise LasnnError(f"{path} holds a JSON {type(run).__name__}, not an object; pass a run.json.")
    return check_run(run, path)


def check_run(run: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Check a run record (read from ``path``, or a dict ``simulate`` returned, named by ``path``)."""
    if not isinstance(run, dict):
        raise LasnnError(f"{path} is a {type(run).__name__}, not a run record; pass what simulate returned.")
    for key in ("backend", "timesteps", "layers"):
        if key not in run:
            raise LasnnError(f"{path} lacks the field '{key}'; pass a run.json written by lasnn simulate.")
    if not isinstance(run["timesteps"], int) or run["timesteps"] < 1:
        raise LasnnError(f"{path} has timesteps={run['timesteps']!r}; expected a positive integer.")
    if not isinstance(run["layers"], list) or not run["layers"]:
        raise LasnnError(f"{path} has no per-layer activity in 'layers'; expected a non-empty list.")
    for i, layer in enumerate(run["layers"]):
        missing = [k for k in LAYER_KEYS if not isinstance(layer, dict) or k not in layer]
        if missing:
            raise LasnnError(
                f"{path} layers[{i}] lacks the field(s) {', '.join(missing)}; expected "
                f"{', '.join(LAYER_KEYS)} per layer."
            )
        for key in LAYER_KEYS[1:]:
            value = layer[key]
            if not isinstance(value, int | float) or value < 0:
                raise LasnnError(f"{path} layers[{i}].{key} is {value!r}; expected a non-negative number.")
    accuracy = run.get("accuracy")
    if accuracy is not None and not (isinstance(accuracy, int | float) and 0 <= accuracy <= 1):
        raise LasnnError(f"{path} has accuracy={accuracy!r}; expected a fraction in [0, 1] or null.")
    return run


def summarise_run(
    run: dict, path: str | os.PathLike, label: str | None, models: list[dict], first_layer: str = "host"
) -> dict:
    """One run's per-layer counts, energy under every model that prices an SNN, and latency under every
    model with times (plus static power x latency where a model has a static power)."""
    layers = [dict(layer) for layer in run["layers"]]
    label = label or run.get("label") or f"{Path(str(run.get('graph') or path)).stem} ({run['backend']})"
    constant = run.get("encoding") == "direct"  # the same image at every step: the host computes it once
    snn_models = [m for m in models if covers(m, "snn")]
    energy = {m["name"]: snn_energy(layers, m, run["timesteps"], constant, first_layer) for m in snn_models}
    for i, layer in enumerate(layers):
        layer["energy"] = {name: e["layers"][i]["energy"] for name, e in energy.items()}
    # Cores per layer from the model's own limits (a Loihi 2 resource estimate would not match Loihi times).
    lat = {m["name"]: latency(layers, run["timesteps"], m) for m in snn_models if "time" in m}
    for m in snn_models:
        if m["name"] in lat and static_energy(m, 1.0) > 0:
            energy[m["name"]]["total"]["static_energy"] = static_energy(m, lat[m["name"]]["latency"])
            energy[m["name"]]["total"]["energy"] += energy[m["name"]]["total"]["static_energy"]
    return {
        "label": label,
        "path": str(path),
        "backend": run["backend"],
        "dataset": run.get("dataset"),
        "graph": run.get("graph"),
        "encoding": run.get("encoding"),
        "samples": run.get("samples"),
        "timesteps": run["timesteps"],
        "accuracy": run.get("accuracy"),
        "layers": layers,
        "totals": {
            key: sum(float(layer.get(key, 0.0)) for layer in layers)
            for key in ("neurons", "spikes", "synaptic_ops", "macs", "neuron_updates")
        },
        "energy": {name: {**e["total"], "layers": e["layers"]} for name, e in energy.items()},
        "first_layer": first_layer,
        "neurobench": neurobench_metrics(layers, run["timesteps"], constant),
        "latency": lat,
    }


def teacher_summary(path: str | os.PathLike, models: list[dict]) -> dict:
    """The teacher ANN: MACs, weights, inputs and outputs per layer (forward hooks), its energy under every
    model that prices an ANN, and its recorded test accuracy."""
    from lasnn.distill.checkpoints import load_teacher, teacher_path_of

    file = teacher_path_of(path)
    net, blob = load_teacher(file)
    meta = blob["metadata"]
    counted = count_macs(net, tuple(int(s) for s in meta["input_shape"]))
    return {
        "label": "teacher ANN",
        "path": str(file),
        "arch": (blob.get("config") or {}).get("arch"),
        "accuracy": meta.get("test_accuracy"),
        "dataset": meta.get("dataset"),
        "macs": counted["macs"],
        "layers": counted["layers"],
        "energy": {m["name"]: ann_energy(counted, m)["energy"] for m in models if covers(m, "ann")},
    }


def headline(run: dict, teacher: dict | None) -> str:
    """One sentence per student: accuracy, T, energy against the teacher under each model, latency."""
    parts = [f"{run['label']}: {fmt_accuracy(run.get('accuracy'))} at T = {run['timesteps']}"]
    energies = []
    for name, e in run["energy"].items():
        text = f"{fmt_energy(e['energy'])} under {name}"
        if teacher and name in teacher["energy"]:
            ratio, ann = e["energy"] / teacher["energy"][name], fmt_energy(teacher["energy"][name])
            text += f" ({ratio:.2g}x the teacher's {ann})"
        elif teacher:  # an SNN-only model (Loihi): against the teacher under the ANN models fair to it
            others = [m for m in ("memory", "eyeriss") if m in teacher["energy"]]
            if others:
                vs = ", ".join(
                    f"{e['energy'] / teacher['energy'][m]:.2g}x the teacher under {m}" for m in others
                )
                text += f" ({vs})"
        energies.append(text)
    if energies:
        parts.append("energy per inference (modelled) " + "; ".join(energies))
    for name, lat in run["latency"].items():
        parts.append(f"latency {fmt_time(lat['latency'])} ({name} model)")
    return ", ".join(parts) + "."


def backend_groups(runs: list[dict]) -> list[dict]:
    """Runs of the same graph and T on several backends, with how far their activity agrees: the largest
    relative difference of any layer's spikes per inference, and the accuracies (each on its samples)."""
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault((run.get("graph"), run["timesteps"], run.get("encoding")), []).append(i)
    out = []
    for (graph, steps, _enc), members in groups.items():
        if len(members) < 2 or graph is None:
            continue
        ref = runs[members[0]]["layers"]
        worst = 0.0
        for j in members[1:]:
            for a, b in zip(ref, runs[j]["layers"], strict=False):
                scale = max(abs(a["spikes"]), abs(b["spikes"]), 1e-12)
                worst = max(worst, abs(a["spikes"] - b["spikes"]) / scale)
        out.append(
            {
                "graph": graph,
                "timesteps": steps,
                "runs": members,
                "backends": [runs[j]["backend"] for j in members],
                "samples": [runs[j].get("samples") for j in members],
                "accuracy": [runs[j].get("accuracy") for j in members],
                "max_rel_spike_difference": worst,
            }
        )
    return out


def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """An energy sweep written by ``bench/energy_sweep.py`` (rows of energy_weight, test_accuracy,
    loihi_energy_per_inference_j, command)."""
    path = Path(path)
    try:
        sweep = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LasnnError(
            f"--sweep {path} is not a readable JSON file ({error}); pass energy_digits.json."
        ) from error
    rows = sweep.get("rows") if isinstance(sweep, dict) else None
    keys = ("energy_weight", "test_accuracy", "loihi_energy_per_inference_j")
    if not rows or not all(isinstance(r, dict) and all(k in r for k in keys) for r in rows):
        raise LasnnError(
            f"--sweep {path} has no rows with {', '.join(keys)}; pass a file of bench/energy_sweep.py."
        )
    return sweep


def build_report(runs: list[dict], teacher: dict | None, models: list[dict]) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "runs": runs,
        "headlines": [headline(r, teacher) for r in runs],
        "backend_groups": backend_groups(runs),
        "teacher": teacher,
        "energy_models": {m["name"]: m for m in models},
        "formulas": {
            "energy": ENERGY_FORMULA,
            "latency": next((lat["formula"] for r in runs for lat in r["latency"].values()), None),
        },
    }


def accuracy_energy_note(report: dict) -> str:
    """Why a report of several runs has no accuracy-vs-energy plot (the sentence the report prints)."""
    without = sum(r.get("accuracy") is None for r in report["runs"])
    teacher = report.get("teacher")
    if without == len(report["runs"]) and not (teacher and teacher.get("accuracy") is not None):
        return (
            f"No accuracy-vs-energy plot: none of the {len(report['runs'])} runs has an accuracy (a run "
            "simulated without labels, e.g. a foreign graph on --inputs, records none) and no teacher "
            "accuracy was given; pass --labels to lasnn simulate to score the runs."
        )
    return (
        "No accuracy-vs-energy plot: no run with an accuracy has a positive modelled energy under the "
        "chosen cost models, and the energy axis is logarithmic."
    )


def make_report(
    run_paths: list[str | os.PathLike | dict[str, Any]],
    out: str | os.PathLike | None,
    teacher: str | os.PathLike | None = None,
    labels: list[str] | None = None,
    energy_models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
    first_layer: str = "host",
    sweep: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build the report and, unless ``out`` is None, write the report folder; returns ``{"report": dict,
    "files": {kind: path}}``. Runs are ``run.json`` paths or the records ``simulate`` returned."""
    if not run_paths:
        raise LasnnError("No run.json given; pass at least one run written by lasnn simulate.")
    if labels and len(labels) != len(run_paths):
        raise LasnnError(
            f"{len(labels)} --label value(s) for {len(run_paths)} run(s); give one per run or none."
        )
    models = [load_model(m) for m in energy_models]
    runs = []
    for i, p in enumerate(run_paths):
        run, where = (
            (check_run(p, f"run {i}"), p.get("graph") or f"run {i}")
            if isinstance(p, dict)
            else (load_run(p), p)
        )
        runs.append(summarise_run(run, where, labels[i] if labels else None, models, first_layer))
    teacher_info = teacher_summary(teacher, models) if teacher else None
    report = build_report(runs, teacher_info, models)
    if sweep is not None:
        report["sweep"] = load_sweep(sweep)
    if out is None:
        return {"report": report, "files": {}}
    out = Path(out)
    check_writable(out, directory=True)
    images: dict[str, bytes] = {}
    for i, run in enumerate(runs):
        images[f"layers_{i}.png"] = plots.layer_activity_plot(run)
    images["energy.png"] = plots.energy_plot(report)
    if report.get("sweep"):
        images["pareto.png"] = plots.pareto_plot(report["sweep"]["rows"])
    if len(runs) + (teacher_info is not None) >= 2:
        if plots.accuracy_energy_points(report):
            images["accuracy_energy.png"] = plots.accuracy_energy_plot(report)
        else:
            report["accuracy_energy_note"] = accuracy_energy_note(report)
    report["plots"] = sorted(images)
    files: dict[str, str] = {}
    created = not out.exists()
    try:  # a report folder is all or nothing: a failed write (e.g. a full disk) removes what this call wrote
        for name, data in images.items():
            write_bytes(out / name, data)
            files[name] = str(out / name)
        write_json(out / "report.json", report)
        files["report.json"] = str(out / "report.json")
        write_bytes(out / "report.md", render_markdown(report).encode())
        files["report.md"] = str(out / "report.md")
        write_bytes(out / "report.html", render_html(report, images).encode())
        files["report.html"] = str(out / "report.html")
    except LasnnError:
        for written in files.values():
            Path(written).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return {"report": report, "files": files}


# ------------------------------------------------------------------------------------------ formatting


def fmt_energy(joules: float | None) -> str:
    if joules is None:
        return "-"
    for unit, scale in (("mJ", 1e-3), ("µJ", 1e-6), ("nJ", 1e-9)):
        if abs(joules) >= scale:
            return f"{joules / scale:.3g} {unit}"
    return f"{joules / 1e-12:.3g} pJ"


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def fmt_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """The headline table: one row per run and one for the teacher."""
    names = list(report["energy_models"])
    header = ["run", "backend", "T", "samples", "accuracy", "spikes / inf.", "synaptic ops / inf."]
    header += [f"energy / inf. [{n}]" for n in names]
    lat_models = [n for n in names if any(n in r["latency"] for r in report["runs"])]
    header += [f"latency / inf. [{n}]" for n in lat_models]
    rows = []
    for run in report["runs"]:
        row = [
            run["label"],
            run["backend"],
            str(run["timesteps"]),
            fmt_count(run.get("samples")),
            fmt_accuracy(run.get("accuracy")),
            fmt_count(run["totals"]["spikes"]),
            fmt_count(run["totals"]["synaptic_ops"]),
        ]
        row += [fmt_energy(run["energy"][n]["energy"]) if n in run["energy"] else "-" for n in names]
        row += [fmt_time(run["latency"][n]["latency"]) if n in run["latency"] else "-" for n in lat_models]
        rows.append(row)
    teacher = report.get("teacher")
    if teacher:
        row = [
            teacher["label"],
            "ANN (MACs)",
            "-",
            "-",
            fmt_accuracy(teacher.get("accuracy")),
            "-",
            f"{fmt_count(teacher['macs'])} MACs",
        ]
        row += [fmt_energy(teacher["energy"].get(n)) for n in names]
        row += ["-" for _ in lat_models]
        rows.append(row)
    return header, rows


def _teacher_energies(teacher: dict) -> str:
    return ", ".join(f"{fmt_energy(v)} under {k}" for k, v in teacher["energy"].items())


def _layer_rows(run: dict) -> tuple[list[str], list[list[str]]]:
    names = list(run["energy"])
    header = [
        "layer",
        "kind",
        "synapses",
        "neurons",
        "spikes",
        "synaptic ops",
        "of which MACs",
        "neuron updates",
    ]
    header += [f"energy [{n}]" for n in names]
    rows = []
    for layer in run["layers"]:
        row = [
            layer["name"],
            str(layer.get("kind", "")),
            str(layer.get("synapses", "")),
            fmt_count(layer["neurons"]),
            fmt_count(layer["spikes"]),
            fmt_count(layer["synaptic_ops"]),
            fmt_count(layer.get("macs", 0.0)),
            fmt_count(layer["neuron_updates"]),
        ]
        row += [fmt_energy(layer["energy"].get(n)) for n in names]
        rows.append(row)
    return header, rows


def _constant_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, model in report["energy_models"].items():
        for section in ("constants", "time", "limits"):
            for key, c in model.get(section, {}).items():
                rows.append(
                    [
                        name,
                        f"{section}.{key}",
                        f"{c['value']:g} {c['unit']}",
                        c["source"],
                        c.get("checked", ""),
                    ]
                )
    return ["model", "constant", "value", "source", "checked"], rows


def _latency_lines(run: dict) -> list[str]:
    lines = []
    for name, lat in run["latency"].items():
        lines.append(
            f"{name}: {lat['cores']} cores in {lat['tiles']} tile(s)"
            f"{'' if lat['fits_one_chip'] else ' (more than one chip: barrier of one chip used)'}; "
            f"critical layer {lat['critical_layer']}; barrier {fmt_time(lat['barrier_time'])}; "
            f"time per step {fmt_time(lat['time_per_step'])} x {lat['steps']} steps = "
            f"{fmt_time(lat['latency'])} per inference"
        )
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def clean(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _repeated_runs(report: dict) -> set[int]:
    """Runs whose graph is already shown in detail by an earlier run of its backend group."""
    return {i for g in report.get("backend_groups", []) for i in g["runs"][1:]}


def _group_lines(report: dict) -> list[str]:
    lines = []
    for g in report.get("backend_groups", []):
        runs = ", ".join(
            f"{b} ({fmt_count(n)} samples, {fmt_accuracy(a)})"
            for b, n, a in zip(g["backends"], g["samples"], g["accuracy"], strict=True)
        )
        lines.append(
            f"{g['graph']} (T = {g['timesteps']}) ran on {runs}; per-layer spikes per inference agree within "
            f"{100 * g['max_rel_spike_difference']:.3g} % (different sample counts differ by the samples); "
            "shown once below"
        )
    return lines


def _sweep_rows(sweep: dict) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            f"{r['energy_weight']:g}",
            str(r.get("finetune_epochs", "")),
            fmt_accuracy(r["test_accuracy"]),
            fmt_energy(r["loihi_energy_per_inference_j"]),
            str(r.get("command", "")),
        ]
        for r in sweep["rows"]
    ]
    head = [
        "energy weight",
        "fine-tune epochs",
        "test accuracy",
        "energy / inf. [loihi, modelled]",
        "command",
    ]
    return head, rows


def render_markdown(report: dict) -> str:
    parts = [
        "# lasnn energy and latency report",
        "",
        "All energies and latencies are modelled, not measured.",
    ]
    parts += [""]
    parts += [f"- {h}" for h in report.get("headlines", [])] + [""]
    parts += ["## Summary", "", _md_table(*summary_rows(report)), ""]
    repeated = _repeated_runs(report)
    for line in _group_lines(report):
        parts += [f"- {line}"]
    parts += [""]
    for i, run in enumerate(report["runs"]):
        if i in repeated:
            continue
        parts += [
            f"## {run['label']}",
            "",
            f"run {run['path']}; graph {run.get('graph')}; data set {run.get('dataset')}; encoding "
            f"{run.get('encoding')}; {run.get('samples')} samples; T = {run['timesteps']}",
            "",
            _md_table(*_layer_rows(run)),
            "",
        ]
        parts += [f"- {line}" for line in _latency_lines(run)] + [""]
        parts += [f"![activity per layer](layers_{i}.png)", ""]
    teacher = report.get("teacher")
    if teacher:
        parts += [
            "## Teacher ANN",
            "",
            f"{teacher['path']} ({teacher.get('arch')}): {fmt_count(teacher['macs'])} MACs per inference, "
            f"{_teacher_energies(teacher)} (modelled); "
            f"test accuracy {fmt_accuracy(teacher.get('accuracy'))}",
            "",
        ]
    parts += ["## Energy", "", "![energy per inference](energy.png)", ""]
    if "accuracy_energy.png" in report.get("plots", []):
        parts += ["![accuracy vs energy](accuracy_energy.png)", ""]
    if report.get("accuracy_energy_note"):
        parts += [report["accuracy_energy_note"], ""]
    if report.get("sweep"):
        parts += ["## Energy sweep", "", _md_table(*_sweep_rows(report["sweep"])), ""]
        parts += ["![Pareto](pareto.png)", ""]
    parts += ["## Formulas", "", f"- Energy: `{report['formulas']['energy']}`"]
    if report["formulas"].get("latency"):
        parts += [f"- Latency: `{report['formulas']['latency']}`"]
    parts += ["", "## Cost models and their sources", ""]
    for name, model in report["energy_models"].items():
        parts += [f"- **{name}**: {model.get('title', '')}. {model.get('note', '')}"]
    parts += ["", _md_table(*_constant_rows(report)), ""]
    return "\n".join(parts)


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #1b9e77; padding-bottom: .2em; }
h2 { margin-top: 1.6em; color: #135e4b; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #eef6f3; }
td:first-child, th:first-child, td.text { text-align: left; }
code { background: #f4f4f4; padding: 2px 4px; font-size: 12px; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
.note { color: #555; font-size: 13px; }
"""


def _html_table(header: list[str], rows: list[list[str]], text_cols: tuple[int, ...] = (0,)) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="text">{html.escape(c)}</td>' if i in text_cols else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(images: dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(images[name]).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(report: dict, images: dict[str, bytes]) -> str:
    """A self-contained HTML page: inline CSS, plots as data URIs, nothing fetched from anywhere."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>lasnn energy and latency report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>lasnn energy and latency report</h1>",
        '<p class="note">All energies and latencies are modelled, not measured.</p>',
        "<ul>" + "".join(f"<li>{e(h)}</li>" for h in report.get("headlines", [])) + "</ul>",
        "<h2>Summary</h2>",
        _html_table(*summary_rows(report), text_cols=(0, 1)),
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in _group_lines(report)) + "</ul>",
    ]
    repeated = _repeated_runs(report)
    for i, run in enumerate(report["runs"]):
        if i in repeated:
            continue
        out += [
            f"<h2>{e(run['label'])}</h2>",
            f'<p class="note">run {e(run["path"])}; graph {e(str(run.get("graph")))}; data set '
            f"{e(str(run.get('dataset')))}; encoding {e(str(run.get('encoding')))}; "
            f"{e(str(run.get('samples')))} samples; T = {run['timesteps']}</p>",
            _html_table(*_layer_rows(run), text_cols=(0, 1, 2)),
            "<ul>" + "".join(f"<li>{e(line)}</li>" for line in _latency_lines(run)) + "</ul>",
            _img(images, f"layers_{i}.png", f"activity per layer of {run['label']}"),
        ]
    teacher = report.get("teacher")
    if teacher:
        out += [
            "<h2>Teacher ANN</h2>",
            f"<p>{e(teacher['path'])} ({e(str(teacher.get('arch')))}): {e(fmt_count(teacher['macs']))} MACs "
            f"per inference, {e(_teacher_energies(teacher))} (modelled); test accuracy "
            f"{e(fmt_accuracy(teacher.get('accuracy')))}</p>",
        ]
    out += ["<h2>Energy</h2>", _img(images, "energy.png", "energy per inference")]
    if "accuracy_energy.png" in images:
        out += [_img(images, "accuracy_energy.png", "accuracy vs energy")]
    if report.get("accuracy_energy_note"):
        out += [f'<p class="note">{e(report["accuracy_energy_note"])}</p>']
    if "pareto.png" in images:
        out += ["<h2>Energy sweep</h2>", _html_table(*_sweep_rows(report["sweep"]), text_cols=(4,))]
        out += [_img(images, "pareto.png", "accuracy vs energy of an energy sweep")]
    out += ["<h2>Formulas</h2>", f"<p>Energy: <code>{e(report['formulas']['energy'])}</code></p>"]
    if report["formulas"].get("latency"):
        out += [f"<p>Latency: <code>{e(report['formulas']['latency'])}</code></p>"]
    out += ["<h2>Cost models and their sources</h2>", "<ul>"]
    out += [
        f"<li><b>{e(name)}</b>: {e(model.get('title', ''))}. {e(model.get('note', ''))}</li>"
        for name, model in report["energy_models"].items()
    ]
    out += ["</ul>", _html_table(*_constant_rows(report), text_cols=(0, 1, 3)), "</body></html>", ""]
    return "\n".join(out)
