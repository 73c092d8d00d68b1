"""Property-based tests (hypothesis) of the NIR loader and the quantiser (issue 9).

Random small valid graphs (chains of Affine / Conv2d / SumPool2d / Flatten and LIF / IF / CUBA-LIF
neurons, optionally with a recurrent Affine on a flat neuron layer) must round-trip through
``export.nir_io`` with bit-identical float-reference spikes and outputs. Random defects (mismatched shapes,
dangling edges, NaN/Inf parameters, unknown node types, truncated or byte-flipped files) must be refused
with ``LasnnError``, never another exception. The quantiser on random valid graphs must either produce a
``LoihiGraph`` whose integers fit Loihi 2's bit widths (checked here against ``loihi_limits``, not by the
quantiser's own checker) or refuse with a ``LasnnError`` that names a layer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasnn.errors import LasnnError
from lasnn.export.graph import Affine, Conv2d, Flatten, Graph, Input, Neuron, Output, SumPool2d
from lasnn.export.nir_io import graph_to_nir, read_nir, write_nir
from lasnn.export.validate import validate_graph
from lasnn.hardware import loihi_limits as lim
from lasnn.sims.float_backend import FloatBackend

# 25 examples per property keeps the file fast in CI; LASNN_PROPERTY_EXAMPLES=500 searches harder.
PROPERTY = settings(
    max_examples=int(os.environ.get("LASNN_PROPERTY_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------------------------- random graphs


def _neuron(draw: st.DrawFn, shape: tuple[int, ...], rng: np.random.Generator) -> Neuron:
    """A LIF, IF or CUBA-LIF layer; per-neuron values or one value for all, as drawn."""
    kind = draw(st.sampled_from(("lif", "if", "cubalif")))
    per_neuron = draw(st.booleans())

    def values(low: float, high: float) -> np.ndarray:
        if per_neuron:
            return rng.uniform(low, high, shape)
        return np.full(shape, draw(st.floats(low, high, allow_nan=False)))

    v_leak = np.full(shape, draw(st.sampled_from((0.0, 0.0, 0.25))))
    return Neuron(
        shape=shape,
        alpha_v=np.zeros(shape) if kind == "if" else values(0.05, 1.0),
        gain=values(0.2, 3.0),
        v_threshold=values(0.2, 2.0),
        v_reset=v_leak.copy(),  # IF needs v_reset == v_leak to round-trip (NIR IF has no v_leak)
        v_leak=v_leak,
        alpha_i=values(0.05, 1.0) if kind == "cubalif" else None,
    )


@st.composite
def graphs(draw: st.DrawFn, recurrent: bool = True) -> Graph:
    """A random valid chain Input -> (synapse | neuron)* -> Output, with small shapes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        shape: tuple[int, ...] = (draw(st.integers(1, 3)), draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    else:
        shape = (draw(st.integers(1, 12)),)
    nodes: dict = {"input": Input(shape=shape)}
    edges: list[tuple[str, str]] = []
    last = "input"
    neurons = 0
    for i in range(draw(st.integers(1, 5))):
        if len(shape) == 3:
            op = draw(st.sampled_from(("conv", "pool", "flatten", "neuron")))
        else:
            op = draw(st.sampled_from(("affine", "neuron")))
        c, *hw = shape
        if op == "pool" and min(hw) < 2:
            op = "conv"
        if op == "conv":
            k = draw(st.integers(1, min(3, *hw)))
            stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, k // 2))
            out_ch = draw(st.integers(1, 4))
            bias = rng.normal(0, 0.5, out_ch) if draw(st.booleans()) else None
            node = Conv2d(
                weight=rng.normal(0, 0.7, (out_ch, c, k, k)),
                bias=bias,
                input_shape=shape,
                stride=(stride, stride),
                padding=(pad, pad),
            )
            shape = (out_ch, *((s + 2 * pad - k) // stride + 1 for s in hw))
        elif op == "pool":
            k = draw(st.integers(1, 2))
            node = SumPool2d(kernel_size=(k, k), stride=(k, k), input_shape=shape)
            shape = (c, *(s // k for s in hw))
        elif op == "flatten":
            node = Flatten(input_shape=shape)
            shape = (int(np.prod(shape)),)
        elif op == "affine":
            out = draw(st.integers(1, 10))
            bias = rng.normal(0, 0.5, out) if draw(st.booleans()) else None
            node = Affine(weight=rng.normal(0, 0.7, (out, shape[0])), bias=bias)
            shape = (out,)
        else:
            node = _neuron(draw, shape, rng)
            neurons += 1
        name = f"n{i}_{op}"
        nodes[name] = node
        edges.append((last, name))
        last = name
    if neurons == 0:  # at least one spiking layer
        nodes["spikes"] = _neuron(draw, shape, rng)
        edges.append((last, "spikes"))
        last = "spikes"
    if recurrent and len(shape) == 1 and isinstance(nodes[last], Neuron) and draw(st.booleans()):
        nodes["rec"] = Affine(weight=rng.normal(0, 0.5, (shape[0], shape[0])))
        edges += [(last, "rec"), ("rec", last)]
    nodes["output"] = Output(shape=shape)
    edges.append((last, "output"))
    timesteps = draw(st.integers(1, 4))
    encoding = draw(st.sampled_from(("direct", "poisson", None)))
    metadata = {"dt": 1e-3, "timesteps": timesteps, **({"encoding": encoding} if encoding else {})}
    if encoding == "direct" and draw(st.booleans()):  # lasnn's exports record the input normalisation
        metadata.update(mean=[0.4], std=[0.3])
    return Graph(nodes=nodes, edges=edges, metadata=metadata)


def _stream(graph: Graph, seed: int, binary: bool) -> np.ndarray:
    shape = graph.nodes["input"].shape
    rng = np.random.default_rng(seed)
    size = (graph.metadata["timesteps"], 3, *shape)
    return (rng.random(size) < 0.4).astype(np.float64) if binary else rng.normal(0.0, 1.5, size)


def _run(graph: Graph, stream: np.ndarray):
    return FloatBackend(np.float64, progress=False).run(graph, stream)


# ----------------------------------------------------------------------------- NIR round trip


@PROPERTY
@given(graph=graphs(), seed=st.integers(0, 1000), binary=st.booleans())
def test_valid_graphs_round_trip_through_nir_with_identical_spikes(graph: Graph, seed: int, binary: bool):
    validate_graph(graph, "generated graph")  # the generator makes valid graphs only
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.nir"
        write_nir(graph, path)
        back = read_nir(path)
    stream = _stream(graph, seed, binary)
    want, got = _run(graph, stream), _run(back, stream)
    assert np.array_equal(want.outputs, got.outputs)
    assert (
        want.spikes.keys()
        == got.spikes.keys()
        == {n for n, x in graph.nodes.items() if isinstance(x, Neuron)}
    )
    for name, spikes in want.spikes.items():
        assert np.array_equal(spikes, got.spikes[name]), name
    assert back.metadata["dt"] == graph.metadata["dt"]


# ------------------------------------------------------------------------------ invalid NIR files

DEFECTS = (
    "nan",
    "inf",
    "shape",
    "dangling-target",
    "dangling-source",
    "missing-node",
    "unknown-type",
    "truncate",
    "byteflip",
)


def _float_fields(node: nir.NIRNode) -> list[str]:
    """The float parameters the reader uses (not a Conv2d bias that lasnn's metadata declares absent)."""
    ignored = {"input_type", "output_type"}
    if (getattr(node, "metadata", None) or {}).get("lasnn_bias") == "none":
        ignored.add("bias")
    return [
        k
        for k, v in vars(node).items()
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size and k not in ignored
    ]


def _corrupt(data: st.DataObject, graph: Graph, path: Path) -> bool:
    """Write ``graph`` to ``path`` with one random defect; True when the defect makes the file invalid
    for certain (a byte flip may land in a weight and leave a valid, different graph)."""
    defect = data.draw(st.sampled_from(DEFECTS), label="defect")
    ng = graph_to_nir(graph)
    inner = [n for n in ng.nodes if not isinstance(ng.nodes[n], nir.Input | nir.Output)]
    if defect in ("nan", "inf"):
        candidates = [(n, f) for n in inner for f in _float_fields(ng.nodes[n])]
        name, field = data.draw(st.sampled_from(candidates), label="parameter")
        value = getattr(ng.nodes[name], field).copy()
        value.flat[data.draw(st.integers(0, value.size - 1))] = np.nan if defect == "nan" else -np.inf
        setattr(ng.nodes[name], field, value)
    elif defect == "shape":
        synapses = [n for n in inner if isinstance(ng.nodes[n], nir.Affine | nir.Linear | nir.Conv2d)]
        if not synapses:
            return _corrupt_dangling(ng, inner, path)
        node = ng.nodes[data.draw(st.sampled_from(synapses), label="synapse")]
        w = node.weight
        node.weight = np.concatenate([w, w[:, :1]], axis=1)  # one more input (column / channel)
    elif defect == "dangling-target":
        ng.edges.append((data.draw(st.sampled_from(inner)), "ghost"))
    elif defect == "dangling-source":
        ng.edges.append(("ghost", data.draw(st.sampled_from(inner))))
    elif defect == "missing-node":
        del ng.nodes[data.draw(st.sampled_from(inner))]
    nir.write(str(path), ng)
    if defect == "unknown-type":
        kind = data.draw(
            st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
        )
        if kind in (
            "Affine",
            "Conv2d",
            "LIF",
            "IF",
            "CubaLIF",
            "Flatten",
            "SumPool2d",
            "Linear",
            "Input",
            "Output",
            "LI",
            "I",
            "Scale",
            "Delay",
            "Threshold",
            "CubaLI",
            "AvgPool2d",
            "Conv1d",
        ):
            kind += "X"
        with h5py.File(path, "r+") as handle:
            group = handle[f"node/nodes/{data.draw(st.sampled_from(inner))}"]
            del group["type"]
            group["type"] = kind
    elif defect == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="length")])
    elif defect == "byteflip":
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(raw))
        return False
    return True


def _corrupt_dangling(ng: nir.NIRGraph, inner: list[str], path: Path) -> bool:
    ng.edges.append((inner[0], "ghost"))
    nir.write(str(path), ng)
    return True


@PROPERTY
@given(graph=graphs(), data=st.data())
def test_invalid_nir_files_are_refused_with_lasnn_error_only(graph: Graph, data: st.DataObject):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.nir"
        surely_invalid = _corrupt(data, graph, path)
        try:
            back = read_nir(path)
        except LasnnError as error:
            assert "\n" not in str(error) and str(error), "one sentence on one line"
            return
    assert not surely_invalid, "a defective file was accepted"
    validate_graph(back, "accepted file")  # a byte flip that still reads must give a valid graph


IR_DEFECTS = ("nan", "shape", "dangling", "unknown-type", "no-output", "bias-shape")


class _Mystery:
    """A node type no lasnn backend knows."""

    shape = (1,)


@PROPERTY
@given(graph=graphs(), defect=st.sampled_from(IR_DEFECTS), data=st.data())
def test_invalid_in_memory_graphs_are_refused_by_validation_and_writer(graph, defect, data):
    inner = [n for n, x in graph.nodes.items() if not isinstance(x, Input | Output)]
    victim = data.draw(st.sampled_from(inner))
    node = graph.nodes[victim]
    if defect == "nan":
        fields = [
            (n, k)
            for n in inner
            for k, v in vars(graph.nodes[n]).items()
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size
        ]
        victim, field = data.draw(st.sampled_from(fields))
        node = graph.nodes[victim]
        value = getattr(node, field).copy()
        value.flat[0] = np.nan
        setattr(node, field, value)
    elif defect == "shape":
        affine_or_conv = [n for n in inner if isinstance(graph.nodes[n], Affine | Conv2d)]
        if affine_or_conv:
            node = graph.nodes[data.draw(st.sampled_from(affine_or_conv))]
            node.weight = np.concatenate([node.weight, node.weight[:, :1]], axis=1)
        else:  # a neuron layer whose parameters have the wrong length
            node = graph.nodes[
                data.draw(st.sampled_from([n for n in inner if isinstance(graph.nodes[n], Neuron)]))
            ]
            node.v_threshold = np.ones(int(np.prod(node.shape)) + 1)
    elif defect == "dangling":
        graph.edges.append((victim, "ghost"))
    elif defect == "unknown-type":
        graph.nodes[victim] = _Mystery()
    elif defect == "no-output":
        del graph.nodes["output"]
        graph.edges = [e for e in graph.edges if "output" not in e]
    elif defect == "bias-shape":
        biased = [n for n in inner if getattr(graph.nodes[n], "bias", None) is not None]
        if biased:
            node = graph.nodes[data.draw(st.sampled_from(biased))]
            node.bias = np.zeros(node.bias.shape[0] + 1)
        else:
            graph.edges.append(("ghost", victim))
    with pytest.raises(LasnnError):
        validate_graph(graph)
    with pytest.raises(LasnnError), tempfile.TemporaryDirectory() as tmp:
        write_nir(graph, Path(tmp) / "never.nir")


# ------------------------------------------------------------------------------------- quantiser


def _check_fits_loihi(lg) -> None:
    """Every integer of a quantised graph within Loihi 2's bit widths (lasnn.hardware.loihi_limits)."""
    for name, layer in lg.layers.items():
        assert 0 <= layer.du <= lim.DU_MAX and 0 <= layer.dv <= lim.DV_MAX, name
        assert 0 <= layer.vth <= 2**lim.VTH_BITS - 1, name
        for arr, (low, high) in (
            (layer.bias_mant, (lim.BIAS_MANT_MIN, lim.BIAS_MANT_MAX)),
            (layer.bias_exp, (lim.BIAS_EXP_MIN, lim.BIAS_EXP_MAX)),
        ):
            arr = np.asarray(arr)
            assert arr.dtype.kind in "iu" and arr.shape == tuple(layer.shape), name
            assert arr.size == 0 or (low <= arr.min() and arr.max() <= high), name
        assert np.isfinite(layer.scale).all() and (np.asarray(layer.scale) > 0).all(), name
    for syn in lg.synapses:
        w = np.asarray(syn.weight)
        assert w.dtype.kind in "iu", syn.name
        assert syn.num_message_bits == 0
        if syn.kind == "conv":
            assert lim.CONV_WEIGHT[0] <= w.min() and w.max() <= lim.CONV_WEIGHT[1], syn.name
            assert syn.weight_exp == 0 and syn.delay == 0, syn.name
        else:
            assert syn.kind == "dense", syn.name
            if (w > 0).any() and (w < 0).any():
                assert lim.DENSE_MIXED[0] <= w.min() and w.max() <= lim.DENSE_MIXED[1], syn.name
                assert not (w % 2).any(), f"{syn.name}: mixed-sign Dense weights must be even"
            elif (w < 0).any():
                assert lim.DENSE_INHIBITORY[0] <= w.min(), syn.name
            else:
                assert w.max(initial=0) <= lim.DENSE_EXCITATORY[1], syn.name
            assert lim.WEIGHT_EXP_MIN <= syn.weight_exp <= lim.WEIGHT_EXP_MAX, syn.name
            assert 0 <= syn.delay <= lim.MAX_DELAY, syn.name
    for host in lg.input.host:
        assert host.shift >= 1 and np.asarray(host.weight).dtype.kind in "iu"
        assert np.abs(np.asarray(host.weight)).max(initial=0) <= 2**15, host.name  # 16-bit host weights


@PROPERTY
@given(graph=graphs(), calibrate=st.booleans(), seed=st.integers(0, 1000))
def test_quantiser_fits_bit_widths_or_refuses_naming_a_layer(graph: Graph, calibrate: bool, seed: int):
    from lasnn.hardware.quantise import quantise

    stream = _stream(graph, seed, graph.metadata.get("encoding") == "poisson") if calibrate else None
    try:
        lg, report = quantise(graph, stream)
    except LasnnError as error:
        message = str(error)
        assert "\n" not in message
        named = [n for n in graph.nodes if f"'{n}'" in message or f"'{n}+" in message or f"+{n}'" in message]
        # the one refusal that is about the input, not a layer: analog input of unknown range
        unknown_range = (
            graph.metadata.get("encoding") == "direct" and stream is None and "mean" not in graph.metadata
        )
        assert named or (unknown_range and "'mean'/'std'" in message), (
            f"the refusal names no layer: {message}"
        )
        return
    _check_fits_loihi(lg)
    assert set(lg.layers) >= {n for n, x in graph.nodes.items() if isinstance(x, Neuron)}
    assert lg.timesteps == graph.metadata["timesteps"]
    assert isinstance(report, dict)
