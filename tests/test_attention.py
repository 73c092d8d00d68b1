"""Attention maps, spike aggregation and layer pairing against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lasnn.distill.attention import (
    AttentionProbe,
    aggregate,
    attention_map,
    pair_layers,
    set_membrane_recording,
)
from lasnn.distill.spiking_layers import NeuronConfig, SpikingNeurons
from lasnn.distill.students import resnet_student, vgg_student
from lasnn.distill.teachers import small_cnn, user_teacher
from lasnn.errors import LasnnError


def test_attention_map_of_known_tensor():
    a = torch.zeros(1, 2, 2, 2)
    a[0, 0, 0, 0] = 1.0
    a[0, 1, 0, 1] = -2.0  # |a|^2 counts negative activations (membrane potentials) too
    a[0, 1, 1, 1] = 3.0
    # channel sums of |a|^2: [[1, 4], [0, 9]] -> flattened [1, 4, 0, 9] / sqrt(98)
    expected = torch.tensor([[1.0, 4.0, 0.0, 9.0]]) / math.sqrt(98.0)
    assert torch.allclose(attention_map(a, p=2), expected, atol=1e-7)
    # p = 1: [[1, 2], [0, 3]] / sqrt(14)
    assert torch.allclose(
        attention_map(a, p=1), torch.tensor([[1.0, 2.0, 0.0, 3.0]]) / math.sqrt(14.0), atol=1e-7
    )


def test_attention_map_resize_and_scale_invariance():
    a = torch.arange(16.0).view(1, 1, 4, 4)
    squared = a.pow(2)[0, 0]
    pooled = torch.stack([squared[i : i + 2, j : j + 2].mean() for i in (0, 2) for j in (0, 2)])
    assert torch.allclose(attention_map(a, size=(2, 2))[0], pooled / pooled.norm(), atol=1e-6)
    assert torch.allclose(attention_map(a * 7.0), attention_map(a), atol=1e-6)
    assert torch.allclose(attention_map(a).norm(dim=1), torch.ones(1))


def test_rate_and_membrane_aggregation_hand_computed():
    # LIFBox with a = dt * tau_mem_inv = 0.5, v_th = 1, constant input 1.5:
    # v1 = 0.75, v2 = 0.75 + 0.5 * (1.5 - 0.75) = 1.125 (spike, reset to 0), v3 = 0.75, v4 = 1.125 (spike)
    neurons = SpikingNeurons(NeuronConfig(kind="lifbox"))
    neurons.record_membrane = True
    spikes = neurons(torch.full((4, 1, 1, 1, 1), 1.5))
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert torch.allclose(neurons.membrane.flatten(), torch.tensor([0.75, 1.125, 0.75, 1.125]))

    student = vgg_student((1, 8, 8), 10, widths=((4,), (8,)), timesteps=4)
    name = student.stage_ends[0]
    set_membrane_recording(student, [name], True)
    _, recorded = student.run(student.encode(torch.randn(3, 1, 8, 8)), record=True)
    assert torch.equal(aggregate(student, name, recorded[name], "rate"), recorded[name].mean(0))
    membrane = student.features[int(name)].membrane
    assert torch.equal(aggregate(student, name, recorded[name], "membrane"), membrane.mean(0))
    # a neuron spikes at a step exactly when its pre-reset membrane exceeds the threshold
    assert torch.equal(recorded[name], (membrane > 1.0).float())


def test_pairing_by_resolution_nearest_and_override():
    student = {"1": (8, 8), "3": (4, 4), "5": (1, 1)}
    teacher = {"stages.0": (8, 8), "stages.1": (4, 4), "stages.2": (2, 2)}
    assert pair_layers(student, teacher) == [("1", "stages.0"), ("3", "stages.1")]
    # no exact match: nearest resolution (16x16 -> 8x8, 2x2 -> 2x2)
    assert pair_layers({"a": (16, 16), "b": (2, 2)}, teacher) == [("a", "stages.0"), ("b", "stages.2")]
    assert pair_layers(student, teacher, "3:stages.0") == [("3", "stages.0")]
    with pytest.raises(LasnnError, match="'9'"):
        pair_layers(student, teacher, "9:stages.0")
    with pytest.raises(LasnnError, match="'stages.7'"):
        pair_layers(student, teacher, "1:stages.7")
    with pytest.raises(LasnnError, match="student_layer:teacher_layer"):
        pair_layers(student, teacher, "1")


def test_probe_pairs_teacher_and_student_stage_ends():
    teacher = small_cnn((1, 8, 8), 10).eval()
    example = torch.randn(4, 1, 8, 8)
    vgg = vgg_student((1, 8, 8), 10, widths=((4,), (8,)))
    probe = AttentionProbe(teacher, vgg, example)
    assert probe.pairs == [("1", "stages.0"), ("4", "stages.1")]
    resnet = resnet_student((1, 8, 8), 10, widths=(4, 8))
    probe = AttentionProbe(teacher, resnet, example)
    assert probe.pairs == [(resnet.stage_ends[0], "stages.0"), (resnet.stage_ends[1], "stages.1")]
    _, ends = teacher.forward_features(example)
    maps = probe.teacher_maps(ends)
    assert [tuple(m.shape) for m in maps] == [(4, 64), (4, 16)]


class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        return self.fc(self.pool2(self.act2(self.conv2(x))).flatten(1))


def make_user_net() -> nn.Module:
    return _UserNet()


def test_user_model_stage_ends_by_hooks():
    teacher = user_teacher(f"{__name__}:make_user_net", (1, 8, 8), 10)
    # 8x8 run: conv1, act1 -> act1; 4x4 run: pool1, conv2, act2 -> act2; the 1x1 pooling is dropped
    assert teacher.stage_names == ["act1", "act2"]
    x = torch.randn(2, 1, 8, 8)
    logits, ends = teacher.forward_features(x)
    net = teacher.model
    assert torch.equal(logits, net(x))
    assert torch.equal(ends[0], net.act1(net.conv1(x)))
    assert torch.equal(ends[1], net.act2(net.conv2(net.pool1(ends[0]))))
    with pytest.raises(LasnnError, match="logits of shape"):
        user_teacher(f"{__name__}:make_user_net", (1, 8, 8), 5)
