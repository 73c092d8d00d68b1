"""The fast CIFAR training recipe (``--recipe airbench``), learned from Keller Jordan's airbench94.

airbench (arXiv 2404.00498, github KellerJordan/cifar10-airbench) reaches 94 % on CIFAR-10 in 9.9 epochs;
its PyPI package needs CUDA and downloads its own data, so the recipe is written here for lasnn's own
training loop (``training.fit`` uses these pieces when ``TrainSettings.recipe == "airbench"``):

- the decoded uint8 images stay in memory and each batch is augmented as one tensor (horizontal flip,
  random translation by up to 2 pixels with reflect padding); the translations are drawn from a generator
  seeded by (run seed, epoch, step), so a batch is the same whichever process or resume produces it;
- airbench's alternating flip: each image gets one seeded coin in the first epoch and is mirrored in
  every other epoch from then on, so that every two epochs see both orientations of every image;
- Nesterov SGD with *decoupled* hyperparameters: the learning rate is given per 1,024 examples and
  divided by the momentum's step gain ``1 + 1 / (1 - momentum)``; the weight decay per step does not
  change with the learning rate (in a network with batch norms; without them, as a converted one, it
  scales with the rate: ``scale_invariant``); batch-norm biases learn 64x faster (airbench's ``bias_scaler``);
- a triangular learning rate (linear rise from 0.2x to 1x over the first 23 % of steps, linear fall to
  0.07x), the whitening conv's bias trained for the first 3 epochs only, label smoothing 0.2, and a
  lookahead of the weights every 5 steps with a decay that grows as ``(0.95^5) * progress^3`` (the
  weights are pulled to their slow average, which then replaces them);
- the first conv may be a frozen patch-whitening conv (``teachers.whiten_first_conv``).

Airbench's numbers are for its GELU network at batch 1,024 (lasnn's CIFAR teacher default); students and
QCFS teachers use the same schedule with the learning rate given on the command line (``--lr`` is then
the rate per 1,024 examples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from lasnn.distill.qcfs import QCFS

RECIPES = ("sgd", "airbench")


@dataclass(frozen=True)
class AirbenchHyper:
    """airbench94's hyperparameters (values from its published script, in its decoupled form)."""

    lr_per_1024: float = 11.5
    momentum: float = 0.85
    weight_decay_per_1024: float = 0.0153
    bias_scaler: float = 64.0
    label_smoothing: float = 0.2
    warmup_fraction: float = 0.23
    lr_start: float = 0.2
    lr_end: float = 0.07
    lookahead_every: int = 5
    translate: int = 2  # pixels, for 32x32 images; scaled with the image size (translation_for)
    whiten_bias_epochs: int = 3  # then the whitening conv's bias is frozen too


HYPER = AirbenchHyper()


def batch_augment(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator,
    translate: int,
    mirror: bool = True,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise a ``[B, C, H, W]`` batch (uint8, or float in [0, 1]), then flip each image (``flips``, or
    at random; never if ``mirror`` is False: digits' mirror images are other symbols) and translate it by
    up to ``translate`` pixels (reflect padding), all on tensors. The draws come from ``generator`` only
    (flip bits first, drawn even when ``flips`` replaces them, then the two shifts), so a seed fixes the
    batch."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    batch, _, height, width = x.shape
    flip = torch.rand(batch, generator=generator) < 0.5
    shifts = torch.randint(-translate, translate + 1, (batch, 2), generator=generator)
    if flips is not None:
        flip = flips.to(torch.bool)
    if mirror:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if translate <= 0:
        return x
    padded = F.pad(x, (translate,) * 4, mode="reflect")
    out = torch.empty_like(x)
    # one slice per (dy, dx) offset: (2r+1)^2 masked copies instead of a gather per pixel
    for dy in range(-translate, translate + 1):
        for dx in range(-translate, translate + 1):
            mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if mask.any():
                y0, x0 = translate + dy, translate + dx
                out[mask] = padded[mask, :, y0 : y0 + height, x0 : x0 + width]
    return out


def translation_for(height: int) -> int:
    """airbench's 2-pixel translation for 32-pixel images, in proportion for other sizes (at least 1)."""
    return max(1, round(HYPER.translate * height / 32))


def alternating_flips(seed: int, count: int, epoch: int) -> torch.Tensor:
    """Which of ``count`` training images are mirrored in ``epoch``: a seeded coin per image in epoch 0,
    negated in every odd epoch (airbench's alternating flip, arXiv 2404.00498: over any two consecutive
    epochs each image is seen both ways, where independent coins repeat an orientation half the time)."""
    first = torch.rand(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + 17)) < 0.5
    return first ^ bool(epoch % 2)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator of one global batch's augmentation: a function of (seed, epoch, step) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def optimizer(model: nn.Module, lr_per_1024: float, batch_size: int) -> torch.optim.SGD:
    """Nesterov SGD with airbench's decoupled learning rate and weight decay for a mean-reduced loss.

    airbench sums the loss over the batch; with a mean the gradient is 1/B of it, so the step size per
    example is kept by multiplying the per-example rate by B. PyTorch's weight decay is scaled by the
    learning rate, so it is divided by the group's rate to keep the decay per step fixed (in a network
    with batch norms; see ``scale_invariant`` for one without)."""
    gain = 1024 * (1 + 1 / (1 - HYPER.momentum))
    lr = lr_per_1024 / gain * batch_size
    decay_per_step = HYPER.weight_decay_per_1024 * batch_size / gain
    if not scale_invariant(model):
        decay_per_step *= lr_per_1024 / HYPER.lr_per_1024
    stem = whitening_bias(model)
    norm_biases, clip_levels, others = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param is stem:
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and name == "bias":
                norm_biases.append(param)
            elif isinstance(module, QCFS):
                clip_levels.append(param)
            else:
                others.append(param)
    bias_lr = lr * HYPER.bias_scaler
    groups = [
        dict(params=norm_biases, lr=bias_lr, weight_decay=decay_per_step / bias_lr),
        # QCFS's lambda (the converted neuron's threshold) is a range, not a weight: no decay toward 0
        dict(params=clip_levels, lr=lr, weight_decay=0.0),
        dict(params=others, lr=lr, weight_decay=decay_per_step / lr),
        # the whitening bias: a group of its own, whose rate the schedule sets to 0 after a few epochs
        dict(params=[stem] if stem is not None else [], lr=lr, weight_decay=decay_per_step / lr, stem=True),
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], momentum=HYPER.momentum, nesterov=True)


