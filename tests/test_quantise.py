"""The Loihi quantiser: integer encodings on known tensors, scale choice against hand-computed limits,
exact synapse composition, refusals that name the layer, host-side input currents, resources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lasnn.sims  # noqa: F401 - installs the Lava import hook before lava.utils is imported
from lasnn.errors import LasnnError
from lasnn.export.graph import (
    Affine,
    Conv2d,
    Flatten,
    Graph,
    Input,
    LeakyIntegrator,
    Neuron,
    Output,
    Scale,
    SumPool2d,
)
from lasnn.hardware import loihi_limits as lim
from lasnn.hardware import quantise as q
from lasnn.hardware.loihi_graph import conv_matrix, host_currents
from lasnn.hardware.quantise import _bias_encode, apply_node, compose_path, quantise, quantise_dense
from lasnn.hardware.resources import estimate_resources


def _neuron(shape, alpha=0.0, gain=1.0, vth=1.0, reset=0.0, leak=0.0, alpha_i=None) -> Neuron:  # noqa: ANN001
    f = lambda v: np.full(shape, float(v))  # noqa: E731
    return Neuron(
        shape=shape,
        alpha_v=f(alpha),
        gain=f(gain),
        v_threshold=f(vth),
        v_reset=f(reset),
        v_leak=f(leak),
        alpha_i=None if alpha_i is None else f(alpha_i),
    )


def _chain(nodes: dict, metadata: dict | None = None) -> Graph:
    names = list(nodes)
    return Graph(nodes, [(a, b) for a, b in zip(names, names[1:], strict=False)], metadata or {})


W1 = np.array([[0.5, -0.25, 0.125, 0.0], [0.1, 0.2, 0.3, 0.4]])
B1 = np.array([0.05, -0.1])


def small_graph(**neuron) -> Graph:  # noqa: ANN003
    return _chain(
        {
            "input": Input((4,)),
            "fc1": Affine(W1, B1),
            "n1": _neuron((2,), **neuron),
            "fc2": Affine(np.array([[1.0, -1.0], [0.5, 0.25], [0.0, 2.0]])),
            "output": Output((3,)),
        },
        {"timesteps": 3, "encoding": "poisson"},
    )


# ----------------------------------------------------------------------------------------------------


def test_quantise_dense_known_values_are_left_unchanged_by_lava() -> None:
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    cases = [  # (float weights, expected ints, expected exponent, expected clipped count)
        (np.array([[1.0, -0.5], [0.25, 0.0]]), [[128, -64], [32, 0]], -7, 0),  # mixed: even values
        (np.array([[3.0, 1.5]]), [[192, 96]], -6, 0),  # excitatory: 0..255
        (np.array([[-2.0, -0.5]]), [[-128, -32]], -6, 0),  # inhibitory: ceil(log2(2 / 255)) = -6
        (np.array([[1e6, 1.0]]), [[255, 0]], 7, 1),  # exponent capped at 7: the big weight clips (counted)
    ]
    for w, expected, exp, clipped in cases:
        ints, e, c = quantise_dense(w)
        assert ints.tolist() == expected and e == exp and c == clipped, (w, ints, e, c)
        mode = determine_sign_mode(ints)
        assert np.array_equal(truncate_weights(clip_weights(ints, mode, num_bits=8), mode, 8), ints)


def test_bias_encoding_known_values() -> None:
    mant, exp, clipped = _bias_encode(np.array([100.0, 5000.0, -4096.0, 4096.0, 63548.8, -127097.6, 6e5]))
    assert mant.tolist() == [100, 2500, -4096, 2048, 3972, -3972, 4095]
    assert exp.tolist() == [0, 1, 0, 1, 4, 5, 7]
    assert clipped == 1  # 6e5 > 4095 * 2**7: reported, not hidden


def test_scales_follow_the_binding_limit() -> None:
    """Static bounds for small_graph, by hand: neuron 1 has |W| row sum 1.0 and bias 0.1, so over T = 3 steps
    |v| <= 3.3; headroom 2**23 / margin 2 gives vth = floor(2**22 / (64 * 3.3)) = 19859."""
    lg, report = quantise(small_graph())
    layer = lg.layers["n1"]
    assert layer.vth == 19859 and report["layers"][0]["limited_by"] == "v headroom"
    assert np.allclose(layer.scale, 19859.0)
    assert np.array_equal(layer.bias(), [63552, -127104])  # 64 * S * b, as 13-bit mantissa << exponent
    (syn,) = lg.synapses_into("n1")
    back = syn.weight * 2.0**syn.weight_exp / layer.scale[:, None]
    assert np.abs(back - W1).max() <= 2.0**syn.weight_exp / 19859  # within one weight step
    assert syn.weight_exp == 6 and syn.weight.tolist()[0] == [156, -78, 38, 0]
    for rep in report["layers"]:
        assert all(s["weights_clipped"] == 0 for s in rep["synapses"])
    ro = lg.layers["output"]
    assert ro.kind == "readout" and ro.du == lim.DU_MAX and ro.dv == 0
    # accumulator: T * 64 * S * (row sum 2.0) <= 2**22
    assert 3 * 64 * ro.scale.max() * 2.0 <= 2**22 < 3 * 64 * ro.scale.max() * 2.0 * 1.0001


def test_calibration_raises_resolution_where_activity_is_low() -> None:
    g = small_graph()
    stream = np.zeros((3, 8, 4))
    stream[:, :, 0] = 1.0  # only the first input ever spikes
    lg_static, _ = quantise(g)
    lg_cal, report = quantise(g, stream)
    assert report["calibrated"] and lg_cal.layers["n1"].vth > lg_static.layers["n1"].vth


@pytest.mark.parametrize(
    ("neuron", "message"),
    [
        (dict(reset=0.5, alpha_i=0.25), "layer 'n1' is current-based .CUBA. and resets to v_reset=0.5"),
        (dict(vth=-1.0), "layer 'n1' has a threshold at or below"),
    ],
)
def test_refusals_name_the_layer(neuron: dict, message: str) -> None:
    with pytest.raises(LasnnError, match=message):
        quantise(small_graph(**neuron))


def test_refuses_non_uniform_decay_and_fan_in(monkeypatch: pytest.MonkeyPatch) -> None:
    g = small_graph(alpha=0.5, gain=0.5)
    g.nodes["n1"].alpha_v = np.array([0.5, 0.25])
    with pytest.raises(LasnnError, match="layer 'n1' has per-neuron 'alpha_v'"):
        quantise(g)
    monkeypatch.setattr(lim, "MAX_FAN_IN", 3)
    with pytest.raises(LasnnError, match="layer 'n1' has a fan-in of 4"):
        quantise(small_graph())


def test_refuses_threshold_below_one_integer_step() -> None:
    g = _chain(
        {
            "input": Input((1, 4, 4)),
            "conv": Conv2d(np.full((2, 1, 3, 3), 1000.0), None, (1, 4, 4)),
            "n1": _neuron((2, 2, 2), vth=1e-3),
            "flat": Flatten((2, 2, 2)),
            "fc": Affine(np.ones((2, 8))),
            "output": Output((2,)),
        },
        {"timesteps": 2, "encoding": "poisson"},
    )
    with pytest.raises(LasnnError, match="layer 'n1' cannot be represented.*int8 conv weights"):
        quantise(g)


def test_refuses_non_spiking_hidden_layer() -> None:
    f = np.ones(2)
    g = _chain(
        {
            "input": Input((4,)),
            "fc1": Affine(W1),
            "li": LeakyIntegrator((2,), f * 0.5, f, f * 0),
            "fc2": Affine(np.ones((2, 2))),
            "n2": _neuron((2,)),
            "output": Output((2,)),
        },
        {"timesteps": 2, "encoding": "poisson"},
    )
    with pytest.raises(LasnnError, match="non-spiking layer 'li' feeds 'n2'"):
        quantise(g)


# ----------------------------------------------------------------------------------------------------


def _pool_conv_graph(size: int) -> Graph:
    rng = np.random.default_rng(size)
    shape = (3, size, size)
    half = (3, size // 2, size // 2)
    return _chain(
        {
            "input": Input(shape),
            "c0": Conv2d(rng.standard_normal((3, 3, 1, 1)), None, shape),
            "n0": _neuron(shape),
            "pool": SumPool2d((2, 2), (2, 2), shape),
            "avg": Scale(np.array(0.25)),
            "conv": Conv2d(rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), half, padding=(1, 1)),
            "n1": _neuron((4, size // 2, size // 2)),
            "flat": Flatten((4, size // 2, size // 2)),
            "fc": Affine(rng.standard_normal((2, 4 * (size // 2) ** 2))),
            "output": Output((2,)),
        },
        {"timesteps": 2, "encoding": "poisson"},
    )


@pytest.mark.parametrize(("size", "form", "crop"), [(8, "conv", None), (7, "dense", (6, 6))])
def test_composition_is_exact(size: int, form: str, crop: tuple[int, int] | None) -> None:
    """Pool -> scale -> padded conv is one strided conv; for an odd size (floor-mode pooling drops a row the
    composed kernel would see) it reads the input cropped to the pooled rows (hardware/pool_conv.py), a
    Dense synapse since Lava's Conv cannot crop. Both equal the sequential ops."""
    g = _pool_conv_graph(size)
    shapes = q.infer_shapes(g)
    pm = compose_path(g, shapes, "n0", ["pool", "avg", "conv"], "n1", False)
    assert pm.kernel is not None and pm.geometry.crop == crop
    x = torch.as_tensor((np.random.default_rng(1).random((5, 3, size, size)) < 0.4).astype(np.float64))
    seq = x
    for n in ("pool", "avg", "conv"):
        seq = apply_node(g.nodes[n], seq, with_bias=False)
    xc = x if crop is None else x[..., : crop[0], : crop[1]]
    out = torch.nn.functional.conv2d(
        xc, torch.as_tensor(pm.kernel), stride=pm.geometry.stride, padding=pm.geometry.padding
    )
    ints = np.rint(pm.kernel * 64).astype(np.int64)  # conv_matrix is the same map as the convolution
    by_conv = torch.nn.functional.conv2d(
        xc,
        torch.as_tensor(ints, dtype=torch.float64),
        stride=pm.geometry.stride,
        padding=pm.geometry.padding,
    )
    by_matrix = conv_matrix(ints, pm.geometry) @ x.reshape(5, -1).numpy().T
    assert np.array_equal(by_matrix.T.reshape(by_conv.shape), by_conv.numpy())
    assert torch.allclose(out, seq, atol=1e-12)
    lg, _ = quantise(g)  # and the whole graph quantises, the synapse kind following the composition
    (syn,) = lg.synapses_into("n1")
    assert syn.kind == form and syn.delay == 0 and syn.geometry.crop == crop


