"""The training loop (resume, Ctrl-C, NaN), checkpoints, and an end-to-end digits distillation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import Subset

from lasnn.artifacts import load_checkpoint, save_checkpoint
from lasnn.data import load_dataset
from lasnn.distill.checkpoints import load_student, load_teacher, save_teacher
from lasnn.distill.commands import distill, teach
from lasnn.distill.students import resnet_student, vgg_student
from lasnn.distill.teachers import build_teacher
from lasnn.distill.training import TrainSettings, evaluate, fit
from lasnn.errors import LasnnError


def _tiny_data():
    train, _ = load_dataset("digits", "train")  # augmented: exercises the RNG handling
    test, _ = load_dataset("digits", "test")
    return Subset(train, range(96)), Subset(test, range(64))


@pytest.fixture(scope="module")
def tiny_data():
    return _tiny_data()


def _run(
    tmp_path,
    data,
    interrupt_at: int | None = None,
    nan_at: int | None = None,
    resume: bool = False,
    hang_at: int | None = None,
):
    """Train a tiny Poisson-coded student for 2 epochs of 6 steps; optionally press Ctrl-C (SIGINT),
    produce a NaN loss, or write ``tmp_path/hanging`` and hang, at a given (1-based) step count."""
    torch.manual_seed(1)
    net = vgg_student((1, 8, 8), 10, widths=((4,), (8,)), timesteps=2, encoding="poisson")
    calls = {"n": 0}

    def loss_fn(images, labels, progress):
        calls["n"] += 1
        logits = net(images)
        loss = F.cross_entropy(logits, labels)
        if calls["n"] == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        if calls["n"] == nan_at:
            loss = loss * float("nan")
        if calls["n"] == hang_at:
            (Path(tmp_path) / "hanging").write_text("")
            time.sleep(600)  # the test kills the process here
        return loss, logits, {"ce": float(loss.detach())}

    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=3, device="cpu")
    metrics = fit(net, loss_fn, net, data[0], data[1], settings, tmp_path, {"test": 1}, resume, desc="tiny")
    return net, metrics


@pytest.mark.parametrize("interrupt_at", [3, 6])  # mid-epoch, and the last step of epoch 1
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, tiny_data, interrupt_at):
    reference, ref_metrics = _run(tmp_path / "ref", tiny_data)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", tiny_data, interrupt_at=interrupt_at)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt", ("training_state",))
    assert (state["epoch"], state["step"]) == ((0, interrupt_at) if interrupt_at < 6 else (1, 0))
    resumed, metrics = _run(tmp_path / "cut", tiny_data, resume=True)
    ref_state, state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    keep = ("train_loss", "train_accuracy", "test_accuracy", "lr")
    assert [{k: h[k] for k in keep} for h in metrics["history"]] == [
        {k: h[k] for k in keep} for h in ref_metrics["history"]
    ]


def test_killed_training_process_resumes_to_the_uninterrupted_result(tmp_path, tiny_data):
    """SIGKILL a real training subprocess mid-epoch 2; --resume continues from the end-of-epoch-1
    checkpoint and ends with exactly the uninterrupted run's weights."""
    out = tmp_path / "killed"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from pathlib import Path; "
        f"import test_training as t; t._run(Path({str(out)!r}), t._tiny_data(), hang_at=9)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not (out / "hanging").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the training subprocess never reached epoch 2, step 3"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert load_checkpoint(out / "checkpoint.pt", ("training_state",))["epoch"] == 1
    resumed, _ = _run(out, tiny_data, resume=True)
    reference, _ = _run(tmp_path / "ref", tiny_data)
    ref_state, state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_checkpoint(tmp_path, tiny_data):
    with pytest.raises(LasnnError, match="epoch 2, step 2.*last good checkpoint"):
        _run(tmp_path, tiny_data, nan_at=8)
    assert load_checkpoint(tmp_path / "checkpoint.pt", ("training_state",))["epoch"] == 1


def test_resume_refuses_a_different_run(tmp_path, tiny_data):
    _run(tmp_path, tiny_data)
    net = vgg_student((1, 8, 8), 10, widths=((4,), (8,)))
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=3, device="cpu")
    with pytest.raises(LasnnError, match="'test'"):
        fit(net, None, net, tiny_data[0], tiny_data[1], settings, tmp_path, {"test": 2}, resume=True)


def test_teacher_checkpoint_round_trip_and_validation(tmp_path):
    torch.manual_seed(0)
    model = build_teacher({"arch": "vgg11", "in_shape": [3, 16, 16], "num_classes": 7, "width": 0.125}).eval()
    meta = dict(
        dataset="x",
        data_root=None,
        input_shape=[3, 16, 16],
        num_classes=7,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        seed=0,
    )
    save_teacher(tmp_path / "t.pt", model, model.config, meta)
    loaded, blob = load_teacher(tmp_path / "t.pt")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x)) and blob["metadata"]["num_classes"] == 7
    with pytest.raises(LasnnError, match="'teacher' checkpoint, but a student or converted"):
        load_student(tmp_path / "t.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["stages.0.0.weight"][0, 0, 0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", "teacher", meta, config=model.config, state_dict=state)
    with pytest.raises(LasnnError, match="non-finite"):
        load_teacher(tmp_path / "nan.pt")
    save_checkpoint(
        tmp_path / "meta.pt", "teacher", {"dataset": "x"}, config=model.config, state_dict=model.state_dict()
    )
    with pytest.raises(LasnnError, match="input_shape"):
        load_teacher(tmp_path / "meta.pt")


