"""``lasnn compile --bias-grid 64``: every neuron bias on the multiples of 64 that lava-dl netx holds (netx
fixes ``bias_exp = 6``), so a batch-norm student, i.e. every trained one, exports to netx and runs there
spike for spike as on lasnn's emulator.

References independent of the quantiser's own bookkeeping: the exact bias of every neuron is recomputed
from the student's batch norm (``fold_batch_norm``), the neuron's gain and the layer's stored scale, and
the grid's integers must be that value rounded to the nearest multiple of 64; the report's error and its
count of moved biases are checked against that recomputation and against the model compiled without the
grid; netx's own loader runs the file in Lava (``Loihi2SimCfg``) and its spikes equal the emulator's.
The airbench student's cropped pooled convolutions (``hardware/pool_conv.py``) have no netx block, which
the refusal says, with or without the grid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lasnn.cli import main
from lasnn.distill.students import SeqSynapse, vgg_student
from lasnn.errors import LasnnError
from lasnn.export.lowering import fold_batch_norm, lower_student
from lasnn.export.nir_io import write_nir
from lasnn.hardware.compiled_model import compile_graph, load_compiled
from lasnn.hardware.netx import write_netx
from lasnn.sims.emulator import EmulatorBackend
from lasnn.sims.netx_backend import netx_version

SIZE, T = 16, 4
META = {"dt": 1e-3, "timesteps": T, "encoding": "direct", "num_classes": 10, "input_shape": [3, SIZE, SIZE]}


def _random_bn(student: nn.Module, seed: int) -> nn.Module:
    """Eval-mode batch norm with random statistics and affine terms (non-trivial biases of both signs)."""
    torch.manual_seed(seed)
    for module in student.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(2.0, 4.0)
            module.bias.data.uniform_(-0.5, 1.5)
    return student.eval()


@pytest.fixture(scope="module")
def vgg(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small VGG student (16 x 16 input, LIF layers 4x16x16, 8x8x8, 8x8x8) with random batch norm,
    exported as ``lasnn export`` does and compiled by ``lasnn compile`` with and without the grid."""
    root = tmp_path_factory.mktemp("biasgrid")
    torch.manual_seed(0)
    student = vgg_student((3, SIZE, SIZE), 10, widths=((4,), (8, 8)), timesteps=T, encoding="direct")
    student = _random_bn(student, 0)
    graph = lower_student(student, META)
    write_nir(graph, root / "s.nir")
    np.save(root / "cal.npy", np.random.default_rng(1).uniform(-2, 2, (8, T, 3, SIZE, SIZE)))
    base = ["compile", str(root / "s.nir"), "--calibration", str(root / "cal.npy")]
    assert main([*base, "-o", str(root / "plain.lcm")]) == 0
    assert main([*base, "-o", str(root / "grid.lcm"), "--bias-grid", "64"]) == 0
    images = torch.as_tensor(np.random.default_rng(2).uniform(-2, 2, (2, 3, SIZE, SIZE))).float()
    return {
        "root": root,
        "student": student,
        "plain": load_compiled(root / "plain.lcm"),
        "grid": load_compiled(root / "grid.lcm"),
        "stream": student.encode(images).numpy().astype(np.float64),
    }


