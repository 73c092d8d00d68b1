"""Data-parallel training under torchrun: 2 gloo processes on CPU give the weights of 1 process with the
same global batch, and a 2-process checkpoint resumes in 1 process.

Tolerance: the runs differ only in float32 summation order (each rank sums its half of the batch's
gradients and batch-norm statistics, then the halves are all-reduced), about 1e-7 relative per step.
Measured on the resume test's 14-step run: 2 processes differ from 1 by at most 1.5e-7; per-rank
batch-norm statistics instead of synchronised ones move weights by 6.8e-3, an unweighted uneven last
batch by 4.5e-3. Runs are kept short because a spiking network amplifies rounding: a membrane within
1e-7 of threshold spikes in one run and not in the other, after which the runs drift apart (the
default digits student, 2 epochs: equal train loss after epoch 1, test accuracy 0.653 vs 0.647 after
epoch 2), as 1-thread and 2-thread single-process runs do too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DistributedSampler, Subset

from lasnn.artifacts import load_checkpoint
from lasnn.data import load_dataset
from lasnn.distill import distributed
from lasnn.distill.commands import distill, teach
from lasnn.distill.students import vgg_student
from lasnn.distill.training import TrainSettings, _batches, _epoch_order, fit
from lasnn.errors import LasnnError

TESTS = Path(__file__).resolve().parent
RTOL = ATOL = 1e-5


def _torchrun(args: list[str], cwd: Path) -> None:
    """Run ``args`` (a script or ``-m module``, then its options) in 2 gloo processes on CPU with torchrun."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=RTOL, atol=ATOL, msg=lambda m, k=key: f"{k}: {m}")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


# ------------------------------------------------------------------------------------- no processes


