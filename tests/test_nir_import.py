"""Reading foreign NIR graphs (built by hand the way sinabs, snnTorch and others write them) and running them
on the float reference, checked against numpy re-implementations written here from NIR's equations and
the documented time convention; bad files are refused with one sentence naming the problem."""

from __future__ import annotations

import h5py
import nir
import numpy as np
import pytest
import torch

from lasnn.errors import LasnnError
from lasnn.export.graph import Delay, LeakyIntegrator, Neuron
from lasnn.export.nir_io import DEFAULT_FOREIGN_DT, nir_to_graph, read_nir
from lasnn.sims.float_backend import FloatBackend

RNG = np.random.default_rng(0)


def run(graph, stream):
    return FloatBackend(np.float64, progress=False).run(graph, stream)


def write(tmp_path, graph: nir.NIRGraph, name: str = "g.nir"):
    path = tmp_path / name
    nir.write(path, graph)
    return path


def conv2d_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Cross-correlation by explicit loops over output positions (x: [C, H, W], w: [O, C, k, k])."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    o, _, k, _ = w.shape
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = np.zeros((o, h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, i, j] = np.tensordot(w, x[:, i : i + k, j : j + k], axes=3) + b
    return out


def sum_pool_numpy(x: np.ndarray, k: int, pad: int = 0) -> np.ndarray:
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    c, h, w = x.shape
    return np.stack(
        [
            [
                [x[ch, i * k : i * k + k, j * k : j * k + k].sum() for j in range(w // k)]
                for i in range(h // k)
            ]
            for ch in range(c)
        ]
    )


def test_sinabs_style_if_cnn(tmp_path):
    """Conv2d -> IF -> SumPool2d -> Conv2d -> IF -> Flatten -> Affine -> IF, IF with r = 1 (v += input)."""
    w1, b1 = RNG.normal(0, 0.8, (3, 1, 3, 3)), np.zeros(3)
    w2, b2 = RNG.normal(0, 0.5, (4, 3, 3, 3)), RNG.normal(0, 0.1, 4)
    wf, bf = RNG.normal(0, 0.5, (5, 16)), RNG.normal(0, 0.1, 5)
    ones = lambda *s: np.ones(s)  # noqa: E731
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
            "0": nir.Conv2d(
                input_shape=(4, 4), weight=w1, stride=1, padding=1, dilation=1, groups=1, bias=b1
            ),
            "1": nir.IF(r=ones(3, 4, 4), v_threshold=ones(3, 4, 4)),
            "2": nir.SumPool2d(
                kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])
            ),
            "3": nir.Conv2d(
                input_shape=(2, 2), weight=w2, stride=1, padding=1, dilation=1, groups=1, bias=b2
            ),
            "4": nir.IF(r=ones(4, 2, 2), v_threshold=ones(4, 2, 2)),
            "5": nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0),
            "6": nir.Affine(weight=wf, bias=bf),
            "7": nir.IF(r=ones(5), v_threshold=0.5 * ones(5)),
            "output": nir.Output(output_type={"output": np.array([5])}),
        },
        edges=[
            ("input", "0"),
            ("0", "1"),
            ("1", "2"),
            ("2", "3"),
            ("3", "4"),
            ("4", "5"),
            ("5", "6"),
            ("6", "7"),
            ("7", "output"),
        ],
    )
    graph = read_nir(write(tmp_path, g))
    assert graph.metadata["dt"] == DEFAULT_FOREIGN_DT
    stream = (RNG.random((6, 2, 1, 4, 4)) < 0.5).astype(np.float64)
    result = run(graph, stream)

    def if_step(v, x, th):
        v = v + x
        s = v > th
        return np.where(s, 0.0, v), s.astype(float)

    for b in range(2):
        v1, v4, v7 = np.zeros((3, 4, 4)), np.zeros((4, 2, 2)), np.zeros(5)
        for t in range(6):
            v1, s1 = if_step(v1, conv2d_numpy(stream[t, b], w1, b1, 1), 1.0)
            v4, s4 = if_step(v4, conv2d_numpy(sum_pool_numpy(s1, 2), w2, b2, 1), 1.0)
            v7, s7 = if_step(v7, wf @ s4.ravel() + bf, 0.5)
            np.testing.assert_array_equal(result.spikes["1"][t, b], s1 > 0)
            np.testing.assert_array_equal(result.spikes["4"][t, b], s4 > 0)
            np.testing.assert_array_equal(result.outputs[t, b], s7)
    assert result.spikes["1"].any() and result.spikes["4"].any()


