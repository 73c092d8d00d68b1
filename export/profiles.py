"""Export profiles: the NIR graph each reader loads and runs with the dynamics of lasnn's float reference.

NIR has no time step and its readers disagree on what they accept (read in their code, versions pinned
in ``scripts/reader_envs.sh``), so ``lasnn export --for READER`` rewrites the graph for one reader:

- ``portable`` (the default): the NIR paper's convention, dt = 1e-4 (what snnTorch and the paper's own
  backends assume), no ``Scale`` nodes (folded into the next synapse), names without dots (nirtorch
  renames dotted names; older nirtorch fails on them). Meant for readers lasnn was never tuned to.
- ``snntorch`` (1.0.0, ``snntorch.import_nir.import_from_nir``): dt = 1e-4 fixed in the reader
  (beta = 1 - dt/tau); no ``SumPool2d`` or ``Scale`` mapping, so a sum pool becomes ``AvgPool2d`` with
  its k^2 folded into the next synapse; LIF needs v_leak = 0, one threshold and one input gain per layer
  (the reader divides the threshold by ``r*dt/tau``); its IF is a leaky neuron (beta 0.9), so IF is
  refused; no LI/I/Delay.
- ``norse`` (1.1.0, ``norse.torch.from_nir(graph, dt=1e-3)``): dt = 1e-3 (its default); forward Euler
  ``LIFBox`` that ignores ``r`` (so r must be 1: gain = dt/tau), resets to 0; ``SumPool2d`` as an L1
  pool (exact for spikes, padding 0); no ``Scale``, ``AvgPool2d``, LI/I or Delay.
- ``sinabs`` (3.1.3, ``sinabs.from_nir``): counts tau in steps, builds neurons that fire several spikes
  per step and reset by subtraction (IF also clips v at -threshold), and pins ``nir<=1.0.4``, which cannot
  read the ``v_reset`` field. lasnn's neurons fire once and reset to v_reset, so every spiking student is
  refused, naming its first neuron layer.

Folding ``Scale`` into the next synapse is exact in real arithmetic; in floating point it is exact when
the scale is a power of two (average pooling of 2x2 or 4x4 windows), otherwise within float rounding.
The profile's name and dt go into the graph's metadata (``export_profile``, ``dt`` in seconds).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Profile:
    name: str
    reader: str  # the reader's entry point, for messages
    dt: float
    pool: str  # "sum": SumPool2d kept; "avg": written as AvgPool2d (k^2 folded into the next synapse)
    nodes: tuple[type, ...]  # lasnn node types the reader maps


PROFILES = {
    "portable": Profile(
        "portable",
        "any NIR reader",
        1e-4,
        "sum",
        (Input, Output, Affine, Conv2d, SumPool2d, Flatten, Neuron, LeakyIntegrator, Delay),
    ),
    "snntorch": Profile(
        "snntorch",
        "snnTorch 1.0.0 import_from_nir",
        1e-4,
        "avg",
        (Input, Output, Affine, Conv2d, SumPool2d, Flatten, Neuron),
    ),
    "norse": Profile(
        "norse",
        "norse 1.1.0 from_nir",
        1e-3,
        "sum",
        (Input, Output, Affine, Conv2d, SumPool2d, Flatten, Neuron),
    ),
    "sinabs": Profile(
        "sinabs", "sinabs 3.1.3 from_nir", 1e-3, "sum", (Input, Output, Affine, Conv2d, SumPool2d, Flatten)
    ),
}
AVG_POOL_KEY = "lasnn_avgpool"  # comma-separated names written as AvgPool2d (nir_io.graph_to_nir)


def _uniform(values: np.ndarray) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(np.allclose(values, values.flat[0], rtol=1e-12, atol=0))


def _refuse(profile: Profile, name: str, node: object, why: str) -> LasnnError:
    return LasnnError(
        f"{profile.reader} cannot express node '{name}' ({type(node).__name__}): {why}; "
        "export without --for (the portable profile) or for another reader."
    )


def _consumers(graph: Graph, name: str) -> list[str]:
    return [d for s, d in graph.edges if s == name]


def _remove_node(graph: Graph, name: str) -> None:
    """Remove a pass-through node, connecting its sources straight to its targets."""
    sources, targets = graph.sources(name), _consumers(graph, name)
    graph.edges = [e for e in graph.edges if name not in e]
    graph.edges += [(s, d) for s in sources for d in targets]
    del graph.nodes[name]


def _fold_into(graph: Graph, shapes: dict, name: str, scale: np.ndarray, target: str, seen: int = 0) -> bool:
    """Multiply ``target``'s weights (or push the factor through linear nodes) by ``scale``, the factor on
    ``target``'s input (shape: that input's shape); True on success."""
    node = graph.nodes[target]
    in_shape = tuple(shapes[target][0]) if shapes[target][0] is not None else None
    if in_shape is None or seen > 16 or len(graph.sources(target)) != 1:
        return False
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), in_shape)
    if isinstance(node, Conv2d):
        per_channel = s[:, :1, :1]
        if node.groups != 1 or not np.array_equal(np.broadcast_to(per_channel, in_shape), s):
            return False
        node.weight = node.weight * per_channel[:, 0, 0][None, :, None, None]
        return True
    if isinstance(node, Affine):
        node.weight = node.weight * s.reshape(1, -1)
        return True
    if isinstance(node, Neuron | LeakyIntegrator):
        node.gain = np.asarray(node.gain, dtype=np.float64) * s.reshape(node.shape)
        return True
    if isinstance(node, Flatten | SumPool2d | Delay | Scale):
        out_shape = tuple(shapes[target][1])
        if isinstance(node, Flatten | Delay):
            pushed = s.reshape(out_shape)
        elif isinstance(node, Scale):
            node.scale = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), in_shape) * s
            return True
        else:  # a sum pool commutes with a per-channel factor
            per_channel = s[:, :1, :1]
            if not np.array_equal(np.broadcast_to(per_channel, in_shape), s):
                return False
            pushed = np.broadcast_to(per_channel, out_shape)
        return all(_fold_into(graph, shapes, name, pushed, t, seen + 1) for t in _consumers(graph, target))
    return False


def apply_profile(graph: Graph, profile_name: str, names: dict[str, str] | None = None) -> Graph:
    """A copy of ``graph`` rewritten for ``profile_name`` (see the module docstring), to be written with
    ``write_nir`` (the sum pools listed under ``AVG_POOL_KEY`` mean average pools there); raises
    ``LasnnError`` naming the first node the reader cannot express. ``names`` (if given) receives the
    old -> new node names."""
    from lasnn.export.validate import infer_shapes

    if profile_name not in PROFILES:
        raise LasnnError(f"unknown export profile {profile_name!r}; expected one of {', '.join(PROFILES)}.")
    profile = PROFILES[profile_name]
    graph = copy.deepcopy(graph)
    _, recurrent = graph.schedule()
    # sinabs: lasnn's neurons (one spike, reset to v_reset) are not what sinabs builds
    for name, node in graph.nodes.items():
        if profile.name == "sinabs" and isinstance(node, Neuron | LeakyIntegrator):
            raise _refuse(
                profile,
                name,
                node,
                "sinabs builds neurons that fire several spikes per step and reset by subtraction, "
                "this one fires once and resets to v_reset",
            )
    # snnTorch: a sum pool is an average pool times k^2 (the factor goes into the next synapse)
    avg_pools = []
    if profile.pool == "avg":
        for name, node in list(graph.nodes.items()):
            if isinstance(node, SumPool2d):
                if tuple(node.padding) != (0, 0):
                    raise _refuse(profile, name, node, "its AvgPool2d counts padding differently")
                factor = f"{name}__k2"
                graph.nodes[factor] = Scale(scale=np.array(float(math.prod(node.kernel_size))))
                graph.edges = [(factor if s == name else s, d) for s, d in graph.edges] + [(name, factor)]
                avg_pools.append(name)
    # fold every Scale into what follows it (merging consecutive scales first)
    changed = True
    while changed:
        changed = False
        shapes = infer_shapes(graph, "graph")
        for name, node in list(graph.nodes.items()):
            if not isinstance(node, Scale):
                continue
            targets = _consumers(graph, name)
            if any((name, t) in recurrent for t in targets):
                raise _refuse(profile, name, node, "a scale on a recurrent edge cannot be folded")
            in_shape = tuple(shapes[name][0])
            s = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), in_shape)
            if np.all(s == 1.0):
                _remove_node(graph, name)
                changed = True
                break
            trial = copy.deepcopy(graph)
            if targets and all(_fold_into(trial, shapes, name, s, t) for t in targets):
                graph.nodes, graph.edges = trial.nodes, trial.edges
                _remove_node(graph, name)
                changed = True
                break
            raise _refuse(
                profile,
                name,
                node,
                "the reader has no Scale node and this scale feeds "
                f"'{targets[0] if targets else 'nothing'}', into which it cannot be folded",
            )
    shapes = infer_shapes(graph, "graph")
    for name, node in graph.nodes.items():
        if not isinstance(node, profile.nodes):
            raise _refuse(profile, name, node, f"{profile.reader} maps no {type(node).__name__} node")
        _check_node(profile, graph, name, node, recurrent)
    if profile.name != "portable" and recurrent:
        src, dst = sorted(recurrent)[0]
        raise _refuse(profile, dst, graph.nodes[dst], f"its recurrent input from '{src}' is not mapped")
    if profile.name == "norse":
        _check_preorder(profile, graph, recurrent)
    renamed = _rename(graph)
    if names is not None:
        names.update(renamed)
    metadata = {
        **graph.metadata,
        "dt": profile.dt,
        "export_profile": profile.name,
        "export_reader": profile.reader,
    }
    if avg_pools:
        metadata[AVG_POOL_KEY] = ",".join(renamed[n] for n in avg_pools)
    graph.metadata = metadata
    return graph


def _check_node(profile: Profile, graph: Graph, name: str, node: object, recurrent: set) -> None:
    """The parameter forms each reader accepts (see the module docstring)."""
    if profile.name == "portable" or not isinstance(node, Neuron):
        if profile.name == "norse" and isinstance(node, SumPool2d) and tuple(node.padding) != (0, 0):
            raise _refuse(profile, name, node, "its SumPool2d ignores padding")
        return
    if node.alpha_i is not None and not np.allclose(node.v_leak, 0):
        raise _refuse(profile, name, node, "its CubaLIF needs v_leak = 0")
    if not np.allclose(node.v_reset, 0):
        raise _refuse(profile, name, node, "it resets to 0, this neuron to v_reset != 0")
    leaky = not np.all(np.asarray(node.alpha_v) == 0)
    if profile.name == "snntorch":
        if not leaky:
            raise _refuse(profile, name, node, "snnTorch maps IF to a leaky neuron with beta = 0.9")
        if not np.allclose(node.v_leak, 0):
            raise _refuse(profile, name, node, "snnTorch needs v_leak = 0")
        if not _uniform(node.v_threshold) or not _uniform(node.gain) or not _uniform(node.alpha_v):
            raise _refuse(profile, name, node, "snnTorch takes one threshold, input gain and decay per layer")
        if node.alpha_i is not None:
            # snnTorch CubaLIF: r must be tau_mem/dt (gain = a_v * r * a_i * w_in = a_i * w_in)
            raise _refuse(profile, name, node, "snnTorch's CubaLIF import asserts r = tau_mem/dt")
    if profile.name == "norse":
        ratio = np.asarray(node.gain) / np.where(leaky, np.asarray(node.alpha_v, dtype=np.float64), 1.0)
        if node.alpha_i is None and not np.allclose(ratio, 1.0, rtol=1e-12):
            raise _refuse(profile, name, node, "norse ignores r, so the input gain must be dt/tau (r = 1)")


def _rename(graph: Graph) -> dict[str, str]:
    """Names without dots (nirtorch renames or rejects them), unique; edges follow. Returns old -> new."""
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for name in graph.nodes:
        new = name.replace(".", "_")
        base, k = new, 2
        while new in used:
            new, k = f"{base}_{k}", k + 1
        used.add(new)
        mapping[name] = new
    graph.nodes = {mapping[n]: node for n, node in graph.nodes.items()}
    graph.edges = [(mapping[s], mapping[d]) for s, d in graph.edges]
    return mapping


def _check_preorder(profile: Profile, graph: Graph, recurrent: set) -> None:
    """norse's reader runs nirtorch's ``GraphExecutor``, which executes nodes in depth-first preorder from
    the input (``nirtorch.graph_utils.trace_execution``) rather than a topological order: a node with two
    inputs (a residual join) then runs before one of them unless that input is a direct edge from a node
    already run. Replicated here on the edge order written, so such graphs are refused, not run wrongly."""
    (start,) = graph.inputs()
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        seen.add(name)
        order.append(name)
        for child in _consumers(graph, name):
            if child not in seen:
                visit(child)

    visit(start)
    position = {n: i for i, n in enumerate(order)}
    for name in order:
        for src in graph.sources(name):
            if (src, name) not in recurrent and position.get(src, -1) > position[name]:
                raise _refuse(
                    profile,
                    name,
                    graph.nodes[name],
                    f"nirtorch's GraphExecutor runs nodes in depth-first order, so it would run this "
                    f"join before its input '{src}'",
                )
