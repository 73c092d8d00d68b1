"""A pooling of an odd-sized image followed by a padded conv compiles as one strided convolution on the
cropped input (hardware/pool_conv.py): the airbench student's stages (31 -> 15 -> 7 -> 3 pixels on CIFAR).

References are independent of the code under test: the composed kernel is checked against the closed
form (each conv tap spread over a k x k block, / k**2 for average pooling, padding k*P, the input cropped
to floor(H / k) * k) and against torch's own AvgPool2d -> Conv2d; the compiled student runs spike-exactly
on the emulator and on Lava's simulator; synaptic operations equal spikes times the fan-out read off the
Jacobian of the student's own torch modules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lasnn.distill.spiking_layers import SpikingNeurons
from lasnn.distill.students import airbench_student
from lasnn.export.graph import Conv2d, Graph, Input, Neuron, Output, Scale, SumPool2d
from lasnn.export.lowering import lower_student
from lasnn.export.nir_io import write_nir
from lasnn.export.validate import infer_shapes
from lasnn.hardware.activity import layer_activity
from lasnn.hardware.compiled_model import load_compiled
from lasnn.hardware.loihi_graph import conv_matrix
from lasnn.hardware.quantise import compose_path
from lasnn.sims.emulator import EmulatorBackend
from lasnn.sims.float_backend import FloatBackend


def _neuron(shape: tuple[int, ...]) -> Neuron:
    one = np.ones(shape)
    return Neuron(shape=shape, alpha_v=0.1 * one, gain=one, v_threshold=one, v_reset=0 * one, v_leak=0 * one)


def _pool_conv_graph(c: int, size: int, k: int, average: bool, weight: np.ndarray) -> Graph:
    """src neurons -> SumPool2d(k) [-> Scale(1/k**2)] -> Conv2d(3x3, padding 1) -> dst neurons."""
    pooled = size // k
    c_out = weight.shape[0]
    nodes = {
        "input": Input((c, size, size)),
        "src": _neuron((c, size, size)),
        "pool": SumPool2d(kernel_size=(k, k), stride=(k, k), input_shape=(c, size, size)),
        "conv": Conv2d(weight=weight, bias=None, input_shape=(c, pooled, pooled), padding=(1, 1)),
        "dst": _neuron((c_out, pooled, pooled)),
        "output": Output((c_out, pooled, pooled)),
    }
    chain = ["pool", "conv"]
    if average:
        nodes["scale"] = Scale(np.asarray(1.0 / k**2))
        chain = ["pool", "scale", "conv"]
    names = ["input", "src", *chain, "dst", "output"]
    return Graph(nodes=nodes, edges=list(zip(names[:-1], names[1:], strict=True))), chain


@pytest.mark.parametrize(
    ("size", "k", "average"),
    [(31, 2, True), (31, 2, False), (7, 2, True), (7, 2, False), (31, 3, True), (8, 2, True)],
)
def test_composed_strided_conv_equals_pool_then_conv(size: int, k: int, average: bool) -> None:
    rng = np.random.default_rng(size * 10 + k)
    c, c_out = 3, 4
    weight = rng.integers(-5, 6, (c_out, c, 3, 3)).astype(np.float64)  # integers: float sums are exact
    graph, chain = _pool_conv_graph(c, size, k, average, weight)
    pm = compose_path(graph, infer_shapes(graph, "graph"), "src", chain, "dst", False)

    # the closed form: every conv tap spread over a k x k block (/ k**2 averaged), stride k, padding k
    expected = np.kron(weight, np.ones((1, 1, k, k))) / (k**2 if average else 1)
    used = size // k * k
    np.testing.assert_array_equal(pm.kernel, expected)
    g = pm.geometry
    assert g.stride == (k, k) and g.padding == (k, k)
    assert g.crop == (None if used == size else (used, used))

    # torch's own pooling and convolution, on binary spikes (exact in float64) and on real values
    pool = nn.AvgPool2d(k) if average else nn.AvgPool2d(k, divisor_override=1)  # sum pooling
    conv = nn.Conv2d(c, c_out, 3, padding=1, bias=False).double()
    conv.weight.data = torch.as_tensor(weight)
    spikes = torch.as_tensor(rng.integers(0, 2, (5, c, size, size)).astype(np.float64))
    dyadic = not average or k & (k - 1) == 0  # 1 / k**2 exact in binary: float sums of spikes are exact
    for x, exact in ((spikes, dyadic), (torch.as_tensor(rng.standard_normal((5, c, size, size))), False)):
        with torch.no_grad():
            reference = conv(pool(x))
        cropped = x[..., :used, :used]
        direct = F.conv2d(cropped, torch.as_tensor(pm.kernel), stride=k, padding=k)
        # and the synapse matrix the Lava backend builds from it (over the uncropped input)
        flat = torch.as_tensor(conv_matrix(pm.kernel, g).toarray()) @ x.reshape(len(x), -1).T
        for value in (direct, flat.T.reshape(reference.shape)):
            if exact:
                assert torch.equal(value, reference)
            else:
                torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    # the dropped rows and columns reach nothing
    fan_out = np.asarray((conv_matrix(np.ones_like(pm.kernel), g) != 0).sum(0)).reshape(c, size, size)
    assert (fan_out[:, used:, :] == 0).all() and (fan_out[:, :, used:] == 0).all()
    assert (fan_out[:, :used, :used] > 0).all()


def test_host_stage_crops_an_analog_input_before_its_pooled_conv() -> None:
    """An analog input pooled and convolved on the host (current input mode): the host's integer currents
    equal those of the same synapse given as its explicit (uncropped-input) matrix."""
    from dataclasses import replace

    from lasnn.hardware.loihi_graph import host_currents
    from lasnn.hardware.quantise import quantise

    rng = np.random.default_rng(5)
    graph, chain = _pool_conv_graph(3, 7, 2, True, rng.standard_normal((4, 3, 3, 3)))
    del graph.nodes["src"]
    graph.edges = [("input", "pool")] + [e for e in graph.edges if "src" not in e]
    graph.metadata = {"timesteps": 3, "encoding": "direct"}
    stream = rng.uniform(-1, 1, (3, 4, 3, 7, 7))
    lg, _ = quantise(graph, stream)
    (hs,) = lg.input.host
    assert hs.geometry.crop == (6, 6)
    explicit = replace(hs, weight=conv_matrix(hs.weight, hs.geometry).toarray(), geometry=None)
    lg_explicit = replace(lg, input=replace(lg.input, host=[explicit]))
    ours, theirs = host_currents(lg, stream)["dst"], host_currents(lg_explicit, stream)["dst"]
    np.testing.assert_array_equal(ours, theirs)
    assert np.abs(ours).max() > 0


def _student(size: int, widths: tuple[int, ...], seed: int = 0):  # noqa: ANN202
    """A random airbench student with random eval-mode batch norm, scaled so that every layer spikes."""
    torch.manual_seed(seed)
    student = airbench_student((3, size, size), 10, widths, timesteps=4, encoding="direct")
    for module in student.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(2.0, 4.0)
            module.bias.data.uniform_(0.3, 1.5)
    return student.eval()


def _compile(student, tmp_path, size: int):  # noqa: ANN001, ANN202
    """Export the student as ``lasnn export`` does and compile it with ``lasnn compile``."""
    from lasnn.cli import main

    meta = {"dt": 1e-3, "timesteps": 4, "encoding": "direct", "num_classes": 10}
    graph = lower_student(student, {**meta, "input_shape": [3, size, size]})
    write_nir(graph, tmp_path / "s.nir")
    rng = np.random.default_rng(1)
    np.save(tmp_path / "cal.npy", rng.uniform(-2, 2, (8, 4, 3, size, size)).astype(np.float32))
    argv = ["compile", str(tmp_path / "s.nir"), "-o", str(tmp_path / "s.lcm")]
    assert main([*argv, "--calibration", str(tmp_path / "cal.npy")]) == 0
    return graph, load_compiled(tmp_path / "s.lcm")


def _stream(student, size: int, samples: int = 2) -> np.ndarray:  # noqa: ANN001
    images = torch.as_tensor(np.random.default_rng(2).uniform(-2, 2, (samples, 3, size, size)))
    return student.encode(images.float()).numpy().astype(np.float64)


def _pool_conv_synapses(lg) -> dict[str, object]:  # noqa: ANN001
    return {s.name: s for s in lg.synapses if s.geometry is not None and s.geometry.crop is not None}


@pytest.mark.lava
def test_airbench_student_compiles_and_runs_spike_exact_on_emulator_and_lava(tmp_path) -> None:
    """16 x 16 input: the stem gives 15 x 15, pooled to 7, 3 and 1; every pooling drops a row and column.
    (Before the crop, each of these paths fell back to a dense matrix, refused at CIFAR size.)"""
    from lasnn.sims.lava_backend import LavaBackend

    student = _student(16, (4, 8, 8))
    _, model = _compile(student, tmp_path, 16)
    lg = model.loihi
    cropped = _pool_conv_synapses(lg)
    assert sorted(s.geometry.crop for s in cropped.values()) == [(2, 2), (6, 6), (14, 14)]
    assert all(s.kind == "dense" and s.geometry.stride == (2, 2) for s in cropped.values())
    stream = _stream(student, 16)
    emulated = EmulatorBackend(progress=False).run_loihi(lg, stream)
    simulated = LavaBackend().run_loihi(lg, stream)
    assert (
        set(emulated.spikes)
        == set(simulated.spikes)
        == {n for n, ly in lg.layers.items() if ly.kind == "lif"}
    )
    for name, trains in emulated.spikes.items():
        np.testing.assert_array_equal(simulated.spikes[name], trains, err_msg=name)
        assert 0 < trains.mean() < 1, name  # every layer active, none saturated: a real comparison
    np.testing.assert_array_equal(simulated.outputs, emulated.outputs)


def _jacobian_fan_out(modules: list[nn.Module], shape: tuple[int, ...]) -> np.ndarray:
    """Per source element: the destinations its value reaches through ``modules`` (the student's own
    torch layers, float64, applied to a [T=1, B=1, ...] input), from the Jacobian's nonzero entries."""
    chain = nn.Sequential(*copy.deepcopy(modules)).double()

    def run(x: torch.Tensor) -> torch.Tensor:
        return chain(x.reshape(1, 1, *shape)).reshape(-1)

    jac = torch.autograd.functional.jacobian(run, torch.rand(int(np.prod(shape)), dtype=torch.float64))
    return (jac != 0).sum(0).numpy().reshape(shape).astype(np.float64)