def test_snntorch_style_recurrent_cubalif_subgraph(tmp_path):
    """snnTorch's RSynaptic as a nested subgraph with a recurrent Affine; snnTorch's export rules:
    tau_syn = dt/(1-alpha), tau_mem = dt/(1-beta), r = tau_mem/dt, w_in = tau_syn/dt."""
    dt, alpha, beta, n_in, n = 1e-4, 0.6, 0.8, 4, 6
    w_in, b_in = RNG.normal(0, 1.0, (n, n_in)), RNG.normal(0.3, 0.1, n)
    w_rec, b_rec = RNG.normal(0, 0.5, (n, n)), np.zeros(n)
    w_out, b_out = RNG.normal(0, 1.0, (3, n)), RNG.normal(0, 0.1, 3)
    tau_syn, tau_mem = dt / (1 - alpha) * np.ones(n), dt / (1 - beta) * np.ones(n)
    sub = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([n])}),
            "lif": nir.CubaLIF(
                tau_syn=tau_syn,
                tau_mem=tau_mem,
                r=tau_mem / dt,
                v_leak=np.zeros(n),
                v_threshold=np.ones(n),
                w_in=tau_syn / dt,
            ),
            "w_rec": nir.Affine(weight=w_rec, bias=b_rec),
            "output": nir.Output(output_type={"output": np.array([n])}),
        },
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([n_in])}),
            "fc1": nir.Affine(weight=w_in, bias=b_in),
            "rsyn": sub,
            "fc2": nir.Affine(weight=w_out, bias=b_out),
            "output": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[("input", "fc1"), ("fc1", "rsyn"), ("rsyn", "fc2"), ("fc2", "output")],
        metadata={"dt": dt},
    )
    graph = read_nir(write(tmp_path, g))
    assert "rsyn.lif" in graph.nodes and ("rsyn.w_rec", "rsyn.lif") in graph.edges
    _, recurrent = graph.schedule()
    assert recurrent == {("rsyn.w_rec", "rsyn.lif")}
    stream = RNG.normal(0.5, 1.0, (10, 3, n_in))
    result = run(graph, stream)
    for b in range(3):  # snnTorch Synaptic with reset to zero, recurrent input from the previous step
        syn, mem, spk = np.zeros(n), np.zeros(n), np.zeros(n)
        for t in range(10):
            syn = alpha * syn + (w_in @ stream[t, b] + b_in) + (w_rec @ spk + b_rec)
            mem = beta * mem + syn
            spk = (mem > 1.0).astype(float)
            mem = np.where(spk > 0, 0.0, mem)
            np.testing.assert_array_equal(result.spikes["rsyn.lif"][t, b], spk > 0)
            np.testing.assert_allclose(result.outputs[t, b], w_out @ spk + b_out, rtol=0, atol=1e-12)
    assert 0 < result.spikes["rsyn.lif"].mean() < 1


def test_linear_scale_threshold_li_delay_avgpool_conv1d(tmp_path):
    """Nodes the students never produce: Linear without bias, Scale, Threshold, LI readout, Delay,
    AvgPool2d with padding, Conv1d."""
    dt = 1e-3
    wl = RNG.normal(0, 1, (3, 5))
    scale = np.array([1.0, -2.0, 0.5])
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([5])}),
            "lin": nir.Linear(weight=wl),
            "scale": nir.Scale(scale=scale),
            "delay": nir.Delay(delay=np.array([0.0, 2 * dt, dt])),
            "thr": nir.Threshold(threshold=np.array([0.2, 0.0, -0.1])),
            "li": nir.LI(tau=np.full(3, 4 * dt), r=np.full(3, 2.0), v_leak=np.full(3, 0.1)),
            "output": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[
            ("input", "lin"),
            ("lin", "scale"),
            ("scale", "delay"),
            ("delay", "thr"),
            ("thr", "li"),
            ("li", "output"),
        ],
    )
    graph = read_nir(write(tmp_path, g), dt=dt)
    assert graph.nodes["lin"].bias is None and isinstance(graph.nodes["delay"], Delay)
    assert isinstance(graph.nodes["li"], LeakyIntegrator) and isinstance(graph.nodes["thr"], Neuron)
    stream = RNG.normal(0, 1, (7, 2, 5))
    result = run(graph, stream)
    for b in range(2):
        v = np.full(3, 0.1)  # starts at rest (v_leak)
        history = []
        for t in range(7):
            history.append((wl @ stream[t, b]) * scale)
            delayed = np.array([history[t - d][i] if t >= d else 0.0 for i, d in enumerate([0, 2, 1])])
            spikes = (delayed > np.array([0.2, 0.0, -0.1])).astype(float)
            v = v + 0.25 * (0.1 - v + 2.0 * spikes)  # dt/tau = 1/4, r = 2
            np.testing.assert_allclose(result.outputs[t, b], v, rtol=1e-12)
            np.testing.assert_array_equal(result.spikes["thr"][t, b], spikes > 0)

    w1 = RNG.normal(0, 1, (2, 1, 3))
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([1, 6])}),
            "c1": nir.Conv1d(
                input_shape=6, weight=w1, stride=1, padding=1, dilation=1, groups=1, bias=np.zeros(2)
            ),
            "if": nir.IF(r=np.ones((2, 6)), v_threshold=np.ones((2, 6))),
            "output": nir.Output(output_type={"output": np.array([2, 6])}),
        },
        edges=[("input", "c1"), ("c1", "if"), ("if", "output")],
    )
    graph = read_nir(write(tmp_path, g, "c1.nir"))
    stream = RNG.normal(0, 1, (3, 2, 1, 6))
    result = run(graph, stream)
    for b in range(2):
        v = np.zeros((2, 6))
        for t in range(3):
            x = np.pad(stream[t, b, 0], 1)
            v = v + np.stack([[w1[o, 0] @ x[i : i + 3] for i in range(6)] for o in range(2)])
            s = v > 1
            v[s] = 0
            np.testing.assert_array_equal(result.outputs[t, b], s.astype(float))

    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([2, 5, 5])}),
            "pool": nir.AvgPool2d(
                kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([1, 1])
            ),
            "output": nir.Output(output_type={"output": np.array([2, 3, 3])}),
        },
        edges=[("input", "pool"), ("pool", "output")],
    )
    graph = read_nir(write(tmp_path, g, "pool.nir"))
    stream = RNG.normal(0, 1, (1, 2, 2, 5, 5))
    result = run(graph, stream)
    ref = torch.nn.functional.avg_pool2d(torch.from_numpy(stream[0]), 2, 2, 1).numpy()  # zero padding counted
    np.testing.assert_allclose(result.outputs[0], ref, rtol=1e-12)
    np.testing.assert_allclose(
        result.outputs[0, 0], sum_pool_numpy(stream[0, 0], 2, 1)[:, :3, :3] / 4, rtol=1e-12
    )


