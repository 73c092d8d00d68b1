"""The energy models' data files (``hardware/energy_models/*.json``): reading, checking and pricing them.

Shared (``lasnn/``) because two stages read them: ``lasnn.hardware.energy`` prices counted activity and the
energy-aware distillation (``lasnn.distill.energy_loss``) takes a model's per-event costs as plain numbers,
and training must not import the hardware stage. The format is described in ``lasnn.hardware.energy``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from lasnn.errors import LasnnError

# the data files live beside the hardware stage; located without importing it (training reads them too)
MODEL_DIR = Path(find_spec("lasnn.hardware").origin).with_name("energy_models")
BUILTIN_MODELS: tuple[str, ...] = ("loihi", "compute_fp32", "compute_int8", "memory", "eyeriss")
ALIASES = {"cmos45": "compute_fp32"}
SRAM_LEVELS = {"8KB": "sram_8kb", "32KB": "sram_32kb", "1MB": "sram_1mb"}
SNN_EVENTS = ("synop", "graded", "neuron_active", "neuron_inactive", "spike")
ANN_EVENTS = ("mac", "weight", "input", "output")
FIRST_LAYER_MODES = ("host", "chip", "none")
TIME_KEYS = ("synop", "neuron_active", "neuron_inactive", "spike", "barrier_1_tile", "barrier_32_tiles")
LIMIT_KEYS = ("neurons_per_core", "cores_per_tile", "tiles")
LABEL = "modelled"


def load_model(spec: str | os.PathLike | dict) -> dict[str, Any]:
    """A built-in model by name (``memory@8KB`` picks an SRAM level), a JSON file of the same shape, or an
    already loaded dict; checked, with every charge resolved to joules per event (``per_event``)."""
    level = None
    if isinstance(spec, dict):
        model, where = copy.deepcopy(spec), f"energy model {spec.get('name', '?')!r}"
    else:
        text = str(spec)
        name, _, level = text.partition("@")
        name = ALIASES.get(name, name)
        if name in BUILTIN_MODELS:
            path = MODEL_DIR / f"{name}.json"
        else:
            path, level = Path(text), None
            if not path.is_file():
                raise LasnnError(
                    f"Energy model {text} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor an "
                    "existing JSON file."
                )
        try:
            model = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LasnnError(
                f"Energy model file {path} is not valid JSON ({error}); expected an object like "
                f"{MODEL_DIR / 'loihi.json'}."
            ) from error
        where = f"energy model file {path}"
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise LasnnError(
            f"The {where} has no string field 'name'; expected an object like the built-in models."
        )
    if level:
        if level not in SRAM_LEVELS or "sram_level" not in model:
            raise LasnnError(
                f"Energy model {spec!s}: '@{level}' selects an SRAM level, which only models with "
                f"'sram_level' take; expected one of {', '.join(SRAM_LEVELS)}."
            )
        model["sram_level"] = SRAM_LEVELS[level]
        model["name"] = f"{model['name']}@{level}"
    _check_constants(model, "constants", None, where)
    charges = model.get("charges")
    if not isinstance(charges, dict) or not charges:
        raise LasnnError(f"The {where} lacks 'charges' (events -> {{constant: multiplier}}).")
    per_event: dict[str, dict[str, float]] = {}
    for side, events in (("snn", SNN_EVENTS), ("host", ("mac",)), ("ann", ANN_EVENTS)):
        if side not in charges:
            continue
        table = charges[side]
        missing = [e for e in events if e not in table]
        if missing:
            raise LasnnError(f"The {where} charges.{side} lacks the event(s) {', '.join(missing)}.")
        per_event[side] = {e: _price(model, table[e], f"{where} charges.{side}.{e}") for e in events}
    if "snn" in per_event and "host" not in per_event:
        raise LasnnError(f"The {where} prices the SNN but has no charges.host.mac for a host-computed layer.")
    model["per_event"] = per_event
    model.setdefault("label", LABEL)
    if "time" in model or "limits" in model:
        _check_constants(model, "time", TIME_KEYS, where)
        _check_constants(model, "limits", LIMIT_KEYS, where)
    return model


def _check_constants(model: dict, section: str, keys: tuple[str, ...] | None, where: str) -> None:
    table = model.get(section)
    if not isinstance(table, dict):
        raise LasnnError(f"The {where} lacks the section '{section}'.")
    for key in keys if keys is not None else tuple(table):
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


def _price(model: dict, charge: Any, where: str) -> float:
    """Joules per event: sum of multiplier x constant (``sram`` stands for the model's ``sram_level``)."""
    if not isinstance(charge, dict):
        raise LasnnError(f"The {where} is {charge!r}; expected an object {{constant: multiplier}}.")
    total = 0.0
    for key, multiplier in charge.items():
        name = model.get("sram_level") if key == "sram" else key
        if name not in model["constants"]:
            raise LasnnError(f"The {where} names the constant {key!r}, which the model does not define.")
        if not isinstance(multiplier, int | float) or multiplier < 0:
            raise LasnnError(
                f"The {where} has multiplier {multiplier!r} for {key!r}; expected a number >= 0."
            )
        total += float(multiplier) * float(model["constants"][name]["value"])
    return total


def covers(model: dict, side: str) -> bool:
    """Whether ``model`` prices ``side`` (``"snn"`` or ``"ann"``)."""
    return side in model["per_event"]
