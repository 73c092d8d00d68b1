"""Energy and latency per inference from counted activity, with every cost model kept as a data file.

Every figure this module returns is **modelled**, never measured: counted activity (``lasnn.hardware.
activity``, ``count_macs``) times per-event costs from a published source. The models live side by side in
``hardware/energy_models/*.json`` (one file each; a user adds a chip by writing a file of the same shape and
passing its path). Each file names its ``constants`` (``{"value", "unit", "source", "checked"}``: where the
number comes from and whether it was checked against that source) and its ``charges``: for every countable
event, how many of which constants it costs. One engine prices every model, so the models differ only in
their data:

- ``loihi``: Intel Loihi 1 activity model (Davies et al., IEEE Micro 2018, Table 2);
- ``compute_fp32`` / ``compute_int8``: arithmetic only at matched precision (Horowitz, ISSCC 2014);
- ``memory``: operations plus SRAM reads/writes of inputs, weights, potentials and outputs for both
  networks (the structure of Lemaire et al., ICONIP 2022; SRAM costs of Horowitz 2014, 8 KB / 32 KB / 1 MB
  selectable as ``memory@8KB`` etc.);
- ``eyeriss``: a data-flow accelerator lower bound for the ANN (Chen et al., ISCA 2016 relative costs).

(``cmos45``, the name of the fp32 model before, still loads it.)

Events and the counts they are charged on, per inference:

- SNN, per layer: ``synop`` (accumulate per spike per synapse: ``synaptic_ops - macs``), ``graded``
  (multiply-accumulates of a graded input computed on the chip), ``neuron_active`` (updates in which the
  neuron fires = spikes), ``neuron_inactive`` (the other updates), ``spike`` (spikes);
- host: ``mac``: a direct-encoded (analog) first layer. lasnn computes it on the host, once per inference
  when the input is the same at every step. ``first_layer`` chooses how it is charged: ``"host"`` (default)
  as host MACs under the model's ``host.mac`` charge, shown as its own line; ``"chip"`` as the old count,
  every step's graded ops on the chip (``graded``); ``"none"`` not at all;
- ANN, per layer: ``mac``, ``weight`` (weights, each fetched once), ``input`` (input activation elements),
  ``output`` (output elements).

``E = sum over events of count x sum_k (multiplier_k x constant_k)``; models with a ``time`` section also
give latency (below), and a model constant ``static_power`` (W), where one exists, adds
``static_power x latency``. No built-in model has one: no published static-power figure was checked.

Latency on the chip (``latency``): all cores work in parallel within a time step and then synchronise
with a mesh-wide barrier, so one step takes the slowest core's work plus the barrier (Davies et al. 2018).
Work is spread evenly over a layer's cores and over the T steps (run.json holds per-inference totals)::

    t_step = max_layer [ (ops_L * t_synop + spikes_L * (t_active + t_spike)
                          + (updates_L - spikes_L) * t_inactive) / (T * cores_L) ] + t_barrier(tiles)
    latency = (T + L) * t_step      (L stages: each synapse stage delays its output by one step)

Written by hand: no library turns counted SNN and ANN activity into energy under several cited models.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lasnn.cost_models import (  # noqa: F401  (re-exported: the hardware stage's public names)
    ALIASES,
    ANN_EVENTS,
    BUILTIN_MODELS,
    FIRST_LAYER_MODES,
    LABEL,
    LIMIT_KEYS,
    MODEL_DIR,
    SNN_EVENTS,
    SRAM_LEVELS,
    TIME_KEYS,
    covers,
    load_model,
)
from lasnn.errors import LasnnError


def _v(model: dict, section: str, key: str) -> float:
    return float(model[section][key]["value"])


def snn_counts(layer: dict, timesteps: int | None = None, constant_input: bool = False) -> dict[str, float]:
    """The SNN events of one run.json layer. ``macs`` there are every step's graded-input ops; the host
    computes a constant (direct-encoded) input's layer once, so its host MACs are ``macs / T`` then."""
    ops = float(layer["synaptic_ops"])
    macs = float(layer.get("macs", 0.0))
    spikes = float(layer["spikes"])
    updates = float(layer["neuron_updates"])
    host = macs / timesteps if constant_input and timesteps else macs
    return {
        "synop": ops - macs,
        "graded": macs,
        "host_mac": host,
        "neuron_active": spikes,
        "neuron_inactive": max(updates - spikes, 0.0),
        "spike": spikes,
    }


