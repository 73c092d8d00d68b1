"""Crash safety of real training processes (issue 9): a ``lasnn distill`` run on digits that is killed
with SIGKILL mid-epoch, or stopped with Ctrl-C (SIGINT), and then resumed with ``--resume`` ends with
exactly the weights and metrics of an uninterrupted run with the same seed (deterministic mode).

The three runs (reference, SIGKILL, SIGINT) start together as real ``lasnn`` processes with one thread
each; the test waits for the first epoch's checkpoint of a run to appear (it is renamed into place, so it
is complete) and signals the process at once, that is early in the second epoch. Poisson encoding is used
so that a mid-epoch resume must also restore the random number generators exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

EPOCHS = 2
TIMING_KEYS = {"seconds", "images_per_s"}


def _lasnn() -> list[str]:
    script = Path(sys.executable).with_name("lasnn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lasnn.cli"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits teacher checkpoint (random weights: distillation only needs a valid, fixed teacher)."""
    from lasnn.data import dataset_info
    from lasnn.distill.checkpoints import data_metadata, save_teacher
    from lasnn.distill.teachers import build_teacher

    info = dataset_info("digits")
    torch.manual_seed(0)
    model = build_teacher(dict(arch="small_cnn", in_shape=list(info.input_shape), num_classes=10, width=0.25))
    path = tmp_path_factory.mktemp("kill-resume") / "teacher.pt"
    save_teacher(path, model, model.config, data_metadata("digits", None, info, 0))
    return path


def _distill(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [
        *_lasnn(),
        "distill",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--widths",
        "4,8",
        "-T",
        "2",
        "--encoding",
        "poisson",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--deterministic",
        *extra,
    ]


def _env(tmp: Path) -> dict[str, str]:
    # one thread per process: three runs share two cores, and the thread count must not differ between
    # the reference and the resumed runs
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LASNN_CACHE": str(tmp / "cache")}


def _start(command: list[str], tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=_env(tmp), cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _history(out: Path) -> list[dict]:
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    return [{k: v for k, v in epoch.items() if k not in TIMING_KEYS} for epoch in metrics["history"]]


def test_sigkill_and_sigint_mid_epoch_then_resume_equal_an_uninterrupted_run(teacher: Path, tmp_path: Path):
    ref_out, kill_out, int_out = tmp_path / "reference", tmp_path / "killed", tmp_path / "interrupted"
    reference = _start(_distill(teacher, ref_out), tmp_path)
    victims = {
        "kill": (_start(_distill(teacher, kill_out), tmp_path), kill_out, signal.SIGKILL),
        "int": (_start(_distill(teacher, int_out), tmp_path), int_out, signal.SIGINT),
    }
    signalled: set[str] = set()
    deadline = time.monotonic() + 300
    while len(signalled) < len(victims) and time.monotonic() < deadline:
        for name, (process, out, sig) in victims.items():
            if name not in signalled and (out / "checkpoint.pt").exists():
                process.send_signal(sig)
                signalled.add(name)
            elif name not in signalled and process.poll() is not None:
                pytest.fail(
                    f"{name} run ended before its first checkpoint: {process.communicate()[1][-2000:]}"
                )
        time.sleep(0.005)
    assert signalled == set(victims), "no epoch checkpoint appeared within 300 s"

    results = {name: (p.wait(timeout=300), *p.communicate()) for name, (p, _, _) in victims.items()}
    ref_code, _, ref_err = (reference.wait(timeout=300), *reference.communicate())
    assert ref_code == 0, ref_err[-2000:]

    # SIGKILL: no final artifact, the last complete checkpoint is the end of epoch 1
    code, _, err = results["kill"]
    assert code == -signal.SIGKILL, err[-2000:]
    assert not (kill_out / "student.pt").exists(), "the run finished before the kill: make epochs longer"
    killed_state = _state(kill_out / "checkpoint.pt")
    assert (killed_state["epoch"], killed_state["step"]) == (1, 0)

    # Ctrl-C: exits 130 with one line, after saving a mid-epoch state (epoch 2 started, some steps done)
    code, _, err = results["int"]
    assert code == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "lasnn distill: interrupted"
    assert "Traceback" not in err
    assert not (int_out / "student.pt").exists()
    int_state = _state(int_out / "checkpoint.pt")
    assert int_state["epoch"] == 1 and int_state["step"] > 0, (int_state["epoch"], int_state["step"])
    assert int_state["partial"]["seen"] > 0 and int_state["rng"] is not None

    resumed = [_start(_distill(teacher, out, "--resume"), tmp_path) for out in (kill_out, int_out)]
    for process, out in zip(resumed, (kill_out, int_out), strict=True):
        code = process.wait(timeout=300)
        stdout, stderr = process.communicate()
        assert code == 0, stderr[-2000:]
        assert "resuming from" in stdout + stderr, f"{out.name} did not resume"

    want = _state(ref_out / "student.pt")["state_dict"]
    for out in (kill_out, int_out):
        got = _state(out / "student.pt")["state_dict"]
        assert want.keys() == got.keys()
        differing = [k for k in want if not torch.equal(want[k], got[k])]
        assert not differing, f"{out.name}: weights differ from the uninterrupted run in {differing}"
        assert _history(out) == _history(ref_out), f"{out.name}: metrics differ from the uninterrupted run"
    assert len(_history(ref_out)) == EPOCHS