def test_synaptic_ops_equal_spikes_times_fan_out_of_the_student(tmp_path) -> None:
    """The activity report's synaptic operations, per stage, equal the spikes of the float reference (and
    of the emulator) times the fan-out of the student's own pooling and conv modules; the compiled
    synapses connect exactly those pairs (the pooling's dropped rows to nothing)."""
    student = _student(16, (4, 8, 8), seed=3)
    graph, model = _compile(student, tmp_path, 16)
    lg = model.loihi
    stream = _stream(student, 16)
    runs = {
        "float": FloatBackend(progress=False).run(graph, stream).spikes,
        "emulator": EmulatorBackend(progress=False).run_loihi(lg, stream).spikes,
    }
    # stages of the student: the modules from one neuron layer (or the input) to the next
    features = list(student.features) + [student.flatten, student.head]
    stages, source, pending = [], "input", []
    for index, module in enumerate(features):
        if isinstance(module, SpikingNeurons):
            stages.append((source, pending, f"features.{index}"))
            source, pending = f"features.{index}", []
        else:
            pending.append(module)
    stages.append((source, pending, "output"))
    shapes = {"input": (3, 16, 16), **{n: tuple(graph.nodes[n].shape) for n in runs["float"]}}
    fan_outs = {dst: _jacobian_fan_out(mods, shapes[src]) for src, mods, dst in stages}
    # the compiled synapses' structural fan-out is the student's
    for syn in (s for s in lg.synapses if s.role == "graph"):
        structure = conv_matrix(np.ones_like(syn.weight), syn.geometry) if syn.geometry else syn.weight
        fan = np.asarray((structure != 0).sum(0)).reshape(shapes[syn.src])
        np.testing.assert_array_equal(fan, fan_outs[syn.dst])
    for spikes in runs.values():
        rows = {r["name"]: r for r in layer_activity(graph, spikes, stream, loihi=lg)}
        for src, _, dst in stages:
            events = (stream != 0) if src == "input" else spikes[src]
            independent = float((events.sum(axis=(0, 1)) * fan_outs[dst]).sum()) / stream.shape[1]
            assert rows[dst]["synaptic_ops"] == pytest.approx(independent, rel=1e-12), dst
            assert independent > 0


