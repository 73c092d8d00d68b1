"""lasnn graph <-> NIR (``nir`` 1.0.x HDF5 files): writing students, reading any framework's graphs.

**Time convention** (NIR's nodes are continuous-time; lasnn's graph is discrete). One step of length ``dt``
is a forward-Euler step of NIR's equations with the input held constant over the step:

- ``LIF``/``LI``: ``v += dt/tau * (v_leak - v + r*I)``  ->  ``alpha_v = dt/tau``, ``gain = dt*r/tau``;
- ``IF``/``I``:   ``v += r * I`` per step            ->  ``alpha_v = 0``, ``gain = r`` (no dt: see below);
- ``CubaLIF``/``CubaLI``: ``I_syn += dt/tau_syn * (-I_syn + w_in*x)`` then the LIF update with
  ``r*I_syn`` -> ``alpha_i = dt/tau_syn``, ``alpha_v = dt/tau_mem`` and, because the graph's current
  integrates ``x`` unscaled, ``gain = (dt/tau_mem) * r * (dt/tau_syn) * w_in``;
- ``Threshold``: a stateless ``v > threshold`` (a Neuron with ``alpha_v = 1``, ``gain = 1``);
- ``Delay``: ``delay / dt`` whole steps.

This is the convention snnTorch uses when it writes NIR (``tau = dt/(1-beta)``, ``r = tau/dt``,
``w_in = tau_syn/dt``), and norse's reader for LIF/CubaLIF (``LIFBox``/``LIBox`` with the same dt).
For IF the frameworks that write it (norse, sinabs, spyx, BindsNET) all mean ``v += r*I`` per step
(``r = 1`` for a plain IF) and norse's reader ignores ``r``; a dt factor (``r = 1/dt``, as SpikingJelly
writes) would make every such file silent, so lasnn reads and writes IF/I ``r`` as the per-step gain.
Writing inverts the rules: ``tau = dt/alpha_v``, ``r = gain/alpha_v`` (IF: ``r = gain``), ``tau_syn =
dt/alpha_i``, ``w_in = 1/alpha_i``. lasnn stores ``dt`` (and T, encoding, data set, ...) in the graph's
metadata, and each neuron's exact discrete parameters in its node metadata (``lasnn_*`` keys): the
continuous parameters reproduce them to within rounding (~1 ulp), and the reader takes the stored exact
values when they agree, so that a lasnn round trip is bit-exact.

**Foreign graphs** carry no dt: ``read_nir(path, dt=...)`` uses ``dt`` if given, else the convention of
the framework that wrote the file (``written_by``, below), else the file's metadata ``dt``, else
``DEFAULT_FOREIGN_DT`` = 1e-4 s (the dt the NIR paper's code used throughout).

**Writer conventions** (``written_by``, ``lasnn compile/simulate/export --from FRAMEWORK``): none of the
exporters below records its dt or its name in the file, and each discretises NIR's equations its own way,
so the user names the writer (``WRITERS``; read in their code, versions pinned in
``scripts/reader_envs.sh``, checked spike for spike by ``tests/test_foreign_exporters.py``):

- ``snntorch`` (1.0.0 ``export_to_nir``): dt = 1e-4 fixed (``tau = dt/(1-beta)``, ``r = tau/dt``), forward
  Euler -- the default reading, named for clarity;
- ``norse`` (1.1.0 ``norse.torch.to_nir``, dt = 1e-3): it writes ``tau = dt/tau_inv``, i.e. dt times the
  time constant (norse issue #411), so the file is read with dt = 1e-6 = (1e-3)^2 (for another export dt
  d, pass ``dt=d**2``); its ``LIFCell`` adds its input to the synaptic current unscaled while the file
  says ``w_in = 1``, so a CubaLIF's input gain is ``alpha_v * r * w_in`` (no ``alpha_i`` factor);
- ``sinabs`` (3.1.3 ``sinabs.to_nir``): tau counted in steps (dt = 1) and decays ``exp(-dt/tau)`` per step
  (``LIF``/``ExpLeak`` with ``norm_input=True``: input gain ``1 - exp(-dt/tau)``): ``alpha_v = 1 -
  exp(-dt/tau)``, ``gain = r * alpha_v`` (the exact solution over a step with the input held).

A file lasnn writes keeps lasnn's exact discrete values (below), so it needs no ``written_by`` again.
Files whose Input (and Output) type carries a leading batch dimension of 1 that their first (last)
node lacks -- norse's ``to_nir``, nirtorch without ``ignore_dims`` -- fail NIR's type check; lasnn drops
that dimension and type checks the graph again. Nested
subgraphs are flattened (``outer.inner`` names; their Input/Output nodes become plain connections),
recurrent edges are kept (they deliver the previous step's value), ``AvgPool2d`` becomes ``SumPool2d`` +
``Scale(1/k^2)`` (zero padding counted, as torch's default), ``Conv1d`` becomes a ``Conv2d`` of height 1.
Anything else is refused with a sentence naming the node and its type.
"""