def _exact_biases(student: nn.Module, model) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Per LIF layer: the bias in Loihi's v units before any rounding, ``64 * scale * gain * b`` with ``b``
    the folded batch-norm shift of the synapse before it (recomputed from the student's modules)."""
    graph = model.graph()
    out = {}
    modules = dict(student.features.named_children())
    for name, layer in model.loihi.layers.items():
        if layer.kind != "lif":
            continue
        index = int(re.search(r"(\d+)$", name).group(1))  # features.<i> (or features_<i>)
        synapse = modules[str(index - 1)]
        assert isinstance(synapse, SeqSynapse)
        _, shift = fold_batch_norm(synapse, name)
        gain = np.asarray(graph.nodes[name].gain, dtype=np.float64)
        out[name] = 64.0 * layer.scale * gain * shift[:, None, None]
    return out


def test_bias_grid_rounds_every_bias_to_the_nearest_multiple_of_64(vgg: dict, capsys) -> None:
    grid, plain = vgg["grid"], vgg["plain"]
    exact = _exact_biases(vgg["student"], grid)
    assert len(exact) == 3
    rows = {r["name"]: r for r in grid.report["layers"]}
    moved = 0
    for name, value in exact.items():
        layer = grid.loihi.layers[name]
        bias = layer.bias()
        assert (layer.bias_exp == 6).all() and (bias % 64 == 0).all(), name
        np.testing.assert_array_equal(bias, np.rint(value / 64) * 64)  # the nearest multiple
        error = np.abs(bias - value)
        assert error.max() <= 32 and error.max() > 1, name  # at most half a step, and the grid bit
        row = rows[name]
        assert row["bias_grid"] == 64 and row["bias_clipped"] == 0
        assert row["bias_error_max"] == pytest.approx(error.max(), rel=1e-9)
        assert row["bias_error_threshold"] == pytest.approx(error.max() / (64 * layer.vth), rel=1e-9)
        # the free encoding at the same scale (where the grid did not change vth) is the plain model's
        if layer.vth == plain.loihi.layers[name].vth:
            expected = int((plain.loihi.layers[name].bias() != bias).sum())
            assert row["bias_rounded"] == expected > 0, name
        moved += row["bias_rounded"]
    assert grid.report["bias_grid"] == 64 and grid.report["biases_rounded"] == moved > 0
    assert grid.provenance["bias_grid"] == 64 and plain.provenance["bias_grid"] is None
    # the plain model keeps lasnn's free per-neuron exponent: some biases off the grid
    assert any((plain.loihi.layers[n].bias() % 64 != 0).any() for n in exact)
    # the verb prints what the grid cost
    root = vgg["root"]
    argv = ["compile", str(root / "s.nir"), "-o", str(root / "g2.lcm"), "--bias-grid", "64"]
    assert main([*argv, "--calibration", str(root / "cal.npy")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["bias_grid"] == 64 and summary["biases_rounded"] == moved
    assert summary["bias_error_threshold_max"] == pytest.approx(grid.report["bias_error_threshold_max"])


def test_bias_grid_bad_value_and_export_refusal_names_the_option(vgg: dict, tmp_path: Path, capsys) -> None:
    root = vgg["root"]
    for value in ("48", "0", "256"):
        code = main(["compile", str(root / "s.nir"), "-o", str(tmp_path / "x.lcm"), "--bias-grid", value])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "power of two" in err and "--bias-grid 64" in err, err
        assert not (tmp_path / "x.lcm").exists()
    # a model compiled without the grid: refused, and the sentence names the fix
    code = main(["export-netx", str(root / "plain.lcm"), "-o", str(tmp_path / "p.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "not multiples of 64" in err and "--bias-grid 64" in err, err
    assert not (tmp_path / "p.h5").exists()
    assert main(["export-netx", str(root / "grid.lcm"), "-o", str(tmp_path / "g.h5")]) == 0


@pytest.mark.skipif(netx_version() is None, reason="lava-dl (netx) is not installed; 'make netx' installs it")
@pytest.mark.lava
def test_netx_runs_the_bias_grid_student_spike_for_spike(vgg: dict, tmp_path: Path) -> None:
    from lasnn.sims.netx_backend import run_netx

    lg, stream = vgg["grid"].loihi, vgg["stream"]
    write_netx(vgg["grid"], tmp_path / "g.h5")
    emulated = EmulatorBackend(device="cpu", progress=False).run_loihi(lg, stream)
    netx = run_netx(tmp_path / "g.h5", stream)
    lif = [n for n, layer in lg.layers.items() if layer.kind == "lif"]
    assert set(netx.spikes) == set(emulated.spikes) == set(lif) and len(lif) == 3
    for name in lif:
        a = emulated.spikes[name]
        assert a.shape == (T, 2, *lg.layers[name].shape)
        np.testing.assert_array_equal(netx.spikes[name], a, err_msg=name)
        assert 0 < a.mean() < 1, name  # active, not saturated: a real comparison
    np.testing.assert_array_equal(netx.outputs, emulated.outputs)
    # the biases matter: without them the emulator's spikes differ (so netx really applied them)
    from copy import deepcopy

    unbiased = deepcopy(lg)
    for layer in unbiased.layers.values():
        layer.bias_mant = np.zeros_like(layer.bias_mant)
    other = EmulatorBackend(device="cpu", progress=False).run_loihi(unbiased, stream)
    assert all(not np.array_equal(other.spikes[n], emulated.spikes[n]) for n in lif)


def test_airbench_crop_is_refused_with_or_without_the_grid(tmp_path: Path) -> None:
    """The airbench student pools odd-sized images (15 -> 7 -> 3 here) before convolutions: cropped
    strided convs, which netx cannot express; the refusal says so before any bias problem."""
    from lasnn.distill.students import airbench_student

    student = _random_bn(airbench_student((3, SIZE, SIZE), 10, (4, 8, 8), timesteps=T), 3)
    graph = lower_student(student, META)
    calibration = np.random.default_rng(1).uniform(-2, 2, (4, T, 3, SIZE, SIZE))
    for grid in (None, 64):
        model = compile_graph(graph, calibration=calibration, bias_grid=grid)
        with pytest.raises(LasnnError) as info:
            write_netx(model, tmp_path / "a.h5")
        message = str(info.value)
        assert "reads its source cropped to 14 x 14" in message and "pads symmetrically" in message, message
        assert message.endswith(".") and "\n" not in message
        assert not (tmp_path / "a.h5").exists()
