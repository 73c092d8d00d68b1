"""QCFS teachers and their conversion: the activation, the exact first-layer equivalence, convergence of
every layer's rate within ~1/T, the airbench layout (pool -> BN folding, whitening conv, global pooling,
logit scale), export or refusal, and the student initialised from a converted network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lasnn.distill.conversion import convert, evaluate_curve, trainable_from_converted
from lasnn.distill.qcfs import QCFS
from lasnn.distill.teachers import airbench, build_teacher
from lasnn.errors import LasnnError


def _qcfs(x: torch.Tensor, lam: float, levels: int) -> torch.Tensor:
    """Bu et al.'s Eq. (QCFS), written out independently of lasnn.distill.qcfs."""
    return lam * torch.clamp(torch.floor(x * levels / lam + 0.5) / levels, 0, 1)


def _tiny_airbench(seed: int = 0) -> nn.Module:
    """airbench at width 0.125 on 3x16x16 inputs (16 -> 15 -> 7 -> 3 -> 1), with non-trivial batch norm
    statistics and a different lambda per QCFS layer."""
    torch.manual_seed(seed)
    teacher = airbench((3, 16, 16), 10, width=0.125, act="qcfs", pool="avg")
    g = torch.Generator().manual_seed(seed)
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1 + 0.3)
    for i, q in enumerate(m for m in teacher.modules() if isinstance(m, QCFS)):
        q.threshold.data.fill_(1.0 + 0.25 * i)
    return teacher.eval()


class _Clip(nn.Module):
    """clamp(x, 0, lambda): QCFS's T -> infinity limit (what IF rates converge to), recording x / lambda."""

    def __init__(self, lam: float, record: list) -> None:
        super().__init__()
        self.lam, self.record = lam, record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clamp(0, self.lam)
        self.record.append(y / self.lam)
        return y


def _clipped(teacher: nn.Module) -> tuple[nn.Module, list]:
    """A float64 copy of ``teacher`` with every QCFS replaced by ``_Clip``; returns it and its record."""
    record: list = []
    model = copy.deepcopy(teacher).double()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, QCFS):
                setattr(module, name, _Clip(float(child.threshold.detach()), record))
            else:
                swap(child)

    swap(model)
    return model, record


def _spike_hooks(student: nn.Module) -> dict[int, torch.Tensor]:
    spikes: dict[int, torch.Tensor] = {}
    for i, (_, layer) in enumerate(student.neuron_layers()):
        layer.register_forward_hook(lambda _m, _i, out, i=i: spikes.__setitem__(i, out))
    return spikes


def test_qcfs_activation_values_and_gradients() -> None:
    q = QCFS(levels=4, init_threshold=2.0)
    x = torch.tensor([-1.0, 0.2, 0.26, 0.8, 1.3, 1.76, 2.4], requires_grad=True)
    # lambda / L = 0.5: floor(x / 0.5 + 1/2) * 0.5, clipped to [0, 2] (values by hand)
    y = q(x)
    assert y.tolist() == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    y.sum().backward()
    # floor passes the gradient straight through; the clip stops it where the level is 0 or L (torch.clamp
    # passes none at its bounds)
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # lambda's gradient (Bu et al., Eq. 17 with the straight-through floor): y/lambda - x/lambda inside the
    # clip, 1 where clipped at the top, 0 at the bottom: 0.12 + 0.1 + 0.1 + 1 + 1
    assert float(q.threshold.grad) == pytest.approx((0.25 - 0.13) + (0.5 - 0.4) + (0.75 - 0.65) + 1 + 1)


