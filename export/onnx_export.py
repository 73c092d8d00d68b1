"""Teacher -> ONNX, checked twice: ``onnx.checker`` (well-formed) and ``onnx.reference.ReferenceEvaluator``
(ONNX's own numpy interpreter) against torch on sample inputs.

The legacy TorchScript exporter (``dynamo=False``) is used because the dynamo exporter needs
``onnxscript``, which lasnn does not depend on.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from lasnn.artifacts import write_bytes
from lasnn.errors import LasnnError

OPSET = 17
TOLERANCE = 1e-4  # max |torch - ONNX reference| accepted on the sample inputs (issue 5)


@dataclass
class OnnxReport:
    path: str
    opset: int
    samples: int
    max_abs_diff: float
    tolerance: float = TOLERANCE

    def to_dict(self) -> dict:
        return dict(
            path=self.path,
            opset=self.opset,
            samples=self.samples,
            max_abs_diff=self.max_abs_diff,
            tolerance=self.tolerance,
        )


def teacher_to_onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """Serialized ONNX of ``model`` (eval mode, float32) with a dynamic batch dimension."""
    model = model.eval().float().cpu()
    example = torch.zeros(2, *input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notices
        try:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as error:  # the exporter raises many types for unsupported operators
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LasnnError(
                f"torch.onnx cannot export this teacher ({type(error).__name__}: {first[:200]})."
            ) from error
    return buffer.getvalue()


def check_onnx(data: bytes, model: nn.Module, samples: torch.Tensor) -> float:
    """Run ``onnx.checker`` and compare the ONNX reference evaluator with torch; returns the max abs diff."""
    proto = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise LasnnError(
            f"the exported ONNX model fails onnx.checker: {str(error).splitlines()[0]}"
        ) from error
    with torch.no_grad():
        expected = model.eval().float()(samples.float()).numpy()
    (got,) = ReferenceEvaluator(proto).run(None, {"images": samples.float().numpy()})
    return float(np.abs(np.asarray(got, dtype=np.float64) - expected).max())


def export_teacher_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | os.PathLike,
    samples: torch.Tensor | None = None,
) -> OnnxReport:
    """Export ``model`` to ``path`` (atomically) after checking it; ``samples`` default to 4 seeded normal
    images. Raises ``LasnnError`` if torch and the ONNX reference differ by ``TOLERANCE`` or more."""
    if samples is None:
        samples = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    data = teacher_to_onnx_bytes(model, tuple(input_shape))
    diff = check_onnx(data, model, samples)
    if not diff < TOLERANCE:
        raise LasnnError(
            f"the ONNX export of the teacher differs from torch by {diff:.3g} (limit {TOLERANCE:g}) on "
            "sample inputs; it is not written."
        )
    write_bytes(path, data)
    return OnnxReport(path=str(path), opset=OPSET, samples=int(samples.shape[0]), max_abs_diff=diff)
