"""Per-layer activity of a simulated graph: spikes, synaptic operations and neuron updates per inference.

These counts are what the energy/latency model (``lasnn.hardware.energy``) multiplies by per-operation
costs, so they follow how event-driven hardware works:

- a *stage* is a destination node (a ``Neuron`` node, or the ``Output`` readout) together with the
  synapse nodes on every path into it from a spiking source (a ``Neuron`` node) or from the ``Input``;
- **synaptic ops**: every spike of a source neuron costs one operation per outgoing synapse of that
  neuron on the path, i.e. its *fan-out*: the number of distinct destination neurons it connects to
  through the path's synapse chain. The chain is composed first, as a chip composes it into one synapse
  matrix (a ``SumPool2d`` followed by a ``Conv2d`` is one effective convolution); padding borders and
  strides are exact (a border pixel of a padded 3x3 conv reaches fewer outputs than an inner one). Several
  paths into one stage (a residual block's branch and its shortcut) are separate synapse matrices and add
  up. Connectivity is *structural* (kernel slots and dense matrices), not "weight != 0";
- if the source is the ``Input`` and the input is analog (``direct`` encoding) the operations are
  multiply-accumulates (MACs) of the graded input, counted for every nonzero input value; the stage is
  labelled ``op = "mac"`` and the count is also given as ``macs``;
- a recurrent path (an edge closing a cycle) delivers step t's spikes at t + 1, so the last step's spikes
  cost nothing on it;
- a ``LeakyIntegrator`` (non-spiking) is a stage of its own (kind ``"readout"``); as a source its graded
  output counts as MACs on every element at every step; ``Delay`` nodes connect one-to-one and hold
  events back (their last steps are never delivered);
- **neuron updates** are neurons x T (every neuron's state is updated every step, spiking or not);
- **chip-only synapses** (given the compiled ``LoihiGraph``): the quantiser adds synapses the float graph
  does not have (``loihi_graph``): from the always-on source neuron (constant currents: a CUBA neuron's
  bias, a constant that starts after step 0), which spikes at every one of the T steps, so each costs its
  nonzero weights x T operations; and a layer's reset synapse onto itself, one operation per spike (the
  last step's excepted). They are added to their destination stage (``synaptic_ops``, ``connections``,
  ``dense_ops``, ``chip_ops``, the part they make up), and each source neuron is a stage of its own (kind
  ``"source"``, listed last: T spikes and T updates per neuron, no synapses into it).

Written by hand: no library counts event-driven synaptic operations on a NIR-like graph. Fan-outs are
computed from the structure of each synapse node: a chain of convolutions and poolings is a Kronecker
product of a channel connectivity (``C_out x C_in``) and a spatial connectivity, so the spatial part is
found by pushing one-hot images through single-channel all-ones versions of the ops (torch), and the
channel part by boolean matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
from lasnn.hardware.loihi_graph import LoihiGraph

SYNAPSE_TYPES = (Affine, Conv2d, SumPool2d, Scale, Flatten, Delay)
SOURCE_TYPES = (Neuron, Input, LeakyIntegrator)
STAGE_TYPES = (Neuron, LeakyIntegrator, Output)
_CHUNK = 1024  # one-hot source positions pushed through a spatial chain at once (bounds memory)


@dataclass
class Path:
    """A chain of synapse nodes from a source (Neuron or Input) to a destination (Neuron or Output)."""

    source: str
    synapses: list[str]
    destination: str
    recurrent: bool


def _kind_name(node: object) -> str:
    names = {Affine: "dense", Conv2d: "conv2d", SumPool2d: "sumpool2d", Scale: "scale", Flatten: "flatten"}
    return names.get(type(node), "delay")


def synapse_paths(graph: Graph) -> list[Path]:
    """Every path into a Neuron or Output node that runs through synapse nodes only, from a Neuron or
    Input node. Paths into an Output with no synapse node on them (a spiking output read directly) are
    left out: they carry no synaptic operations."""
    _, recurrent_edges = graph.schedule()
    paths: list[Path] = []
    for dest, dest_node in graph.nodes.items():
        if not isinstance(dest_node, STAGE_TYPES):
            continue
        # depth-first search backwards through synapse nodes
        stack: list[tuple[str, list[str], bool]] = [
            (src, [], (src, dest) in recurrent_edges) for src in graph.sources(dest)
        ]
        while stack:
            node_name, chain, rec = stack.pop()
            node = graph.nodes[node_name]
            if isinstance(node, SOURCE_TYPES):
                if chain or not isinstance(dest_node, Output):
                    paths.append(Path(node_name, list(reversed(chain)), dest, rec))
                continue
            if not isinstance(node, SYNAPSE_TYPES):
                raise LasnnError(
                    f"Graph node {node_name!r} of type {type(node).__name__} feeds {dest!r}; expected a "
                    "synapse node (Affine, Conv2d, SumPool2d, Scale, Flatten), a Neuron or the Input."
                )
            if node_name in chain or len(chain) > len(graph.nodes):
                raise LasnnError(
                    f"Graph has a cycle of synapse nodes through {node_name!r} with no neuron on it; "
                    "every recurrent connection must pass through a Neuron node."
                )
            for src in graph.sources(node_name):
                stack.append((src, [*chain, node_name], rec or (src, node_name) in recurrent_edges))
    return paths


def _node_shape(graph: Graph, name: str) -> tuple[int, ...]:
    node = graph.nodes[name]
    if isinstance(node, Input | Output | Neuron | LeakyIntegrator):
        return tuple(int(s) for s in node.shape)
    raise LasnnError(
        f"Graph node {name!r} has no shape of its own; expected an Input, Output, Neuron or LeakyIntegrator."
    )


def _spatial_ops(graph: Graph, path: Path) -> list[tuple[str, object]]:
    return [(n, graph.nodes[n]) for n in path.synapses]


def path_fanout(graph: Graph, path: Path) -> np.ndarray:
    """Fan-out of every source neuron along ``path``: the number of distinct destination neurons it has a
    synapse to through the path's composed synapse chain. Shape: the source node's shape."""
    src_shape = _node_shape(graph, path.source)
    nodes = _spatial_ops(graph, path)
    # A Conv2d/SumPool2d reshapes its input to its input_shape (graph semantics): view the source so.
    first = next((n for _, n in nodes if not isinstance(n, Scale | Delay)), None)
    view = src_shape
    if isinstance(first, Conv2d | SumPool2d) and int(np.prod(first.input_shape)) == int(np.prod(src_shape)):
        view = tuple(int(s) for s in first.input_shape)
    if len(view) != 3:
        return _flat_fanout(graph, path, src_shape, nodes)
    c_src, h, w = view
    channels = np.eye(c_src, dtype=bool)  # reach[c_cur, c_src]
    spatial_nodes: list[tuple[str, object]] = []
    rest: list[tuple[str, object]] = []
    for i, (name, node) in enumerate(nodes):
        if isinstance(node, Conv2d | SumPool2d):
            if tuple(node.input_shape)[0] != channels.shape[0]:
                raise LasnnError(
                    f"Graph node {name!r} expects {node.input_shape[0]} input channels but receives "
                    f"{channels.shape[0]} on the path from {path.source!r}; the graph is inconsistent."
                )
            spatial_nodes.append((name, node))
            channels = _channel_reach(node, channels.shape[0]) @ channels
        elif isinstance(node, Scale | Delay):
            continue
        else:
            rest = nodes[i:]
            break
    positions = _spatial_reach(spatial_nodes, h, w)  # [h*w] -> either counts or any-mask
    if not rest:
        counts = channels.sum(0)[:, None] * positions["count"][None, :]
        return counts.reshape(src_shape).astype(np.float64)
    if any(isinstance(n, Conv2d | SumPool2d) for _, n in rest):
        raise LasnnError(
            f"Graph path from {path.source!r} to {path.destination!r} applies a convolution or pooling after "
            "a Flatten or Affine node; lasnn cannot count the synaptic operations of such a path."
        )
    # A Flatten then dense stage: every reached input of an Affine reaches all of its outputs.
    reached_any = channels.any(0)[:, None] & (positions["count"][None, :] > 0)
    flat_out = _flat_chain_out(rest, path)
    return (reached_any * flat_out).reshape(src_shape).astype(np.float64)


def _channel_reach(node: Conv2d | SumPool2d, c_in: int) -> np.ndarray:
    """Boolean channel connectivity ``[C_out, C_in]`` of a conv (groups respected) or a pooling."""
    if isinstance(node, SumPool2d):
        return np.eye(c_in, dtype=bool)
    c_out = int(node.weight.shape[0])
    groups = int(node.groups)
    reach = np.zeros((c_out, c_in), dtype=bool)
    out_per, in_per = c_out // groups, c_in // groups
    for g in range(groups):
        reach[g * out_per : (g + 1) * out_per, g * in_per : (g + 1) * in_per] = True
    return reach


def _spatial_reach(nodes: list[tuple[str, object]], h: int, w: int) -> dict[str, np.ndarray]:
    """For every source pixel, how many distinct output pixels the chain of convs/pools reaches."""
    counts = np.zeros(h * w, dtype=np.int64)
    for start in range(0, h * w, _CHUNK):
        stop = min(start + _CHUNK, h * w)
        x = torch.zeros(stop - start, 1, h * w, dtype=torch.float32)
        x[torch.arange(stop - start), 0, torch.arange(start, stop)] = 1.0
        x = x.view(stop - start, 1, h, w)
        for name, node in nodes:
            if tuple(x.shape[2:]) != tuple(node.input_shape[1:]):
                raise LasnnError(
                    f"Graph node {name!r} expects input of spatial size {tuple(node.input_shape[1:])} but "
                    f"receives {tuple(x.shape[2:])}; the graph is inconsistent."
                )
            if isinstance(node, Conv2d):
                kh, kw = node.weight.shape[2:]
                x = F.conv2d(
                    x,
                    torch.ones(1, 1, kh, kw),
                    stride=tuple(node.stride),
                    padding=tuple(node.padding),
                    dilation=tuple(node.dilation),
                )
            else:
                x = F.conv2d(
                    x,
                    torch.ones(1, 1, *node.kernel_size),
                    stride=tuple(node.stride),
                    padding=tuple(node.padding),
                )
            x = (x > 0).to(torch.float32)
        counts[start:stop] = (x > 0).flatten(1).sum(1).numpy()
    return {"count": counts}


def _flat_chain_out(rest: list[tuple[str, object]], path: Path) -> int:
    """Destinations reached by a source that reaches the input of a Flatten/Affine chain."""
    out = None
    for name, node in rest:
        if isinstance(node, Affine):
            out = int(node.weight.shape[0])
        elif isinstance(node, Flatten | Scale | Delay):
            continue
        else:
            raise LasnnError(
                f"Graph node {name!r} ({type(node).__name__}) follows a flattening or dense node on the path "
                f"from {path.source!r} to {path.destination!r}; expected only Affine, Flatten or Scale there."
            )
    if out is None:  # Flatten (and Scale) only: one-to-one
        return 1
    return out


def _flat_fanout(graph: Graph, path: Path, src_shape: tuple[int, ...], nodes: list) -> np.ndarray:
    if any(isinstance(n, Conv2d | SumPool2d) for _, n in nodes):
        raise LasnnError(
            f"Graph path from {path.source!r} (shape {src_shape}) to {path.destination!r} applies a 2-d "
            "convolution or pooling to a source that is not (C, H, W); the graph is inconsistent."
        )
    return np.full(src_shape, float(_flat_chain_out(nodes, path)))


def _dropped_steps(graph: Graph, path: Path) -> int:
    """Final steps whose events never arrive on ``path``: one for a recurrent edge, plus the Delay nodes'
    steps (exact for a uniform delay; a per-element delay counts its smallest value: an upper bound)."""
    drop = 1 if path.recurrent else 0
    for name in path.synapses:
        node = graph.nodes[name]
        if isinstance(node, Delay):
            drop += int(np.min(node.steps)) if np.size(node.steps) else 0
    return drop


def _is_analog(graph: Graph, stream: np.ndarray) -> bool:
    encoding = graph.metadata.get("encoding")
    if encoding is not None:
        return encoding == "direct"
    return not bool(np.isin(stream, (0, 1)).all())


def _describe(graph: Graph, paths: list[Path]) -> str:
    parts = []
    for p in paths:
        kinds = [
            _kind_name(graph.nodes[n]) for n in p.synapses if not isinstance(graph.nodes[n], Scale | Flatten)
        ]
        text = "+".join(kinds) if kinds else "identity"
        if p.recurrent:
            text += " (recurrent)"
        if text not in parts:
            parts.append(text)
    return ", ".join(parts)


def layer_activity(
    graph: Graph, spikes: dict[str, np.ndarray], stream: np.ndarray, loihi: LoihiGraph | None = None
) -> list[dict]:
    """Per-stage activity per inference (mean over the batch), in topological order, readout last.

    ``spikes``: neuron node name -> ``[T, B, *shape]`` spike trains (a backend's ``BackendResult.spikes``);
    ``stream``: the encoded input ``[T, B, *input_shape]``. Each entry has ``name`` (the Neuron node,
    or the LeakyIntegrator or Output node of a non-spiking readout), ``kind`` (``"neuron"`` or
    ``"readout"``), ``synapses`` (what its incoming paths are), ``sources``, ``neurons``, ``spikes``,
    ``synaptic_ops``, ``macs`` (the part of ``synaptic_ops`` that multiplies graded input), ``op``
    (``"ac"``, ``"mac"`` or ``"ac+mac"``), ``neuron_updates``, ``connections`` (structural synapses into
    the stage: the sum of every source's fan-out), ``input_connections`` (the part from an analog input) and
    ``dense_ops`` (the synaptic ops if every source were active at every step; NeuroBench's "Dense").
    ``loihi``: the compiled network the spikes came from; its chip-only synapses and always-on source
    neurons are charged too (module docstring).
    """
    stream = np.asarray(stream)
    if stream.ndim < 2:
        raise LasnnError(f"The input stream has shape {stream.shape}; expected [T, B, *input_shape].")
    steps, batch = int(stream.shape[0]), int(stream.shape[1])
    analog = _is_analog(graph, stream)
    order, _ = graph.schedule()
    paths = synapse_paths(graph)
    events: dict[str, np.ndarray] = {}  # per source: events per element summed over T and batch

    def spike_trains(name: str) -> np.ndarray:
        if name not in spikes:
            raise LasnnError(
                f"No spike trains for neuron node {name!r}; the backend result must hold one "
                "[T, B, *shape] array per Neuron node."
            )
        data = np.asarray(spikes[name])
        expected = (steps, batch, *graph.nodes[name].shape)
        if tuple(data.shape) != expected:
            raise LasnnError(
                f"Spike trains of {name!r} have shape {data.shape}; expected {expected} to match "
                "the input stream."
            )
        return data

    def source_events(name: str, drop: int) -> np.ndarray:
        """Events per source element summed over batch and the first T - drop steps (the last ``drop``
        steps' events are never delivered: recurrent edges and Delay nodes shift them past the end)."""
        key = f"{name}|{drop}"
        if key not in events:
            node = graph.nodes[name]
            if isinstance(node, LeakyIntegrator):  # graded output every step: dense
                data = np.ones((steps, batch, *node.shape), dtype=bool)
            elif isinstance(node, Input):
                data = stream
                if tuple(data.shape[2:]) != tuple(node.shape):
                    raise LasnnError(
                        f"The input stream has shape {stream.shape}; graph input {name!r} "
                        f"expects [T, B, {', '.join(map(str, node.shape))}]."
                    )
                data = data != 0 if analog else data.astype(np.float64)
            else:
                data = spike_trains(name)
            data = data[: max(steps - drop, 0)]
            events[key] = np.asarray(data).sum(axis=(0, 1), dtype=np.float64)  # no float64 copy of the data
        return events[key]

    result = []
    destinations = [n for n in order if isinstance(graph.nodes[n], Neuron | LeakyIntegrator)]
    destinations += [n for n in order if isinstance(graph.nodes[n], Output)]
    for dest in destinations:
        node = graph.nodes[dest]
        into = [p for p in paths if p.destination == dest]
        if isinstance(node, Output) and not into:
            continue
        ac = mac = connections = input_connections = dense = 0.0
        for p in into:
            fanout = path_fanout(graph, p)
            drop = _dropped_steps(graph, p)
            ops = float((source_events(p.source, drop) * fanout).sum()) / batch
            source = graph.nodes[p.source]
            count = float(fanout.sum())
            connections += count
            dense += count * max(steps - drop, 0)
            if (analog and isinstance(source, Input)) or isinstance(source, LeakyIntegrator):
                mac += ops
                input_connections += count if isinstance(source, Input) else 0.0
            else:
                ac += ops
        neurons = int(np.prod(node.shape))
        n_spikes = (
            float(spike_trains(dest).sum(dtype=np.float64)) / batch if isinstance(node, Neuron) else 0.0
        )
        result.append(
            {
                "name": dest,
                "kind": "neuron" if isinstance(node, Neuron) else "readout",
                "synapses": _describe(graph, into),
                "sources": sorted({p.source for p in into}),
                "neurons": neurons,
                "spikes": n_spikes,
                "synaptic_ops": ac + mac,
                "macs": mac,
                "op": "ac+mac" if ac and mac else ("mac" if mac else "ac"),
                "neuron_updates": float(neurons * steps),
                "connections": connections,
                "input_connections": input_connections,
                "dense_ops": dense,
            }
        )
    if loihi is not None:
        _add_chip_synapses(result, loihi, spikes, steps, batch)
    return result


def _add_chip_synapses(
    result: list[dict], lg: LoihiGraph, spikes: dict[str, np.ndarray], steps: int, batch: int
) -> None:
    """Charge the synapses the quantiser added (always-on sources, reset synapses) to their destination
    stages, and append one stage per source neuron (see the module docstring)."""
    rows = {row["name"]: row for row in result}
    sources = {name: layer for name, layer in lg.layers.items() if layer.kind == "source"}
    for syn in lg.synapses:
        if syn.role == "graph":
            continue
        row = rows.get(syn.dst)
        if row is None:
            raise LasnnError(
                f"the compiled network's synapse {syn.name!r} feeds {syn.dst!r}, which is no stage of the "
                "graph; the compiled model does not belong to this graph."
            )
        nonzero = float(np.count_nonzero(syn.weight))
        if syn.role == "bias":  # one spike per step of the source, delivered to every nonzero weight
            ops, delivered = nonzero * steps, steps
            label = "always-on bias source"
        else:  # reset: one operation per spike of the layer, the last step's never delivered
            trains = np.asarray(spikes[syn.dst])[: max(steps - 1, 0)]
            ops, delivered = float(trains.sum(dtype=np.float64)) / batch, max(steps - 1, 0)
            label = "reset"
        row["synaptic_ops"] += ops
        row["chip_ops"] = row.get("chip_ops", 0.0) + ops
        row["connections"] += nonzero
        row["dense_ops"] += nonzero * delivered
        if syn.src not in row["sources"]:
            row["sources"] = sorted({*row["sources"], syn.src})
        if label not in row["synapses"]:
            row["synapses"] = f"{row['synapses']}, {label}" if row["synapses"] else label
    for name, layer in sources.items():
        result.append(
            {
                "name": name,
                "kind": "source",
                "synapses": "none (always on: one spike per step)",
                "sources": [],
                "neurons": layer.size,
                "spikes": float(layer.size * steps),
                "synaptic_ops": 0.0,
                "macs": 0.0,
                "op": "ac",
                "neuron_updates": float(layer.size * steps),
                "connections": 0.0,
                "input_connections": 0.0,
                "dense_ops": 0.0,
            }
        )
