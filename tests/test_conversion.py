"""ANN->SNN conversion: threshold balancing, rate convergence, refusals, round trip, one-pass curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lasnn.distill import conversion
from lasnn.distill.conversion import build_converted, convert, evaluate_curve, normalised_rates, percentile
from lasnn.distill.spiking_layers import ResidualBlock, SeqFlatten, SeqPool, SeqSynapse, SpikingNeurons
from lasnn.errors import LasnnError


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics, so that folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1 + 0.1)
    return model.eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_norms(
        nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 16),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(16, 5),
        )
    )


class _Block(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + x): an identity shortcut on spikes."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x)


def _resnet() -> nn.Module:
    torch.manual_seed(1)
    return _randomise_norms(
        nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            _Block(6),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 5),
        )
    )


def _teacher_relu_outputs(teacher: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Post-ReLU activations of the teacher in call order (module ReLUs and the functional one in _Block)."""
    outs: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().clone()))
        for m in teacher.modules()
        if isinstance(m, nn.ReLU)
    ]
    blocks = [m for m in teacher.modules() if isinstance(m, _Block)]
    handles += [b.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().clone())) for b in blocks]
    with torch.no_grad():
        teacher(images)
    for h in handles:
        h.remove()
    return outs


# ------------------------------------------------------------------------------------ threshold balancing


def test_percentile_hand_computed_and_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1..1000 at p = 99.9: position 0.999 * 999 = 998.001 -> 999 + 0.001 * (1000 - 999) = 999.001.
    values = torch.arange(1, 1001, dtype=torch.float32)[torch.randperm(1000)]
    assert percentile(values, 99.9) == pytest.approx(999.001, abs=1e-9)
    random = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0)).relu()
    for p in (50.0, 99.0, 99.9, 100.0):
        expected = np.percentile(random.double().numpy(), p)
        assert percentile(random, p) == pytest.approx(expected, rel=1e-12)
        # the order-statistic path used beyond torch.quantile's size limit gives the same value
        monkeypatch.setattr(conversion, "QUANTILE_LIMIT", 10)
        assert percentile(random, p) == pytest.approx(expected, rel=1e-12)
        monkeypatch.undo()


def test_threshold_balancing_reproduces_each_layers_percentile() -> None:
    # Layer 1 sees relu(x) of a known tensor; layer 2 sees 2 * min(relu(x), lambda1) (upstream clipped).
    teacher = nn.Sequential(
        nn.Conv2d(1, 1, 1), nn.ReLU(), nn.Conv2d(1, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)
    )
    with torch.no_grad():
        teacher[0].weight.fill_(1.0), teacher[0].bias.zero_()
        teacher[2].weight.fill_(2.0), teacher[2].bias.zero_()
    known = (torch.arange(64, dtype=torch.float32) - 10.0).view(4, 1, 4, 4)  # -10 .. 53
    p = 90.0
    student = convert(teacher, known, timesteps=4, percentile=p)
    neurons = [m for _, m in student.neuron_layers()]
    a1 = np.maximum(known.numpy(), 0.0)
    lam1 = np.percentile(a1, p)  # = 46.7 by hand: position 0.9 * 63 = 56.7 -> 46 + 0.7 * 1
    assert lam1 == pytest.approx(46.7)
    a2 = 2.0 * np.minimum(a1, lam1)
    lam2 = np.percentile(a2, p)
    assert float(neurons[0].v_th) == pytest.approx(lam1, rel=1e-6)
    assert float(neurons[1].v_th) == pytest.approx(lam2, rel=1e-6)
    assert [t["lambda"] for t in student.config["thresholds"]] == pytest.approx([lam1, lam2], rel=1e-9)
    # spikes of layer 1 stand for lambda1: the next synapse carries weight 2 * lambda1, bias unchanged
    assert float(student.features[2].layer.weight.detach()) == pytest.approx(2.0 * lam1, rel=1e-6)
    assert float(student.features[2].layer.bias.detach()) == 0.0


