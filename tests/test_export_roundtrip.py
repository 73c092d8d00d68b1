"""Export round trip: student -> graph -> NIR file -> graph -> float reference reproduces the student's own
spikes (every layer, float64), for VGG and ResNet students, every encoding and neuron kind, with random
weights and non-trivial batch-norm statistics; the NIR file's continuous parameters are checked against
hand-derived values, and an independent reader (norse's NIR node mappings) is run on the same file."""

from __future__ import annotations

import copy
import sys
from functools import partial

import nir
import nirtorch
import numpy as np
import pytest
import torch
from torch import nn

from lasnn.distill.spiking_layers import NeuronConfig, SeqSynapse, SpikingNeurons
from lasnn.distill.students import SpikingStudent, resnet_student, vgg_student
from lasnn.errors import LasnnError
from lasnn.export.graph import Conv2d, Neuron
from lasnn.export.lowering import fold_batch_norm, lower_student
from lasnn.export.nir_io import nir_to_graph, read_nir, write_nir
from lasnn.sims.float_backend import FloatBackend

SHAPE = (2, 8, 8)
DT = 1e-3


def make_student(arch: str, kind: str, encoding: str, pool: str = "avg", seed: int = 0) -> SpikingStudent:
    """A small student with random weights and random (eval-mode) batch-norm statistics, scaled so that
    every layer spikes sometimes but not always."""
    torch.manual_seed(seed)
    neuron = NeuronConfig(kind=kind, dt=DT, tau_mem_inv=300.0, tau_syn_inv=700.0, v_th=1.0)
    if arch == "vgg":
        student = vgg_student(
            SHAPE, 5, widths=((4,), (6,)), timesteps=4, encoding=encoding, neuron=neuron, pool=pool
        )
    else:
        student = resnet_student(
            SHAPE, 5, widths=(4, 6), timesteps=4, encoding=encoding, neuron=neuron, pool=pool
        )
    gamma, beta = ((1.0, 2.0), (-0.5, 0.5)) if kind == "if" else ((2.0, 4.0), (0.3, 1.5))  # IF never leaks
    for module in student.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(*gamma)
            module.bias.data.uniform_(*beta)
    return student.eval()