def test_unknown_node_type_is_refused_by_name(tmp_path):
    g = nir.NIRGraph.from_list(
        nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)),
        nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
    )
    path = write(tmp_path, g)
    with h5py.File(path, "r+") as f:
        del f["node/nodes/lif/type"]
        f["node/nodes/lif"].create_dataset("type", data="Spiky", dtype=h5py.string_dtype())
    with pytest.raises(LasnnError, match=r"node 'lif' has type 'Spiky'"):
        read_nir(path)
    identity = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([2])}),
            "id": nir.ir.graph.Identity(input_type={"input": np.array([2])}),
            "output": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("input", "id"), ("id", "output")],
        type_check=False,
    )
    with pytest.raises(LasnnError, match=r"node 'id' has type Identity"):
        nir_to_graph(identity)


def _bad_files(tmp_path):
    good = nir.NIRGraph.from_list(
        nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)), nir.IF(r=np.ones(2), v_threshold=np.ones(2))
    )
    path = write(tmp_path, good, "good.nir")
    (tmp_path / "truncated.nir").write_bytes(path.read_bytes()[:2000])
    (tmp_path / "text.nir").write_text("not hdf5\n")
    dangling = nir.NIRGraph(nodes=dict(good.nodes), edges=[*good.edges, ("if", "ghost")], type_check=False)
    write(tmp_path, dangling, "dangling.nir")
    mismatch = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([4])}),
            "affine": nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)),
            "output": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("input", "affine"), ("affine", "output")],
        type_check=False,
    )
    write(tmp_path, mismatch, "mismatch.nir")
    nan = nir.NIRGraph.from_list(nir.Affine(weight=np.array([[np.nan, 1.0, 0.0]]), bias=np.zeros(1)))
    write(tmp_path, nan, "nan.nir")
    return {
        "truncated.nir": "truncated",
        "text.nir": "not an HDF5 file",
        "dangling.nir": "ghost",
        "mismatch.nir": "type mismatch",
        "nan.nir": "non-finite",
        "missing.nir": "does not exist",
    }


def test_bad_files_are_one_sentence_errors(tmp_path):
    for name, phrase in _bad_files(tmp_path).items():
        with pytest.raises(LasnnError, match=phrase) as info:
            read_nir(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_bad_files_exit_nonzero_without_traceback(tmp_path, monkeypatch, capsys):
    import lasnn.cli

    monkeypatch.setattr(lasnn.cli, "STAGE_COMMANDS", ("lasnn.export.commands",))
    for name, phrase in _bad_files(tmp_path).items():
        code = lasnn.cli.main(["export", str(tmp_path / name), "-o", str(tmp_path / "out.nir")])
        _, err = capsys.readouterr()
        assert code == 2 and phrase in err and "Traceback" not in err and err.count("\n") == 1, (name, err)
    assert not (tmp_path / "out.nir").exists()
    assert lasnn.cli.main(["export", str(tmp_path / "good.nir"), "-o", str(tmp_path / "out.nir")]) == 0
    assert read_nir(tmp_path / "out.nir").metadata["dt"] == DEFAULT_FOREIGN_DT
