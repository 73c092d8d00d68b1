"""Input encodings: how a (normalised) image becomes a ``[T, B, C, H, W]`` input stream.

Shared by training (``lasnn.distill``) and the simulators (``lasnn.sims``), which must feed a network
exactly what it was trained on. Stochastic encodings take an explicit ``torch.Generator`` so that every
backend can reproduce the same spikes.

- ``direct``: the analog image, repeated every step (the first layer receives graded currents).
- ``poisson``: rate coding; each pixel spikes with probability equal to its intensity in [0, 1] per step.
- ``latency``: time-to-first-spike; one spike per pixel at step ``round((1 - intensity) * (T - 1))``,
  pixels of intensity 0 never spike.

Intensities for the spike codes are the normalised image min-max rescaled per sample to [0, 1], so that
the encoders need no knowledge of the data set's mean and standard deviation.
"""

from __future__ import annotations

import torch

ENCODINGS = ("direct", "poisson", "latency")


def _intensity(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return scaled.view_as(images)


def encode(
    images: torch.Tensor, timesteps: int, encoding: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Encode ``[B, C, H, W]`` images as a ``[T, B, C, H, W]`` stream (float, same device)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps}")
    if encoding == "direct":
        return images.unsqueeze(0).expand(timesteps, *images.shape).contiguous()
    intensity = _intensity(images)
    if encoding == "poisson":
        noise = (
            torch.rand(
                (timesteps, *images.shape), generator=generator, device=images.device, dtype=images.dtype
            )
            if generator is None or generator.device == images.device
            else torch.rand((timesteps, *images.shape), generator=generator, dtype=images.dtype).to(
                images.device
            )
        )
        return (noise < intensity.unsqueeze(0)).to(images.dtype)
    if encoding == "latency":
        fire_at = torch.round((1.0 - intensity) * (timesteps - 1))
        steps = torch.arange(timesteps, device=images.device, dtype=images.dtype).view(
            timesteps, *([1] * images.dim())
        )
        return ((steps == fire_at.unsqueeze(0)) & (intensity.unsqueeze(0) > 0)).to(images.dtype)
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