# ------------------------------------------------------------------------------------ rate convergence


@pytest.mark.parametrize("make", [_cnn, _resnet], ids=["cnn", "resnet"])
def test_firing_rates_approach_normalised_activations(make) -> None:
    teacher = make()
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    # percentile 100 on the very images evaluated: no activation is clipped, so the normalised activation
    # is exactly the teacher's ReLU output divided by the layer's lambda (independent of the conversion).
    student = convert(teacher, images, timesteps=4, percentile=100.0, reset="subtract")
    layers = [m for _, m in student.neuron_layers()]
    reference = [
        a / float(m.v_th) for a, m in zip(_teacher_relu_outputs(teacher, images), layers, strict=True)
    ]
    for ref, rate in zip(reference, normalised_rates(student, images), strict=True):
        assert torch.allclose(rate, ref, atol=1e-5)
        assert float(ref.max()) == pytest.approx(1.0, abs=1e-5) or float(ref.max()) == 0.0

    spikes: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda _m, _i, out, i=i: spikes.__setitem__(i, out))
    errors, logit_errors = [], []
    with torch.no_grad():
        logits_ref = teacher(images)
        for t in (4, 16, 64, 256):
            student.timesteps = t
            logits = student(images)
            errors.append(
                np.mean([float((spikes[i].mean(0) - ref).abs().mean()) for i, ref in enumerate(reference)])
            )
            logit_errors.append(float((logits - logits_ref).abs().mean()))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert all(a > b for a, b in zip(logit_errors, logit_errors[1:], strict=False)), logit_errors
    assert errors[-1] < 0.02 and errors[0] > 2 * errors[-1]


def test_reset_to_zero_converges_less_than_subtraction() -> None:
    teacher = _cnn()
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = teacher(images)
        err = {}
        for reset in ("zero", "subtract"):
            student = convert(teacher, images, timesteps=128, percentile=100.0, reset=reset)
            assert all(m.config.reset == reset and m.config.kind == "if" for _, m in student.neuron_layers())
            err[reset] = float((student(images) - ref).abs().mean())
    assert err["subtract"] < err["zero"]


# ------------------------------------------------------------------------------------ structure, refusals


def test_only_student_layer_types_and_max_pooling_replaced() -> None:
    teacher = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).eval()
    images = torch.randn(4, 1, 8, 8)
    student = convert(teacher, images, timesteps=2)
    allowed = (
        SeqSynapse,
        SpikingNeurons,
        SeqPool,
        SeqFlatten,
        ResidualBlock,
        nn.Sequential,
        nn.Conv2d,
        nn.Linear,
    )
    assert all(isinstance(m, allowed) for m in student.features.modules())
    pools = [m for m in student.features if isinstance(m, SeqPool)]
    assert [p.kind for p in pools] == ["avg"]
    assert student.config["replaced"] == ["2: max pooling -> average pooling"]
    assert student.encoding == "direct"
    blocks = [m for m in _resnet_student().features if isinstance(m, ResidualBlock)]
    assert len(blocks) == 1 and blocks[0].shortcut is not None  # identity on spikes scaled by lambda
    w = blocks[0].shortcut.layer.weight[:, :, 0, 0]
    w = w.detach()
    assert torch.allclose(w, torch.eye(6) * w[0, 0]) and float(w[0, 0]) > 0


def _resnet_student():
    return convert(_resnet(), torch.randn(4, 1, 8, 8), timesteps=2)


