"""Teacher -> ONNX: the file passes onnx.checker and ONNX's reference evaluator agrees with torch to < 1e-4
(including a batch size other than the one traced), and the CLI verb writes it from a checkpoint."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from lasnn.distill.teachers import build_teacher
from lasnn.export.onnx_export import TOLERANCE, export_teacher_onnx

SHAPE = (1, 8, 8)  # the digits data set


def digits_teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_teacher(dict(arch="small_cnn", in_shape=list(SHAPE), num_classes=10))
    for module in model.modules():  # non-trivial eval statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_onnx_matches_torch(tmp_path):
    model = digits_teacher()
    report = export_teacher_onnx(model, SHAPE, tmp_path / "teacher.onnx")
    assert report.max_abs_diff < TOLERANCE
    proto = onnx.load(tmp_path / "teacher.onnx")
    onnx.checker.check_model(proto)
    images = torch.randn(7, *SHAPE, generator=torch.Generator().manual_seed(3))  # another batch size
    (got,) = ReferenceEvaluator(proto).run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    assert got.shape == (7, 10)
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected).max() > 1e-3  # logits are not trivially zero


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_cifar_style_teachers_export(tmp_path, arch):
    torch.manual_seed(1)
    model = build_teacher(dict(arch=arch, in_shape=[3, 16, 16], num_classes=10, width=0.125)).eval()
    report = export_teacher_onnx(model, (3, 16, 16), tmp_path / "t.onnx", samples=torch.randn(2, 3, 16, 16))
    assert report.max_abs_diff < TOLERANCE


def test_cli_teacher_to_onnx(tmp_path, monkeypatch, capsys):
    import lasnn.cli
    from lasnn.distill.checkpoints import save_teacher

    model = digits_teacher()
    meta = dict(
        dataset="digits",
        data_root=None,
        input_shape=list(SHAPE),
        num_classes=10,
        mean=[0.0],
        std=[1.0],
        seed=0,
    )
    save_teacher(tmp_path / "teacher.pt", model, model.config, meta)
    monkeypatch.setattr(lasnn.cli, "STAGE_COMMANDS", ("lasnn.export.commands",))
    code = lasnn.cli.main(["export", str(tmp_path / "teacher.pt"), "--onnx", str(tmp_path / "t.onnx")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "onnx.checker passed" in out and "max |torch - ONNX reference|" in out
    onnx.checker.check_model(onnx.load(tmp_path / "t.onnx"))
    code = lasnn.cli.main(["export", str(tmp_path / "teacher.pt"), "-o", str(tmp_path / "t.nir")])
    _, err = capsys.readouterr()
    assert code == 2 and "--onnx" in err