def test_cifar_sized_airbench_student_quantises() -> None:
    """The reported failure: at 32 x 32 the first pooling path (24 x 31 x 31 -> 4 x 15 x 15) was refused as a
    900 x 23064 dense matrix; now every pooling path is one cropped strided convolution."""
    from lasnn.hardware.quantise import quantise

    student = _student(32, (4, 8, 8))
    graph = lower_student(student, {"dt": 1e-3, "timesteps": 4, "encoding": "direct", "num_classes": 10})
    lg, _ = quantise(graph, _stream(student, 32))
    cropped = _pool_conv_synapses(lg)
    assert sorted(s.geometry.crop for s in cropped.values()) == [(6, 6), (14, 14), (30, 30)]
    first = next(s for s in cropped.values() if s.geometry.crop == (30, 30))
    assert first.weight.shape == (4, 24, 6, 6) and first.geometry.padding == (2, 2)
    assert all(s.kind == "conv" for s in lg.synapses if s.geometry is not None and s.geometry.crop is None)
    # resources: every structural connection counted, the kernel stored once per core as for a Conv
    from lasnn.hardware import loihi_limits as lim
    from lasnn.hardware.resources import estimate_resources

    rows = {row["name"]: row for row in estimate_resources(lg)["layers"]}
    for syn in cropped.values():
        cores = -(-lg.layers[syn.dst].size // lim.NEURONS_PER_CORE)
        assert rows[syn.dst]["synapses"] == conv_matrix(np.ones_like(syn.weight), syn.geometry).nnz
        assert rows[syn.dst]["stored_weights"] == np.count_nonzero(syn.weight) * cores
    # a Lava Conv cannot crop: the contract check refuses a conv synapse that carries one
    from dataclasses import replace

    from lasnn.errors import LasnnError
    from lasnn.hardware.loihi_graph import check_loihi_graph

    bad = replace(first, kind="conv", weight=np.clip(first.weight, -128, 127), weight_exp=0)
    with pytest.raises(LasnnError, match="cropped to"):
        check_loihi_graph(replace(lg, synapses=[bad if s is first else s for s in lg.synapses]))