class _TanhNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    ("teacher", "name"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(72, 3)), "'1'"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(), nn.Flatten(), nn.Linear(72, 3)), "'1'"),
        (_TanhNet(), "'tanh'"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3), nn.Softmax(-1)), "'4'"),
        (
            nn.Sequential(
                nn.Conv2d(1, 2, 3), nn.ReLU(), nn.LayerNorm([2, 6, 6]), nn.Flatten(), nn.Linear(72, 3)
            ),
            "'2'",
        ),
    ],
    ids=["sigmoid", "leaky_relu", "functional_tanh", "softmax", "layernorm"],
)
def test_unsupported_layers_refused_naming_the_layer(teacher: nn.Module, name: str) -> None:
    with pytest.raises(LasnnError) as info:
        convert(teacher.eval(), torch.randn(2, 1, 8, 8), timesteps=4)
    message = str(info.value)
    assert name in message and message.count(". ") == 0 and message.endswith(".")


def test_bad_arguments_refused() -> None:
    teacher, images = _cnn(), torch.randn(2, 1, 8, 8)
    for kwargs in (dict(reset="soft"), dict(percentile=0.0), dict(percentile=101.0), dict(timesteps=0)):
        args = dict(timesteps=4) | kwargs
        with pytest.raises(LasnnError):
            convert(teacher, images, **args)


# ------------------------------------------------------------------------------------ round trip, curve


def test_build_converted_and_checkpoint_round_trip(tmp_path) -> None:
    from lasnn.distill.checkpoints import load_student, save_student

    teacher = _resnet()
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    student = convert(teacher, images, timesteps=8, reset="subtract")
    json.dumps(student.config)  # the structure description is plain data
    rebuilt = build_converted(student.config, 8, "direct")
    rebuilt.load_state_dict(student.state_dict())
    meta = dict(
        dataset="synthetic",
        data_root=None,
        input_shape=[1, 8, 8],
        num_classes=5,
        mean=[0.0],
        std=[1.0],
        seed=0,
        dt=1e-3,
        loss="conversion",
        teacher="none",
    )
    save_student(tmp_path / "student.pt", student, meta, kind="converted")
    loaded, blob = load_student(tmp_path / "student.pt")
    assert blob["kind"] == "converted" and loaded.timesteps == 8
    with torch.no_grad():
        expected = student(images)
        assert torch.equal(rebuilt(images), expected)
        assert torch.equal(loaded(images), expected)
    assert [m.config.reset for _, m in loaded.neuron_layers()] == ["subtract"] * 3


def test_one_pass_curve_equals_separate_runs() -> None:
    teacher = _cnn()
    images = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    student = convert(teacher, images, timesteps=3, percentile=99.0, reset="subtract")
    with torch.no_grad():
        labels = teacher(images).argmax(-1)
    steps = [1, 2, 3, 5, 8, 16, 40]
    curve = evaluate_curve(student, [(images[:10], labels[:10]), (images[10:], labels[10:])], steps)
    assert student.timesteps == 3  # restored
    separate = {}
    with torch.no_grad():
        for t in steps:
            student.timesteps = t
            separate[t] = int((student(images).argmax(-1) == labels).sum())
    assert {t: round(curve[t] * 24) for t in steps} == separate
    assert len(set(separate.values())) > 2  # the accuracies differ across T: the comparison has teeth