def test_residual_shortcut_gets_one_step_delay() -> None:
    rng = np.random.default_rng(0)
    shape = (2, 4, 4)
    nodes = {
        "input": Input(shape),
        "c0": Conv2d(rng.standard_normal((2, 2, 1, 1)), None, shape),
        "n0": _neuron(shape),
        "c1": Conv2d(rng.standard_normal((2, 2, 3, 3)), None, shape, padding=(1, 1)),
        "n1": _neuron(shape),
        "c2": Conv2d(rng.standard_normal((2, 2, 3, 3)), None, shape, padding=(1, 1)),
        "n2": _neuron(shape),
        "flat": Flatten(shape),
        "fc": Affine(rng.standard_normal((3, 32))),
        "output": Output((3,)),
    }
    edges = [
        ("input", "c0"),
        ("c0", "n0"),
        ("n0", "c1"),
        ("c1", "n1"),
        ("n1", "c2"),
        ("c2", "n2"),
        ("n0", "n2"),
        ("n2", "flat"),
        ("flat", "fc"),
        ("fc", "output"),
    ]
    lg, _ = quantise(Graph(nodes, edges, {"timesteps": 2, "encoding": "poisson"}))
    assert [lg.layers[n].depth for n in ("n0", "n1", "n2", "output")] == [1, 2, 3, 4]
    skip = next(s for s in lg.synapses if s.src == "n0" and s.dst == "n2")
    assert skip.kind == "dense" and skip.delay == 1 and skip.geometry is not None
    assert np.array_equal(np.abs(skip.weight[:, :, 0, 0]) > 0, np.eye(2, dtype=bool))  # identity shortcut