@pytest.mark.parametrize(("n", "world"), [(96, 2), (96, 4), (64, 2)])
def test_sharding_equals_distributed_sampler_when_sizes_divide(n, world):
    """Rank r's batches are what DistributedSampler (same seed) + a per-rank batch of B / world gives."""
    batch, seed = 16, 3
    for epoch in range(2):
        batches = _batches(_epoch_order(n, seed, epoch), batch, world)
        assert sorted(i for b in batches for i in b) == list(range(n))
        for r in range(world):
            sampler = DistributedSampler(range(n), world, r, shuffle=True, seed=seed * 1_000_003)
            sampler.set_epoch(epoch)
            theirs = list(BatchSampler(sampler, batch // world, drop_last=False))
            assert theirs == [distributed.shard(b, world, r) for b in batches]


def test_seeded_items_do_not_depend_on_the_global_rng():
    train, _ = load_dataset("digits", "train")  # random crop with padding
    items = distributed.SeededItems(train, seed=11)
    torch.manual_seed(0)
    first = [items[i][0] for i in range(40)]
    before = torch.get_rng_state()
    torch.manual_seed(123)
    torch.rand(7)
    second = [items[i][0] for i in reversed(range(40))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    torch.manual_seed(0)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left alone
    other = distributed.SeededItems(train, seed=12)
    assert any(not torch.equal(first[i], other[i][0]) for i in range(40))  # the seed matters


# ------------------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
def test_two_process_teach_and_distill_equal_one_process(tmp_path):
    """``torchrun -m lasnn.cli teach/distill`` with 2 gloo processes vs the same verbs in 1 process.
    Digits has 1437 training images: with a global batch of 64 the last batch (29) splits 15/14."""
    common = ["--epochs", "1", "--batch-size", "64", "--device", "cpu"]
    teach("digits", tmp_path / "t1", width=0.25, epochs=1, batch_size=64, device="cpu")
    _torchrun(["-m", "lasnn.cli", "teach", "--width", "0.25", "--out", "t2", *common], tmp_path)
    _assert_same_weights(_state(tmp_path / "t1" / "teacher.pt"), _state(tmp_path / "t2" / "teacher.pt"))
    metrics = json.loads((tmp_path / "t2" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and not list((tmp_path / "t2").glob(".*.tmp"))

    teacher = str(tmp_path / "t1" / "teacher.pt")
    one = distill(teacher, tmp_path / "s1", widths="4,8", timesteps=2, epochs=1, batch_size=64, device="cpu")
    args = ["-m", "lasnn.cli", "distill", "--teacher", teacher, "--widths", "4,8", "-T", "2", "--out", "s2"]
    _torchrun([*args, *common], tmp_path)
    _assert_same_weights(_state(tmp_path / "s1" / "student.pt"), _state(tmp_path / "s2" / "student.pt"))
    two = json.loads((tmp_path / "s2" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["train_accuracy"] == h1["train_accuracy"]  # counts summed over ranks
        assert h2["test_accuracy"] == h1["test_accuracy"]  # test set split over ranks, counts summed


def _tiny_fit(out: Path, interrupt_rank: int | None = None, resume: bool = False, sync: bool = True):
    """2 epochs of 7 steps (101 images, global batch 16: the last batch of 5 splits 3/2) of a tiny
    direct-coded student; ``interrupt_rank`` sends Ctrl-C (SIGINT) to that rank only at its 3rd step;
    ``sync=False`` calls the model directly instead of through DDP (a bug fit must catch)."""
    train, _ = load_dataset("digits", "train")
    test, _ = load_dataset("digits", "test")
    torch.manual_seed(1)
    net = vgg_student((1, 8, 8), 10, widths=((4,), (8,)), timesteps=2)
    forward = distributed.data_parallel(net, "cpu", net) if sync else net
    calls = {"n": 0}

    def loss_fn(images, labels, progress):
        calls["n"] += 1
        if calls["n"] == 3 and distributed.rank() == interrupt_rank:
            os.kill(os.getpid(), signal.SIGINT)
        logits = forward(images)
        loss = F.cross_entropy(logits, labels)
        return loss, logits, {"ce": float(loss.detach())}

    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=3, device="cpu")
    data = Subset(train, range(101)), Subset(test, range(64))
    return net, fit(net, loss_fn, net, *data, settings, out, {"test": "ddp"}, resume, desc="tiny")


def _ranks_job(out: Path) -> None:
    """The body of each torchrun process of the resume test."""
    with pytest.raises(LasnnError, match="different weights"):
        _tiny_fit(out.parent / "unsynced", sync=False)
    assert not (out.parent / "unsynced" / "checkpoint.pt").exists()
    try:
        _tiny_fit(out, interrupt_rank=1)
    except KeyboardInterrupt:
        return
    raise AssertionError("the run was not interrupted")


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(tmp_path):
    """Ctrl-C reaching rank 1 only stops both ranks after the same step; rank 0 writes the mid-epoch
    checkpoint; one process resumes it and ends with the weights of an uninterrupted 1-process run.
    First, in the same processes: replicas trained without DDP are refused a checkpoint."""
    out = tmp_path / "cut"
    job = tmp_path / "job.py"
    job.write_text(
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); from pathlib import Path\n"
        f"import test_distributed as t; t._ranks_job(Path({str(out)!r}))\n"
    )
    _torchrun([str(job)], tmp_path)
    state = load_checkpoint(out / "checkpoint.pt", ("training_state",))
    assert (state["epoch"], state["step"], state["world_size"]) == (0, 3, 2)
    assert len(state["rng_ranks"]) == 2
    resumed, metrics = _tiny_fit(out, resume=True)
    reference, ref_metrics = _tiny_fit(tmp_path / "ref")
    _assert_same_weights(reference.state_dict(), resumed.state_dict())
    assert metrics["world_size"] == 1
    for h1, h2 in zip(ref_metrics["history"], metrics["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["test_accuracy"] == h1["test_accuracy"]


def test_under_torchrun_repeated_ctrl_c_and_sigterm_only_request_a_stop(monkeypatch):
    """The agent forwards Ctrl-C (a second SIGINT) and preemption (SIGTERM) to the workers; both must
    leave time to finish the step and save, where a single process stops at once on a second Ctrl-C."""
    from lasnn.distill.training import _StopFlag

    before = signal.getsignal(signal.SIGTERM)
    with _StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    with _StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before  # restored