from __future__ import annotations

import copy
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nir
import numpy as np

from lasnn.artifacts import write_bytes
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
from lasnn.export.validate import _fixed_shapes, infer_shapes, validate_graph

DEFAULT_FOREIGN_DT = 1e-4  # seconds; the value the NIR paper's cross-platform code used (DESIGN.md)


@dataclass(frozen=True)
class Writer:
    """How one framework's NIR exporter discretises (see the module docstring)."""

    name: str
    exporter: str  # for messages and the compatibility matrix
    dt: float  # the dt that gives the framework's own per-step decays
    decay: str  # "euler": alpha = dt/tau; "exp": alpha = 1 - exp(-dt/tau)
    cuba_gain: str  # "nir": a_v*r*a_i*w_in (input integrated by NIR's synapse ODE); "jump": a_v*r*w_in


WRITERS = {
    "snntorch": Writer("snntorch", "snnTorch 1.0.0 export_to_nir", 1e-4, "euler", "nir"),
    "norse": Writer("norse", "norse 1.1.0 to_nir (dt 1e-3)", 1e-6, "euler", "jump"),
    "sinabs": Writer("sinabs", "sinabs 3.1.3 to_nir", 1.0, "exp", "nir"),
}
_NIR_READING = Writer("nir", "NIR's equations, forward Euler", DEFAULT_FOREIGN_DT, "euler", "nir")


def writer(name: str | None) -> Writer:
    """The convention named ``name`` (None: lasnn's default reading of NIR's equations)."""
    if name is None:
        return _NIR_READING
    if name not in WRITERS:
        raise LasnnError(
            f"unknown NIR writer {name!r} for --from; expected one of {', '.join(WRITERS)} (or none)."
        )
    return WRITERS[name]