def scale_invariant(model: nn.Module) -> bool:
    """Whether the network has batch norms, which undo the scale of the weights before them.

    airbench's decay per step is independent of the learning rate because its weights feed batch norms:
    there the decay only sets the effective step size. A network without them (a converted one: batch
    norm folded into the weights, the thresholds fixed buffers) computes with the weights' scale, and a
    fixed decay per step (~0.1 % at batch 512, ~9 % per CIFAR epoch) shrinks every layer's input current
    whatever the rate: a fine-tune at a hundredth of the rate would be mostly decay. ``optimizer`` then
    scales the decay with the rate, as coupled SGD weight decay does (airbench's decay at its own rate)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def whitening_bias(model: nn.Module) -> nn.Parameter | None:
    """The trainable bias of a frozen whitening first conv (``teachers.whiten_first_conv``), if any."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first.weight.requires_grad or first.bias is None or not first.bias.requires_grad:
        return None
    return first.bias


def scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The triangular rate for every group; the whitening bias's group stops (rate 0, so neither its
    gradient, momentum nor decay moves it) after ``whiten_bias_epochs`` epochs. A zero rate rather than
    ``requires_grad=False`` keeps the parameter set fixed, which DDP and checkpoint resumption need."""
    base = triangular(total_steps)
    stop = HYPER.whiten_bias_epochs * steps_per_epoch

    def stem(step: int) -> float:
        return base(step) if step < stop else 0.0

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [stem if group.get("stem") else base for group in optimizer.param_groups]
    )


def triangular(total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at each step: 0.2 -> 1 over the first 23 %, then down to 0.07."""
    warmup = max(1, int(total_steps * HYPER.warmup_fraction))
    fall = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return HYPER.lr_start + (1 - HYPER.lr_start) * step / warmup
        frac = min(1.0, (step - warmup) / fall)
        return 1 - (1 - HYPER.lr_end) * frac

    return factor


class Lookahead:
    """airbench's lookahead: every few steps the slow weights move toward the fast ones by ``1 - decay``
    and replace them. Applied to every float entry of the state dict (batch-norm statistics included).
    Its state is saved in the training checkpoint so that a resumed run continues exactly."""

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.total_steps = total_steps
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def decay(self, step: int) -> float:
        return 0.95**HYPER.lookahead_every * (step / self.total_steps) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimiser step ``step`` (1-based); acts every ``lookahead_every`` steps and, with
        decay 1 (the slow weights themselves), at the last step."""
        last = step >= self.total_steps
        if step % HYPER.lookahead_every and not last:
            return
        decay = 1.0 if last else self.decay(step)
        for name, value in model.state_dict().items():
            if name in self.slow:
                self.slow[name].lerp_(value, 1 - decay)
                value.copy_(self.slow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.slow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.slow[name].copy_(value)