def test_convert_teacher_writes_curve_and_converted_checkpoint(tmp_path) -> None:
    from lasnn.data import dataset_info, load_dataset
    from lasnn.distill.checkpoints import data_metadata, load_student, save_teacher
    from lasnn.distill.conversion_commands import _stack, convert_teacher, parse_timesteps, subset_indices
    from lasnn.distill.teachers import build_teacher

    info = dataset_info("digits")
    config = dict(arch="small_cnn", in_shape=list(info.input_shape), num_classes=info.num_classes, width=0.25)
    torch.manual_seed(0)
    teacher = _randomise_norms(build_teacher(config))
    save_teacher(tmp_path / "t" / "teacher.pt", teacher, config, data_metadata("digits", None, info, 0))
    metrics = convert_teacher(
        tmp_path / "t",
        "4,1,2",
        tmp_path / "c",
        reset="subtract",
        calibration_samples=32,
        test_samples=40,
        progress=False,
    )
    on_disk = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert on_disk["curve"] == metrics["curve"] and [p["timesteps"] for p in on_disk["curve"]] == [1, 2, 4]
    assert on_disk["test_samples"] == 40 and on_disk["calibration_samples"] == 32
    student, blob = load_student(tmp_path / "c" / "student.pt")
    assert blob["kind"] == "converted" and student.timesteps == metrics["chosen_timesteps"]
    test_set, _ = load_dataset("digits", "test", augment=False)
    images, labels = _stack(test_set, subset_indices(len(test_set), 40, 1))
    with torch.no_grad():
        acc = float((student(images).argmax(-1) == labels).float().mean())
        teacher_acc = float((teacher(images).argmax(-1) == labels).float().mean())
    curve = {p["timesteps"]: p["test_accuracy"] for p in metrics["curve"]}
    assert acc == pytest.approx(curve[student.timesteps]) and teacher_acc == pytest.approx(
        metrics["teacher_accuracy"]
    )
    with pytest.raises(LasnnError, match="--timesteps"):
        parse_timesteps("1,0,4")


@pytest.mark.parametrize("shift", [False, True])
def test_first_layer_spike_counts_hand_computed(shift: bool) -> None:
    # Constant current z into IF neurons (threshold lambda, strict v > lambda, reset by subtraction) fires
    # ceil(T z / lambda) - 1 times from v0 = 0 and ceil(T z / lambda + 1/2) - 1 times from v0 = lambda / 2.
    teacher = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        teacher[0].weight.fill_(1.0), teacher[0].bias.zero_()
    x = torch.tensor([0.13, 0.37, 0.0, 1.0]).view(1, 1, 2, 2)
    student = convert(teacher, x, timesteps=10, percentile=100.0, reset="subtract", shift=shift)
    neurons = student.neuron_layers()[0][1]
    assert float(neurons.v_th) == 1.0 and neurons.config.v_reset == (0.5 if shift else 0.0)
    out = {}
    neurons.register_forward_hook(lambda _m, _i, o: out.__setitem__("spikes", o))
    with torch.no_grad():
        student(x)
    counts = out["spikes"].sum(0).flatten().tolist()
    expected = [1, 4, 0, 10] if shift else [1, 3, 0, 9]  # 10 z = 1.3, 3.7, 0, 10
    assert counts == expected
    if not shift:
        with pytest.raises(LasnnError, match="shift"):
            convert(teacher, x, timesteps=10, reset="zero", shift=True)


def test_converted_network_lowers_and_simulates_spike_exact() -> None:
    """The export stage lowers a (reset-to-zero) converted network like any student: lasnn's float reference
    simulator reproduces its readout and every spike; reset by subtraction is refused by name."""
    lowering = pytest.importorskip("lasnn.export.lowering")
    float_backend = pytest.importorskip("lasnn.sims.float_backend")
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    for make in (_cnn, _resnet):
        student = convert(make(), images, timesteps=16).double()
        spikes: dict[str, torch.Tensor] = {}
        for name, layer in student.neuron_layers():
            layer.register_forward_hook(lambda _m, _i, out, name=name, d=spikes: d.__setitem__(name, out))
        stream = student.encode(images.double())
        with torch.no_grad():
            currents, _ = student.run(stream)
        graph = lowering.lower_student(student, {"dataset": "synthetic"})
        result = float_backend.FloatBackend(progress=False).run(graph, stream.numpy())
        np.testing.assert_array_equal(result.outputs, currents.numpy())
        assert sum(float(s.sum()) for s in spikes.values()) > 0
        assert sorted(result.spikes) == sorted(spikes)
        for name, s in spikes.items():
            np.testing.assert_array_equal(result.spikes[name], s.numpy())
    with pytest.raises(LasnnError, match="subtraction"):
        lowering.lower_student(
            convert(_cnn(), images, timesteps=4, reset="subtract"), {"dataset": "synthetic"}
        )