def snn_energy(
    layers: list[dict],
    model: dict,
    timesteps: int | None = None,
    constant_input: bool = False,
    first_layer: str = "host",
) -> dict[str, Any]:
    """Energy per inference (J, modelled) per layer and in total; the host's share is its own line.

    ``first_layer``: ``host`` (graded-input MACs charged as host MACs, once per inference for a constant
    input), ``chip`` (as on-chip graded ops every step) or ``none``."""
    if first_layer not in FIRST_LAYER_MODES:
        raise LasnnError(
            f"first layer mode {first_layer!r} is unknown; expected one of {', '.join(FIRST_LAYER_MODES)}."
        )
    if not covers(model, "snn"):
        raise LasnnError(
            f"Energy model {model['name']!r} does not price an SNN (it covers "
            f"{', '.join(model['per_event'])}); use loihi, compute_fp32, compute_int8 or memory."
        )
    e, host_mac = model["per_event"]["snn"], model["per_event"]["host"]["mac"]
    rows = []
    for layer in layers:
        n = snn_counts(layer, timesteps, constant_input)
        graded = n["graded"] if first_layer == "chip" else 0.0
        host_macs = n["host_mac"] if first_layer == "host" else 0.0
        synaptic = n["synop"] * e["synop"] + graded * e["graded"]
        neuron = n["neuron_active"] * e["neuron_active"] + n["neuron_inactive"] * e["neuron_inactive"]
        spike = n["spike"] * e["spike"]
        host = host_macs * host_mac
        rows.append(
            {
                "name": layer["name"],
                "ac_ops": n["synop"],
                "macs": graded,
                "host_macs": host_macs,
                "spikes": n["spike"],
                "active_updates": n["neuron_active"],
                "inactive_updates": n["neuron_inactive"],
                "synaptic_energy": synaptic,
                "neuron_energy": neuron,
                "spike_energy": spike,
                "chip_energy": synaptic + neuron + spike,
                "host_energy": host,
                "energy": synaptic + neuron + spike + host,
            }
        )
    keys = ("synaptic_energy", "neuron_energy", "spike_energy", "chip_energy", "host_energy", "energy")
    keys += ("ac_ops", "macs", "host_macs", "spikes")
    totals = {key: sum(r[key] for r in rows) for key in keys}
    return {
        "model": model["name"],
        "label": LABEL,
        "first_layer": first_layer,
        "layers": rows,
        "total": totals,
        "per_event": dict(e, host_mac=host_mac),
    }


def static_energy(model: dict, latency_s: float) -> float:
    """``static_power x latency`` when the model carries a ``static_power`` constant (W), else 0."""
    entry = model["constants"].get("static_power")
    return float(entry["value"]) * latency_s if entry else 0.0


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
        n = snn_counts(layer)
        c = int((cores or {}).get(layer["name"]) or math.ceil(int(layer["neurons"]) / per_core))
        work = (
            (n["synop"] + n["graded"]) * t["synop"]
            + n["spike"] * (t["neuron_active"] + t["spike"])
            + n["neuron_inactive"] * t["neuron_inactive"]
        )
        rows.append({"name": layer["name"], "cores": c, "time_per_step": work / (timesteps * c)})
    # an always-on source neuron sits in a core of a layer it feeds (hardware.resources): no core of its own
    on_own_cores = [r for r, layer in zip(rows, layers, strict=True) if layer.get("kind") != "source"]
    total_cores = sum(r["cores"] for r in on_own_cores)
    tiles = math.ceil(total_cores / int(_v(model, "limits", "cores_per_tile")))
    barrier = barrier_time(model, tiles)
    critical = max(rows, key=lambda r: r["time_per_step"]) if rows else None
    step = (critical["time_per_step"] if critical else 0.0) + barrier
    steps = timesteps + sum(1 for layer in layers if layer.get("kind") != "source")  # sources: no stage
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
    and pooling are not MACs and are left out. Each layer also gives its ``weight``, ``input`` and
    ``output`` element counts (the memory-inclusive and data-flow models charge them).
    """
    rows: list[dict[str, Any]] = []

    def hook(mod: nn.Module, _inputs: Any, output: torch.Tensor, name: str = "") -> None:
        if isinstance(mod, nn.Linear):
            macs = output.numel() * mod.in_features
        else:
            macs = output.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        rows.append(
            {
                "name": name,
                "type": type(mod).__name__,
                "macs": int(macs),
                "weight": int(mod.weight.numel()),
                "input": int(_inputs[0][0].numel()),
                "output": int(output.numel()),
            }
        )

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


def ann_energy(counted: dict | float, model: dict) -> dict[str, Any]:
    """Energy of an ANN inference (J, modelled): ``count_macs``'s per-layer MACs, weights, inputs and
    outputs times the model's ANN charges (a bare number is read as MACs only)."""
    if not covers(model, "ann"):
        raise LasnnError(
            f"Energy model {model['name']!r} does not price an ANN; use one of compute_fp32, compute_int8, "
            "memory, eyeriss or add charges.ann to it."
        )
    e = model["per_event"]["ann"]
    layers = counted["layers"] if isinstance(counted, dict) else [{"name": "all", "macs": float(counted)}]
    rows = []
    for layer in layers:
        parts = {
            event: float(layer.get(event if event != "mac" else "macs", 0.0)) * e[event]
            for event in ANN_EVENTS
        }
        rows.append(
            {
                "name": layer["name"],
                **{f"{k}_energy": v for k, v in parts.items()},
                "energy": sum(parts.values()),
            }
        )
    macs = sum(float(layer.get("macs", 0.0)) for layer in layers)
    return {
        "model": model["name"],
        "label": LABEL,
        "macs": macs,
        "layers": rows,
        "energy": sum(r["energy"] for r in rows),
        "per_event": dict(e),
    }
