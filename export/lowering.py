"""Lowering a trained (or converted) norse student to lasnn's discrete-time graph.

Written by hand because norse 1.1.0's ``to_nir`` loses information (LIF ``tau`` off by dt, Flatten as
None, no conv input shapes, batch dimension in the input; see DESIGN.md). The lowering follows the
student's own forward pass module by module:

- ``SeqSynapse``: conv/linear with batch norm folded in (eval-mode running statistics):
  ``w' = w * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)``;
- ``SpikingNeurons``: one ``Neuron`` node with per-neuron arrays whose discrete update is exactly the
  norse step the student runs (see ``neuron_parameters``);
- ``SeqPool``: ``SumPool2d`` (+ ``Scale`` of ``1/k^2`` for average pooling);
- ``ResidualBlock``: the branch and the shortcut (or the block input itself for an identity shortcut) are
  two edges into the block's neuron node, whose input is their sum;
- ``SeqFlatten`` / the student's final flatten: ``Flatten``; the head: ``Affine`` -> ``Output``.

Node names are the student's module names (``features.3.neurons``), so spikes of a backend can be compared
with the student's layers by name.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from lasnn.distill.spiking_layers import (
    ResidualBlock,
    SeqFlatten,
    SeqPool,
    SeqSynapse,
    SpikingNeurons,
)
from lasnn.errors import LasnnError
from lasnn.export.graph import (
    Affine,
    Conv2d,
    Flatten,
    Graph,
    Input,
    Neuron,
    Output,
    Scale,
    SumPool2d,
)
from lasnn.export.validate import conv_output_size, validate_graph

READOUT = "mean_current"  # logits = mean over T of the head's output currents


def _student_scalar(value: float) -> float:
    """The value norse sees: the student wraps config floats with ``torch.as_tensor`` (default dtype)."""
    return float(torch.as_tensor(value))


def _step_fraction(dt: float, rate: float) -> float:
    """``dt * rate`` computed exactly as norse's step does (python float times a default-dtype tensor)."""
    return float(dt * torch.as_tensor(rate))


def neuron_parameters(neurons: SpikingNeurons, shape: tuple[int, ...], name: str) -> Neuron:
    """Per-neuron discrete parameters reproducing the norse step of ``neurons`` (graph semantics in graph.py).

    - ``lifbox`` (norse ``lif_box_feed_forward_step``): ``v += a (v_leak - v + I)``, ``a = dt*tau_mem_inv``
      -> ``alpha_v = gain = a``;
    - ``cubalif`` (norse ``lif_feed_forward_step``): ``i' = i + I``; ``v += a (v_leak - v + i')``; then
      ``i = i' (1 - b)``, ``b = dt*tau_syn_inv``. Unrolled, the current used at step t is
      ``i_t = i_{t-1} (1 - b) + I_t``: the graph's cuba update with ``alpha_i = b``, ``alpha_v = gain = a``;
    - ``if``: ``v += I`` -> ``alpha_v = 0``, ``gain = 1``; ``v_leak = v_reset`` (it starts there).
    """
    c = neurons.config
    if c.reset != "zero":
        raise LasnnError(
            f"layer '{name}' resets its neurons by subtraction, which NIR and Loihi cannot "
            "express; convert or train with reset 'zero' to export it."
        )
    full = lambda value: np.full(shape, value, dtype=np.float64)  # noqa: E731
    v_th = full(float(neurons.v_th.detach().cpu().double()))
    if c.kind == "if":
        return Neuron(
            shape=shape,
            alpha_v=full(0.0),
            gain=full(1.0),
            v_threshold=v_th,
            v_reset=full(float(c.v_reset)),
            v_leak=full(float(c.v_reset)),
        )
    a = _step_fraction(c.dt, c.tau_mem_inv)
    alpha_i = full(_step_fraction(c.dt, c.tau_syn_inv)) if c.kind == "cubalif" else None
    return Neuron(
        shape=shape,
        alpha_v=full(a),
        gain=full(a),
        v_threshold=v_th,
        v_reset=full(_student_scalar(c.v_reset)),
        v_leak=full(_student_scalar(c.v_leak)),
        alpha_i=alpha_i,
    )