@pytest.mark.parametrize("timesteps", [4, 7, 16])
def test_first_layer_rate_is_qcfs_with_t_levels(timesteps: int) -> None:
    """Exact: the first IF layer (constant current z, threshold lambda, reset by subtraction, v0 = lambda/2)
    fires floor(T z / lambda + 1/2) times, clipped to [0, T]; at T = L that is the teacher's QCFS output."""
    teacher = _tiny_airbench()
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    student = convert(teacher, images, timesteps, reset="subtract", shift=True).double()
    spikes = _spike_hooks(student)
    first_qcfs = teacher.stages[0][1]
    lam = float(first_qcfs.threshold.detach())
    with torch.no_grad():
        student(images.double())
        z = copy.deepcopy(teacher.stages[0][0]).double()(images.double())  # the whitening conv's output
        taught = copy.deepcopy(teacher).double().stages[0](images.double())
    rate_times_lambda = spikes[0].sum(0) * lam / timesteps
    torch.testing.assert_close(rate_times_lambda, _qcfs(z, lam, timesteps), rtol=0, atol=1e-12)
    assert 0 < float(spikes[0].mean()) < 1
    if timesteps == first_qcfs.levels:
        torch.testing.assert_close(rate_times_lambda, taught, rtol=0, atol=1e-12)


def test_converted_rates_converge_to_clipped_activations_within_one_over_t() -> None:
    """Every layer's rate after T steps is within 1/T of the teacher's activation with QCFS replaced by its
    T -> infinity limit clamp(x, 0, lambda), divided by lambda (mean over neurons; the max is within 2/T),
    and the logits converge to that network's. Not to the QCFS ANN's own output: that differs by its
    quantisation (up to lambda / 2L per neuron), which no T removes -- checked too."""
    teacher = _tiny_airbench()
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    student = convert(teacher, images, 4, reset="subtract", shift=True).double()
    reference, record = _clipped(teacher)
    with torch.no_grad():
        clip_logits = reference(images.double())
        qcfs_logits = copy.deepcopy(teacher).double()(images.double())
    spikes = _spike_hooks(student)
    logit_errors = []
    with torch.no_grad():
        for t in (16, 64, 256):
            student.timesteps = t
            logits = student(images.double())
            assert len(spikes) == len(record) == 7
            for i, ref in enumerate(record):
                error = (spikes[i].mean(0) - ref).abs()
                assert float(error.mean()) <= 1 / t and float(error.max()) <= 2 / t, (t, i)
            logit_errors.append(float((logits - clip_logits).abs().max()))
    assert logit_errors[0] > 2 * logit_errors[1] > 4 * logit_errors[2]
    assert float((logits - qcfs_logits).abs().max()) > 5 * logit_errors[-1]  # a different limit


def test_airbench_layout_is_parsed_and_folded() -> None:
    """BN after the pooling folded into the conv before it, the 1/9 logit scale into the classifier, the
    global 3x3 pooling kept as one window: the converted analog network equals the clipped teacher."""
    teacher = _tiny_airbench(3)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    student = convert(teacher, images, 2, reset="zero")
    kinds = [type(m).__name__ for m in student.features]
    assert kinds.count("SpikingNeurons") == 7 and kinds.count("SeqPool") == 4
    assert all(m.layer.bias is not None for m in student.features if type(m).__name__ == "SeqSynapse")
    thresholds = [t["lambda"] for t in student.config["thresholds"]]
    assert thresholds == pytest.approx([1.0 + 0.25 * i for i in range(7)])
    assert all(t["source"] == "qcfs (L = 4)" for t in student.config["thresholds"])
    # the spiking net with each IF layer replaced by clamp(relu(z) / v_th, 0, 1) reproduces the clipped
    # teacher's logits: folding (BN through pooling, scale into the head) and lambda scaling are exact
    reference, _ = _clipped(teacher)
    x = images.double().unsqueeze(0)
    s = copy.deepcopy(student).double()
    with torch.no_grad():
        for module in s.features:
            x = (torch.relu(x) / module.v_th).clamp(max=1.0) if hasattr(module, "v_th") else module(x)
        logits = s.head(s.flatten(x))[0]
        # (the converted weights are float32: agreement to float32 rounding)
        torch.testing.assert_close(logits, reference(images.double()), rtol=1e-5, atol=1e-6)
    gelu = airbench((3, 16, 16), 10, width=0.125, act="gelu", pool="avg").eval()
    with pytest.raises(LasnnError, match="GELU"):
        convert(gelu, images, 2)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_chunked_curve_equals_separate_runs(reset: str) -> None:
    """evaluate_curve's time chunks (membranes carried over, 3 steps a chunk) give the accuracy of separate
    runs at every T."""
    teacher = _tiny_airbench(5)
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    student = convert(teacher, images, 2, reset=reset, shift=reset == "subtract")
    with torch.no_grad():
        labels = teacher(images).argmax(-1)
    steps = [1, 2, 3, 4, 7, 12]
    curve = evaluate_curve(student, [(images[:5], labels[:5]), (images[5:], labels[5:])], steps, chunk=3)
    separate = {}
    with torch.no_grad():
        for t in steps:
            student.timesteps = t
            separate[t] = int((student(images).argmax(-1) == labels).sum())
    assert {t: round(curve[t] * 12) for t in steps} == separate
    assert len(set(separate.values())) > 1


