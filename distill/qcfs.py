"""The QCFS activation (quantisation-clip-floor-shift; Bu et al., ICLR 2022), the ReLU replacement that
makes an ANN convert to IF neurons with few time steps.

``QCFS(x) = lambda * clamp(floor(x * L / lambda + 1/2) / L, 0, 1)`` with a learnable per-layer
``lambda`` (the converted IF neuron's threshold) and ``L`` quantisation levels (L = 4 for CIFAR in the
paper). The shift (+1/2) makes the expected conversion error zero when the IF membrane starts at
``lambda / 2``. Written here from the paper's equations (the authors' code, putshua/ANN_SNN_QCFS, was read
for the gradient convention): floor passes its gradient straight through, and lambda gets the gradient of
the clipped output, as in the paper's Eq. 16-17.
"""

from __future__ import annotations

import torch
from torch import nn


class _FloorStraightThrough(torch.autograd.Function):
    """floor in the forward pass, identity in the backward pass (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd signature
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad


class QCFS(nn.Module):
    """``lambda * clamp(floor(x * L / lambda + 0.5) / L, 0, 1)`` with learnable ``threshold`` (lambda).

    ``init_threshold`` 8.0 is the paper's initial value for lambda.
    """

    def __init__(self, levels: int = 4, init_threshold: float = 8.0) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"QCFS levels must be a positive integer, got {levels}")
        self.levels = int(levels)
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))

    def extra_repr(self) -> str:
        return f"levels={self.levels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.threshold
        scaled = _FloorStraightThrough.apply(x * (self.levels / lam) + 0.5) / self.levels
        return lam * torch.clamp(scaled, 0.0, 1.0)