def student_run(student: SpikingStudent, stream: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The student's readout currents and every neuron layer's spikes, recorded with forward hooks."""
    spikes: dict[str, np.ndarray] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: spikes.__setitem__(n, out.detach().numpy() > 0))
        for n, m in student.neuron_layers()
    ]
    with torch.no_grad():
        currents, _ = student.run(stream)
    for hook in hooks:
        hook.remove()
    return currents.numpy(), spikes


def encoded(student: SpikingStudent, samples: int = 3) -> torch.Tensor:
    images = torch.randn(samples, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return student.encode(images, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("encoding", ["direct", "poisson", "latency"])
@pytest.mark.parametrize("kind", ["lifbox", "cubalif", "if"])
@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_round_trip_reproduces_student_spikes(tmp_path, arch, kind, encoding):
    student = make_student(arch, kind, encoding)
    graph = lower_student(student, {"dt": DT, "dataset": "unit", "mean": [0.1, 0.2], "std": [0.3, 0.4]})
    path = tmp_path / "model.nir"
    write_nir(graph, path)
    nir.read(path, type_check=True)  # readable by nir itself, type checking on
    back = read_nir(path)
    double = copy.deepcopy(student).double()
    stream = encoded(double)
    currents, spikes = student_run(double, stream)
    result = FloatBackend(np.float64, progress=False).run(back, stream.numpy())
    assert sorted(result.spikes) == sorted(spikes)
    for name, train in spikes.items():
        assert 0.0 < train.mean() < 0.95, f"layer {name} is silent or saturated; the test would be trivial"
        np.testing.assert_array_equal(result.spikes[name], train, err_msg=f"layer {name}")
    np.testing.assert_array_equal(result.outputs, currents)
    meta = back.metadata
    assert (meta["dt"], meta["timesteps"], meta["encoding"], meta["readout"]) == (
        DT,
        4,
        encoding,
        "mean_current",
    )
    assert meta["input_shape"] == list(SHAPE) and meta["num_classes"] == 5 and meta["std"] == [0.3, 0.4]


def test_continuous_parameters_follow_the_documented_convention(tmp_path):
    """dt/tau, r and w_in in the file, derived by hand from the norse parameters the student trains with."""
    for kind in ("lifbox", "cubalif", "if"):
        student = make_student("vgg", kind, "direct")
        write_nir(lower_student(student, {"dt": DT}), tmp_path / f"{kind}.nir")
        g = nir.read(tmp_path / f"{kind}.nir")
        assert tuple(g.nodes["input"].input_type["input"]) == SHAPE  # no batch dimension
        assert isinstance(g.nodes["flatten"], nir.Flatten) and isinstance(g.nodes["features.0"], nir.Conv2d)
        assert tuple(g.nodes["features.0"].input_shape) == SHAPE[1:]
        assert isinstance(g.nodes["features.2"], nir.SumPool2d) and isinstance(
            g.nodes["features.2.scale"], nir.Scale
        )
        np.testing.assert_allclose(g.nodes["features.2.scale"].scale, 0.25)
        layer = g.nodes["features.1"]
        assert layer.v_threshold.shape == (4, 8, 8)  # per neuron, not 0-d
        if kind == "lifbox":  # v += dt*tau_mem_inv*(v_leak - v + I): tau = 1/tau_mem_inv, r = 1
            assert isinstance(layer, nir.LIF)
            np.testing.assert_allclose(layer.tau, 1 / 300.0, rtol=1e-6)
            np.testing.assert_allclose(layer.r, 1.0, rtol=1e-12)
        elif kind == "cubalif":  # i = i(1 - dt/tau_syn) + I: w_in = tau_syn/dt so that dt/tau_syn * w_in = 1
            assert isinstance(layer, nir.CubaLIF)
            np.testing.assert_allclose(layer.tau_mem, 1 / 300.0, rtol=1e-6)
            np.testing.assert_allclose(layer.tau_syn, 1 / 700.0, rtol=1e-6)
            np.testing.assert_allclose(layer.w_in, (1 / 700.0) / DT, rtol=1e-6)
            np.testing.assert_allclose(layer.r, 1.0, rtol=1e-12)
        else:  # v += I per step: r = 1
            assert isinstance(layer, nir.IF)
            np.testing.assert_allclose(layer.r, 1.0)
            np.testing.assert_allclose(layer.v_reset, 0.0)


def test_continuous_parameters_alone_reproduce_the_spikes(tmp_path):
    """Without lasnn's exact-value metadata (as any other writer's file), the spikes are still the same."""
    student = make_student("resnet", "cubalif", "direct")
    write_nir(lower_student(student, {"dt": DT}), tmp_path / "m.nir")
    g = nir.read(tmp_path / "m.nir")
    for node in g.nodes.values():
        node.metadata = {}
    graph = nir_to_graph(g, dt=DT)
    reference = read_nir(tmp_path / "m.nir")
    layer = "features.1"
    assert not np.array_equal(graph.nodes[layer].alpha_v, np.zeros(1))
    np.testing.assert_allclose(graph.nodes[layer].gain, reference.nodes[layer].gain, rtol=1e-12)
    double = copy.deepcopy(student).double()
    stream = encoded(double)
    _, spikes = student_run(double, stream)
    result = FloatBackend(np.float64, progress=False).run(graph, stream.numpy())
    for name, train in spikes.items():
        np.testing.assert_array_equal(result.spikes[name], train, err_msg=name)


def test_batch_norm_folding_matches_eval_batch_norm():
    torch.manual_seed(1)
    synapse = SeqSynapse(nn.Conv2d(3, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5)).double()
    synapse.norm.running_mean.uniform_(-1, 1)
    synapse.norm.running_var.uniform_(0.2, 3)
    synapse.norm.weight.data.uniform_(-2, 2)
    synapse.norm.bias.data.uniform_(-1, 1)
    synapse.eval()
    x = torch.randn(2, 4, 3, 6, 6, dtype=torch.float64)
    weight, bias = fold_batch_norm(synapse, "s")
    folded = nn.functional.conv2d(
        x.flatten(0, 1), torch.from_numpy(weight), torch.from_numpy(bias), padding=1
    )
    with torch.no_grad():
        np.testing.assert_allclose(
            folded.unflatten(0, (2, 4)).numpy(), synapse(x).numpy(), rtol=1e-10, atol=1e-12
        )


def test_graph_structure_of_a_residual_student():
    graph = lower_student(make_student("resnet", "lifbox", "direct"), {"dt": DT})
    # identity shortcut: the block input (a neuron layer) feeds the block's neurons directly
    assert sorted(graph.sources("features.2.neurons")) == ["features.1", "features.2.branch.2"]
    # downsampling block: branch and 1x1 shortcut conv both feed the neurons
    assert sorted(graph.sources("features.3.neurons")) == ["features.3.branch.2", "features.3.shortcut"]
    assert isinstance(graph.nodes["features.3.shortcut"], Conv2d)
    assert graph.nodes["features.3.shortcut"].stride == (2, 2)
    assert all(n.bias is not None for n in graph.nodes.values() if isinstance(n, Conv2d))  # BN folded in


def _norse_reader(path, dt: float) -> torch.nn.Module:
    """norse 1.1.0's NIR node mappings, wired by nirtorch's graph interpreter (an independent reader)."""
    from norse.torch.utils.import_nir import _import_norse_module

    mapping = partial(_import_norse_module, dt=dt, ignore_warnings=True)
    node_map = {
        t: mapping for t in (nir.LIF, nir.IF, nir.CubaLIF, nir.SumPool2d, nir.Affine, nir.Conv2d, nir.Flatten)
    }
    return nirtorch.nir_to_torch(nir.read(path), node_map, dtype=torch.float64)


def _run_stepwise(module: torch.nn.Module, stream: torch.Tensor) -> np.ndarray:
    """One sample at a time without a batch dimension (NIR shapes have none), T steps with state."""
    outputs = []
    for b in range(stream.shape[1]):
        state, steps = None, []
        for t in range(stream.shape[0]):
            out, state = module(stream[t, b], state)
            steps.append(out.detach())
        outputs.append(torch.stack(steps))
    return torch.stack(outputs, 1).numpy()


@pytest.mark.parametrize("kind", ["lifbox", "cubalif", "if"])
@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_norse_reader_agrees_with_float_reference(tmp_path, arch, kind):
    """norse has no mapping for NIR Scale/AvgPool2d, so these students use sum pooling."""
    student = make_student(arch, kind, "direct", pool="sum")
    path = tmp_path / "model.nir"
    write_nir(lower_student(student, {"dt": DT}), path)
    stream = encoded(copy.deepcopy(student).double(), samples=2)
    ours = FloatBackend(np.float64, progress=False).run(read_nir(path), stream.numpy())
    theirs = _run_stepwise(_norse_reader(path, DT), stream)
    assert ours.outputs.shape == theirs.shape
    np.testing.assert_allclose(theirs, ours.outputs, rtol=0, atol=1e-12)
    assert np.abs(ours.outputs).max() > 0.1  # the readout is not trivially zero


@pytest.mark.parametrize("kind", ["lifbox", "cubalif", "if"])
def test_norse_from_nir_agrees_on_a_feed_forward_student(tmp_path, kind):
    """``norse.torch.from_nir`` itself (nirtorch's deprecated ``load`` executor) on a VGG student. On
    residual graphs that executor returns the output of the wrong node (it takes the last node of its
    depth-first order), hence the ResNet cross-check above wires norse's mappings with ``nir_to_torch``."""
    import norse.torch

    student = make_student("vgg", kind, "direct", pool="sum")
    path = tmp_path / "model.nir"
    write_nir(lower_student(student, {"dt": DT}), path)
    stream = encoded(copy.deepcopy(student).double(), samples=2)
    ours = FloatBackend(np.float64, progress=False).run(read_nir(path), stream.numpy())
    module = norse.torch.from_nir(nir.read(path), dt=DT, ignore_warnings=True).double()
    np.testing.assert_allclose(_run_stepwise(module, stream), ours.outputs, rtol=0, atol=1e-12)


def test_float32_backend_close_to_float64(tmp_path):
    graph = lower_student(make_student("resnet", "lifbox", "direct"), {"dt": DT})
    stream = encoded(make_student("resnet", "lifbox", "direct")).numpy()
    r64 = FloatBackend(np.float64, progress=False).run(graph, stream)
    r32 = FloatBackend(np.float32, progress=False, batch_size=2).run(graph, stream)  # chunked batches too
    assert r32.outputs.dtype == np.float32 and r32.outputs.shape == r64.outputs.shape
    for name, train in r64.spikes.items():
        assert (r32.spikes[name] == train).mean() > 0.99, name


def test_refusals():
    subtract = make_student("vgg", "if", "direct")
    for m in subtract.modules():
        if isinstance(m, SpikingNeurons):
            m.config = NeuronConfig(kind="if", reset="subtract")
    with pytest.raises(LasnnError, match="subtraction"):
        lower_student(subtract, {"dt": DT})
    maxpool = make_student("vgg", "lifbox", "direct")
    maxpool.features[2] = nn.MaxPool2d(2)
    with pytest.raises(LasnnError, match="max pooling"):
        lower_student(maxpool, {"dt": DT})


def test_converted_network_round_trip(tmp_path):
    """An ANN->SNN converted network (IF neurons, per-layer thresholds, reset to zero) exports exactly."""
    from lasnn.distill.conversion import convert
    from lasnn.distill.teachers import build_teacher

    torch.manual_seed(3)
    teacher = build_teacher(dict(arch="small_cnn", in_shape=list(SHAPE), num_classes=5, width=0.25))
    images = torch.randn(16, *SHAPE)
    converted = convert(teacher, images, timesteps=6, reset="zero", pooling="avg")
    graph = lower_student(converted, {"dt": DT})
    thresholds = {float(n.v_threshold.flat[0]) for n in graph.nodes.values() if isinstance(n, Neuron)}
    assert len(thresholds) > 1  # per-layer thresholds survive
    write_nir(graph, tmp_path / "c.nir")
    double = copy.deepcopy(converted).double()
    stream = double.encode(images[:3].double())
    currents, spikes = student_run(double, stream)
    result = FloatBackend(np.float64, progress=False).run(read_nir(tmp_path / "c.nir"), stream.numpy())
    assert sum(s.sum() for s in spikes.values()) > 0
    for name, train in spikes.items():
        np.testing.assert_array_equal(result.spikes[name], train, err_msg=name)
    np.testing.assert_allclose(result.outputs, currents, rtol=0, atol=1e-12)
    subtract = convert(teacher, images, timesteps=6, reset="subtract")
    with pytest.raises(LasnnError, match="subtraction"):
        lower_student(subtract, {"dt": DT})


def _cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    import lasnn.cli

    monkeypatch.setattr(lasnn.cli, "STAGE_COMMANDS", ("lasnn.export.commands",))
    code = lasnn.cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports_student_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    from lasnn.distill.checkpoints import save_student

    student = make_student("vgg", "lifbox", "poisson")
    meta = dict(
        dataset="unit",
        data_root=None,
        input_shape=list(SHAPE),
        num_classes=5,
        mean=[0.0, 0.0],
        std=[1.0, 1.0],
        seed=0,
        dt=DT,
        loss="lasnn",
        teacher="none",
    )
    save_student(tmp_path / "student.pt", student, meta)
    code, out, err = _cli(
        monkeypatch, capsys, "export", str(tmp_path / "student.pt"), "-o", str(tmp_path / "m.nir")
    )
    assert code == 0, err
    assert "reproduces the student's" in out
    graph = read_nir(tmp_path / "m.nir")
    assert graph.metadata["encoding"] == "poisson" and graph.metadata["dataset"] == "unit"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, out, err = _cli(
        monkeypatch, capsys, "export", str(tmp_path / "junk.pt"), "-o", str(tmp_path / "x.nir")
    )
    assert code == 2 and "junk.pt" in err and "Traceback" not in err and err.count("\n") == 1
    code, out, err = _cli(
        monkeypatch, capsys, "export", str(tmp_path / "student.pt"), "--onnx", str(tmp_path / "x.onnx")
    )
    assert code == 2 and "ONNX export is for teachers" in err
    assert not (tmp_path / "x.nir").exists() and not (tmp_path / "x.onnx").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
