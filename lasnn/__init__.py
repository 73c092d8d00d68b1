"""lasnn: layer-wise ANN-to-SNN distillation, from an ANN teacher to a spiking student on Loihi.

The public Python API is the names in ``__all__`` (defined in ``lasnn.api``, loaded on first use so that
``import lasnn`` and the CLI stay light); everything else is internal. See the README's "Python API".
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "LasnnError",
    # data
    "Data",
    "load_data",
    # the objective, attention maps and pairing, hooks
    "LaSNNLoss",
    "LossTerms",
    "ActivationRecorder",
    "attention_map",
    "pair_layers",
    "find_stage_ends",
    # students and the training verbs
    "make_student",
    "train_teacher",
    "distill_student",
    "convert_teacher",
    # export, compile, simulate, report
    "ExportResult",
    "export_profiles",
    "export_nir",
    "export_onnx",
    "compile_loihi",
    "load_compiled",
    "export_netx",
    "loihi_resources",
    "simulate",
    "energy_report",
]


def __getattr__(name: str) -> Any:
    if name == "LasnnError":
        from lasnn.errors import LasnnError

        return LasnnError
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("lasnn.api"), name)
    raise AttributeError(f"module 'lasnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