NIR_FORMAT = 1  # version of lasnn's metadata layout inside NIR files
_EXACT = ("alpha_v", "gain", "alpha_i", "v_leak")
_KNOWN_NIR_TYPES = (
    "Affine", "AvgPool2d", "Conv1d", "Conv2d", "CubaLI", "CubaLIF", "Delay", "Flatten", "I", "IF", "Input",
    "LI", "LIF", "Linear", "NIRGraph", "Output", "Scale", "SumPool2d", "Threshold",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------- writing
def _arr(x: Any) -> np.ndarray:
    return np.array(x, dtype=np.float64)


def _neuron_to_nir(name: str, node: Neuron | LeakyIntegrator, dt: float) -> nir.NIRNode:
    a_v = np.asarray(node.alpha_v, dtype=np.float64)
    gain = np.asarray(node.gain, dtype=np.float64)
    exact = {f"lasnn_{k}": _arr(getattr(node, k)) for k in _EXACT if getattr(node, k) is not None}
    spiking = isinstance(node, Neuron)
    kind = type(node).__name__
    if node.alpha_i is not None:
        a_i = np.asarray(node.alpha_i, dtype=np.float64)
        if (a_v <= 0).any() or (a_i <= 0).any():
            raise LasnnError(
                f"node '{name}' ({kind}) is current based with a zero decay (alpha_v or alpha_i = 0), "
                "which NIR's CubaLIF/CubaLI cannot express (infinite time constant)."
            )
        common = dict(
            tau_syn=dt / a_i, tau_mem=dt / a_v, r=gain / a_v, v_leak=_arr(node.v_leak), w_in=1.0 / a_i
        )
        if spiking:
            return nir.CubaLIF(
                **common, v_threshold=_arr(node.v_threshold), v_reset=_arr(node.v_reset), metadata=exact
            )
        return nir.CubaLI(**common, metadata=exact)
    if (a_v == 0).all():
        if spiking:
            return nir.IF(
                r=gain.copy(), v_threshold=_arr(node.v_threshold), v_reset=_arr(node.v_reset), metadata=exact
            )
        return nir.I(r=gain.copy(), metadata=exact)
    if (a_v <= 0).any():
        raise LasnnError(
            f"node '{name}' ({kind}) mixes leaky and non-leaky neurons (some alpha_v are 0), which no "
            "single NIR node expresses; split the layer."
        )
    if spiking:
        return nir.LIF(
            tau=dt / a_v,
            r=gain / a_v,
            v_leak=_arr(node.v_leak),
            v_threshold=_arr(node.v_threshold),
            v_reset=_arr(node.v_reset),
            metadata=exact,
        )
    return nir.LI(tau=dt / a_v, r=gain / a_v, v_leak=_arr(node.v_leak), metadata=exact)


def _plain_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata that h5py can store: drop None, lists of numbers as arrays, nested dicts kept."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, dict):
            out[key] = _plain_metadata(value)
        elif isinstance(value, list | tuple):
            out[key] = np.asarray(value)
        else:
            out[key] = value
    return out


def graph_to_nir(graph: Graph) -> nir.NIRGraph:
    """The NIR form of a lasnn graph (type checked by NIR); ``graph.metadata['dt']`` sets time constants."""
    shapes = infer_shapes(graph, "graph")
    if "dt" not in graph.metadata or not float(graph.metadata["dt"]) > 0:
        raise LasnnError(
            "the graph's metadata has no positive 'dt'; the time step is needed to write NIR's "
            "continuous-time parameters."
        )
    dt = float(graph.metadata["dt"])
    avg_pools = set(filter(None, str(graph.metadata.get("lasnn_avgpool", "")).split(",")))
    nodes: dict[str, nir.NIRNode] = {}
    for name, node in graph.nodes.items():
        if isinstance(node, Input):
            nodes[name] = nir.Input(input_type={"input": np.array(node.shape)})
        elif isinstance(node, Output):
            nodes[name] = nir.Output(output_type={"output": np.array(node.shape)})
        elif isinstance(node, Affine):
            if node.bias is None:
                nodes[name] = nir.Linear(weight=_arr(node.weight))
            else:
                nodes[name] = nir.Affine(weight=_arr(node.weight), bias=_arr(node.bias))
        elif isinstance(node, Conv2d):
            bias = _arr(node.bias) if node.bias is not None else np.zeros(node.weight.shape[0])
            nodes[name] = nir.Conv2d(
                input_shape=tuple(node.input_shape[1:]),
                weight=_arr(node.weight),
                stride=tuple(node.stride),
                padding=tuple(node.padding),
                dilation=tuple(node.dilation),
                groups=int(node.groups),
                bias=bias,
                metadata={} if node.bias is not None else {"lasnn_bias": "none"},
            )
        elif isinstance(node, SumPool2d) and name in avg_pools:  # export profile: k^2 folded downstream
            nodes[name] = nir.AvgPool2d(
                kernel_size=np.array(node.kernel_size),
                stride=np.array(node.stride),
                padding=np.array(node.padding),
            )
        elif isinstance(node, SumPool2d):
            nodes[name] = nir.SumPool2d(
                kernel_size=np.array(node.kernel_size),
                stride=np.array(node.stride),
                padding=np.array(node.padding),
            )
        elif isinstance(node, Scale):
            full = np.broadcast_to(_arr(node.scale), shapes[name][0]).copy()
            nodes[name] = nir.Scale(scale=full)
        elif isinstance(node, Flatten):
            nodes[name] = nir.Flatten(
                input_type={"input": np.array(node.input_shape)}, start_dim=0, end_dim=-1
            )
        elif isinstance(node, Neuron | LeakyIntegrator):
            nodes[name] = _neuron_to_nir(name, node, dt)
        elif isinstance(node, Delay):
            nodes[name] = nir.Delay(delay=node.steps.astype(np.float64) * dt)
        else:  # infer_shapes refuses unknown types already
            raise LasnnError(
                f"node '{name}' has the type {type(node).__name__}, which lasnn cannot write to NIR."
            )
    metadata = _plain_metadata(
        {
            **graph.metadata,
            "lasnn_format": NIR_FORMAT,
            "dt": dt,
            "time_convention": "forward Euler, input held over dt (lasnn.export.nir_io)",
        }
    )
    try:
        return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=metadata, type_check=True)
    except (ValueError, AssertionError) as error:
        raise LasnnError(f"the graph fails NIR's type check: {_first_line(error)}.") from error


