"""NeuroBench metrics: lasnn's counts on the chip's composed synapses equal NeuroBench's own metrics run on
the same student's composed synapses with the same spikes and inputs (digits student, small)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from neurobench.metrics.utils.layers import single_layer_MACs
from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
from neurobench.models import TorchModel
from torch import nn

from lasnn.data import first_samples, load_dataset
from lasnn.distill.spiking_layers import SpikingNeurons
from lasnn.distill.students import vgg_student
from lasnn.export.lowering import lower_student
from lasnn.hardware.activity import layer_activity
from lasnn.hardware.workload import neurobench_metrics

T = 3


class Replay(nn.Module):
    """Stands for a spiking layer: returns the spikes the student produced (NeuroBench hooks its output)."""

    def __init__(self, spikes: torch.Tensor) -> None:
        super().__init__()
        self.spikes = spikes

    def forward(self, _currents: torch.Tensor) -> torch.Tensor:
        return self.spikes


class Composed(nn.Module):
    """The chip's view of a VGG student conv -> LIF -> avgpool -> conv -> LIF -> avgpool -> linear: the first
    conv on the host once per sample; avgpool(2) + conv3x3 (pad 1) as one conv (kernel 6, stride 2, pad 2,
    weight kron(w, ones(2, 2)) / 4); avgpool(2) + flatten + linear as one linear (weights repeated per pool
    window). Composed here independently of lasnn.hardware.activity's one-hot fan-out counting."""

    def __init__(self, graph, s1: torch.Tensor, s2: torch.Tensor) -> None:
        super().__init__()
        w1 = torch.as_tensor(graph.nodes["features.0"].weight, dtype=torch.float32)
        w2 = torch.as_tensor(graph.nodes["features.3"].weight, dtype=torch.float32)
        wh = torch.as_tensor(graph.nodes["head"].weight, dtype=torch.float32)
        self.conv1 = nn.Conv2d(w1.shape[1], w1.shape[0], 3, padding=1, bias=False)
        self.conv1.weight.data = w1
        self.conv2 = nn.Conv2d(w2.shape[1], w2.shape[0], 6, stride=2, padding=2, bias=False)
        self.conv2.weight.data = torch.kron(w2, torch.ones(1, 1, 2, 2)) / 4
        c, h, w = s2.shape[2:]
        head = wh.reshape(wh.shape[0], c, h // 2, w // 2)
        self.head = nn.Linear(c * h * w, wh.shape[0], bias=False)
        self.head.weight.data = torch.kron(head, torch.ones(1, 1, 2, 2)).reshape(wh.shape[0], -1) / 4
        self.lif1, self.lif2 = Replay(s1), Replay(s2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.conv1(images)  # once per sample: the input is the same at every step
        s1 = self.lif1(None)
        self.conv2(s1.flatten(0, 1))
        s2 = self.lif2(None)
        return self.head(s2.flatten(2)).mean(0)


def test_lasnn_counts_equal_neurobench():
    torch.manual_seed(0)
    student = vgg_student((1, 8, 8), 10, ((4,), (8,)), timesteps=T, encoding="direct").eval()
    for m in student.modules():  # firing thresholds low enough for an untrained net to spike sparsely
        if isinstance(m, SpikingNeurons):
            m.v_th.fill_(0.3)
    images, labels = first_samples(load_dataset("digits", "test", augment=False)[0], 24)
    recorded = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=n: recorded.__setitem__(name, out.detach()))
        for n, m in student.named_modules()
        if isinstance(m, SpikingNeurons)
    ]
    with torch.no_grad():
        student(images)
    for h in hooks:
        h.remove()
    graph = lower_student(student)
    stream = images.unsqueeze(0).expand(T, *images.shape).numpy()
    layers = layer_activity(graph, {k: v.numpy() for k, v in recorded.items()}, stream)
    ours = neurobench_metrics(layers, T, constant_input=True)
    s1, s2 = recorded["features.1"], recorded["features.4"]
    assert 0 < float(s1.mean()) < 0.5 and 0 < float(s2.mean()) < 0.5  # sparse, not silent

    model = TorchModel(Composed(graph, s1, s2))
    model.add_activation_module(Replay)
    model.register_hooks()
    preds = model(images)
    synops = SynapticOperations()
    theirs = synops(model, preds, (images, labels))
    sparsity = ActivationSparsity()(model, preds, (images, labels))
    model.cleanup_hooks()

    assert theirs["Effective_ACs"] > 0 and theirs["Effective_MACs"] > 0
    for key in ("Effective_ACs", "Effective_MACs", "Dense"):
        assert ours["SynapticOperations"][key] == pytest.approx(theirs[key], rel=1e-9), key
    assert ours["ActivationSparsity"] == pytest.approx(sparsity, rel=1e-12)
    # spikes per synapse: ACs over the spiking synapses, which NeuroBench counts as one all-ones input's
    # total operations through each composed layer
    synapses = single_layer_MACs(torch.ones(1, 4, 8, 8), model.net.conv2, total=True)[0]
    synapses += single_layer_MACs(torch.ones(1, 8 * 4 * 4), model.net.head, total=True)[0]
    assert ours["spikes_per_synapse"] == pytest.approx(theirs["Effective_ACs"] / synapses, rel=1e-9)
    assert ours["MembraneUpdates"] == T * (4 * 8 * 8 + 8 * 4 * 4 + 10)
    assert np.isfinite(ours["spikes_per_synapse"])
