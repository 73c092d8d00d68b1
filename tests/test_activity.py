"""Synaptic-op counting checked against hand counts (explicit loops over synapses), never the same formula."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

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
from lasnn.hardware.activity import layer_activity


def neuron(shape: tuple[int, ...]) -> Neuron:
    z = np.zeros(shape)
    return Neuron(shape=shape, alpha_v=z + 0.5, gain=z + 0.5, v_threshold=z + 1, v_reset=z, v_leak=z)


def conv_synapses(c_in, h, w, c_out, k, stride, pad, dilation=1, groups=1) -> set[tuple]:
    """All (input index, output index) synapses of a Conv2d, by walking every output and kernel slot."""
    ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    syn = set()
    in_per, out_per = c_in // groups, c_out // groups
    for oc in range(c_out):
        g = oc // out_per
        for oy in range(ho):
            for ox in range(wo):
                for icg in range(in_per):
                    for ky in range(k):
                        for kx in range(k):
                            iy = oy * stride - pad + ky * dilation
                            ix = ox * stride - pad + kx * dilation
                            if 0 <= iy < h and 0 <= ix < w:
                                syn.add(((g * in_per + icg, iy, ix), (oc, oy, ox)))
    return syn


def pool_synapses(c, h, w, k, stride) -> set[tuple]:
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    return {
        ((ch, oy * stride + ky, ox * stride + kx), (ch, oy, ox))
        for ch in range(c)
        for oy in range(ho)
        for ox in range(wo)
        for ky in range(k)
        for kx in range(k)
    }


def compose(first: set[tuple], second: set[tuple]) -> set[tuple]:
    by_mid: dict = {}
    for mid, out in second:
        by_mid.setdefault(mid, set()).add(out)
    return {(src, out) for src, mid in first for out in by_mid.get(mid, ())}


def ops_from_synapses(syn: set[tuple], spikes: np.ndarray, recurrent: bool = False) -> float:
    """Synaptic ops per inference: loop over every spike of every source and every synapse leaving it."""
    fanout: dict = {}
    for src, _ in syn:
        fanout[src] = fanout.get(src, 0) + 1
    steps, batch = spikes.shape[:2]
    total = 0
    for t in range(steps - 1 if recurrent else steps):
        for b in range(batch):
            for idx in itertools.product(*(range(s) for s in spikes.shape[2:])):
                if spikes[(t, b, *idx)]:
                    total += fanout.get(idx, 0)
    return total / batch


def by_name(layers: list[dict]) -> dict[str, dict]:
    return {layer["name"]: layer for layer in layers}


RNG = np.random.default_rng(0)


def test_dense_ops_hand_counted():
    # 4 inputs -> 3 neurons; input spikes: t0: in0, in2; t1: in1 (sample 0); t0: all four (sample 1)
    stream = np.zeros((2, 2, 4))
    stream[0, 0, [0, 2]] = 1
    stream[1, 0, 1] = 1
    stream[0, 1, :] = 1
    g = Graph(
        {"in": Input((4,)), "fc": Affine(np.ones((3, 4))), "lif": neuron((3,))},
        [("in", "fc"), ("fc", "lif")],
        {"encoding": "poisson"},
    )
    spikes = {"lif": np.zeros((2, 2, 3))}
    spikes["lif"][1, 0, 2] = 1
    layer = layer_activity(g, spikes, stream)[0]
    # 7 input spikes over two samples, each reaching 3 neurons: 21 ops / 2 samples
    assert layer["synaptic_ops"] == pytest.approx(21 / 2)
    assert layer["spikes"] == pytest.approx(0.5)
    assert layer["neurons"] == 3 and layer["neuron_updates"] == 3 * 2
    assert layer["op"] == "ac" and layer["macs"] == 0


def test_conv_ops_hand_counted_tiny():
    # 1x3x3 input, 1 output channel, 3x3 kernel, padding 1, stride 1: centre pixel reaches all 9 outputs,
    # an edge pixel 6 and a corner pixel 4.
    g = Graph(
        {
            "src": neuron((1, 3, 3)),
            "conv": Conv2d(np.ones((1, 1, 3, 3)), None, (1, 3, 3), (1, 1), (1, 1)),
            "dst": neuron((1, 3, 3)),
            "in": Input((1, 3, 3)),
            "id": Scale(np.ones(1)),
        },
        [("in", "id"), ("id", "src"), ("src", "conv"), ("conv", "dst")],
        {"encoding": "poisson"},
    )
    src = np.zeros((1, 1, 1, 3, 3))
    src[0, 0, 0, 1, 1] = 1  # centre
    src[0, 0, 0, 0, 1] = 1  # edge
    src[0, 0, 0, 2, 2] = 1  # corner
    spikes = {"src": src, "dst": np.zeros((1, 1, 1, 3, 3))}
    layers = by_name(layer_activity(g, spikes, np.zeros((1, 1, 1, 3, 3))))
    assert layers["dst"]["synaptic_ops"] == 9 + 6 + 4


@pytest.mark.parametrize(
    "k,stride,pad,dilation,groups",
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 2, 2, 1, 1), (3, 2, 0, 1, 1), (3, 1, 2, 2, 1), (3, 2, 1, 1, 2)],
)
def test_conv_ops_match_explicit_loops(k, stride, pad, dilation, groups):
    c_in, h, w, c_out = 2, 7, 6, 4
    syn = conv_synapses(c_in, h, w, c_out, k, stride, pad, dilation, groups)
    ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    conv = Conv2d(
        np.ones((c_out, c_in // groups, k, k)),
        None,
        (c_in, h, w),
        (stride, stride),
        (pad, pad),
        (dilation, dilation),
        groups,
    )
    g = Graph(
        {"in": Input((c_in, h, w)), "conv": conv, "lif": neuron((c_out, ho, wo))},
        [("in", "conv"), ("conv", "lif")],
        {"encoding": "poisson"},
    )
    stream = (RNG.random((3, 2, c_in, h, w)) < 0.3).astype(np.float64)
    spikes = {"lif": (RNG.random((3, 2, c_out, ho, wo)) < 0.2).astype(np.uint8)}
    layer = layer_activity(g, spikes, stream)[0]
    assert layer["synaptic_ops"] == pytest.approx(ops_from_synapses(syn, stream))
    assert layer["spikes"] == pytest.approx(spikes["lif"].sum() / 2)
    assert layer["neuron_updates"] == c_out * ho * wo * 3


@pytest.mark.parametrize("pool_k,pool_s", [(2, 2), (3, 2)])
def test_pooling_composes_into_next_conv(pool_k, pool_s):
    """A spike reaching the conv through a pool counts each distinct destination once (overlapping pool
    windows included) and pooling alone is no stage."""
    c, h, w = 2, 7, 7
    hp = (h - pool_k) // pool_s + 1
    syn = compose(pool_synapses(c, h, w, pool_k, pool_s), conv_synapses(c, hp, hp, 3, 3, 1, 1))
    g = Graph(
        {
            "in": Input((c, h, w)),
            "a": neuron((c, h, w)),
            "pool": SumPool2d((pool_k, pool_k), (pool_s, pool_s), (c, h, w)),
            "avg": Scale(np.full(1, 1 / pool_k**2)),
            "conv": Conv2d(np.ones((3, c, 3, 3)), None, (c, hp, hp), (1, 1), (1, 1)),
            "b": neuron((3, hp, hp)),
        },
        [("in", "a"), ("a", "pool"), ("pool", "avg"), ("avg", "conv"), ("conv", "b")],
        {"encoding": "poisson"},
    )
    a = (RNG.random((4, 3, c, h, w)) < 0.4).astype(np.float32)
    spikes = {"a": a, "b": np.zeros((4, 3, 3, hp, hp))}
    layers = by_name(layer_activity(g, spikes, a))
    assert list(layers) == ["a", "b"]
    assert layers["b"]["synaptic_ops"] == pytest.approx(ops_from_synapses(syn, a))
    assert layers["b"]["synapses"] == "sumpool2d+conv2d"


def test_residual_shortcut_and_readout():
    c, h, w = 2, 4, 4
    g = Graph(
        {
            "in": Input((c, h, w)),
            "n0": neuron((c, h, w)),
            "conv1": Conv2d(np.ones((3, c, 3, 3)), None, (c, h, w), (2, 2), (1, 1)),
            "n1": neuron((3, 2, 2)),
            "conv2": Conv2d(np.ones((3, 3, 3, 3)), None, (3, 2, 2), (1, 1), (1, 1)),
            "short": Conv2d(np.ones((3, c, 1, 1)), None, (c, h, w), (2, 2), (0, 0)),
            "n2": neuron((3, 2, 2)),
            "flat": Flatten((3, 2, 2)),
            "fc": Affine(np.ones((5, 12)), np.zeros(5)),
            "out": Output((5,)),
        },
        [
            ("in", "n0"),
            ("n0", "conv1"),
            ("conv1", "n1"),
            ("n1", "conv2"),
            ("conv2", "n2"),
            ("n0", "short"),
            ("short", "n2"),
            ("n2", "flat"),
            ("flat", "fc"),
            ("fc", "out"),
        ],
        {"encoding": "direct"},
    )
    stream = RNG.normal(size=(3, 2, c, h, w))
    stream[:, :, 0, 0, 0] = 0.0  # zero inputs need no multiply
    spikes = {n: (RNG.random((3, 2, *g.nodes[n].shape)) < 0.5).astype(np.float64) for n in ("n0", "n1", "n2")}
    layers = by_name(layer_activity(g, spikes, stream))
    assert list(layers) == ["n0", "n1", "n2", "out"]
    # n0 is fed without synapses (identity): one MAC... no: identity from an analog input is one op per
    # nonzero input value, labelled as MAC because the input is graded.
    assert layers["n0"]["op"] == "mac"
    assert layers["n0"]["synaptic_ops"] == pytest.approx((stream != 0).sum() / 2)
    expected_n2 = ops_from_synapses(conv_synapses(3, 2, 2, 3, 3, 1, 1), spikes["n1"]) + ops_from_synapses(
        conv_synapses(c, h, w, 3, 1, 2, 0), spikes["n0"]
    )
    assert layers["n2"]["synaptic_ops"] == pytest.approx(expected_n2)
    assert layers["n2"]["sources"] == ["n0", "n1"]
    assert layers["n1"]["synaptic_ops"] == pytest.approx(
        ops_from_synapses(conv_synapses(c, h, w, 3, 3, 2, 1), spikes["n0"])
    )
    # readout: every n2 spike reaches all 5 outputs
    assert layers["out"]["kind"] == "readout"
    assert layers["out"]["synaptic_ops"] == pytest.approx(spikes["n2"].sum() * 5 / 2)
    assert layers["out"]["neuron_updates"] == 5 * 3 and layers["out"]["spikes"] == 0


def test_direct_input_counts_macs():
    g = Graph(
        {
            "in": Input((1, 4, 4)),
            "conv": Conv2d(np.ones((2, 1, 3, 3)), None, (1, 4, 4), (1, 1), (1, 1)),
            "lif": neuron((2, 4, 4)),
        },
        [("in", "conv"), ("conv", "lif")],
        {"encoding": "direct"},
    )
    image = RNG.normal(size=(1, 1, 4, 4))
    image[0, 0, 2, 3] = 0.0
    stream = np.repeat(image[None], 2, axis=0)  # T = 2, B = 1
    layer = layer_activity(g, {"lif": np.zeros((2, 1, 2, 4, 4))}, stream)[0]
    syn = conv_synapses(1, 4, 4, 2, 3, 1, 1)
    assert layer["op"] == "mac"
    assert layer["macs"] == layer["synaptic_ops"] == pytest.approx(ops_from_synapses(syn, stream != 0))


def test_recurrent_edge_skips_last_step():
    g = Graph(
        {
            "in": Input((3,)),
            "fc": Affine(np.ones((2, 3))),
            "lif": neuron((2,)),
            "rec": Affine(np.ones((2, 2))),
        },
        [("in", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif")],
        {"encoding": "latency"},
    )
    stream = np.zeros((3, 1, 3))
    lif = np.zeros((3, 1, 2))
    lif[0, 0, 0] = lif[2, 0, 1] = lif[1, 0, 1] = 1
    layer = layer_activity(g, {"lif": lif}, stream)[0]
    assert layer["synaptic_ops"] == 2 * 2  # the spike at the last step is never delivered


def test_bad_spike_shape_is_a_user_error():
    g = Graph(
        {"in": Input((3,)), "fc": Affine(np.ones((2, 3))), "lif": neuron((2,))},
        [("in", "fc"), ("fc", "lif")],
        {"encoding": "poisson"},
    )
    with pytest.raises(LasnnError, match="lif"):
        layer_activity(g, {"lif": np.zeros((2, 1, 5))}, np.zeros((2, 1, 3)))
    with pytest.raises(LasnnError, match="lif"):
        layer_activity(g, {}, np.zeros((2, 1, 3)))


def test_delay_holds_back_last_steps_and_leaky_integrator_readout():
    z = np.zeros(4)
    g = Graph(
        {
            "in": Input((3,)),
            "fc": Affine(np.ones((4, 3))),
            "lif": neuron((4,)),
            "delay": Delay(np.full(4, 2)),
            "head": Affine(np.ones((2, 4))),
            "li": LeakyIntegrator((2,), alpha_v=z[:2], gain=z[:2] + 1, v_leak=z[:2]),
            "out": Output((2,)),
        },
        [("in", "fc"), ("fc", "lif"), ("lif", "delay"), ("delay", "head"), ("head", "li"), ("li", "out")],
        {"encoding": "poisson"},
    )
    lif = np.zeros((4, 1, 4))
    lif[0, 0, :] = 1  # 4 spikes at t = 0: delivered at t = 2
    lif[2, 0, 1] = 1  # delivered at t = 4 = T: never
    lif[3, 0, 3] = 1  # never
    stream = np.zeros((4, 1, 3))
    stream[1, 0, 0] = 1
    layers = by_name(layer_activity(g, {"lif": lif}, stream))
    assert list(layers) == ["lif", "li"]
    assert layers["lif"]["synaptic_ops"] == 4  # one input spike x 4 synapses
    assert layers["li"]["kind"] == "readout" and layers["li"]["spikes"] == 0
    assert layers["li"]["synaptic_ops"] == 4 * 2
    assert layers["li"]["neuron_updates"] == 2 * 4


def test_flat_source_reshaped_into_conv():
    # a flat Input of 16 elements feeding a Conv2d whose input_shape is (1, 4, 4): graph semantics reshape
    g = Graph(
        {
            "in": Input((16,)),
            "conv": Conv2d(np.ones((2, 1, 3, 3)), None, (1, 4, 4), (1, 1), (1, 1)),
            "lif": neuron((2, 4, 4)),
        },
        [("in", "conv"), ("conv", "lif")],
        {"encoding": "poisson"},
    )
    stream = (RNG.random((2, 1, 16)) < 0.5).astype(float)
    layer = layer_activity(g, {"lif": np.zeros((2, 1, 2, 4, 4))}, stream)[0]
    expected = ops_from_synapses(conv_synapses(1, 4, 4, 2, 3, 1, 1), stream.reshape(2, 1, 1, 4, 4))
    assert layer["synaptic_ops"] == pytest.approx(expected)
