"""Energy and latency per inference from counted activity, with per-operation costs kept as data.

A *cost model* is a plain dict (JSON-serialisable) naming a target and its per-operation constants, each
``{"value", "unit", "source"}``, so a report can print where every number comes from and a user can add a
chip by writing a JSON file of the same shape (``load_model("my_chip.json")``). Two models are built in:

- ``loihi``: Intel Loihi (14 nm), Davies et al., "Loihi: A Neuromorphic Manycore Processor with On-Chip
  Learning", IEEE Micro 38(1):82-99, 2018, Table 2. These figures are *pre-silicon* (SDF/SPICE
  simulation at 0.75 V) and the synaptic-op energy is a minimum, so the totals are lower bounds.
- ``cmos45``: 45 nm CMOS arithmetic, Horowitz, "Computing's energy problem (and what we can do about
  it)", ISSCC 2014: an SNN synaptic op as a 32-bit float add (accumulate, AC), an ANN/graded-input
  operation as a 32-bit float multiply-accumulate (MAC). The common SNN-vs-ANN comparison; memory access
  is left out on both sides.

No Loihi 2 model: Intel publishes Loihi 2 speed-up factors over Loihi (technology brief "Taking
Neuromorphic Computing to the Next Level with Loihi 2", 2021) but no per-operation energy, and this module
will not invent one.

Energy of an SNN inference (per layer, summed; counts from ``lasnn.hardware.activity``)::

    E = ac_ops * E_synop + macs * E_graded + spikes * E_neuron_active
        + (neuron_updates - spikes) * E_neuron_inactive + spikes * E_spike

("active" neuron update = an update in which the neuron fires; Table 2 gives no sharper definition).
Energy of an ANN inference: ``MACs * E_mac`` (``count_macs`` counts them with forward hooks).

Latency on the chip (``latency``): all cores work in parallel within a time step and then synchronise
with a mesh-wide barrier, so one step takes the slowest core's work plus the barrier (Davies et al. 2018:
the cores synchronise with a barrier at the end of every algorithmic time step; Table 2 gives its time).
Work is spread evenly over a layer's cores and over the T steps (run.json holds per-inference totals)::

    t_step = max_layer [ (ops_L * t_synop + spikes_L * (t_active + t_spike)
                          + (updates_L - spikes_L) * t_inactive) / (T * cores_L) ] + t_barrier(tiles)
    latency = (T + L) * t_step      (L stages: each synapse stage delays its output by one step)

Written by hand: no library turns counted SNN activity into Loihi energy and latency.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lasnn.errors import LasnnError

DAVIES_2018 = (
    "Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', IEEE Micro "
    "38(1):82-99, 2018, Table 2 (pre-silicon, 0.75 V)"
)
HOROWITZ_2014 = (
    "Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm, 0.9 V"
)


def _c(value: float, unit: str, source: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "source": source}


BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    "loihi": {
        "name": "loihi",
        "title": "Intel Loihi (14 nm), per-operation figures of Davies et al. 2018",
        "note": "Pre-silicon figures; the synaptic-op energy is the table's minimum, so energies are lower "
        "bounds. Spike routing beyond the source tile (3.0-4.0 pJ per tile hop) depends on core placement "
        "and is not counted. Graded (analog) first-layer input is charged one synaptic op per synapse "
        "(Loihi 2 graded spikes; Loihi itself has none). Lava simulates Loihi 2 fixed point; these are "
        "Loihi (1) costs, since no per-operation Loihi 2 figures are published. Cores are assigned by neuron "
        "count only (1,024 per core); synapse-memory limits would add cores, so times per step are upper "
        "bounds. Synaptic (learning) updates, 120 pJ in Table 2, do not occur in inference.",
        "energy": {
            "synop": _c(23.6e-12, "J", DAVIES_2018 + ": energy per synaptic spike op (min), 23.6 pJ"),
            "graded": _c(
                23.6e-12,
                "J",
                DAVIES_2018 + ": synaptic spike op, 23.6 pJ, charged per graded-"
                "input synapse (assumption, see note)",
            ),
            "neuron_active": _c(81e-12, "J", DAVIES_2018 + ": energy per neuron update, active, 81 pJ"),
            "neuron_inactive": _c(52e-12, "J", DAVIES_2018 + ": energy per neuron update, inactive, 52 pJ"),
            "spike": _c(1.7e-12, "J", DAVIES_2018 + ": within-tile spike energy, 1.7 pJ"),
            "tile_hop_ew": _c(
                3.0e-12,
                "J",
                DAVIES_2018 + ": energy per tile hop, east-west, 3.0 pJ "
                "(listed, not charged: needs placement)",
            ),
            "tile_hop_ns": _c(
                4.0e-12,
                "J",
                DAVIES_2018 + ": energy per tile hop, north-south, 4.0 pJ "
                "(listed, not charged: needs placement)",
            ),
        },
        "time": {
            "synop": _c(3.5e-9, "s", DAVIES_2018 + ": time per synaptic spike op (max), 3.5 ns"),
            "neuron_active": _c(8.4e-9, "s", DAVIES_2018 + ": time per neuron update, active, 8.4 ns"),
            "neuron_inactive": _c(5.3e-9, "s", DAVIES_2018 + ": time per neuron update, inactive, 5.3 ns"),
            "spike": _c(2.1e-9, "s", DAVIES_2018 + ": within-tile spike latency, 2.1 ns"),
            "barrier_1_tile": _c(113e-9, "s", DAVIES_2018 + ": mesh-wide barrier sync time, 1 tile, 113 ns"),
            "barrier_32_tiles": _c(
                465e-9,
                "s",
                DAVIES_2018 + ": mesh-wide barrier sync time, 32 tiles, "
                "465 ns (linear in tiles in between: our assumption)",
            ),
        },
        "limits": {
            "neurons_per_core": _c(1024, "neurons", "Davies et al. 2018: 1,024 neural compartments per core"),
            "cores_per_tile": _c(
                4, "cores", "Davies et al. 2018: 128 cores in 32 tiles (4 per tile), one chip"
            ),
            "tiles": _c(32, "tiles", "Davies et al. 2018: 8 x 4 mesh of tiles per chip"),
        },
    },
    "cmos45": {
        "name": "cmos45",
        "title": "45 nm CMOS arithmetic (Horowitz 2014): SNN as accumulates, ANN as MACs",
        "note": "Arithmetic only: memory access and data movement are left out on both sides. A spiking "
        "synaptic op is one 32-bit float add (the weight is added, nothing multiplied); a graded input or "
        "ANN operation is one 32-bit float multiply-accumulate. A neuron update (leak multiply plus input "
        "add) is charged one MAC: our decomposition, not a figure of the paper. No latency model.",
        "energy": {
            "synop": _c(0.9e-12, "J", HOROWITZ_2014 + ": 32-bit float add (AC), 0.9 pJ"),
            "graded": _c(4.6e-12, "J", HOROWITZ_2014 + ": 32-bit float mult 3.7 pJ + add 0.9 pJ (MAC)"),
            "neuron_active": _c(4.6e-12, "J", HOROWITZ_2014 + ": one 32-bit float MAC per neuron update"),
            "neuron_inactive": _c(4.6e-12, "J", HOROWITZ_2014 + ": one 32-bit float MAC per neuron update"),
            "spike": _c(0.0, "J", "no communication cost in an arithmetic-only model"),
            "mac": _c(4.6e-12, "J", HOROWITZ_2014 + ": 32-bit float mult 3.7 pJ + add 0.9 pJ (MAC)"),
        },
    },
}

ENERGY_KEYS = ("synop", "graded", "neuron_active", "neuron_inactive", "spike")
TIME_KEYS = ("synop", "neuron_active", "neuron_inactive", "spike", "barrier_1_tile", "barrier_32_tiles")
LIMIT_KEYS = ("neurons_per_core", "cores_per_tile", "tiles")


def load_model(spec: str | os.PathLike | dict) -> dict[str, Any]:
    """A built-in model by name, a JSON file with the same structure, or an already loaded dict; checked.

    Required: ``name``, ``energy`` with ``synop``, ``graded``, ``neuron_active``, ``neuron_inactive``,
    ``spike`` (each ``{"value", "unit", "source"}``). Optional: ``mac`` (for ANN energy), ``time`` with
    all of ``TIME_KEYS`` and ``limits`` with all of ``LIMIT_KEYS`` (both needed for latency).
    """
    if isinstance(spec, dict):
        model, where = copy.deepcopy(spec), f"energy model {spec.get('name', '?')!r}"
    elif str(spec) in BUILTIN_MODELS:
        return copy.deepcopy(BUILTIN_MODELS[str(spec)])
    else:
        path = Path(spec)
        if not path.is_file():
            raise LasnnError(
                f"Energy model {spec!s} is neither a built-in model "
                f"({', '.join(BUILTIN_MODELS)}) nor an existing JSON file."
            )
        try:
            model = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LasnnError(
                f"Energy model file {path} is not valid JSON ({error}); expected an object "
                "like the built-in models."
            ) from error
        where = f"energy model file {path}"
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise LasnnError(
            f"The {where} has no string field 'name'; expected an object like the built-in models."
        )
    _check_section(model, "energy", ENERGY_KEYS, where, required=True)
    if "time" in model or "limits" in model:
        _check_section(model, "time", TIME_KEYS, where, required=True)
        _check_section(model, "limits", LIMIT_KEYS, where, required=True)
    return model


def _check_section(model: dict, section: str, keys: tuple[str, ...], where: str, required: bool) -> None:
    table = model.get(section)
    if not isinstance(table, dict):
        if required:
            raise LasnnError(f"The {where} lacks the section '{section}' with the keys {', '.join(keys)}.")
        return
    for key in keys:
        entry = table.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), int | float):
            raise LasnnError(
                f"The {where} has no numeric '{section}.{key}.value'; every constant needs "
                "{'value', 'unit', 'source'}."
            )
        if entry["value"] < 0 or not math.isfinite(entry["value"]):
            raise LasnnError(
                f"The {where} has '{section}.{key}.value' = {entry['value']}; expected a finite "
                "non-negative number."
            )
        if not str(entry.get("source", "")).strip():
            raise LasnnError(
                f"The {where} has no 'source' for '{section}.{key}'; cite where the number comes from."
            )


def _v(model: dict, section: str, key: str) -> float:
    return float(model[section][key]["value"])


def _layer_counts(layer: dict) -> dict[str, float]:
    ops = float(layer["synaptic_ops"])
    macs = float(layer.get("macs", 0.0))
    spikes = float(layer["spikes"])
    updates = float(layer["neuron_updates"])
    return {
        "ac_ops": ops - macs,
        "macs": macs,
        "spikes": spikes,
        "active_updates": spikes,
        "inactive_updates": max(updates - spikes, 0.0),
    }


def snn_energy(layers: list[dict], model: dict) -> dict[str, Any]:
    """Energy per inference (joules) per layer and in total, by the formula in the module docstring.

    Every per-layer figure is ``count x constant``; the totals are the sums of the per-layer figures.
    """
    e = {key: _v(model, "energy", key) for key in ENERGY_KEYS}
    rows = []
    for layer in layers:
        n = _layer_counts(layer)
        synaptic = n["ac_ops"] * e["synop"] + n["macs"] * e["graded"]
        neuron = n["active_updates"] * e["neuron_active"] + n["inactive_updates"] * e["neuron_inactive"]
        spike = n["spikes"] * e["spike"]
        rows.append(
            {
                "name": layer["name"],
                **n,
                "synaptic_energy": synaptic,
                "neuron_energy": neuron,
                "spike_energy": spike,
                "energy": synaptic + neuron + spike,
            }
        )
    totals = {
        key: sum(r[key] for r in rows)
        for key in ("synaptic_energy", "neuron_energy", "spike_energy", "energy", "ac_ops", "macs", "spikes")
    }
    return {
        "model": model["name"],
        "layers": rows,
        "total": totals,
        "constants": {k: model["energy"][k] for k in ENERGY_KEYS},
    }


def barrier_time(model: dict, tiles: int) -> float:
    """Barrier sync time for ``tiles`` tiles: linear between the model's 1-tile and 32-tile figures."""
    t1, t32 = _v(model, "time", "barrier_1_tile"), _v(model, "time", "barrier_32_tiles")
    tiles = min(max(int(tiles), 1), 32)
    return t1 + (t32 - t1) * (tiles - 1) / 31