def test_host_currents_track_the_float_first_layer() -> None:
    g = _pool_conv_graph(8)
    g.metadata["encoding"] = "direct"
    rng = np.random.default_rng(2)
    stream = np.repeat(rng.standard_normal((1, 6, 3, 8, 8)), 2, axis=0)
    lg, report = quantise(g, stream)
    assert lg.input.mode == "current" and report["input_mode"] == "current"
    a_in = host_currents(lg, stream)["n0"]
    current = (
        apply_node(g.nodes["c0"], torch.as_tensor(stream.reshape(12, 3, 8, 8))).numpy().reshape(a_in.shape)
    )
    expected = current * lg.layers["n0"].scale  # gain 1
    assert np.abs(a_in - expected).max() <= 1e-3 * np.abs(expected).max() + 1
    assert np.abs(a_in).max() <= lim.A_IN_MAX  # the 16-bit host current limit held on calibration data
    # integer host arithmetic: the same numbers in any batch split
    assert np.array_equal(host_currents(lg, stream[:, :2])["n0"], a_in[:, :2])


def test_resources_from_core_limits() -> None:
    w = np.random.default_rng(0).uniform(0.5, 1.0, size=(9000, 100))
    g = _chain(
        {
            "input": Input((100,)),
            "fc": Affine(w),
            "n": _neuron((9000,)),
            "fc2": Affine(np.ones((2, 9000))),
            "output": Output((2,)),
        },
        {"timesteps": 1, "encoding": "poisson"},
    )
    lg, _ = quantise(g)
    res = estimate_resources(lg)
    layer = res["layers"][0]
    assert layer["neurons"] == 9000 and layer["synapses"] == 900_000
    assert layer["cores"] == 7  # memory-bound: ceil(900000 / 131072) = 7 > ceil(9000 / 8192) = 2 neuron cores
    assert res["layers"][1]["synapses"] == 18000 and res["layers"][1]["cores"] == 1 and res["chips"] == 1
    g2 = _pool_conv_graph(8)
    res2 = estimate_resources(quantise(g2)[0])
    conv = next(entry for entry in res2["layers"] if entry["name"] == "n1")
    syn = quantise(g2)[0].synapses_into("n1")[0]
    assert conv["synapses"] == conv_matrix(np.ones_like(syn.weight), syn.geometry).nnz
