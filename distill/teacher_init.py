"""Start a teacher from another trained teacher of the same architecture (``lasnn teach --init-from``).

Why: a QCFS teacher trained from scratch for 10 epochs stays ~5 points below the GELU airbench teacher of
the same width on CIFAR-10 (85.1 against 89.9 %, bench/results/cifar10_cpu_v6_intel_qcfs_w1.md), and its
conversion, and every student fine-tuned from that conversion, inherit the gap. Conversion work usually
starts QCFS-style (quantised, clipped) networks from a trained full-precision one; here the trained GELU /
max-pooling teacher gives the QCFS / average-pooling one every weight (the two differ only in parameter-free
modules) and each QCFS layer's lambda is calibrated on training images, then ``teach`` fine-tunes it.

Written by hand: copying a state dict between two variants of one lasnn network and calibrating lambda
layer by layer is specific to lasnn's teachers; no library does it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from lasnn.distill.checkpoints import load_teacher, teacher_path_of
from lasnn.distill.conversion import percentile
from lasnn.distill.qcfs import QCFS
from lasnn.distill.teachers import whitening_conv
from lasnn.errors import LasnnError

# the architecture keys that must agree (activation and pooling may differ: they carry no weights)
SHAPE_KEYS = ("arch", "in_shape", "num_classes", "width")
CALIBRATION_PERCENTILE = 99.9  # as lasnn convert's default for ReLU layers (conversion.convert)


def load_source_teacher(path: str | os.PathLike, config: dict) -> nn.Module:
    """The trained teacher at ``path`` (file or ``teach --out`` folder), checked to share ``config``'s
    architecture, input shape, classes and width."""
    file = teacher_path_of(path)
    if not file.is_file():
        raise LasnnError(
            f"--init-from {path} has no teacher.pt; pass a folder or file written by lasnn teach."
        )
    source, blob = load_teacher(file)
    mismatched = [k for k in SHAPE_KEYS if blob["config"].get(k) != config.get(k)]
    if mismatched:
        found = ", ".join(f"{k}={blob['config'].get(k)!r}" for k in mismatched)
        wanted = ", ".join(f"{k}={config.get(k)!r}" for k in mismatched)
        raise LasnnError(
            f"--init-from {file} is a teacher with {found}, but this run builds {wanted}; "
            "pass the same --arch and --width as the source teacher (and the same data set)."
        )
    return source


def copy_weights(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every parameter and buffer of ``source`` into ``target`` by name; returns the target's entries
    left as they were, which may only be QCFS thresholds (an error otherwise: the variants differ)."""
    source_state = source.state_dict()
    target_state = target.state_dict()
    untouched = []
    with torch.no_grad():
        for name, value in target_state.items():
            if name in source_state and source_state[name].shape == value.shape:
                value.copy_(source_state[name])
            else:
                untouched.append(name)
    qcfs = {f"{n}.threshold" for n, m in target.named_modules() if isinstance(m, QCFS)}
    unexpected = [n for n in untouched if n not in qcfs]
    if unexpected:
        raise LasnnError(
            f"--init-from: the source teacher has no weights of this shape for {', '.join(unexpected[:3])}; "
            "it must be the same network with another activation or pooling."
        )
    return untouched


def freeze_whitening(model: nn.Module) -> None:
    """Keep a copied 2x2 patch-whitening first conv frozen, as ``teachers.whiten_first_conv`` leaves it."""
    first = whitening_conv(model)
    if first is not None:
        first.weight.requires_grad_(False)


def _input_of(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``images``."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return seen[0]


@torch.no_grad()
def calibrate_qcfs(model: nn.Module, images: torch.Tensor, p: float = CALIBRATION_PERCENTILE) -> list[float]:
    """Set each QCFS layer's lambda, in network order, to the ``p``-th percentile of its input on
    ``images`` (normalised ``[N, C, H, W]``), with the layers before it already set; returns the lambdas.

    Batch norms use the batch's statistics (train mode): the copied running statistics were measured
    behind max pooling and GELU, not behind the average pooling and QCFS that now precede them."""
    layers = [m for m in model.modules() if isinstance(m, QCFS)]
    was_training = model.training
    model.train()
    saved_momenta = {}
    for module in model.modules():  # calibration passes must not move the copied running statistics
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            saved_momenta[module] = module.momentum
            module.momentum = 0.0
    lambdas = []
    try:
        for layer in layers:
            value = percentile(_input_of(model, layer, images), p)
            if not value > 0:
                raise LasnnError(
                    "--init-from: a QCFS layer's input is never positive on the calibration images; "
                    "the source teacher does not fit this network."
                )
            layer.threshold.fill_(value)
            lambdas.append(value)
    finally:
        for module, momentum in saved_momenta.items():
            module.momentum = momentum
        model.train(was_training)
    return lambdas
