"""Energy-aware distillation: the differentiable estimate equals the counted energy of the same run exactly
(spikes from that run, every model that prices an SNN), its gradient reaches the first layer, and the
penalty behaves like sinabs' relu(synops - target)^2."""

from __future__ import annotations

import pytest
import torch

from lasnn.cost_models import load_model
from lasnn.distill.energy_loss import EnergyCosts, EnergyEstimate, energy_penalty
from lasnn.distill.spiking_layers import SpikingNeurons
from lasnn.distill.students import resnet_student, vgg_student
from lasnn.export.lowering import lower_student
from lasnn.hardware.activity import layer_activity
from lasnn.hardware.energy import snn_energy

T = 3


def _lower_thresholds(student):
    for m in student.modules():
        if isinstance(m, SpikingNeurons):
            m.v_th.fill_(0.3)
    return student


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
@pytest.mark.parametrize("model_name", ["loihi", "memory", "compute_int8"])
def test_estimate_equals_counted_energy(arch, model_name):
    torch.manual_seed(1)
    if arch == "vgg":
        student = vgg_student((1, 8, 8), 10, ((4,), (8,)), timesteps=T, encoding="direct")
    else:
        student = resnet_student((1, 8, 8), 10, (4, 8), 1, timesteps=T, encoding="direct")
    student = _lower_thresholds(student).eval()
    images = torch.randn(6, 1, 8, 8)
    images[:, :, :2] = 0  # some zero pixels: host MACs count nonzero inputs only
    model = load_model(model_name)
    estimate = EnergyEstimate(student, EnergyCosts.from_model(model))
    with torch.no_grad(), estimate.record():
        student(images)
    ours = float(estimate.energy(images))
    spikes = {k: v.numpy() for k, v in estimate._spikes.items()}
    assert sum(float(s.sum()) for s in spikes.values()) > 0
    stream = images.unsqueeze(0).expand(T, *images.shape).numpy()
    layers = layer_activity(lower_student(student), spikes, stream)
    counted = snn_energy(layers, model, T, constant_input=True)["total"]["energy"]
    assert ours == pytest.approx(counted, rel=1e-12)


def test_gradient_reaches_the_first_layer_and_penalty():
    torch.manual_seed(0)
    student = _lower_thresholds(vgg_student((1, 8, 8), 10, ((4,), (8,)), timesteps=T, encoding="direct"))
    estimate = EnergyEstimate(student, EnergyCosts.from_model(load_model("loihi")))
    images = torch.randn(4, 1, 8, 8)
    with estimate.record():
        student(images)
    energy = estimate.energy(images)
    energy_penalty(energy, 1.0, None).backward()
    first = student.features[0].layer.weight.grad
    assert first is not None and float(first.abs().sum()) > 0
    # target: zero penalty (and gradient) at or below it, squared relative excess above it
    e = torch.tensor(2e-6, requires_grad=True)
    assert float(energy_penalty(e, 3.0, 4e-6)) == 0.0
    assert float(energy_penalty(e, 3.0, 1e-6)) == pytest.approx(3.0 * 1.0**2)
    assert float(energy_penalty(e, 0.5, None)) == pytest.approx(1.0)


def test_bad_energy_options_and_init_are_user_errors(tmp_path):
    from lasnn.distill.checkpoints import init_student_weights, save_student
    from lasnn.distill.energy_loss import build_energy_term
    from lasnn.errors import LasnnError

    student = vgg_student((1, 8, 8), 10, ((4,), (8,)), timesteps=T)
    assert build_energy_term(student, None, None) is None
    term = build_energy_term(student, None, 2.0, "memory")  # a target alone: weight 1, in joules
    assert (
        term.weight == 1.0
        and term.target_j == pytest.approx(2e-6)
        and term.to_dict()["costs"]["model"] == "memory"
    )
    with pytest.raises(LasnnError, match="--energy-weight"):
        build_energy_term(student, -1.0, None)
    with pytest.raises(LasnnError, match="--energy-target"):
        build_energy_term(student, 1.0, 0.0)
    with pytest.raises(LasnnError, match="does not price an SNN"):
        build_energy_term(student, 1.0, None, "eyeriss")
    other = vgg_student((1, 8, 8), 10, ((8,), (8,)), timesteps=T)
    meta = dict(
        dataset="digits", data_root=None, input_shape=[1, 8, 8], num_classes=10, mean=[0.0], std=[1.0]
    )
    meta |= dict(seed=0, timesteps=T, encoding="direct", dt=1e-3, loss="lasnn", teacher="t.pt")
    save_student(tmp_path / "s.pt", other, meta)
    with pytest.raises(LasnnError, match="another architecture"):
        init_student_weights(student, tmp_path / "s.pt")
    same = vgg_student((1, 8, 8), 10, ((8,), (8,)), timesteps=T)
    init_student_weights(same, tmp_path / "s.pt")
    assert torch.equal(same.features[0].layer.weight, other.features[0].layer.weight)
    with pytest.raises(LasnnError, match="does not exist"):
        init_student_weights(same, tmp_path / "missing.pt")
