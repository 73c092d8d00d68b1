"""The LaSNN objective: each term against an independent computation, exact zeros, gradient flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lasnn.distill.attention import AttentionProbe, set_membrane_recording
from lasnn.distill.losses import LossConfig, attention_term, kd_term, objective, phase
from lasnn.distill.students import vgg_student
from lasnn.distill.teachers import small_cnn


def _np_kd(zs: np.ndarray, zt: np.ndarray, tau: float) -> float:
    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps, pt = softmax(zs.astype(np.float64)), softmax(zt.astype(np.float64))
    return float(tau**2 * (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean())


def test_kd_term_matches_numpy_and_is_exactly_zero_for_equal_logits():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g) * 3
    assert float(kd_term(zs, zt, 4.0)) == pytest.approx(_np_kd(zs.numpy(), zt.numpy(), 4.0), rel=1e-5)
    assert float(kd_term(zt, zt, 4.0)) == 0.0


def test_attention_term_hand_computed_and_exactly_zero_for_equal_maps():
    a_t = [torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])]
    a_s = [torch.tensor([[0.0, 1.0], [0.6, 0.8]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])]
    # layer 1: norms [sqrt(2), 0] -> mean sqrt(2)/2; layer 2: [0, sqrt(2)] -> sqrt(2)/2
    assert float(attention_term(a_t, a_s)) == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert float(attention_term(a_t, a_t)) == 0.0


def test_phases_of_the_progressive_schedule():
    progressive = LossConfig(schedule="progressive")
    assert [phase(progressive, 2, f) for f in (0.0, 0.24, 0.25, 0.49, 0.5, 0.99)] == [
        (False, 1),
        (False, 1),
        (False, 2),
        (False, 2),
        (True, 2),
        (True, 2),
    ]
    assert phase(LossConfig(), 2, 0.0) == (True, 2)
    assert phase(LossConfig(kind="kd", schedule="progressive"), 2, 0.0) == (True, 0)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher = small_cnn((1, 8, 8), 10).eval()
    student = vgg_student((1, 8, 8), 10, widths=((8,), (16,)), timesteps=4)
    images = torch.randn(8, 1, 8, 8) * 2
    labels = torch.arange(8) % 10
    return teacher, student, images, labels


def _terms(config: LossConfig, teacher, student, images, labels, progress=0.0, aggregate="rate"):
    probe = AttentionProbe(teacher, student, images, config.p, aggregate)
    student.zero_grad()
    currents, recorded = student.run(student.encode(images), record=True)
    with torch.inference_mode():
        t_logits, t_ends = teacher.forward_features(images)
        t_maps = probe.teacher_maps(t_ends)
    return objective(
        config,
        currents.mean(0),
        labels,
        t_logits.clone(),
        [m.clone() for m in t_maps],
        probe.student_maps(student, recorded),
        progress,
    )


def test_baselines_switch_terms_off_exactly(pair):
    _, terms = _terms(LossConfig(kind="ce"), *pair)
    assert terms["ce"] > 0 and terms["kd"] == 0.0 and terms["att"] == 0.0
    _, terms = _terms(LossConfig(kind="kd"), *pair)
    assert terms["ce"] > 0 and terms["kd"] > 0 and terms["att"] == 0.0
    total, terms = _terms(LossConfig(kind="lasnn"), *pair)
    assert terms["ce"] > 0 and terms["kd"] > 0 and terms["att"] > 0
    assert float(total.detach()) == pytest.approx(terms["ce"] + terms["kd"] + terms["att"], rel=1e-6)
    # progressive, first phase: only layer 1's attention term, no logit terms
    _, terms = _terms(LossConfig(schedule="progressive"), *pair, progress=0.1)
    assert terms["ce"] == 0.0 and terms["kd"] == 0.0 and terms["att"] > 0


@pytest.mark.parametrize("term", ["ce", "kd", "att_rate", "att_membrane"])
def test_each_term_alone_reaches_the_first_conv(pair, term):
    teacher, student, images, labels = pair
    aggregate = "membrane" if term == "att_membrane" else "rate"
    probe = AttentionProbe(teacher, student, images, 2.0, aggregate)
    set_membrane_recording(student, student.stage_ends, aggregate == "membrane")
    try:
        student.zero_grad()
        currents, recorded = student.run(student.encode(images), record=True)
        logits = currents.mean(0)
        with torch.inference_mode():
            t_logits, t_ends = teacher.forward_features(images)
            t_maps = probe.teacher_maps(t_ends)
        if term == "ce":
            value = torch.nn.functional.cross_entropy(logits, labels)
        elif term == "kd":
            value = kd_term(logits, t_logits.clone(), 4.0)
        else:
            value = attention_term([m.clone() for m in t_maps], probe.student_maps(student, recorded))
        assert float(value) > 0
        value.backward()
    finally:
        set_membrane_recording(student, student.stage_ends, False)
    grad = student.features[0].layer.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
