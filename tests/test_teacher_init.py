"""``lasnn teach --init-from``: a QCFS teacher started from a trained teacher of the same network (weights
copied by name, lambdas calibrated layer by layer against an independent numpy reference), its refusals,
and the digits run end to end (the fine-tuned QCFS teacher beats one trained from scratch as long)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lasnn.distill.commands import teach
from lasnn.distill.qcfs import QCFS
from lasnn.distill.teacher_init import calibrate_qcfs, copy_weights, freeze_whitening, load_source_teacher
from lasnn.distill.teachers import airbench
from lasnn.errors import LasnnError


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A tiny GELU / max-pooling airbench with non-trivial weights and its QCFS / average-pooling twin."""
    torch.manual_seed(seed)
    source = airbench((3, 16, 16), 10, width=0.125, act="gelu", pool="max")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for value in source.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=g) * 0.3 + 0.1)
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.abs_().add_(0.5)
    target = airbench((3, 16, 16), 10, width=0.125, act="qcfs", pool="avg")
    return source, target


def test_copy_weights_copies_every_entry_but_the_thresholds() -> None:
    source, target = _pair()
    untouched = copy_weights(source, target)
    qcfs_names = {f"{n}.threshold" for n, m in target.named_modules() if isinstance(m, QCFS)}
    assert set(untouched) == qcfs_names and len(qcfs_names) == 7  # whitening stage + 2 per block
    source_state = source.state_dict()
    for name, value in target.state_dict().items():
        if name not in qcfs_names:
            assert torch.equal(value, source_state[name]), name
        else:
            assert float(value) == 8.0  # QCFS's own initial lambda, left for the calibration
    freeze_whitening(target)
    first = next(m for m in target.modules() if isinstance(m, nn.Conv2d))
    assert not first.weight.requires_grad and first.bias.requires_grad


def test_copy_weights_refuses_another_network() -> None:
    source, _ = _pair()
    wider = airbench((3, 16, 16), 10, width=0.25, act="qcfs", pool="avg")
    with pytest.raises(LasnnError, match="same network"):
        copy_weights(source, wider)


def test_calibration_matches_a_numpy_percentile_of_each_layer_input() -> None:
    """The first two lambdas against a hand-written forward pass: the whitening conv's output, then
    conv -> average pool -> batch norm with the batch's statistics (train mode) of the first block."""
    source, target = _pair()
    copy_weights(source, target)
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    running = {k: v.clone() for k, v in target.state_dict().items() if "running" in k}
    lambdas = calibrate_qcfs(target, images, p=99.0)
    with torch.no_grad():  # the reference computes values only
        first, second = _first_two_inputs(target, images, lambdas[0])
    assert lambdas[0] == pytest.approx(np.percentile(first, 99.0), rel=1e-6)
    assert lambdas[1] == pytest.approx(np.percentile(second, 99.0), rel=1e-4)
    qcfs = [m for m in target.modules() if isinstance(m, QCFS)]
    assert [float(q.threshold) for q in qcfs] == pytest.approx(lambdas)
    assert len(set(lambdas)) == len(lambdas)  # each layer its own
    for name, value in target.state_dict().items():  # the copied running statistics are kept
        if name in running:
            assert torch.equal(value, running[name]), name


def _first_two_inputs(target: nn.Module, images: torch.Tensor, lam0: float) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of the first two QCFS layers, computed from the weights without the module's forward."""
    stem_conv = target.stages[0][0]
    x0 = F.conv2d(images, stem_conv.weight, stem_conv.bias).double().numpy()
    q0 = lam0 * np.clip(np.floor(x0 * 4 / lam0 + 0.5) / 4, 0, 1)
    block = target.stages[1]
    y = F.avg_pool2d(F.conv2d(torch.from_numpy(q0).float(), block[0].weight, padding=1), 2)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    bn = block[2]
    y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return x0, y.double().numpy()


def test_init_from_refuses_another_width(tmp_path) -> None:
    teach("digits", tmp_path / "relu", epochs=1, seed=0)
    config = dict(arch="small_cnn", in_shape=[1, 8, 8], num_classes=10, width=0.5)
    with pytest.raises(LasnnError, match="width=1.0.*width=0.5"):
        load_source_teacher(tmp_path / "relu", config)
    with pytest.raises(LasnnError, match="no teacher.pt"):
        load_source_teacher(tmp_path / "nowhere", config)


def test_digits_qcfs_teacher_from_a_trained_one_beats_one_from_scratch(tmp_path) -> None:
    """One epoch of fine-tuning from a trained ReLU teacher against one epoch from scratch, same seed: the
    started one must be ahead (what the CIFAR table's fine-tuned QCFS teacher relies on)."""
    relu = teach("digits", tmp_path / "relu", epochs=4, seed=0)
    started = teach("digits", tmp_path / "qcfs_ft", epochs=1, activation="qcfs", init_from=tmp_path / "relu")
    scratch = teach("digits", tmp_path / "qcfs", epochs=1, activation="qcfs")
    assert started["init_from"].endswith("teacher.pt")
    assert len(started["calibrated_qcfs_thresholds"]) == 4
    assert started["test_accuracy"] > scratch["test_accuracy"] + 0.05, (started, scratch, relu)
    assert started["test_accuracy"] > 0.85
