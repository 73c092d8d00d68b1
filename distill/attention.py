"""Spatial attention maps and the pairing of teacher and student layers for the LaSNN attention loss.

An attention map is channel-agnostic (Zagoruyko & Komodakis 2017, "Paying more attention to attention"):
``A = normalize_L2(flatten(sum_c |a_c|^p))``, so an ANN layer and an SNN layer of different widths can be
compared. The student's activation is its spike train aggregated over the T steps: the firing rate
(``rate``, mean of the spikes) or the mean membrane potential (``membrane``). Written by hand: no library
provides attention transfer between ANN and SNN layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lasnn.distill.spiking_layers import ResidualBlock, SpikingNeurons
from lasnn.distill.students import SpikingStudent
from lasnn.errors import LasnnError

AGGREGATES = ("rate", "membrane")


def attention_map(
    activation: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, h*w]``: sum over channels of ``|a|^p``, resized to ``size`` by adaptive
    average pooling when given and different, flattened and L2-normalised per sample."""
    summed = activation.abs().pow(p).sum(dim=1, keepdim=True)
    if size is not None and tuple(summed.shape[-2:]) != tuple(size):
        summed = F.adaptive_avg_pool2d(summed, size)
    return F.normalize(summed.flatten(1), p=2, dim=1)


def stage_end_neurons(student: SpikingStudent, name: str) -> SpikingNeurons:
    """The neurons whose spikes are the output of the stage-end layer ``name`` of ``student.features``."""
    layer = dict(student.features.named_children())[name]
    if isinstance(layer, SpikingNeurons):
        return layer
    if isinstance(layer, ResidualBlock):
        return layer.neurons
    raise ValueError(f"student stage end {name!r} is a {type(layer).__name__}, not a spiking layer")


def set_membrane_recording(student: SpikingStudent, names: list[str], on: bool) -> None:
    """Make the paired stage ends keep their membrane potential (needed for ``membrane`` aggregation)."""
    for name in names:
        neurons = stage_end_neurons(student, name)
        neurons.record_membrane = on
        if not on:
            neurons.membrane = None


def aggregate(student: SpikingStudent, name: str, spikes: torch.Tensor, mode: str) -> torch.Tensor:
    """The student's activation at stage end ``name`` over T steps: ``[T, B, ...]`` -> ``[B, ...]``."""
    if mode == "rate":
        return spikes.mean(0)
    if mode == "membrane":
        membrane = stage_end_neurons(student, name).membrane
        if membrane is None:
            raise RuntimeError(f"stage end {name!r} did not record its membrane; call set_membrane_recording")
        return membrane.mean(0)
    raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATES)}")


def _log_distance(a: tuple[int, int], b: tuple[int, int]) -> float:
    return abs(math.log(a[0] * a[1]) - math.log(b[0] * b[1]))


def pair_layers(
    student_sizes: dict[str, tuple[int, int]],
    teacher_sizes: dict[str, tuple[int, int]],
    override: str | None = None,
) -> list[tuple[str, str]]:
    """Pair student and teacher stage ends: ``[(student_name, teacher_name), ...]``.

    Automatic: each student stage end larger than 1x1 is paired with the teacher stage end of the same
    spatial resolution, or else of the nearest (ties go to the deeper teacher layer); maps of different
    size are resized to the smaller of the two by adaptive average pooling. ``override`` is
    ``"s1:t1,s2:t2"`` by layer name.
    """
    if override:
        pairs = []
        for item in override.split(","):
            student_name, sep, teacher_name = item.strip().partition(":")
            if not sep:
                raise LasnnError(f"--pairs entry {item!r} is not of the form student_layer:teacher_layer.")
            if student_name not in student_sizes:
                raise LasnnError(
                    f"--pairs names student layer {student_name!r}, which is not a stage end of the "
                    f"student; choose from {', '.join(student_sizes)}."
                )
            if teacher_name not in teacher_sizes:
                raise LasnnError(
                    f"--pairs names teacher layer {teacher_name!r}, which is not a stage end of the "
                    f"teacher; choose from {', '.join(teacher_sizes)}."
                )
            pairs.append((student_name, teacher_name))
        return pairs
    candidates = [(n, s) for n, s in teacher_sizes.items() if s[0] * s[1] > 1]
    if not candidates:
        return []
    pairs = []
    for student_name, size in student_sizes.items():
        if size[0] * size[1] <= 1:
            continue
        best = min(reversed(candidates), key=lambda item: _log_distance(item[1], size))
        pairs.append((student_name, best[0]))
    return pairs


class AttentionProbe:
    """Runs teacher and student once on a small batch to learn their stage-end names and sizes, and pairs
    them; afterwards gives the paired maps of a training batch."""

    def __init__(
        self,
        teacher: nn.Module,
        student: SpikingStudent,
        example: torch.Tensor,
        p: float = 2.0,
        aggregation: str = "rate",
        override: str | None = None,
    ) -> None:
        if aggregation not in AGGREGATES:
            raise LasnnError(
                f"--aggregate {aggregation!r} is unknown; expected one of {', '.join(AGGREGATES)}."
            )
        self.p = p
        self.aggregation = aggregation
        with torch.no_grad():
            was = teacher.training, student.training
            teacher.eval()
            student.eval()
            _, teacher_ends = teacher.forward_features(example)
            _, recorded = student.run(student.encode(example)[:1], record=True)
            teacher.train(was[0])
            student.train(was[1])
        names = list(getattr(teacher, "stage_names", [f"t{i}" for i in range(len(teacher_ends))]))
        self.teacher_index = {name: i for i, name in enumerate(names)}
        teacher_sizes = {name: tuple(a.shape[-2:]) for name, a in zip(names, teacher_ends, strict=True)}
        self.student_sizes = {name: tuple(s.shape[-2:]) for name, s in recorded.items() if s.dim() == 5}
        self.pairs = pair_layers(self.student_sizes, teacher_sizes, override)
        # maps of a pair are compared at the smaller of the two resolutions
        self.sizes = [
            tuple(min(a, b) for a, b in zip(self.student_sizes[s], teacher_sizes[t], strict=True))
            for s, t in self.pairs
        ]

    def teacher_maps(self, teacher_ends: list[torch.Tensor]) -> list[torch.Tensor]:
        """Teacher attention maps of the paired layers, in pair order."""
        return [
            attention_map(teacher_ends[self.teacher_index[t]], self.p, size)
            for (_, t), size in zip(self.pairs, self.sizes, strict=True)
        ]

    def student_maps(self, student: SpikingStudent, recorded: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Student attention maps (spikes aggregated over T) of the paired layers, in pair order."""
        return [
            attention_map(aggregate(student, s, recorded[s], self.aggregation), self.p, size)
            for (s, _), size in zip(self.pairs, self.sizes, strict=True)
        ]

    def describe(self) -> str:
        return ", ".join(f"{s}:{t}" for s, t in self.pairs) or "none"
