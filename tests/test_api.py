"""The public Python API (``lasnn.__all__``), used only through its public names: the LaSNN loss against
a computation written here from the formula, its hooks on a torchvision teacher and hand-written norse
students, pairing, and a lasnn student through export -> compile -> simulate -> report on digits. Every
public name keeps a docstring and full type hints."""

from __future__ import annotations

import inspect
import json
import math
import re
import typing
from pathlib import Path

import nir
import norse.torch as norse
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import lasnn
from lasnn import (
    ActivationRecorder,
    LasnnError,
    LaSNNLoss,
    attention_map,
    compile_loihi,
    energy_report,
    export_nir,
    find_stage_ends,
    load_compiled,
    load_data,
    loihi_resources,
    make_student,
    pair_layers,
    simulate,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ docstrings and hints


def _undocumented(obj: object, name: str) -> list[str]:
    """What a public name lacks: a docstring of its own, or type hints on its parameters and return."""
    problems = []
    if not (obj.__doc__ or "").strip():
        problems.append(f"{name}: no docstring")
    targets: list[tuple[str, object]] = []
    if inspect.isclass(obj):
        if issubclass(obj, Exception):
            return problems
        for attr, value in vars(obj).items():
            if attr == "__init__" or (not attr.startswith("_") and inspect.isfunction(value)):
                targets.append((f"{name}.{attr}", value))
            elif not attr.startswith("_") and isinstance(value, property):
                targets.append((f"{name}.{attr}", value.fget))
        for qual, func in targets:
            if qual.rsplit(".", 1)[1] != "__init__" and not (func.__doc__ or "").strip():
                problems.append(f"{qual}: no docstring")
    elif callable(obj):
        targets.append((name, obj))
    for qual, func in targets:
        try:
            hints = typing.get_type_hints(func)
        except Exception as error:  # an annotation that does not resolve is as bad as none
            problems.append(f"{qual}: hints do not resolve ({error})")
            continue
        for param in list(inspect.signature(func).parameters.values()):
            if param.name not in ("self", "cls") and param.name not in hints:
                problems.append(f"{qual}: parameter {param.name} has no type hint")
        if "return" not in hints:
            problems.append(f"{qual}: no return type hint")
    return problems


def test_every_public_name_is_documented_and_typed() -> None:
    assert lasnn.__all__ and len(set(lasnn.__all__)) == len(lasnn.__all__)
    problems = []
    for name in lasnn.__all__:
        obj = getattr(lasnn, name)
        if name == "__version__":
            continue
        problems += _undocumented(obj, name)
    assert not problems, problems
    assert set(lasnn.__all__) <= set(dir(lasnn))
    with pytest.raises(AttributeError):
        lasnn.not_a_public_name  # noqa: B018


def test_the_check_catches_a_missing_docstring_or_hint() -> None:
    def documented(x: int) -> int:
        """Doc."""
        return x

    def no_doc(x: int) -> int:
        return x

    def no_hint(x) -> int:  # noqa: ANN001
        """Doc."""
        return x

    class NoMethodDoc:
        """Doc."""

        def run(self, x: int) -> int:
            return x

    assert _undocumented(documented, "documented") == []
    assert _undocumented(no_doc, "f") == ["f: no docstring"]
    assert _undocumented(no_hint, "f") == ["f: parameter x has no type hint"]
    assert _undocumented(NoMethodDoc, "C") == ["C.run: no docstring"]


def test_version_is_the_distribution_version() -> None:
    declared = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert lasnn.__version__ == declared


# ------------------------------------------------------------------------------------------- the loss


def _reference_map(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Written from the formula: sum_c a^2, average-pooled to ``size``, flattened, unit L2 norm."""
    m = (a.double() ** 2).sum(1, keepdim=True)
    kh, kw = m.shape[-2] // size[0], m.shape[-1] // size[1]
    m = m.unfold(2, kh, kh).unfold(3, kw, kw).mean((-1, -2)).flatten(1)
    return m / m.norm(dim=1, keepdim=True)


def test_loss_equals_the_formula_with_time_on_axis_one() -> None:
    g = torch.Generator().manual_seed(0)
    b, t = 5, 3
    z_s = torch.randn(b, 10, generator=g, requires_grad=True)
    z_t, y = torch.randn(b, 10, generator=g), torch.randint(0, 10, (b,), generator=g)
    teacher = {"deep": torch.rand(b, 32, 2, 2, generator=g), "early": torch.rand(b, 16, 16, 16, generator=g)}
    spikes = {
        "s1": (torch.rand(b, t, 6, 8, 8, generator=g) < 0.3).float().requires_grad_(),
        "s2": (torch.rand(b, t, 12, 4, 4, generator=g) < 0.3).float(),
    }
    alpha, tau, beta = 0.7, 3.0, 5.0
    out = LaSNNLoss(alpha=alpha, tau=tau, beta=beta, time_dim=1)(z_s, y, z_t, teacher, spikes)

    z = z_s.detach().double()
    ce = -torch.log_softmax(z, 1)[torch.arange(b), y].mean()
    p_t, log_q = torch.softmax(z_t.double() / tau, 1), torch.log_softmax(z / tau, 1)
    kd = alpha * tau**2 * (p_t * (p_t.log() - log_q)).sum(1).mean()
    # each student layer pairs with the teacher layer nearest in size (8x8: 16x16; 4x4: 2x2), compared at
    # the smaller of the two sizes (both sides pooled once here)
    att = (
        _reference_map(teacher["early"], (8, 8)) - _reference_map(spikes["s1"].detach().mean(1), (8, 8))
    ).norm(dim=1)
    att2 = (_reference_map(teacher["deep"], (2, 2)) - _reference_map(spikes["s2"].mean(1), (2, 2))).norm(
        dim=1
    )
    expected = ce + kd + beta * (att.mean() + att2.mean())
    assert out.pairs == [("s1", "early"), ("s2", "deep")]
    assert math.isclose(out.ce, float(ce), rel_tol=1e-5)
    assert math.isclose(out.kd, float(kd), rel_tol=1e-5)
    assert math.isclose(out.attention, float(beta * (att.mean() + att2.mean())), rel_tol=1e-5)
    assert math.isclose(float(out.loss), float(expected), rel_tol=1e-5)
    out.loss.backward()
    assert z_s.grad.abs().sum() > 0 and spikes["s1"].grad.abs().sum() > 0
    assert set(out.as_dict()) == {"loss", "ce", "kd", "attention"}

    # lists pair by position; kind "kd" and "ce" drop the terms
    by_list = LaSNNLoss(alpha=alpha, tau=tau, beta=beta, time_dim=1)(
        z_s, y, z_t, [teacher["early"]], [spikes["s1"]]
    )
    assert math.isclose(by_list.attention, float(beta * att.mean()), rel_tol=1e-5)
    kd_only = LaSNNLoss(alpha=alpha, tau=tau, kind="kd")(z_s, y, z_t)
    assert kd_only.attention == 0 and math.isclose(float(kd_only.loss), float(ce + kd), rel_tol=1e-5)
    assert math.isclose(float(LaSNNLoss(kind="ce")(z_s, y).loss), float(ce), rel_tol=1e-5)


def test_attention_map_and_pairing_on_their_own() -> None:
    a = torch.rand(2, 3, 4, 4)
    assert torch.allclose(attention_map(a).double(), _reference_map(a, (4, 4)), atol=1e-6)
    assert torch.allclose(attention_map(a, size=(2, 2)).double(), _reference_map(a, (2, 2)), atol=1e-6)
    student = {"a": (4, 16, 16), "b": (8, 8, 8), "c": (8, 1, 1)}
    teacher = {"t1": torch.zeros(1, 3, 16, 16), "t2": torch.zeros(1, 3, 8, 8), "t3": torch.zeros(1, 3, 4, 4)}
    assert pair_layers(student, teacher) == [("a", "t1"), ("b", "t2")]
    assert pair_layers(student, teacher, [("a", "t3")]) == [("a", "t3")]
    assert pair_layers(student, teacher, "b:t1") == [("b", "t1")]
    with pytest.raises(LasnnError, match="not a stage end of the teacher"):
        pair_layers(student, teacher, [("a", "nope")])


class _CellStudent(nn.Module):
    """A hand-written norse student whose LIF cells are called once per time step."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.conv1, self.lif1 = nn.Conv2d(1, 4, 3, padding=1), norse.LIFBoxCell()
        self.conv2, self.lif2 = nn.Conv2d(4, 8, 3, padding=1), norse.LIFBoxCell()
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = s2 = None
        out = 0.0
        for _ in range(self.steps):
            z1, s1 = self.lif1(10 * self.conv1(x), s1)
            z2, s2 = self.lif2(10 * self.conv2(self.pool(z1)), s2)
            out = out + self.fc(self.pool(z2).flatten(1))
        return out / self.steps


class _SequenceStudent(nn.Module):
    """The same with norse's multi-step LIF module (input and spikes ``[T, B, ...]``)."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.conv1, self.lif1 = nn.Conv2d(1, 4, 3, padding=1), norse.LIF()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        currents = (10 * self.conv1(x)).unsqueeze(0).expand(self.steps, *x.shape[:1], 4, 8, 8)
        spikes, _ = self.lif1(currents)
        return self.fc(spikes.flatten(2)).mean(0)


def _resnet18_cifar_stem() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model.eval()


def test_hooks_on_a_torchvision_teacher_and_norse_students() -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    teacher = _resnet18_cifar_stem()
    ends = find_stage_ends(teacher, images)
    assert ends == ["layer1.1.relu", "layer2.1.relu", "layer3.1.relu"]  # 8x8, 4x4, 2x2; 1x1 dropped
    # the shared relu's last call is the block's output: what the hook records is the stage's output
    with ActivationRecorder(teacher, [*ends, "layer1", "layer2", "layer3"]) as rec, torch.no_grad():
        t_logits = teacher(images)
        acts = rec.activations
    for end, stage in zip(ends, ("layer1", "layer2", "layer3"), strict=True):
        assert torch.equal(acts[end], acts[stage])

    student = _CellStudent()
    loss = LaSNNLoss(time_dim="steps").attach(teacher, student, ["lif1", "lif2"], example=images)
    assert loss.layers == (["lif1", "lif2"], ends)
    with torch.no_grad():
        teacher(images)
    logits = student(images)
    hooked = loss(logits, labels, t_logits)
    assert hooked.pairs == [("lif1", "layer1.1.relu"), ("lif2", "layer2.1.relu")]
    # the same loss from activations recorded here by hand: the cells' spikes stacked over the steps
    manual: dict[str, list[torch.Tensor]] = {"lif1": [], "lif2": []}
    handles = [
        getattr(student, n).register_forward_hook(lambda _m, _i, o, n=n: manual[n].append(o[0]))
        for n in manual
    ]
    logits2 = student(images)
    for h in handles:
        h.remove()
    loss.remove_hooks()
    direct = LaSNNLoss(time_dim=0)(
        logits2, labels, t_logits, acts, {n: torch.stack(v) for n, v in manual.items()}
    )
    assert math.isclose(float(hooked.loss), float(direct.loss), rel_tol=1e-6)
    assert hooked.attention > 0

    # the records are consumed by the loss call; evaluation (eval mode) records nothing per step
    seq = _SequenceStudent()
    loss = LaSNNLoss(time_dim=0).attach(teacher, seq, ["lif1"], ["layer1"])
    with torch.no_grad():
        teacher(images)
    out = loss(seq(images), labels, t_logits)
    assert out.pairs == [("lif1", "layer1")]
    out.loss.backward()
    assert seq.conv1.weight.grad.abs().sum() > 0  # through norse's surrogate gradient
    with pytest.raises(LasnnError, match="recorded nothing"):
        loss(seq(images).detach(), labels, t_logits)
    recorder = ActivationRecorder(student, ["lif1"], time_dim="steps")
    student.eval()
    with torch.no_grad():
        student(images)
    assert recorder.activations == {}
    recorder.remove()


# ------------------------------------------------------------------ a lasnn student through the toolchain


def test_student_export_compile_simulate_report(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, test = load_data("digits", "train"), load_data("digits", "test")
    assert train.images.shape[1:] == (1, 8, 8) and test.labels.shape == (360,)
    student = make_student(train.input_shape, train.num_classes, widths=(8, 16), timesteps=2)
    assert find_stage_ends(student) == ["features.1", "features.4"]
    opt = torch.optim.Adam(student.parameters(), 1e-2)
    ce = LaSNNLoss(kind="ce")
    for _ in range(2):
        student.train()
        for idx in torch.randperm(len(train.labels)).split(64):
            step = ce(student(train.images[idx]), train.labels[idx])
            opt.zero_grad()
            step.loss.backward()
            opt.step()
    student.eval()

    in_memory = export_nir(student, dataset="digits")
    assert list(tmp_path.iterdir()) == []  # nothing written unless asked
    assert in_memory.path is None and in_memory.verified_spikes > 0 and in_memory.spiking_layers == 2
    assert isinstance(in_memory.nir_graph, nir.NIRGraph)
    exported = export_nir(student, tmp_path / "student.nir", dataset="digits")
    assert exported.path == str(tmp_path / "student.nir") and "T=2" in exported.summary()
    assert set(nir.read(exported.path).nodes) == set(in_memory.nir_graph.nodes)

    # the float reference of the file scores exactly what the student (float64) scores
    n = 100
    with torch.no_grad():
        torch_correct = int((student.double()(test.images[:n].double()).argmax(1) == test.labels[:n]).sum())
    student.float()
    ref = simulate(exported, "float", samples=n)
    assert ref["correct"] == torch_correct and ref["accuracy"] > 0.5

    model = compile_loihi(exported)  # calibrated on digits' training split, by lasnn compile's rule
    res = loihi_resources(model)
    assert res["neurons"] == 8 * 8 * 8 + 16 * 4 * 4 + 10 and res["cores"] >= 1
    saved = compile_loihi(exported, out=tmp_path / "student.lasnn")
    emu = simulate(model, "emulator", samples=n)
    emu_file = simulate(tmp_path / "student.lasnn", "emulator", samples=n)
    assert np.array_equal(
        load_compiled(tmp_path / "student.lasnn").loihi.layers["features.1"].bias_mant,
        saved.loihi.layers["features.1"].bias_mant,
    )
    assert emu["layers"] == emu_file["layers"] and emu["accuracy"] == emu_file["accuracy"]
    assert abs(emu["accuracy"] - ref["accuracy"]) <= 0.05  # fixed point vs float, 100 images

    report = energy_report([emu, ref], labels=["emulator", "float"])
    assert not (tmp_path / "report").exists() and "files" not in report
    assert [r["label"] for r in report["runs"]] == ["emulator", "float"]
    assert report["runs"][0]["energy"]["loihi"]["energy"] > 0
    written = energy_report([emu], tmp_path / "report")
    assert (
        json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["accuracy"]
        == emu["accuracy"]
    )
    assert set(written["files"]) >= {"report.json", "report.md", "report.html"}


# ------------------------------------------------------------------------------------------- errors


def _one_sentence(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and text.endswith("."), text
    return text


def test_errors_are_one_lasnn_error_sentence(tmp_path: Path) -> None:
    z, y = torch.randn(2, 10), torch.tensor([0, 1])
    cases = [
        (lambda: LaSNNLoss(kind="mse"), "unknown"),
        (lambda: LaSNNLoss(tau=0), "positive temperature"),
        (lambda: LaSNNLoss(time_dim="later"), "time_dim"),
        (lambda: LaSNNLoss()(z, y), "teacher_logits"),
        (lambda: LaSNNLoss()(z, y, z), "activations"),
        (
            lambda: LaSNNLoss()(z, y, z, [torch.rand(2, 3, 4, 4)], [torch.rand(2, 3, 4, 4)]),
            "aggregating over time",
        ),
        (lambda: ActivationRecorder(nn.Sequential(nn.ReLU()), ["nope"]), "no submodule"),
        (lambda: LaSNNLoss().attach(nn.Sequential(nn.ReLU()), _CellStudent()), "student_layers"),
        (lambda: attention_map(torch.rand(2, 3)), "[B, C, H, W]"),
        (lambda: export_nir(_CellStudent()), "lasnn students"),
        (lambda: export_nir(make_student((1, 8, 8), 10, widths="4"), profile="nobody"), "profile"),
        (lambda: make_student((1, 8, 8), 10, arch="transformer"), "unknown"),
        (lambda: simulate(tmp_path / "missing.nir"), "missing.nir"),
        (lambda: energy_report([{"backend": "emulator"}]), "lacks the field"),
        (lambda: compile_loihi(42), "NIR file path"),
        (lambda: load_data("mnist"), "Unknown data set"),
    ]
    for call, fragment in cases:
        with pytest.raises(LasnnError) as error:
            call()
        assert fragment in _one_sentence(error), (fragment, str(error.value))


def test_export_profiles_in_memory_and_on_disk(tmp_path: Path) -> None:
    profiles = lasnn.export_profiles()
    assert "lasnn" in profiles
    if "portable" not in profiles:
        pytest.skip("this lasnn has no reader profiles")
    torch.manual_seed(0)
    student = make_student((1, 8, 8), 10, widths=(8, 16), timesteps=2).eval()
    for layer in student.modules():  # louder weights, so that every layer fires
        if isinstance(layer, nn.Conv2d):
            layer.weight.data *= 4
    portable = export_nir(student, tmp_path / "portable.nir", dataset="digits", profile="portable")
    in_memory = export_nir(student, dataset="digits", profile="portable")
    own = export_nir(student, tmp_path / "lasnn.nir", dataset="digits")
    assert portable.dt == in_memory.dt == 1e-4 and own.dt == 1e-3 and portable.profile == "portable"
    nodes = nir.read(portable.path).nodes
    assert set(nodes) == set(in_memory.nir_graph.nodes)
    assert not any("." in name for name in nodes) and not any(
        isinstance(n, nir.Scale) for n in nodes.values()
    )
    # the rewritten graph computes what lasnn's own layout computes
    a, b = simulate(own, "float", samples=40), simulate(portable, "float", samples=40)
    assert a["correct"] == b["correct"]
    assert [layer["spikes"] for layer in a["layers"]] == [layer["spikes"] for layer in b["layers"]]
    assert sum(layer["spikes"] for layer in a["layers"]) > 0
    with pytest.raises(LasnnError, match="cannot express"):
        export_nir(student, profile="sinabs")
