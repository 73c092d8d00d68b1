"""Checks a lasnn graph before any backend runs it: known node types, edges between existing nodes, one
Input and one Output, finite parameters of consistent shape, and shapes that agree along every edge.

Written by hand (NIR's own type check works on NIR nodes, not on lasnn's discrete-time graph). Every
problem is a ``LasnnError`` sentence that names the node, so a bad file never reaches a simulator as a
traceback.
"""

from __future__ import annotations

import math

import numpy as np

from lasnn.errors import LasnnError
from lasnn.export.graph import (
    Affine,
    Conv2d,
    Delay,
    Flatten,
    Graph,
    Input,
    LeakyIntegrator,
    Neuron,
    Output,
    Scale,
    SumPool2d,
)

KNOWN = (Input, Output, Affine, Conv2d, SumPool2d, Scale, Flatten, Neuron, LeakyIntegrator, Delay)
# Nodes that reshape their input to their own ``input_shape`` (same number of elements suffices); Output
# gives the collected values its own shape.
RESHAPING = (Conv2d, SumPool2d, Flatten, Output)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """PyTorch's output size of a convolution/pooling along one axis (floor mode)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _size(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def _fixed_shapes(
    name: str, node: object, where: str
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(input shape, output shape) of a node from its own parameters; None where it takes its sources'."""
    if isinstance(node, Input):
        return None, tuple(node.shape)
    if isinstance(node, Output):
        return tuple(node.shape), tuple(node.shape)
    if isinstance(node, Affine):
        if node.weight.ndim != 2:
            raise LasnnError(
                f"{where}: node '{name}' (Affine) has a weight of shape {node.weight.shape}; "
                "expected a 2-D [out, in] matrix."
            )
        if node.bias is not None and node.bias.shape != (node.weight.shape[0],):
            raise LasnnError(
                f"{where}: node '{name}' (Affine) has a bias of shape {node.bias.shape} for "
                f"{node.weight.shape[0]} outputs; expected ({node.weight.shape[0]},)."
            )
        return (node.weight.shape[1],), (node.weight.shape[0],)
    if isinstance(node, Conv2d):
        c, h, w = node.input_shape
        out_ch, in_per_group, kh, kw = node.weight.shape
        if node.groups < 1 or c != in_per_group * node.groups or out_ch % node.groups:
            raise LasnnError(
                f"{where}: node '{name}' (Conv2d) has weight {node.weight.shape} and groups "
                f"{node.groups} that do not fit its input shape {node.input_shape}."
            )
        if node.bias is not None and node.bias.shape != (out_ch,):
            raise LasnnError(
                f"{where}: node '{name}' (Conv2d) has a bias of shape {node.bias.shape}; "
                f"expected ({out_ch},)."
            )
        ho = conv_output_size(h, kh, node.stride[0], node.padding[0], node.dilation[0])
        wo = conv_output_size(w, kw, node.stride[1], node.padding[1], node.dilation[1])
        if ho < 1 or wo < 1:
            raise LasnnError(
                f"{where}: node '{name}' (Conv2d) kernel {kh}x{kw} does not fit its input "
                f"shape {node.input_shape}."
            )
        return tuple(node.input_shape), (out_ch, ho, wo)
    if isinstance(node, SumPool2d):
        c, h, w = node.input_shape
        ho = conv_output_size(h, node.kernel_size[0], node.stride[0], node.padding[0])
        wo = conv_output_size(w, node.kernel_size[1], node.stride[1], node.padding[1])
        if ho < 1 or wo < 1:
            raise LasnnError(
                f"{where}: node '{name}' (SumPool2d) kernel {node.kernel_size} does not fit its "
                f"input shape {node.input_shape}."
            )
        return tuple(node.input_shape), (c, ho, wo)
    if isinstance(node, Flatten):
        return tuple(node.input_shape), (_size(tuple(node.input_shape)),)
    if isinstance(node, Neuron | LeakyIntegrator):
        return tuple(node.shape), tuple(node.shape)
    if isinstance(node, Delay):
        return tuple(node.steps.shape), tuple(node.steps.shape)
    if isinstance(node, Scale):
        return None, None
    raise LasnnError(
        f"{where}: node '{name}' has the unknown type {type(node).__name__}; expected one of "
        f"{', '.join(k.__name__ for k in KNOWN)}."
    )


