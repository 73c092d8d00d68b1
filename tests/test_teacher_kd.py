"""``lasnn teach --kd-from``: a teacher that also learns another teacher's softened logits. The source's
logits must reach the loss: a student taught by a teacher whose classes were shifted by one follows the
shift; the logged terms add up; a source of another data set is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lasnn.data import load_dataset
from lasnn.distill.checkpoints import load_teacher, save_teacher
from lasnn.distill.commands import teach
from lasnn.errors import LasnnError


def _predictions(path, images: torch.Tensor) -> torch.Tensor:
    model, _ = load_teacher(path)
    with torch.no_grad():
        return model(images).argmax(1)


def _shifted_teacher(source, out) -> None:
    """``source`` with its output classes rotated by one: it predicts class c + 1 where it saw c."""
    model, blob = load_teacher(source)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(1, dims=0))
        head.bias.copy_(head.bias.roll(1, dims=0))
    out.mkdir()
    save_teacher(out / "teacher.pt", model, blob["config"], blob["metadata"])


def test_kd_from_makes_the_teacher_follow_the_source_logits(tmp_path) -> None:
    teach("digits", tmp_path / "relu", epochs=4, seed=0)
    _shifted_teacher(tmp_path / "relu" / "teacher.pt", tmp_path / "shifted")
    taught = teach(
        "digits",
        tmp_path / "taught",
        epochs=3,
        activation="qcfs",
        kd_from=tmp_path / "shifted",
        kd_alpha=10.0,
        kd_tau=1.0,
    )
    plain = teach("digits", tmp_path / "plain", epochs=3, activation="qcfs")
    test_set, _ = load_dataset("digits", "test", None, augment=False)
    images = test_set.normalised(torch.arange(len(test_set)))
    source = _predictions(tmp_path / "shifted" / "teacher.pt", images)
    labels = _predictions(tmp_path / "relu" / "teacher.pt", images)
    assert (source == (labels + 1) % 10).all()  # the rotation did what it says
    follows = float((_predictions(tmp_path / "taught" / "teacher.pt", images) == source).float().mean())
    plain_follows = float((_predictions(tmp_path / "plain" / "teacher.pt", images) == source).float().mean())
    assert follows > 0.6 and plain_follows < 0.2, (follows, plain_follows)
    assert taught["test_accuracy"] < plain["test_accuracy"] - 0.4
    assert taught["kd"] == {"from": str(tmp_path / "shifted" / "teacher.pt"), "alpha": 10.0, "tau": 1.0}
    for epoch in taught["history"]:  # the logged loss is CE + alpha * KD
        assert epoch["train_loss"] == pytest.approx(epoch["train_ce"] + 10.0 * epoch["train_kd"], rel=1e-4)
    assert "train_kd" not in plain["history"][0]


def test_kd_from_refuses_a_teacher_of_another_data_set(tmp_path) -> None:
    teach("digits", tmp_path / "relu", epochs=1, seed=0)
    model, blob = load_teacher(tmp_path / "relu" / "teacher.pt")
    (tmp_path / "other").mkdir()
    save_teacher(
        tmp_path / "other" / "teacher.pt", model, blob["config"], {**blob["metadata"], "dataset": "cifar10"}
    )
    with pytest.raises(LasnnError, match="trained on cifar10.*not on digits"):
        teach("digits", tmp_path / "t", epochs=1, kd_from=tmp_path / "other")
    assert not (tmp_path / "t").exists()
