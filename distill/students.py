"""Spiking students: the container every stage after training relies on, and its architectures.

A ``SpikingStudent`` is ``features`` (an ``nn.Sequential`` of the layer types in ``spiking_layers``)
followed by a linear ``head`` whose output currents, averaged over the T steps, are the logits (a
non-spiking readout; on Loihi an accumulating neuron). ``stage_ends`` names the feature indices whose
spike output is a "stage end" (the last layer before a change of spatial resolution), used to pair
student and teacher layers for the attention loss.
"""

from __future__ import annotations

import torch
from torch import nn

from lasnn.distill.spiking_layers import (
    NeuronConfig,
    ResidualBlock,
    SeqFlatten,
    SeqPool,
    SeqSynapse,
    SpikingNeurons,
)
from lasnn.encoding import ENCODINGS, encode


class SpikingStudent(nn.Module):
    """features -> flatten -> head; ``forward(images)`` encodes, runs T steps and returns logits."""

    def __init__(
        self,
        features: nn.Sequential,
        head: SeqSynapse,
        timesteps: int,
        encoding: str,
        stage_ends: list[str],
        config: dict | None = None,
    ) -> None:
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
        if timesteps < 1:
            raise ValueError(f"timesteps must be a positive integer, got {timesteps}")
        self.features = features
        self.flatten = SeqFlatten()
        self.head = head
        self.timesteps = timesteps
        self.encoding = encoding
        self.stage_ends = list(stage_ends)
        self.config = dict(config or {})  # architecture arguments, to rebuild from a checkpoint

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.encoding == "direct":
            # a view repeating the images over T (stride 0): the first synapse sees it and runs once
            return images.unsqueeze(0).expand(self.timesteps, *images.shape)
        return encode(images, self.timesteps, self.encoding, generator)

    def run(
        self, stream: torch.Tensor, record: bool = False, time_mean: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run an encoded ``[T, B, ...]`` stream; returns readout currents ``[T, B, classes]`` (with
        ``time_mean``, their mean over T, ``[B, classes]``: the logits) and, when ``record``, the spike output
        ``[T, B, C, H, W]`` of every stage end by name.

        With ``time_mean`` the mean over T is taken before the layers after the last neurons (pooling,
        flatten, a linear head without batch norm), which are linear and act on each step alike, so they
        run once instead of T times; the logits equal the mean of the currents up to float rounding."""
        recorded: dict[str, torch.Tensor] = {}
        children = list(self.features.named_children())
        tail = self._linear_tail() if time_mean else -1
        mean_at = len(children) - tail if tail >= 0 else None  # the layer index that gets the mean
        x = stream
        for index, (name, layer) in enumerate(children):
            if index == mean_at:
                x = x.mean(0, keepdim=True)
            x = layer(x)
            if record and name in self.stage_ends:
                recorded[name] = x
        if mean_at == len(children):
            x = x.mean(0, keepdim=True)
        currents = self.head(self.flatten(x))
        if not time_mean:
            return currents, recorded
        return (currents[0] if mean_at is not None else currents.mean(0)), recorded

    def _linear_tail(self) -> int:
        """How many trailing feature layers (pooling) may take the time mean first; -1 if the head cannot
        (batch norm in training mode does not commute with it)."""
        if self.head.norm is not None:
            return -1
        tail = 0
        for layer in reversed(list(self.features.children())):
            if not isinstance(layer, SeqPool):
                break
            tail += 1
        return tail

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits, _ = self.run(self.encode(images, generator), time_mean=True)
        return logits

    def neuron_layers(self) -> list[tuple[str, SpikingNeurons]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, SpikingNeurons)]


def _conv_block(c_in: int, c_out: int, neuron: NeuronConfig, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    return [SeqSynapse(conv, nn.BatchNorm2d(c_out)), SpikingNeurons(neuron)]


def vgg_student(
    in_shape: tuple[int, int, int],
    num_classes: int,
    widths: tuple[tuple[int, ...], ...] = ((32,), (64,)),
    timesteps: int = 4,
    encoding: str = "direct",
    neuron: NeuronConfig | None = None,
    pool: str = "avg",
) -> SpikingStudent:
    """VGG-like student: stages of 3x3 conv+BN+LIF, each stage ended by 2x2 pooling.

    ``widths[s]`` lists the conv widths of stage ``s``; depth and width are set by it.
    """
    neuron = neuron or NeuronConfig()
    layers: list[nn.Module] = []
    stage_ends: list[str] = []
    c, h, w = in_shape
    for stage in widths:
        for width in stage:
            layers += _conv_block(c, width, neuron)
            c = width
        stage_ends.append(str(len(layers) - 1))  # the neurons just before pooling
        layers.append(SeqPool(pool, 2))
        h, w = h // 2, w // 2
    head = SeqSynapse(nn.Linear(c * h * w, num_classes))
    config = dict(
        arch="vgg",
        in_shape=list(in_shape),
        num_classes=num_classes,
        widths=[list(s) for s in widths],
        pool=pool,
        neuron=neuron.to_dict(),
    )
    return SpikingStudent(nn.Sequential(*layers), head, timesteps, encoding, stage_ends, config)


def resnet_student(
    in_shape: tuple[int, int, int],
    num_classes: int,
    widths: tuple[int, ...] = (32, 64),
    blocks_per_stage: int = 1,
    timesteps: int = 4,
    encoding: str = "direct",
    neuron: NeuronConfig | None = None,
    pool: str = "avg",
) -> SpikingStudent:
    """ResNet-like student: a stem conv, then per stage ``blocks_per_stage`` residual blocks (the first
    of a stage downsamples by stride 2 with a 1x1 conv+BN shortcut), then a 2x2 pooling (not global
    pooling, so that the linear readout still sees the spatial layout)."""
    neuron = neuron or NeuronConfig()
    c, h, w = in_shape
    layers: list[nn.Module] = _conv_block(c, widths[0], neuron)
    c = widths[0]
    stage_ends: list[str] = []
    for s, width in enumerate(widths):
        for b in range(blocks_per_stage):
            stride = 2 if (s > 0 and b == 0) else 1
            branch = nn.Sequential(
                *_conv_block(c, width, neuron, stride=stride),
                SeqSynapse(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)),
            )
            shortcut = None
            if stride != 1 or c != width:
                shortcut = SeqSynapse(
                    nn.Conv2d(c, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            layers.append(ResidualBlock(branch, shortcut, SpikingNeurons(neuron)))
            c = width
            if stride == 2:
                h, w = (h + 1) // 2, (w + 1) // 2
        stage_ends.append(str(len(layers) - 1))
    layers.append(SeqPool(pool, 2))
    h, w = h // 2, w // 2
    head = SeqSynapse(nn.Linear(c * h * w, num_classes))
    config = dict(
        arch="resnet",
        in_shape=list(in_shape),
        num_classes=num_classes,
        widths=list(widths),
        blocks_per_stage=blocks_per_stage,
        pool=pool,
        neuron=neuron.to_dict(),
    )
    return SpikingStudent(nn.Sequential(*layers), head, timesteps, encoding, stage_ends, config)


def airbench_student(
    in_shape: tuple[int, int, int],
    num_classes: int,
    widths: tuple[int, ...] = (64, 256, 256),
    timesteps: int = 4,
    encoding: str = "direct",
    neuron: NeuronConfig | None = None,
    pool: str = "avg",
) -> SpikingStudent:
    """The spiking twin of the airbench teacher (``teachers.airbench``): a 2x2 whitening conv (frozen by
    ``teachers.whiten_first_conv``) + BN + LIF, then per width a 2x2 pooling and two 3x3 conv+BN+LIF.

    Differences from the ANN, each for the chip: LIF neurons instead of GELU, average (or sum) pooling of
    spikes instead of max pooling, pooling before the block's first conv (so it composes into that
    synapse) rather than between conv and BN, and a linear readout over the whole last 3x3 map instead
    of a global max pool. Stage ends (31, 15, 7, 3 pixels for CIFAR) match the teacher's."""
    neuron = neuron or NeuronConfig()
    c, h, w = in_shape
    whiten_width = 2 * c * 4
    stem = nn.Conv2d(c, whiten_width, 2, bias=False)
    layers: list[nn.Module] = [SeqSynapse(stem, nn.BatchNorm2d(whiten_width)), SpikingNeurons(neuron)]
    stage_ends = [str(len(layers) - 1)]
    c, h, w = whiten_width, h - 1, w - 1
    for width in widths:
        layers.append(SeqPool(pool, 2))
        h, w = h // 2, w // 2
        layers += _conv_block(c, width, neuron) + _conv_block(width, width, neuron)
        c = width
        stage_ends.append(str(len(layers) - 1))
    head = SeqSynapse(nn.Linear(c * h * w, num_classes))
    config = dict(
        arch="airbench",
        in_shape=list(in_shape),
        num_classes=num_classes,
        widths=list(widths),
        pool=pool,
        neuron=neuron.to_dict(),
    )
    return SpikingStudent(nn.Sequential(*layers), head, timesteps, encoding, stage_ends, config)


def build_student(config: dict, timesteps: int, encoding: str) -> SpikingStudent:
    """Rebuild a student from the ``config`` dict it carries (as saved in checkpoints)."""
    neuron = NeuronConfig(**config["neuron"])
    common = dict(
        in_shape=tuple(config["in_shape"]),
        num_classes=config["num_classes"],
        timesteps=timesteps,
        encoding=encoding,
        neuron=neuron,
        pool=config.get("pool", "avg"),
    )
    if config["arch"] == "vgg":
        return vgg_student(widths=tuple(tuple(s) for s in config["widths"]), **common)
    if config["arch"] == "airbench":
        return airbench_student(widths=tuple(config["widths"]), **common)
    if config["arch"] == "resnet":
        return resnet_student(
            widths=tuple(config["widths"]), blocks_per_stage=config["blocks_per_stage"], **common
        )
    raise ValueError(
        f"unknown student architecture {config['arch']!r}; expected 'vgg', 'resnet' or 'airbench'"
    )
