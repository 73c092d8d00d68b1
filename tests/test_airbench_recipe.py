"""The airbench training recipe (distill/airbench_recipe.py) and the CIFAR table benchmark's resumption.

- batched tensor augmentation: seeded (same seed, same batch), and each image equals an independent
  per-image reference (flip with torch.flip, translation by slicing a reflect-padded copy);
- the alternating flip: a seeded coin per image, negated every other epoch, and it sets the batch's flips;
- the whitening bias moves for the first ``whiten_bias_epochs`` epochs only, the rest of the net keeps on;
- the whitening conv decorrelates 2x2 patches: the covariance of its outputs is the identity;
- the airbench teacher and its spiking twin have matching stage ends;
- a benchmark row killed after its first epoch and resumed by rerunning the benchmark ends with the
  accuracy and weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from lasnn.distill import airbench_recipe
from lasnn.distill.students import airbench_student
from lasnn.distill.teachers import airbench, whiten_first_conv

ROOT = Path(__file__).resolve().parents[1]


def _images(n: int = 16, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def test_batch_augmentation_is_seeded_and_matches_a_per_image_reference() -> None:
    images = _images()
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    first = airbench_recipe.batch_augment(images, mean, std, airbench_recipe.step_generator(3, 1, 7), 2)
    again = airbench_recipe.batch_augment(images, mean, std, airbench_recipe.step_generator(3, 1, 7), 2)
    other = airbench_recipe.batch_augment(images, mean, std, airbench_recipe.step_generator(3, 1, 8), 2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # the reference: the same draws, applied one image at a time
    generator = airbench_recipe.step_generator(3, 1, 7)
    flips = torch.rand(len(images), generator=generator) < 0.5
    shifts = torch.randint(-2, 3, (len(images), 2), generator=generator)
    assert 0 < int(flips.sum()) < len(images)
    for i, image in enumerate(images):
        x = (image.float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
        if flips[i]:
            x = torch.flip(x, dims=[2])
        padded = F.pad(x[None], (2, 2, 2, 2), mode="reflect")[0]
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        expected = padded[:, 2 + dy : 2 + dy + 8, 2 + dx : 2 + dx + 8]
        assert torch.allclose(first[i], expected, atol=1e-6), i


def test_no_flips_without_mirror() -> None:
    images = _images()
    mean, std = torch.zeros(3), torch.ones(3)
    out = airbench_recipe.batch_augment(
        images, mean, std, airbench_recipe.step_generator(0, 0, 0), 0, mirror=False
    )
    assert torch.allclose(out, images.float() / 255)


def test_flips_alternate_between_epochs_and_override_the_drawn_bits() -> None:
    flips = [airbench_recipe.alternating_flips(5, 200, epoch) for epoch in range(4)]
    assert 60 < int(flips[0].sum()) < 140  # a fair coin per image
    assert (
        torch.equal(flips[1], ~flips[0])
        and torch.equal(flips[2], flips[0])
        and torch.equal(flips[3], ~flips[0])
    )
    assert not torch.equal(flips[0], airbench_recipe.alternating_flips(6, 200, 0))  # seeded
    images = _images()
    mean, std = torch.zeros(3), torch.ones(3)
    chosen = flips[0][: len(images)]
    out = airbench_recipe.batch_augment(
        images, mean, std, airbench_recipe.step_generator(0, 0, 0), 0, True, chosen
    )
    expected = torch.where(chosen.view(-1, 1, 1, 1), images.flip(-1), images).float() / 255
    assert torch.allclose(out, expected)


def test_whitening_bias_trains_for_the_first_epochs_only() -> None:
    torch.manual_seed(0)
    net = airbench((3, 16, 16), 10, width=0.125)
    whiten_first_conv(net, torch.randn(32, 3, 16, 16))
    bias = airbench_recipe.whitening_bias(net)
    assert bias is not None and bias is net.stages[0][0].bias
    steps_per_epoch = 2
    epochs = airbench_recipe.HYPER.whiten_bias_epochs + 2
    opt = airbench_recipe.optimizer(net, 11.5, 64)
    schedule = airbench_recipe.scheduler(opt, epochs * steps_per_epoch, steps_per_epoch)
    moved = []
    for _ in range(epochs * steps_per_epoch):
        before_bias, before_head = bias.detach().clone(), net.head[2].weight.detach().clone()
        opt.zero_grad()
        net(torch.randn(64, 3, 16, 16)).square().mean().backward()
        opt.step()
        schedule.step()
        moved.append((not torch.equal(bias, before_bias), not torch.equal(net.head[2].weight, before_head)))
    frozen_from = airbench_recipe.HYPER.whiten_bias_epochs * steps_per_epoch
    assert all(b for b, _ in moved[:frozen_from]) and not any(b for b, _ in moved[frozen_from:])
    assert all(h for _, h in moved)  # the rest of the net keeps training


def test_whitening_conv_decorrelates_patches() -> None:
    # correlated data: smooth random images (neighbouring pixels and channels strongly correlated)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(400, 1, 12, 12, generator=generator)
    smooth = F.avg_pool2d(F.pad(base, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    images = torch.cat([smooth, 0.8 * smooth + 0.2 * torch.randn_like(smooth), smooth.flip(-1)], dim=1)
    model = airbench((3, 12, 12), 10, width=0.125)
    conv = whiten_first_conv(model, images, eps=0.0)
    assert conv is not None and not conv.weight.requires_grad
    with torch.no_grad():
        out = F.conv2d(images.double(), conv.weight[:12].double())  # the + half (the - half mirrors it)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=1e-6)
    raw = images.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    raw_cov = raw.T @ raw / len(raw)
    correlation = raw_cov / torch.outer(raw_cov.diag().sqrt(), raw_cov.diag().sqrt())
    assert (correlation - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5  # far from white


def test_airbench_teacher_and_student_stage_ends_match() -> None:
    x = torch.randn(2, 3, 32, 32)
    teacher = airbench((3, 32, 32), 10, width=0.125)
    _, ends = teacher.forward_features(x)
    student = airbench_student((3, 32, 32), 10, (8, 16, 16), timesteps=2)
    _, recorded = student.run(student.encode(x), record=True, time_mean=True)
    assert [tuple(e.shape[-2:]) for e in ends] == [tuple(r.shape[-2:]) for r in recorded.values()]
    assert [tuple(e.shape[-2:]) for e in ends] == [(31, 31), (15, 15), (7, 7), (3, 3)]


def _bench(work: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "bench" / "cifar10_table.py"),
        "--profile",
        "smoke",
        "--work",
        str(work),
        "--results",
        str(results),
        "--rows",
        "teacher,student_lasnn_T4",
        *extra,
    ]


def _single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_a_killed_benchmark_row_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    env = _single_thread_env()
    reference = subprocess.run(
        _bench(tmp_path / "a", tmp_path / "a_results"), env=env, capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr + reference.stdout
    # the same benchmark, killed (SIGKILL) once the teacher's first epoch is checkpointed
    work = tmp_path / "b"
    process = subprocess.Popen(
        _bench(work, tmp_path / "b_results"), env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    checkpoint = work / "teacher" / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the benchmark and the lasnn process it started
    process.wait()
    time.sleep(0.5)
    assert not (work / "teacher" / "metrics.json").exists()
    resumed = subprocess.run(
        _bench(work, tmp_path / "b_results"), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    log = (work / "logs" / "teacher.log").read_text()
    assert "--resume" in log and "resuming from" in log
    rows_a = json.loads((tmp_path / "a_results.json").read_text())["rows"]
    rows_b = json.loads((tmp_path / "b_results.json").read_text())["rows"]
    assert [r["model"] for r in rows_a] == ["teacher", "student_lasnn_T4"]
    for a, b in zip(rows_a, rows_b, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"], a["model"]
        assert a["command"].replace(str(tmp_path / "a"), "W") == b["command"].replace(str(work), "W")
    for name in ("teacher/teacher.pt", "student_lasnn_T4/student.pt"):
        state_a = torch.load(tmp_path / "a" / name, weights_only=False)["state_dict"]
        state_b = torch.load(work / name, weights_only=False)["state_dict"]
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), name


def test_batch_norm_recalibration_sets_the_statistics_of_the_final_weights() -> None:
    from lasnn.data import ImageArrayDataset
    from lasnn.distill.training import recalibrate_batch_norm

    images = _images(n=64, size=6)
    dataset = ImageArrayDataset(images, torch.zeros(64, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4))
    model[1].running_mean.fill_(5.0)  # stale statistics
    recalibrate_batch_norm(model, model, dataset, batch_size=64, seed=0, device="cpu", samples=64)
    with torch.no_grad():
        out = conv(dataset.normalised(torch.arange(64)))
    assert torch.allclose(model[1].running_mean, out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, out.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert model[1].momentum == 0.1 and not model.training