LATENCY_FORMULA = (
    "t_step = max over layers L of [ (ops_L * t_synop + spikes_L * (t_active + t_spike) + (updates_L - "
    "spikes_L) * t_inactive) / (T * cores_L) ] + t_barrier(tiles); latency = (T + number of layers) * t_step"
)


def latency(layers: list[dict], timesteps: int, model: dict, cores: dict[str, int] | None = None) -> dict:
    """Estimated time per step and per inference on the chip (see the module docstring).

    ``cores`` maps layer name to cores used (e.g. from a resource estimate); missing layers get
    ``ceil(neurons / neurons_per_core)``.
    """
    if "time" not in model:
        raise LasnnError(
            f"Energy model {model['name']!r} has no 'time' section, so it gives no latency; use "
            "a model with per-operation times (e.g. 'loihi')."
        )
    if timesteps < 1:
        raise LasnnError(f"timesteps is {timesteps}; expected a positive integer to estimate latency.")
    t = {key: _v(model, "time", key) for key in TIME_KEYS}
    per_core = int(_v(model, "limits", "neurons_per_core"))
    rows = []
    for layer in layers:
        n = _layer_counts(layer)
        c = int((cores or {}).get(layer["name"]) or math.ceil(int(layer["neurons"]) / per_core))
        work = (
            (n["ac_ops"] + n["macs"]) * t["synop"]
            + n["spikes"] * (t["neuron_active"] + t["spike"])
            + n["inactive_updates"] * t["neuron_inactive"]
        )
        rows.append({"name": layer["name"], "cores": c, "time_per_step": work / (timesteps * c)})
    total_cores = sum(r["cores"] for r in rows)
    tiles = math.ceil(total_cores / int(_v(model, "limits", "cores_per_tile")))
    barrier = barrier_time(model, tiles)
    critical = max(rows, key=lambda r: r["time_per_step"]) if rows else None
    step = (critical["time_per_step"] if critical else 0.0) + barrier
    steps = timesteps + len(layers)
    return {
        "model": model["name"],
        "layers": rows,
        "cores": total_cores,
        "tiles": tiles,
        "fits_one_chip": tiles <= int(_v(model, "limits", "tiles")),
        "barrier_time": barrier,
        "critical_layer": critical["name"] if critical else None,
        "time_per_step": step,
        "steps": steps,
        "latency": steps * step,
        "formula": LATENCY_FORMULA,
        "constants": {k: model["time"][k] for k in TIME_KEYS},
    }


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Multiply-accumulates of one forward pass of ``module`` on one input of ``input_shape`` (no batch).

    Counted with forward hooks on ``nn.Conv1d/2d/3d`` (output elements x in_channels/groups x kernel size)
    and ``nn.Linear`` (output elements x in_features); batch norm (foldable into the conv), activations
    and pooling are not MACs and are left out.
    """
    rows: list[dict[str, Any]] = []

    def hook(mod: nn.Module, _inputs: Any, output: torch.Tensor, name: str = "") -> None:
        if isinstance(mod, nn.Linear):
            macs = output.numel() * mod.in_features
        else:
            macs = output.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        rows.append({"name": name, "type": type(mod).__name__, "macs": int(macs)})

    handles = [
        m.register_forward_hook(lambda mod, i, o, name=n: hook(mod, i, o, name))
        for n, m in module.named_modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]
    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return {"layers": rows, "macs": sum(r["macs"] for r in rows)}


def ann_energy(macs: float, model: dict) -> dict[str, Any]:
    """Energy of an ANN inference: ``macs * E_mac`` of the model (e.g. ``cmos45``)."""
    if "mac" not in model.get("energy", {}):
        raise LasnnError(
            f"Energy model {model['name']!r} has no 'energy.mac' constant, so it cannot price "
            "an ANN; use 'cmos45' or add one."
        )
    e_mac = _v(model, "energy", "mac")
    return {
        "model": model["name"],
        "macs": float(macs),
        "energy": float(macs) * e_mac,
        "constants": {"mac": model["energy"]["mac"]},
    }