def test_converted_airbench_exports_spike_exact_or_is_refused() -> None:
    """Reset to zero (Loihi) lowers to NIR and the float reference reproduces every spike; reset by
    subtraction (QCFS's own) is refused by name, as for any converted network."""
    lowering = pytest.importorskip("lasnn.export.lowering")
    float_backend = pytest.importorskip("lasnn.sims.float_backend")
    teacher = _tiny_airbench(7)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    student = convert(teacher, images, 8, reset="zero").double()
    spikes: dict[str, torch.Tensor] = {}
    for name, layer in student.neuron_layers():
        layer.register_forward_hook(lambda _m, _i, out, name=name: spikes.__setitem__(name, out))
    stream = student.encode(images.double())
    with torch.no_grad():
        currents, _ = student.run(stream)
    graph = lowering.lower_student(student, {"dataset": "synthetic"})
    result = float_backend.FloatBackend(progress=False).run(graph, stream.numpy())
    np.testing.assert_array_equal(result.outputs, currents.numpy())
    assert sum(float(s.sum()) for s in spikes.values()) > 0
    for name, s in spikes.items():
        np.testing.assert_array_equal(result.spikes[name], s.numpy())
    with pytest.raises(LasnnError, match="subtraction"):
        lowering.lower_student(convert(teacher, images, 4, reset="subtract", shift=True), {})


def test_vgg_and_small_cnn_take_qcfs() -> None:
    for arch in ("small_cnn", "vgg11"):
        config = dict(arch=arch, in_shape=[1, 8, 8], num_classes=3, width=0.125, activation="qcfs", levels=2)
        teacher = build_teacher(config)
        qcfs = [m for m in teacher.modules() if isinstance(m, QCFS)]
        assert (
            qcfs
            and all(q.levels == 2 for q in qcfs)
            and not any(isinstance(m, nn.ReLU) for m in teacher.modules())
        )
        assert build_teacher(dict(config, activation="relu")).config.get("activation") is None  # old configs
        student = convert(teacher.eval(), torch.randn(2, 1, 8, 8), 2)
        assert len(student.neuron_layers()) == len(qcfs)


@pytest.mark.parametrize("neuron", [None, "lifbox"])
def test_student_from_converted_starts_at_the_conversion(neuron: str | None) -> None:
    """Same neuron model: the student's first forward is the converted network's, bit for bit, and it
    trains (gradients reach every synapse). Switched to LIFBox: same weights and thresholds, new neurons."""
    teacher = _tiny_airbench(9)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    converted = convert(teacher, images, 8, reset="zero")
    student = trainable_from_converted(converted, 4, "direct", neuron)
    assert [n for n, _ in student.named_parameters()] == [n for n, _ in converted.named_parameters()]
    kinds = {m.config.kind for _, m in student.neuron_layers()}
    assert kinds == ({"if"} if neuron is None else {"lifbox"})
    converted.timesteps = 4
    with torch.no_grad():
        same = torch.equal(student(images), converted(images))
    assert same == (neuron is None)
    student.train()
    student(images).sum().backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def _shrink_per_step(net: nn.Module, lr_per_1024: float) -> float:
    """How much one airbench step with zero gradients shrinks the net's first conv weight (1 - norm ratio)."""
    from lasnn.distill import airbench_recipe

    net = copy.deepcopy(net)
    opt = airbench_recipe.optimizer(net, lr_per_1024, 512)
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad)
    before = float(conv.weight.detach().norm())
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return 1.0 - float(conv.weight.detach().norm()) / before


