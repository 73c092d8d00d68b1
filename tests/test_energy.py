"""Energy/latency model: hand-computed values with the published constants, MAC counting, model files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lasnn.errors import LasnnError
from lasnn.hardware.energy import ann_energy, barrier_time, count_macs, latency, load_model, snn_energy

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


def test_loihi_energy_hand_computed():
    result = snn_energy(LAYERS, load_model("loihi"))
    # conv: 4000 AC x 23.6 pJ + 1000 graded x 23.6 pJ + 100 x 81 pJ + 8092 x 52 pJ + 100 x 1.7 pJ
    conv = 4000 * 23.6 + 1000 * 23.6 + 100 * 81 + 8092 * 52 + 100 * 1.7
    out = 300 * 23.6 + 40 * 52
    assert result["layers"][0]["energy"] == pytest.approx(conv * 1e-12)
    assert result["layers"][1]["energy"] == pytest.approx(out * 1e-12)
    assert result["total"]["energy"] == pytest.approx((conv + out) * 1e-12)
    assert result["total"]["spikes"] == 100


def test_cmos45_energy_and_ann_hand_computed():
    model = load_model("cmos45")
    result = snn_energy(LAYERS, model)
    conv = 4000 * 0.9 + 1000 * 4.6 + 8192 * 4.6
    out = 300 * 0.9 + 40 * 4.6
    assert result["total"]["energy"] == pytest.approx((conv + out) * 1e-12)
    assert ann_energy(1e6, model)["energy"] == pytest.approx(4.6e-6)
    with pytest.raises(LasnnError, match="mac"):
        ann_energy(1e6, load_model("loihi"))
    with pytest.raises(LasnnError, match="time"):
        latency(LAYERS, 4, model)


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


def test_every_builtin_constant_is_cited():
    for name in ("loihi", "cmos45"):
        model = load_model(name)
        for section in ("energy", "time", "limits"):
            for key, entry in model.get(section, {}).items():
                assert entry["source"].strip(), f"{name}.{section}.{key} has no source"
    assert load_model("loihi")["energy"]["synop"]["value"] == 23.6e-12


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
    chip["energy"]["synop"]["value"] = 1e-12
    path = tmp_path / "chip.json"
    path.write_text(json.dumps(chip))
    model = load_model(path)
    assert snn_energy(LAYERS[1:], model)["total"]["energy"] == pytest.approx((300 * 1 + 40 * 52) * 1e-12)
    del chip["energy"]["spike"]["source"]
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