@pytest.mark.parametrize("arch", ["small_cnn", "vgg16", "resnet18", "resnet19"])
def test_teachers_expose_stage_ends_at_each_resolution(arch):
    model = build_teacher({"arch": arch, "in_shape": [3, 32, 32], "num_classes": 10, "width": 0.0625}).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, ends = model.forward_features(x)
    assert logits.shape == (2, 10) and torch.equal(logits, model(x))
    sizes = [e.shape[-1] for e in ends]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes) and sizes[0] == 32
    assert all(bool((e >= 0).all()) for e in ends)  # post-ReLU
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


@pytest.mark.slow
def test_two_epoch_digits_distillation_beats_chance(tmp_path):
    teacher_metrics = teach("digits", tmp_path / "t", epochs=2, device="cpu")
    assert teacher_metrics["test_accuracy"] > 0.8
    metrics = distill(tmp_path / "t" / "teacher.pt", tmp_path / "s", epochs=2, device="cpu")
    assert metrics["test_accuracy"] > 0.5  # chance is 0.1
    assert metrics["timesteps"] == 4 and metrics["loss"] == "lasnn" and len(metrics["history"]) == 2
    student, blob = load_student(tmp_path / "s" / "student.pt")
    test_set, _ = load_dataset("digits", "test")
    # the saved student reproduces the reported accuracy (direct encoding is deterministic)
    assert evaluate(student, test_set, 256, "cpu") == pytest.approx(metrics["test_accuracy"])
    assert blob["metadata"]["teacher"] == str(tmp_path / "t" / "teacher.pt")

    with pytest.raises(LasnnError, match="'student' checkpoint, but a teacher"):
        distill(tmp_path / "s" / "student.pt", tmp_path / "x")
    with pytest.raises(LasnnError, match="--timesteps"):
        distill(tmp_path / "t", tmp_path / "x", timesteps=0)
    with pytest.raises(LasnnError, match="'nope'"):
        distill(tmp_path / "t", tmp_path / "x", pairs="1:nope")
    # a teacher whose class count differs from its data set's
    model, blob = load_teacher(tmp_path / "t" / "teacher.pt")
    wrong = build_teacher({**model.config, "num_classes": 5})
    save_teacher(tmp_path / "w.pt", wrong, wrong.config, {**blob["metadata"], "num_classes": 5})
    with pytest.raises(LasnnError, match="10 classes.*5 classes"):
        distill(tmp_path / "w.pt", tmp_path / "x")


@pytest.mark.slow
def test_compiled_distillation_trains_like_the_eager_one(tmp_path):
    """``--compile`` (torch.compile of the student's run, the fused neuron kept out of the graph) trains on
    CPU and lands where the eager run lands."""
    teach("digits", tmp_path / "t", epochs=1, device="cpu")
    eager = distill(tmp_path / "t" / "teacher.pt", tmp_path / "e", epochs=2, device="cpu")
    compiled = distill(tmp_path / "t" / "teacher.pt", tmp_path / "c", epochs=2, device="cpu", compile=True)
    assert compiled["test_accuracy"] > 0.5  # chance is 0.1
    # the same run up to float rounding (measured: losses equal to 1e-8, identical accuracy)
    assert abs(compiled["test_accuracy"] - eager["test_accuracy"]) < 0.02
    for e, c in zip(eager["history"], compiled["history"], strict=True):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-3)


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_time_mean_logits_equal_the_mean_of_the_readout_currents(arch):
    """``run(..., time_mean=True)`` averages over T before the trailing pooling and the head (they are
    linear): same logits and gradients as averaging the per-step currents, in training mode."""
    torch.manual_seed(0)
    build = vgg_student if arch == "vgg" else resnet_student
    student = build((3, 16, 16), 10, timesteps=5).double().train()
    assert student._linear_tail() == 1  # the final pooling runs once, not T times
    images = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    weights = torch.randn(6, 10, dtype=torch.float64)
    per_step, _ = student.run(student.encode(images))
    reference = per_step.mean(0)
    (ref_grad,) = torch.autograd.grad((reference * weights).sum(), student.head.layer.weight)
    logits, _ = student.run(student.encode(images), time_mean=True)
    (grad,) = torch.autograd.grad((logits * weights).sum(), student.head.layer.weight)
    assert float(per_step.std(0).max()) > 0.01  # the steps differ, so the order of mean and head matters
    assert torch.allclose(logits, reference, rtol=0, atol=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-12)
    assert torch.allclose(student(images), reference, rtol=0, atol=1e-12)