def test_converted_network_decay_follows_the_rate_batch_normed_one_does_not() -> None:
    """A converted net computes with its weights' scale (no batch norm to undo it): a fine-tune at a
    hundredth of the rate decays a hundredth as much per step. The batch-normed teacher keeps airbench's
    decoupled decay, the same per step at any rate."""
    from lasnn.distill import airbench_recipe

    teacher = _tiny_airbench(3)
    converted = trainable_from_converted(convert(teacher, torch.randn(4, 3, 16, 16), 4, reset="zero"), 4)
    assert not airbench_recipe.scale_invariant(converted) and airbench_recipe.scale_invariant(teacher)
    full, small = (_shrink_per_step(converted, lr) for lr in (11.5, 0.115))
    assert full > 0 and small == pytest.approx(full / 100, rel=1e-3)
    full, small = (_shrink_per_step(teacher.train(), lr) for lr in (11.5, 0.115))
    assert full > 0 and small == pytest.approx(full, rel=1e-3)


def test_airbench_recipe_keeps_qcfs_ranges_out_of_weight_decay() -> None:
    """Under the airbench optimiser lambda is not decayed toward 0 and the QCFS net's BN scales are frozen
    (with both learnable and decayed, the half-width QCFS teacher collapsed to chance in epoch 4)."""
    from lasnn.distill import airbench_recipe

    net = airbench((3, 32, 32), 10, width=0.25, act="qcfs", pool="avg")
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)
    lambdas = {id(m.threshold) for m in net.modules() if isinstance(m, QCFS)}
    opt = airbench_recipe.optimizer(net, 11.5, 512)
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert lambdas and all(groups[i]["weight_decay"] == 0.0 for i in lambdas)
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad)
    assert groups[id(conv.weight)]["weight_decay"] > 0.0
    # one step with a zero gradient: lambda is unchanged, a conv weight shrinks
    before = [m.threshold.detach().clone() for m in net.modules() if isinstance(m, QCFS)]
    w = conv.weight.detach().clone()
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    after = [m.threshold.detach() for m in net.modules() if isinstance(m, QCFS)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert conv.weight.detach().norm() < w.norm()
    # the GELU teacher's BN scales are frozen too (airbench94's BatchNorm has none)
    gelu = airbench((3, 32, 32), 10, width=0.25)
    assert not any(m.weight.requires_grad for m in gelu.modules() if isinstance(m, nn.BatchNorm2d))


def test_qcfs_threshold_option_sets_every_initial_lambda(tmp_path) -> None:
    """``lasnn teach --qcfs-threshold`` starts every QCFS layer's lambda at the given value (airbench's
    scale-free BN wants ~3, not the paper's 8): after an epoch at a negligible rate each lambda is still it,
    and without the option it is the paper's 8."""
    from lasnn.distill.checkpoints import load_teacher
    from lasnn.distill.commands import teach

    teach(
        "digits",
        str(tmp_path / "t"),
        arch="small_cnn",
        width=0.25,
        activation="qcfs",
        qcfs_threshold=2.5,
        epochs=1,
        lr=1e-9,
        device="cpu",
    )
    teacher, _ = load_teacher(tmp_path / "t" / "teacher.pt")
    lambdas = [float(m.threshold) for m in teacher.modules() if isinstance(m, QCFS)]
    assert lambdas and lambdas == pytest.approx([2.5] * len(lambdas), abs=1e-4)
    default = build_teacher(dict(arch="small_cnn", in_shape=[1, 8, 8], num_classes=10, activation="qcfs"))
    assert {float(m.threshold) for m in default.modules() if isinstance(m, QCFS)} == {8.0}