def write_nir(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` as a NIR file atomically, after checking that ``nir.read`` (type check on) reads it."""
    nir_graph = graph_to_nir(graph)
    buffer = io.BytesIO()
    nir.write(buffer, nir_graph)
    data = buffer.getvalue()
    try:
        nir.read(io.BytesIO(data), type_check=True)
    except Exception as error:  # a bug in lasnn or nir; never write an unreadable file
        raise LasnnError(
            f"nir.read rejects the graph lasnn just built for {path}: {_first_line(error)}."
        ) from error
    write_bytes(path, data)


# ----------------------------------------------------------------------------------------------- reading
def _first_line(error: BaseException) -> str:
    text = str(error).strip().split("\n")[0] or type(error).__name__
    text = text.split(" Available nodes:")[0].rstrip(". ")
    return text[:300]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf8")
    return value


def _prescan_types(group: h5py.Group, where: str, prefix: str = "") -> None:
    """Refuse node types ``nir`` does not know, by name, before ``nir.read`` fails on them anonymously."""
    nodes = group.get("nodes")
    if not isinstance(nodes, h5py.Group):
        return
    for name, child in nodes.items():
        if not isinstance(child, h5py.Group) or "type" not in child:
            raise LasnnError(
                f"{where}: node '{prefix}{name}' has no 'type' field; the file is not a NIR graph."
            )
        kind = child["type"][()]
        kind = kind.decode("utf8") if isinstance(kind, bytes) else str(kind)
        if kind not in _KNOWN_NIR_TYPES:
            raise LasnnError(
                f"{where}: node '{prefix}{name}' has type '{kind}', which lasnn cannot map; supported "
                f"NIR types are {', '.join(_KNOWN_NIR_TYPES)}."
            )
        if kind == "NIRGraph":
            _prescan_types(child, where, f"{prefix}{name}.")


def load_nir_file(path: str | os.PathLike, type_check: bool = True) -> nir.NIRGraph:
    """``nir.read`` with every failure turned into one ``LasnnError`` sentence naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LasnnError(f"{path} does not exist or is not a file; pass a NIR graph (.nir).")
    if not h5py.is_hdf5(path):
        raise LasnnError(
            f"{path} is not an HDF5 file, so not a NIR graph; pass a .nir file written by nir.write."
        )
    try:
        with h5py.File(path, "r") as handle:
            if "node" not in handle:
                raise LasnnError(f"{path} is an HDF5 file without a 'node' group, so not a NIR graph.")
            _prescan_types(handle["node"], str(path))
    except LasnnError:
        raise
    except Exception as error:  # h5py raises OSError, RuntimeError, KeyError, ... for damaged files
        raise LasnnError(
            f"{path} cannot be read as HDF5 (truncated or damaged: {_first_line(error)}); re-export it."
        ) from error
    try:
        graph = nir.read(path, type_check=type_check)
    except LasnnError:
        raise
    except Exception as error:  # nir raises ValueError, KeyError, AssertionError, OSError, ...
        graph = _without_batch_dims(path) if type_check else None
        if graph is None:
            raise LasnnError(
                f"{path} is not a valid NIR graph ({type(error).__name__}: {_first_line(error)})."
            ) from error
    if not isinstance(graph, nir.NIRGraph):
        raise LasnnError(
            f"{path} holds a single {type(graph).__name__} node, not a NIRGraph; wrap it in a graph."
        )
    return graph


def _without_batch_dims(path: Path) -> nir.NIRGraph | None:
    """The file read without NIR's type check, its batch dimensions dropped, if it then passes the check."""
    try:
        graph = nir.read(path, type_check=False)
        if not isinstance(graph, nir.NIRGraph) or not _drop_batch_dims(graph):
            return None
        return nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata=graph.metadata, type_check=True)
    except Exception:  # still not type-correct: the caller reports NIR's original error
        return None


def _port_shape(node: Any, key: str) -> tuple[int, ...] | None:
    types = getattr(node, f"{key}_type", None)
    value = types.get(key) if isinstance(types, dict) else None
    return None if value is None else tuple(int(v) for v in np.atleast_1d(np.asarray(value)))


def _takes(node: Any, shape: tuple[int, ...]) -> bool:
    """Whether ``node`` declares or implies the input ``shape`` (a port's shape without its batch dim)."""
    declared = _port_shape(node, "input")
    if declared:
        return declared == shape
    weight = getattr(node, "weight", None)
    if isinstance(node, nir.Affine | nir.Linear) and weight is not None:
        return len(shape) == 1 and np.shape(weight)[1] == shape[0]
    if isinstance(node, nir.Conv1d | nir.Conv2d) and weight is not None:
        dims = 2 if isinstance(node, nir.Conv1d) else 3
        return len(shape) == dims and np.shape(weight)[1] * int(np.asarray(node.groups)) == shape[0]
    return False


def _gives(node: Any, shape: tuple[int, ...]) -> bool:
    """Whether ``node`` declares or implies the output ``shape``."""
    declared = _port_shape(node, "output")
    if declared:
        return declared == shape
    if isinstance(node, nir.Affine | nir.Linear):
        return len(shape) == 1 and np.shape(node.weight)[0] == shape[0]
    for field in ("v_threshold", "tau", "r", "tau_mem"):
        if getattr(node, field, None) is not None and np.ndim(getattr(node, field)) > 0:
            return tuple(np.shape(getattr(node, field))) == shape
    return False


def _drop_batch_dims(graph: nir.NIRGraph) -> list[str]:
    """Drop a leading batch dimension of 1 from Input/Output types whose neighbours lack it (norse 1.1.0's
    ``to_nir`` and nirtorch without ``ignore_dims`` keep the example batch there); returns the ports fixed."""
    fixed = []
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Input):  # the Input's shape must be what its successors take
            port, near, fits = "input", [graph.nodes[d] for s, d in graph.edges if s == name], _takes
        elif isinstance(node, nir.Output):  # the Output's what its predecessors give
            port, near, fits = "output", [graph.nodes[s] for s, d in graph.edges if d == name], _gives
        else:
            continue
        shape = _port_shape(node, port)
        batched = shape is not None and len(shape) > 1 and shape[0] == 1 and near
        if batched and all(fits(n, shape[1:]) for n in near):
            node.input_type = {"input": np.array(shape[1:])}
            node.output_type = {"output": np.array(shape[1:])}
            fixed.append(name)
    return fixed


def read_nir(
    path: str | os.PathLike,
    dt: float | None = None,
    type_check: bool = True,
    written_by: str | None = None,
) -> Graph:
    """Read any NIR file into a validated lasnn ``Graph`` (see the module docstring for dt, the writer
    conventions ``written_by`` and the mappings)."""
    nir_graph = load_nir_file(path, type_check=type_check)
    graph = nir_to_graph(nir_graph, dt=dt, where=str(path), written_by=written_by)
    graph.metadata.setdefault("source_file", str(path))
    return graph


def _flatten(
    graph: nir.NIRGraph, prefix: str, where: str
) -> tuple[dict[str, Any], list[tuple[str, str]], set[str]]:
    """Nodes (subgraphs inlined), edges, and the names of inner Input/Output nodes (pass-throughs)."""
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    passthrough: set[str] = set()
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges, sub_pass = _flatten(node, full + ".", where)
            nodes.update(sub_nodes)
            edges += sub_edges
            passthrough |= sub_pass
        else:
            nodes[full] = node
            if prefix and isinstance(node, nir.Input | nir.Output):
                passthrough.add(full)

    def resolve(name: str, role: str, g: nir.NIRGraph, pre: str) -> str:
        if name in g.nodes:
            node = g.nodes[name]
            if not isinstance(node, nir.NIRGraph):
                return pre + name
            port_type = nir.Output if role == "source" else nir.Input
            ports = [n for n, x in node.nodes.items() if isinstance(x, port_type)]
            if len(ports) != 1:
                raise LasnnError(
                    f"{where}: subgraph '{pre + name}' has {len(ports)} {port_type.__name__} nodes, so "
                    f"an edge {'from' if role == 'source' else 'into'} it is ambiguous."
                )
            return resolve(ports[0], role, node, pre + name + ".")
        head, _, rest = name.partition(".")
        if rest and isinstance(g.nodes.get(head), nir.NIRGraph):
            return resolve(rest, role, g.nodes[head], pre + head + ".")
        raise LasnnError(
            f"{where}: an edge refers to the node '{pre + name}', which the graph does not have "
            "(a dangling edge)."
        )

    for src, dst in graph.edges:
        edges.append((resolve(src, "source", graph, prefix), resolve(dst, "target", graph, prefix)))
    return nodes, edges, passthrough


def _collapse(
    nodes: dict[str, Any], edges: list[tuple[str, str]], passthrough: set[str]
) -> list[tuple[str, str]]:
    for p in sorted(passthrough):
        sources = [s for s, d in edges if d == p and s != p]
        targets = [d for s, d in edges if s == p and d != p]
        edges = [e for e in edges if p not in e]
        for s in sources:
            for d in targets:
                if (s, d) not in edges:
                    edges.append((s, d))
        del nodes[p]
    return edges


def _pair(value: Any, name: str, field: str, where: str) -> tuple[int, int]:
    arr = np.atleast_1d(np.asarray(value)).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or any(float(v) != int(v) for v in arr):
        raise LasnnError(f"{where}: node '{name}' has {field} {value!r}; expected one or two whole numbers.")
    return int(arr[0]), int(arr[1])


def _conv_padding(
    node: Any, name: str, kernel: tuple[int, int], dilation: tuple[int, int], where: str
) -> tuple[int, int]:
    padding = node.padding
    if isinstance(padding, bytes):
        padding = padding.decode()
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if any(t % 2 for t in total):
            raise LasnnError(
                f"{where}: node '{name}' ({type(node).__name__}) uses padding 'same' with an even "
                "kernel, which needs asymmetric padding that lasnn's Conv2d cannot express."
            )
        return total[0] // 2, total[1] // 2
    return _pair(padding, name, "padding", where)


def _f64(node: Any, field: str) -> np.ndarray:
    return np.asarray(getattr(node, field), dtype=np.float64)


def _positive(value: np.ndarray, name: str, kind: str, field: str, where: str) -> np.ndarray:
    if not np.isfinite(value).all() or (value <= 0).any():
        raise LasnnError(
            f"{where}: node '{name}' ({kind}) has non-positive or non-finite '{field}'; NIR time "
            "constants must be positive numbers."
        )
    return value


def _exact(node: Any, field: str, computed: np.ndarray | None) -> np.ndarray | None:
    """lasnn's stored exact discrete value when it agrees with the one computed from NIR's parameters."""
    stored = (node.metadata or {}).get(f"lasnn_{field}")
    if computed is None or stored is None:
        return computed
    stored = np.asarray(stored, dtype=np.float64)
    if stored.size == computed.size and np.allclose(stored.ravel(), computed.ravel(), rtol=1e-9, atol=1e-12):
        return stored.reshape(computed.shape)
    return computed


def _decay(dt: float, tau: np.ndarray, convention: Writer) -> np.ndarray:
    """Fraction lost per step: forward Euler ``dt/tau`` or the exact exponential ``1 - exp(-dt/tau)``."""
    return dt / tau if convention.decay == "euler" else -np.expm1(-dt / tau)


def _map_neuron(
    name: str, node: Any, dt: float, where: str, convention: Writer = _NIR_READING
) -> Neuron | LeakyIntegrator:
    kind = type(node).__name__
    if isinstance(node, nir.LIF | nir.LI):
        a_v = _decay(dt, _positive(_f64(node, "tau"), name, kind, "tau", where), convention)
        gain, a_i, v_leak = a_v * _f64(node, "r"), None, _f64(node, "v_leak")
    elif isinstance(node, nir.CubaLIF | nir.CubaLI):
        a_v = _decay(dt, _positive(_f64(node, "tau_mem"), name, kind, "tau_mem", where), convention)
        a_i = _decay(dt, _positive(_f64(node, "tau_syn"), name, kind, "tau_syn", where), convention)
        w_in = np.broadcast_to(_f64(node, "w_in"), a_v.shape)
        synapse = a_i if convention.cuba_gain == "nir" else 1.0
        gain, v_leak = a_v * _f64(node, "r") * synapse * w_in, _f64(node, "v_leak")
    elif isinstance(node, nir.IF | nir.I):
        r = _f64(node, "r")
        a_v, gain, a_i = np.zeros_like(r), r, None  # per-step gain, see the module docstring
        v_leak = _f64(node, "v_reset") if isinstance(node, nir.IF) else np.zeros_like(r)
    else:  # Threshold: v = input every step, spike where above threshold
        th = _f64(node, "threshold")
        return Neuron(
            shape=th.shape,
            alpha_v=np.ones_like(th),
            gain=np.ones_like(th),
            v_threshold=th,
            v_reset=np.zeros_like(th),
            v_leak=np.zeros_like(th),
        )
    shape = a_v.shape
    params = dict(
        shape=shape,
        alpha_v=_exact(node, "alpha_v", a_v),
        gain=_exact(node, "gain", gain),
        v_leak=_exact(node, "v_leak", np.broadcast_to(v_leak, shape).copy()),
        alpha_i=_exact(node, "alpha_i", a_i),
    )
    if isinstance(node, nir.LIF | nir.CubaLIF | nir.IF):
        return Neuron(
            **params,
            v_threshold=np.broadcast_to(_f64(node, "v_threshold"), shape).copy(),
            v_reset=np.broadcast_to(_f64(node, "v_reset"), shape).copy(),
        )
    return LeakyIntegrator(**params)


def _reshape_elementwise(node: Any, shape: tuple[int, ...]) -> Any:
    """Give an elementwise node the shape of its input when only the shape (not the size) differs."""
    if (
        isinstance(node, Neuron | LeakyIntegrator)
        and tuple(node.shape) != shape
        and math.prod(node.shape) == math.prod(shape)
    ):
        for field in ("alpha_v", "gain", "v_leak", "alpha_i", "v_threshold", "v_reset"):
            if getattr(node, field, None) is not None:
                setattr(node, field, np.asarray(getattr(node, field)).reshape(shape))
        node.shape = shape
    elif isinstance(node, Delay) and node.steps.shape != shape and node.steps.size == math.prod(shape):
        node.steps = node.steps.reshape(shape)
    elif isinstance(node, Scale) and node.scale.shape != shape and node.scale.size == math.prod(shape):
        node.scale = node.scale.reshape(shape)
    return node


def _map_node(
    name: str,
    node: Any,
    in_shape: tuple[int, ...] | None,
    dt: float,
    where: str,
    convention: Writer = _NIR_READING,
) -> list[tuple[str, Any]]:
    """lasnn node(s) for one NIR node: a chain ``[(name, node), ...]`` (AvgPool2d gives two)."""
    kind = type(node).__name__
    if isinstance(node, nir.Input):
        return [(name, Input(shape=tuple(int(s) for s in np.atleast_1d(node.input_type["input"]))))]
    if isinstance(node, nir.Output):
        declared = node.output_type.get("output") if isinstance(node.output_type, dict) else None
        shape = None if declared is None else tuple(int(s) for s in np.atleast_1d(declared))
        if shape is None or (in_shape is not None and math.prod(shape) != math.prod(in_shape)):
            shape = in_shape
        if shape is None:
            raise LasnnError(f"{where}: the Output node '{name}' has no shape and no typed input.")
        return [(name, Output(shape=tuple(shape)))]
    if isinstance(node, nir.Affine | nir.Linear):
        weight = _f64(node, "weight")
        if weight.ndim != 2:
            raise LasnnError(
                f"{where}: node '{name}' ({kind}) has a weight of shape {weight.shape}; lasnn maps "
                "only 2-D [out, in] weights."
            )
        bias = _f64(node, "bias") if isinstance(node, nir.Affine) and node.bias is not None else None
        return [(name, Affine(weight=weight, bias=bias))]
    if isinstance(node, nir.Scale):
        return [(name, Scale(scale=_f64(node, "scale")))]
    if isinstance(node, nir.Conv1d | nir.Conv2d):
        weight = _f64(node, "weight")
        groups = int(np.asarray(node.groups))
        channels = weight.shape[1] * groups
        bias = _f64(node, "bias") if node.bias is not None else None
        if (node.metadata or {}).get("lasnn_bias") == "none":
            bias = None
        if isinstance(node, nir.Conv1d):
            weight = weight[:, :, None, :]
            length = (
                node.input_shape if node.input_shape is not None else (in_shape[-1] if in_shape else None)
            )
            if length is None:
                raise LasnnError(f"{where}: node '{name}' (Conv1d) has no input_shape and no typed input.")
            spatial = (1, int(np.asarray(length).ravel()[0]))
            stride = (1, _pair(node.stride, name, "stride", where)[0])
            dilation = (1, _pair(node.dilation, name, "dilation", where)[0])
            padding = (0, _conv_padding(node, name, (1, weight.shape[-1]), dilation, where)[1])
        else:
            if node.input_shape is not None:
                spatial = tuple(int(s) for s in np.asarray(node.input_shape).ravel())
            elif in_shape is not None and len(in_shape) == 3:
                spatial = tuple(in_shape[1:])
            else:
                raise LasnnError(f"{where}: node '{name}' (Conv2d) has no input_shape and no typed input.")
            stride = _pair(node.stride, name, "stride", where)
            dilation = _pair(node.dilation, name, "dilation", where)
            padding = _conv_padding(node, name, tuple(weight.shape[2:]), dilation, where)
        return [
            (
                name,
                Conv2d(
                    weight=weight,
                    bias=bias,
                    input_shape=(channels, *spatial),
                    stride=stride,
                    padding=padding,
                    dilation=dilation,
                    groups=groups,
                ),
            )
        ]
    if isinstance(node, nir.SumPool2d | nir.AvgPool2d):
        if in_shape is None or len(in_shape) != 3:
            raise LasnnError(
                f"{where}: node '{name}' ({kind}) needs a (C, H, W) input, but its input has shape "
                f"{in_shape}."
            )
        kernel = _pair(node.kernel_size, name, "kernel_size", where)
        stride = _pair(node.stride if node.stride is not None else node.kernel_size, name, "stride", where)
        pool = SumPool2d(
            kernel_size=kernel,
            stride=stride,
            input_shape=tuple(in_shape),
            padding=_pair(node.padding, name, "padding", where),
        )
        if isinstance(node, nir.SumPool2d):
            return [(name, pool)]
        return [(f"{name}.sum", pool), (name, Scale(scale=np.array(1.0 / (kernel[0] * kernel[1]))))]
    if isinstance(node, nir.Flatten):
        shape = in_shape
        declared = node.input_type.get("input") if isinstance(node.input_type, dict) else None
        if shape is None and declared is not None:
            shape = tuple(int(s) for s in np.atleast_1d(declared))
        if shape is None:
            raise LasnnError(f"{where}: node '{name}' (Flatten) has no input type.")
        return [(name, Flatten(input_shape=tuple(shape)))]
    if isinstance(node, nir.LIF | nir.LI | nir.CubaLIF | nir.CubaLI | nir.IF | nir.I | nir.Threshold):
        return [(name, _map_neuron(name, node, dt, where, convention))]
    if isinstance(node, nir.Delay):
        steps = _f64(node, "delay") / dt
        rounded = np.round(steps)
        if (
            not np.isfinite(steps).all()
            or (rounded < 0).any()
            or np.abs(steps - rounded).max(initial=0) > 1e-6
        ):
            raise LasnnError(
                f"{where}: node '{name}' (Delay) has delays that are not whole multiples of dt = {dt:g} s; "
                "pass the dt the graph was made for."
            )
        return [(name, Delay(steps=rounded.astype(np.int64)))]
    raise LasnnError(
        f"{where}: node '{name}' has type {kind}, which lasnn cannot map; supported NIR types are "
        f"{', '.join(_KNOWN_NIR_TYPES)}."
    )


class _Placeholder:
    pass


def nir_to_graph(
    nir_graph: nir.NIRGraph,
    dt: float | None = None,
    where: str = "NIR graph",
    written_by: str | None = None,
) -> Graph:
    """Map an in-memory ``nir.NIRGraph`` (any framework's) to a validated lasnn ``Graph``; ``written_by``
    names the framework whose exporter wrote it (``WRITERS``), for its dt and discretisation."""
    convention = writer(written_by)
    metadata = _plain(dict(nir_graph.metadata or {}))
    if written_by is not None and "lasnn_format" in metadata:
        raise LasnnError(
            f"{where} was written by lasnn (it holds lasnn's exact discrete parameters), not by "
            f"{written_by}; read it without --from."
        )
    if dt is None:
        dt = convention.dt if written_by is not None else metadata.get("dt", DEFAULT_FOREIGN_DT)
    dt = float(dt)
    if not dt > 0:
        raise LasnnError(f"{where}: the time step dt must be positive, got {dt}.")
    if isinstance(nir_graph, nir.NIRGraph) and _drop_batch_dims(copy.deepcopy(nir_graph)):
        nir_graph = copy.deepcopy(nir_graph)  # the caller's graph stays as it was
        _drop_batch_dims(nir_graph)
    nodes, edges, passthrough = _flatten(nir_graph, "", where)
    edges = _collapse(nodes, edges, passthrough)
    skeleton = Graph(
        nodes={n: Input(shape=()) if isinstance(x, nir.Input) else _Placeholder() for n, x in nodes.items()},
        edges=edges,
    )
    order, recurrent = skeleton.schedule()
    mapped: dict[str, Any] = {}
    out_shape: dict[str, tuple[int, ...]] = {}
    renamed: dict[str, str] = {}  # NIR node -> first lasnn node of its chain (AvgPool2d: 'name.sum')
    new_edges: list[tuple[str, str]] = []
    for name in order:
        node = nodes[name]
        in_shapes = [
            out_shape[s] for s in skeleton.sources(name) if (s, name) not in recurrent and s in out_shape
        ]
        in_shape = in_shapes[0] if in_shapes else None
        chain = _map_node(name, node, in_shape, dt, where, convention)
        renamed[name] = chain[0][0]
        for (prev, _), (link, _) in zip(chain, chain[1:], strict=False):
            new_edges.append((prev, link))
        shape = in_shape
        for link, lasnn_node in chain:
            if shape is not None:
                lasnn_node = _reshape_elementwise(lasnn_node, tuple(shape))
            mapped[link] = lasnn_node
            fixed_in, fixed_out = _fixed_shapes(link, lasnn_node, where)
            shape = fixed_out if fixed_out is not None else shape
        if shape is not None:
            out_shape[name] = tuple(shape)
    edges = [(s, renamed[d]) for s, d in edges] + new_edges
    metadata = {**metadata, "dt": dt}
    if written_by is not None:  # informational: a file lasnn writes is read by lasnn's own convention
        metadata["nir_writer"] = written_by
    graph = Graph(nodes=mapped, edges=edges, metadata=metadata)
    validate_graph(graph, where)
    return graph
