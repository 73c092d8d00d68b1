"""Energy/latency model: hand-computed values with the published constants, MAC counting, model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lasnn.errors import LasnnError
from lasnn.export.graph import Affine, Graph, Input, Neuron, Output
from lasnn.hardware.activity import layer_activity
from lasnn.hardware.energy import (
    BUILTIN_MODELS,
    ann_energy,
    barrier_time,
    count_macs,
    covers,
    latency,
    load_model,
    snn_energy,
)

LAYERS = [
    {
        "name": "conv",
        "neurons": 2048,
        "spikes": 100.0,
        "synaptic_ops": 5000.0,
        "macs": 1000.0,
        "neuron_updates": 8192.0,
    },
    {"name": "out", "neurons": 10, "spikes": 0.0, "synaptic_ops": 300.0, "macs": 0.0, "neuron_updates": 40.0},
]


# A two-layer net with known spikes: direct input (4 values, 3 nonzero) -> dense 4->3 -> LIF (3) -> dense
# 3->2 -> readout (2). T = 2, one sample; the LIF spikes [1, 0, 1] then [0, 0, 1] (3 spikes).
# Hand counts: host MACs 3 nonzero inputs x 3 outputs = 9 once (18 over both steps, the chip-side count);
# LIF: 6 updates, 3 active, 3 inactive, 3 spikes; readout: 3 spikes x 2 = 6 synaptic ops, 4 inactive updates.
def _two_layer_run():
    z = np.zeros(3)
    graph = Graph(
        {
            "input": Input((4,)),
            "fc1": Affine(np.ones((3, 4))),
            "lif": Neuron((3,), z + 0.5, z + 0.5, z + 1, z, z),
            "fc2": Affine(np.ones((2, 3))),
            "output": Output((2,)),
        },
        [("input", "fc1"), ("fc1", "lif"), ("lif", "fc2"), ("fc2", "output")],
        {"encoding": "direct"},
    )
    stream = np.array([[[1.0, 0.0, 2.0, -1.0]]] * 2)  # [T, B, 4]
    spikes = {"lif": np.array([[[1, 0, 1]], [[0, 0, 1]]], dtype=np.uint8)}
    return layer_activity(graph, spikes, stream)


HAND = {  # pJ per inference by hand: (chip, host) with the first layer on the host
    "loihi": (3 * 81 + 3 * 52 + 3 * 1.7 + 6 * 23.6 + 4 * 52, 9 * 4.6),
    "compute_fp32": (6 * 4.6 + 6 * 0.9 + 4 * 4.6, 9 * 4.6),
    "compute_int8": (6 * 0.23 + 6 * 0.03 + 4 * 0.23, 9 * 0.23),
    # potentials read+written per update (2 x 20 pJ) + leak MAC; 3 accesses + add per synaptic op; 1 per spike
    "memory": (6 * (0.23 + 40) + 3 * 20 + 6 * (0.03 + 60) + 4 * (0.23 + 40), 9 * (0.23 + 40)),
    "memory@8KB": (6 * (0.23 + 20) + 3 * 10 + 6 * (0.03 + 30) + 4 * (0.23 + 20), 9 * (0.23 + 20)),
}


def test_two_layer_counts_by_hand():
    lif, readout = _two_layer_run()
    assert (lif["macs"], lif["synaptic_ops"], lif["spikes"], lif["neuron_updates"]) == (18, 18, 3, 6)
    assert (readout["synaptic_ops"], readout["macs"], readout["neuron_updates"]) == (6, 0, 4)


@pytest.mark.parametrize("name", sorted(HAND))
def test_each_snn_model_equals_hand_computed(name):
    layers = _two_layer_run()
    chip, host = HAND[name]
    result = snn_energy(layers, load_model(name), timesteps=2, constant_input=True)
    assert result["total"]["chip_energy"] == pytest.approx(chip * 1e-12, rel=1e-12)
    assert result["total"]["host_energy"] == pytest.approx(host * 1e-12, rel=1e-12)
    assert result["total"]["host_macs"] == 9
    assert result["total"]["energy"] == pytest.approx((chip + host) * 1e-12, rel=1e-12)
    assert result["label"] == "modelled"
    # the same layer on the chip instead: every step's 18 graded ops at the model's graded cost
    graded = load_model(name)["per_event"]["snn"]["graded"]
    on_chip = snn_energy(layers, load_model(name), timesteps=2, constant_input=True, first_layer="chip")
    assert on_chip["total"]["energy"] == pytest.approx(chip * 1e-12 + 18 * graded, rel=1e-12)
    assert on_chip["total"]["host_energy"] == 0
    skipped = snn_energy(layers, load_model(name), timesteps=2, constant_input=True, first_layer="none")
    assert skipped["total"]["energy"] == pytest.approx(chip * 1e-12, rel=1e-12)


# The ANN twin: Linear(4, 3) -> ReLU -> Linear(3, 2): MACs 12 + 6, weights 12 + 6, inputs 4 + 3,
# outputs 3 + 2.
ANN_HAND = {
    "compute_fp32": 18 * 4.6,
    "compute_int8": 18 * 0.23,
    "memory": 18 * (0.23 + 40) + 5 * 20,
    # RF-fed MACs (1 + 3 RF) x 0.23; weights from DRAM via the buffer (200 + 6); inputs buffer + array
    # (6 + 2); outputs to the buffer (6), all in units of a 0.23 pJ MAC
    "eyeriss": 0.23 * (18 * 4 + 18 * 206 + 7 * 8 + 5 * 6),
}


@pytest.mark.parametrize("name", sorted(ANN_HAND))
def test_each_ann_model_equals_hand_computed(name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    counted = count_macs(net, (4,))
    assert [(r["macs"], r["weight"], r["input"], r["output"]) for r in counted["layers"]] == [
        (12, 12, 4, 3),
        (6, 6, 3, 2),
    ]
    result = ann_energy(counted, load_model(name))
    assert result["energy"] == pytest.approx(ANN_HAND[name] * 1e-12, rel=1e-12)


def test_models_cover_what_they_say():
    assert not covers(load_model("loihi"), "ann") and covers(load_model("loihi"), "snn")
    assert covers(load_model("eyeriss"), "ann") and not covers(load_model("eyeriss"), "snn")
    with pytest.raises(LasnnError, match="does not price an ANN"):
        ann_energy(1e6, load_model("loihi"))
    with pytest.raises(LasnnError, match="does not price an SNN"):
        snn_energy(LAYERS, load_model("eyeriss"))
    with pytest.raises(LasnnError, match="time"):
        latency(LAYERS, 4, load_model("compute_fp32"))
    assert load_model("cmos45")["name"] == "compute_fp32"
    with pytest.raises(LasnnError, match="SRAM level"):
        load_model("memory@2KB")
    with pytest.raises(LasnnError, match="SRAM level"):
        load_model("loihi@8KB")


def test_loihi_latency_hand_computed():
    model = load_model("loihi")
    result = latency(LAYERS, 4, model)
    # conv: 2048 neurons -> 2 cores; work = 5000 x 3.5 + 100 x (8.4 + 2.1) + 8092 x 5.3 ns,
    # over 4 steps and 2 cores
    conv = (5000 * 3.5 + 100 * 10.5 + 8092 * 5.3) / (4 * 2)
    out = (300 * 3.5 + 40 * 5.3) / 4
    assert [r["cores"] for r in result["layers"]] == [2, 1]
    assert result["tiles"] == 1 and result["barrier_time"] == pytest.approx(113e-9)
    assert result["critical_layer"] == "conv"
    assert result["time_per_step"] == pytest.approx(max(conv, out) * 1e-9 + 113e-9)
    assert result["steps"] == 4 + 2
    assert result["latency"] == pytest.approx(6 * (conv * 1e-9 + 113e-9))
    # more cores for the conv layer (a resource estimate) shortens its share
    assert latency(LAYERS, 4, model, cores={"conv": 8})["layers"][0]["cores"] == 8


def test_barrier_interpolates_between_published_end_points():
    model = load_model("loihi")
    assert barrier_time(model, 1) == pytest.approx(113e-9)
    assert barrier_time(model, 32) == pytest.approx(465e-9)
    assert 113e-9 < barrier_time(model, 16) < 465e-9


def test_every_builtin_constant_is_cited_and_modelled():
    for name in BUILTIN_MODELS:
        model = load_model(name)
        assert model["label"] == "modelled"
        for section in ("constants", "time", "limits"):
            for key, entry in model.get(section, {}).items():
                assert entry["source"].strip(), f"{name}.{section}.{key} has no source"
        for key, entry in model["constants"].items():  # whether it was checked against its source is said
            assert entry.get("checked", "").strip(), f"{name}.constants.{key} does not say if it was checked"
    assert load_model("loihi")["constants"]["synop"]["value"] == 23.6e-12


def test_count_macs_hand_counted():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 4 x 8 x 8 outputs x (1 x 3 x 3) = 2304
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),  # 8 x 2 x 2 x (2 x 3 x 3) = 576
        nn.Flatten(),
        nn.Linear(32, 10),  # 320
    )
    net.train()
    result = count_macs(net, (1, 8, 8))
    assert [r["macs"] for r in result["layers"]] == [2304, 576, 320]
    assert result["macs"] == 2304 + 576 + 320
    assert net.training  # mode restored


def test_user_model_file(tmp_path):
    chip = load_model("loihi")
    chip["name"] = "my_chip"
    chip["constants"]["synop"]["value"] = 1e-12
    path = tmp_path / "chip.json"
    path.write_text(json.dumps(chip))
    model = load_model(path)
    assert snn_energy(LAYERS[1:], model)["total"]["energy"] == pytest.approx((300 * 1 + 40 * 52) * 1e-12)
    del chip["per_event"]
    chip["constants"]["spike"]["source"] = ""
    path.write_text(json.dumps(chip))
    with pytest.raises(LasnnError, match="source"):
        load_model(path)
    path.write_text("{not json")
    with pytest.raises(LasnnError, match="JSON"):
        load_model(path)
    with pytest.raises(LasnnError, match="neither a built-in"):
        load_model(tmp_path / "missing.json")


def test_count_macs_accepts_any_module():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    assert count_macs(Tiny(), (2, 3))["macs"] == 18
