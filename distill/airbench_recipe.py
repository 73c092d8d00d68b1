"""The fast CIFAR training recipe (``--recipe airbench``), learned from Keller Jordan's airbench94.

airbench (arXiv 2404.00498, github KellerJordan/cifar10-airbench) reaches 94 % on CIFAR-10 in 9.9 epochs;
its PyPI package needs CUDA and downloads its own data, so the recipe is written here for lasnn's own
training loop (``training.fit`` uses these pieces when ``TrainSettings.recipe == "airbench"``):

- the decoded uint8 images stay in memory and each batch is augmented as one tensor (random horizontal
  flip, random translation by up to 2 pixels with reflect padding), drawn from a generator seeded by
  (run seed, epoch, step), so a batch is the same whichever process or resume produces it;
- Nesterov SGD with *decoupled* hyperparameters: the learning rate is given per 1,024 examples and
  divided by the momentum's step gain ``1 + 1 / (1 - momentum)``; the weight decay per step does not
  change with the learning rate; batch-norm biases learn 64x faster (airbench's ``bias_scaler``);
- a triangular learning rate (linear rise from 0.2x to 1x over the first 23 % of steps, linear fall to
  0.07x), label smoothing 0.2, and a lookahead of the weights every 5 steps with a decay that grows as
  ``(0.95^5) * progress^3`` (the weights are pulled to their slow average, which then replaces them);
- the first conv may be a frozen patch-whitening conv (``teachers.whiten_first_conv``).

Airbench's numbers are for its GELU network at batch 1,024; students and QCFS teachers use the same
schedule with the learning rate given on the command line (``--lr`` is then the rate per 1,024 examples).
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


HYPER = AirbenchHyper()


def batch_augment(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator,
    translate: int,
    mirror: bool = True,
) -> torch.Tensor:
    """Normalise a ``[B, C, H, W]`` batch (uint8, or float in [0, 1]), then flip each image at random
    (unless ``mirror`` is False: digits' mirror images are other symbols) and translate it by up to
    ``translate`` pixels (reflect padding), all on tensors. The draws come from ``generator`` only (flip
    bits first, then the two shifts), so a seed fixes the batch."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    batch, _, height, width = x.shape
    flip = torch.rand(batch, generator=generator) < 0.5
    shifts = torch.randint(-translate, translate + 1, (batch, 2), generator=generator)
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


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator of one global batch's augmentation: a function of (seed, epoch, step) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def optimizer(model: nn.Module, lr_per_1024: float, batch_size: int) -> torch.optim.SGD:
    """Nesterov SGD with airbench's decoupled learning rate and weight decay for a mean-reduced loss.

    airbench sums the loss over the batch; with a mean the gradient is 1/B of it, so the step size per
    example is kept by multiplying the per-example rate by B. PyTorch's weight decay is scaled by the
    learning rate, so it is divided by the group's rate to keep the decay per step fixed."""
    gain = 1024 * (1 + 1 / (1 - HYPER.momentum))
    lr = lr_per_1024 / gain * batch_size
    decay_per_step = HYPER.weight_decay_per_1024 * batch_size / gain
    norm_biases, clip_levels, others = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
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
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], momentum=HYPER.momentum, nesterov=True)


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