def fold_batch_norm(synapse: SeqSynapse, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Weight and bias of ``synapse.layer`` with its batch norm (eval statistics) folded in, float64."""
    layer = synapse.layer
    weight = layer.weight.detach().cpu().double().numpy()
    bias = None if layer.bias is None else layer.bias.detach().cpu().double().numpy()
    norm = synapse.norm
    if norm is None:
        return weight.copy(), None if bias is None else bias.copy()
    if not isinstance(norm, nn.BatchNorm1d | nn.BatchNorm2d) or norm.running_mean is None:
        raise LasnnError(
            f"layer '{name}' normalises with {type(norm).__name__} without running statistics; "
            "only batch norm with tracked running statistics can be folded for export."
        )
    mean = norm.running_mean.detach().cpu().double().numpy()
    var = norm.running_var.detach().cpu().double().numpy()
    gamma = norm.weight.detach().cpu().double().numpy() if norm.weight is not None else np.ones_like(mean)
    beta = norm.bias.detach().cpu().double().numpy() if norm.bias is not None else np.zeros_like(mean)
    g = gamma / np.sqrt(var + norm.eps)
    weight = weight * g.reshape(-1, *([1] * (weight.ndim - 1)))
    bias = ((bias if bias is not None else 0.0) - mean) * g + beta
    return weight, bias


class _Lowering:
    """Accumulates nodes and edges while walking the student's modules."""

    def __init__(self) -> None:
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: Any, sources: list[str]) -> str:
        self.nodes[name] = node
        self.edges += [(s, name) for s in sources]
        return name

    def module(
        self, name: str, module: nn.Module, src: str, shape: tuple[int, ...]
    ) -> tuple[str, tuple[int, ...]]:
        """Lower ``module`` fed by node ``src`` of output ``shape``; returns (its output node, shape)."""
        if isinstance(module, SeqSynapse):
            return self.synapse(name, module, src, shape)
        if isinstance(module, SpikingNeurons):
            return self.add(name, neuron_parameters(module, shape, name), [src]), shape
        if isinstance(module, SeqPool):
            if len(shape) != 3:
                raise LasnnError(f"layer '{name}' pools an input of shape {shape}; expected (C, H, W).")

            k, s = module.kernel_size, module.stride
            out = (shape[0], conv_output_size(shape[1], k, s, 0), conv_output_size(shape[2], k, s, 0))
            node = self.add(name, SumPool2d(kernel_size=(k, k), stride=(s, s), input_shape=shape), [src])
            if module.kind == "avg":
                node = self.add(f"{name}.scale", Scale(scale=np.array(1.0 / (k * k))), [node])
            return node, out
        if isinstance(module, SeqFlatten):
            if len(shape) == 1:
                return src, shape
            return self.add(name, Flatten(input_shape=shape), [src]), (math.prod(shape),)
        if isinstance(module, ResidualBlock):
            out, out_shape = src, shape
            for child, layer in module.branch.named_children():
                out, out_shape = self.module(f"{name}.branch.{child}", layer, out, out_shape)
            if module.shortcut is None:
                skip, skip_shape = src, shape
            else:
                skip, skip_shape = self.synapse(f"{name}.shortcut", module.shortcut, src, shape)
            if skip_shape != out_shape:
                raise LasnnError(
                    f"residual block '{name}' adds a branch of shape {out_shape} to a shortcut of "
                    f"shape {skip_shape}; both must have the same shape."
                )
            neuron = neuron_parameters(module.neurons, out_shape, f"{name}.neurons")
            return self.add(f"{name}.neurons", neuron, [out, skip]), out_shape
        if isinstance(module, nn.Sequential):
            out, out_shape = src, shape
            for child, layer in module.named_children():
                out, out_shape = self.module(f"{name}.{child}", layer, out, out_shape)
            return out, out_shape
        if isinstance(module, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
            raise LasnnError(
                f"layer '{name}' is max pooling, which spiking hardware cannot run and NIR cannot "
                "express; use average or sum pooling in the student."
            )
        raise LasnnError(
            f"layer '{name}' is a {type(module).__name__}, which lasnn cannot export; students are "
            "built from SeqSynapse, SpikingNeurons, SeqPool, SeqFlatten and ResidualBlock."
        )

    def synapse(
        self, name: str, module: SeqSynapse, src: str, shape: tuple[int, ...]
    ) -> tuple[str, tuple[int, ...]]:
        weight, bias = fold_batch_norm(module, name)
        layer = module.layer
        if isinstance(layer, nn.Conv2d):
            if len(shape) != 3 or shape[0] != layer.in_channels:
                raise LasnnError(
                    f"layer '{name}' is a convolution over {layer.in_channels} channels fed with "
                    f"shape {shape}; expected ({layer.in_channels}, H, W)."
                )
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise LasnnError(
                    f"layer '{name}' uses padding {layer.padding!r} mode {layer.padding_mode!r}; "
                    "export needs explicit integer zero padding."
                )
            node = Conv2d(
                weight=weight,
                bias=bias,
                input_shape=shape,
                stride=tuple(layer.stride),
                padding=tuple(layer.padding),
                dilation=tuple(layer.dilation),
                groups=layer.groups,
            )
            kh, kw = layer.kernel_size
            out = (
                layer.out_channels,
                conv_output_size(shape[1], kh, layer.stride[0], layer.padding[0], layer.dilation[0]),
                conv_output_size(shape[2], kw, layer.stride[1], layer.padding[1], layer.dilation[1]),
            )
            return self.add(name, node, [src]), out
        if len(shape) != 1 or shape[0] != layer.in_features:
            raise LasnnError(
                f"layer '{name}' is a linear layer over {layer.in_features} features fed with "
                f"shape {shape}; expected ({layer.in_features},)."
            )
        return self.add(name, Affine(weight=weight, bias=bias), [src]), (layer.out_features,)


def lower_student(student: nn.Module, metadata: dict[str, Any] | None = None) -> Graph:
    """Lower a ``SpikingStudent`` (trained or converted) to a validated ``Graph``.

    ``metadata`` (a checkpoint's) supplies dataset, input_shape, num_classes, timesteps, encoding, dt, mean
    and std; missing fields fall back to the student's own config.
    """
    metadata = dict(metadata or {})
    config = getattr(student, "config", {}) or {}
    in_shape = metadata.get("input_shape") or config.get("in_shape")
    if not in_shape:
        raise LasnnError(
            "the student carries no input shape (metadata 'input_shape' or config 'in_shape'); "
            "re-save it with lasnn distill."
        )
    in_shape = tuple(int(s) for s in in_shape)
    layers = _Lowering()
    layers.add("input", Input(shape=in_shape), [])
    out, shape = layers.module("features", student.features, "input", in_shape)
    out, shape = layers.module("flatten", SeqFlatten(), out, shape)
    if not isinstance(student.head, SeqSynapse) or not isinstance(student.head.layer, nn.Linear):
        raise LasnnError(
            f"the student's head is a {type(student.head).__name__}; expected a SeqSynapse around nn.Linear."
        )
    out, shape = layers.synapse("head", student.head, out, shape)
    layers.add("output", Output(shape=shape), [out])

    neuron_dts = (
        sorted({m.config.dt for _, m in student.neuron_layers()}) if hasattr(student, "neuron_layers") else []
    )
    dt = float(metadata.get("dt") or (neuron_dts[0] if neuron_dts else 1e-3))
    meta = {
        "source": "lasnn",
        "dt": dt,
        "timesteps": int(metadata.get("timesteps", getattr(student, "timesteps", 1))),
        "encoding": str(metadata.get("encoding", getattr(student, "encoding", "direct"))),
        "dataset": metadata.get("dataset"),
        "input_shape": list(in_shape),
        "num_classes": int(metadata.get("num_classes", shape[0])),
        "readout": READOUT,
        "mean": metadata.get("mean"),
        "std": metadata.get("std"),
        "arch": config.get("arch"),
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    for key in ("mean", "std"):
        if key in meta:
            meta[key] = [float(x) for x in np.atleast_1d(np.asarray(meta[key], dtype=np.float64))]
    graph = Graph(nodes=layers.nodes, edges=layers.edges, metadata=meta)
    validate_graph(graph, "lowered student")
    return graph