def _check_parameters(name: str, node: object, where: str) -> None:
    kind = type(node).__name__
    for field, value in vars(node).items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub" and not np.isfinite(value).all():
            raise LasnnError(
                f"{where}: node '{name}' ({kind}) has non-finite (NaN or Inf) values in "
                f"'{field}'; every parameter must be a finite number."
            )
    if isinstance(node, Neuron | LeakyIntegrator):
        fields = ["alpha_v", "gain", "v_leak"] + (
            ["v_threshold", "v_reset"] if isinstance(node, Neuron) else []
        )
        if node.alpha_i is not None:
            fields.append("alpha_i")
        for field in fields:
            value = getattr(node, field)
            if np.shape(value) != tuple(node.shape):
                raise LasnnError(
                    f"{where}: node '{name}' ({kind}) has '{field}' of shape {np.shape(value)}; "
                    f"expected one value per neuron, shape {tuple(node.shape)}."
                )
    if isinstance(node, Delay) and (node.steps.dtype.kind not in "iu" or (node.steps < 0).any()):
        raise LasnnError(
            f"{where}: node '{name}' (Delay) has delays {node.steps.ravel()[:4]}...; expected "
            "non-negative whole numbers of time steps."
        )
    if isinstance(node, Conv2d | SumPool2d):
        pairs = {"stride": node.stride, "padding": node.padding}
        pairs["kernel_size" if isinstance(node, SumPool2d) else "dilation"] = (
            node.kernel_size if isinstance(node, SumPool2d) else node.dilation
        )
        for field, value in pairs.items():
            low = 0 if field == "padding" else 1
            if len(value) != 2 or any(int(v) != v or v < low for v in value):
                raise LasnnError(
                    f"{where}: node '{name}' ({kind}) has {field} {tuple(value)}; expected two "
                    f"whole numbers >= {low}."
                )


def infer_shapes(
    graph: Graph, where: str = "graph"
) -> dict[str, tuple[tuple[int, ...] | None, tuple[int, ...]]]:
    """Validate ``graph`` and return ``{name: (input shape, output shape)}`` (Input has no input shape).

    Raises ``LasnnError`` naming the first node at fault.
    """
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise LasnnError(
                    f"{where}: the edge {src!r} -> {dst!r} refers to the node {end!r}, which the "
                    "graph does not have (a dangling edge)."
                )
    if len(set(graph.edges)) != len(graph.edges):
        dup = next(e for e in graph.edges if graph.edges.count(e) > 1)
        raise LasnnError(
            f"{where}: the edge {dup[0]!r} -> {dup[1]!r} appears twice; each edge must be unique."
        )
    inputs, outputs = graph.inputs(), graph.outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise LasnnError(
            f"{where}: the graph has {len(inputs)} Input and {len(outputs)} Output nodes; lasnn "
            "runs graphs with exactly one of each."
        )
    fixed = {name: _fixed_shapes(name, node, where) for name, node in graph.nodes.items()}
    for name, node in graph.nodes.items():
        _check_parameters(name, node, where)
        if isinstance(node, Input):
            if graph.sources(name):
                raise LasnnError(f"{where}: the Input node '{name}' has incoming edges; an Input takes none.")
        elif not graph.sources(name):
            raise LasnnError(
                f"{where}: node '{name}' ({type(node).__name__}) has no incoming edge; connect it "
                "or remove it."
            )
    order, _ = graph.schedule()
    shapes: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...]]] = {}
    pending_scale = [n for n in order if isinstance(graph.nodes[n], Scale)]
    # Scale nodes take their sources' shape; resolve them in schedule order (recurrent sources come later).
    for _ in range(len(pending_scale) + 1):
        for name in list(pending_scale):
            known = [
                fixed[s][1] if fixed[s][1] is not None else shapes.get(s, (None, None))[1]
                for s in graph.sources(name)
            ]
            if any(k is None for k in known):
                continue
            node = graph.nodes[name]
            shape = known[0]
            try:
                ok = np.broadcast_shapes(np.shape(node.scale), shape) == tuple(shape)
            except ValueError:
                ok = False
            if not ok:
                raise LasnnError(
                    f"{where}: node '{name}' (Scale) has a scale of shape {np.shape(node.scale)} "
                    f"that does not broadcast to its input shape {tuple(shape)}."
                )
            shapes[name] = (tuple(shape), tuple(shape))
            pending_scale.remove(name)
    if pending_scale:
        raise LasnnError(
            f"{where}: the shape of Scale node '{pending_scale[0]}' cannot be determined (it is fed "
            "only by other Scale nodes in a loop)."
        )
    for name in graph.nodes:
        if name not in shapes:
            shapes[name] = fixed[name]  # type: ignore[assignment]
    for src, dst in graph.edges:
        out = shapes[src][1]
        expected = shapes[dst][0]
        node = graph.nodes[dst]
        same = _size(out) == _size(expected) if isinstance(node, RESHAPING) else tuple(out) == tuple(expected)
        if not same:
            raise LasnnError(
                f"{where}: the edge {src!r} -> {dst!r} carries shape {tuple(out)}, but node "
                f"'{dst}' ({type(node).__name__}) expects {tuple(expected)} (mismatched shapes)."
            )
    return shapes


def validate_graph(graph: Graph, where: str = "graph") -> None:
    """Raise ``LasnnError`` (naming the node) unless ``graph`` is runnable by every lasnn backend."""
    infer_shapes(graph, where)
