"""The LaSNN objective and its baselines, in one code path.

``L = CE(z_s, y) + alpha * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))
      + beta * sum_l mean_batch ||A_t(l) - A_s(l)||_2``

``--loss ce`` keeps only the first term (surrogate-gradient training), ``kd`` the first two (Hinton et al.
2015 logit distillation), ``lasnn`` all three (attention maps from ``lasnn.distill.attention``).

Schedules: ``joint`` uses every term from the first step. ``progressive`` (layer-wise) splits training by
progress ``f = step / total_steps``: the first half, ``f < 0.5``, is divided into L equal phases for the L
paired layers, and phase ``k`` trains on the attention terms of layers ``1..k`` only (no logit terms); the
second half trains on the whole objective. The split is by steps rather than whole epochs so that a short
run (2 epochs, 2 layers) still passes through every phase; with E epochs and L = 2 layers, phase 1 is
the first E/4 epochs, phase 2 the next E/4, and logits join at epoch E/2. Without paired layers or with
``ce``/``kd``, ``progressive`` equals ``joint``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

LOSSES = ("lasnn", "kd", "ce")
SCHEDULES = ("joint", "progressive")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the objective (defaults: tau = 4, alpha = 1 as in the KD/LaSNN literature; beta by
    measurement on digits, see bench/results/distill_digits.md)."""

    kind: str = "lasnn"
    alpha: float = 1.0
    tau: float = 4.0
    beta: float = 10.0
    p: float = 2.0
    schedule: str = "joint"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"unknown loss {self.kind!r}; expected one of {', '.join(LOSSES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")

    @property
    def needs_teacher(self) -> bool:
        return self.kind != "ce"

    @property
    def needs_attention(self) -> bool:
        return self.kind == "lasnn"

    def to_dict(self) -> dict:
        return asdict(self)


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau))``, averaged over the batch."""
    return (
        tau
        * tau
        * F.kl_div(
            F.log_softmax(student_logits.float() / tau, dim=1),
            F.log_softmax(teacher_logits.float() / tau, dim=1),
            reduction="batchmean",
            log_target=True,
        )
    )


def attention_term(teacher_maps: list[torch.Tensor], student_maps: list[torch.Tensor]) -> torch.Tensor:
    """``sum_l mean_batch ||A_t(l) - A_s(l)||_2`` over the paired layers (maps are ``[B, N]``)."""
    total = student_maps[0].new_zeros(()) if student_maps else torch.zeros(())
    for a_t, a_s in zip(teacher_maps, student_maps, strict=True):
        total = total + torch.linalg.vector_norm(a_t.float() - a_s.float(), dim=1).mean()
    return total


def phase(config: LossConfig, num_pairs: int, progress: float) -> tuple[bool, int]:
    """(whether the logit terms are on, how many paired layers are aligned) at ``progress`` in [0, 1)."""
    if config.schedule == "joint" or not config.needs_attention or num_pairs == 0 or progress >= 0.5:
        return True, num_pairs if config.needs_attention else 0
    return False, min(num_pairs, int(math.floor(progress * 2 * num_pairs)) + 1)


def objective(
    config: LossConfig,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    teacher_maps: list[torch.Tensor] | None = None,
    student_maps: list[torch.Tensor] | None = None,
    progress: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss at ``progress`` and its terms (for the log; ``ce``, ``kd``, ``att``)."""
    num_pairs = len(student_maps or [])
    logits_on, layers = phase(config, num_pairs, progress)
    zero = student_logits.new_zeros((), dtype=torch.float32)
    ce = (
        F.cross_entropy(student_logits.float(), labels, label_smoothing=config.label_smoothing)
        if logits_on
        else zero
    )
    kd = zero
    if logits_on and config.kind in ("kd", "lasnn"):
        kd = config.alpha * kd_term(student_logits, teacher_logits, config.tau)
    att = zero
    if layers:
        att = config.beta * attention_term(teacher_maps[:layers], student_maps[:layers])
    total = ce + kd + att
    return total, {"ce": float(ce.detach()), "kd": float(kd.detach()), "att": float(att.detach())}
