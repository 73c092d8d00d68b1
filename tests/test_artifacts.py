"""Atomic writes and checkpoint validation in lasnn.artifacts."""

from pathlib import Path

import pytest
import torch

from lasnn.artifacts import (
    atomic_write,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from lasnn.errors import LasnnError


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "out" / "run.json"
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half")
        raise RuntimeError("crash in the middle")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_refuses_a_folder_as_target(tmp_path: Path) -> None:
    with pytest.raises(LasnnError, match="is a folder"):
        write_json(tmp_path, {"a": 1})


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    other = tmp_path / ".other.pt.abc123.tmp"
    other.write_bytes(b"not ours")
    assert remove_stale_temporaries(target) == [stale]
    assert not stale.exists() and other.exists()


def test_checkpoint_round_trip_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    save_checkpoint(path, "teacher", {"dataset": "digits"}, state_dict={"w": torch.ones(2)})
    blob = load_checkpoint(path, ("teacher",), required=("state_dict",))
    assert blob["metadata"]["dataset"] == "digits" and "versions" in blob["metadata"]
    with pytest.raises(LasnnError, match="'teacher' checkpoint, but a student"):
        load_checkpoint(path, ("student",))
    with pytest.raises(LasnnError, match="lacks the field"):
        load_checkpoint(path, ("teacher",), required=("config",))
    save_checkpoint(path, "teacher", {}, state_dict={"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(LasnnError, match="non-finite"):
        load_checkpoint(path, ("teacher",))
