"""Multi-step spiking layers of lasnn students, built on norse's neuron step functions.

Every layer works on time-major tensors ``[T, B, ...]``: synapses (conv/linear/batch norm/pooling) are
stateless, so they run once over the merged ``T*B`` batch; neurons loop over T with norse's
feed-forward step functions. The set of layer types is deliberately small: it is exactly what
``lasnn.export`` can lower to NIR and what Loihi can run (no max pooling, reset to a fixed potential).

Neuron kinds (discrete time, step ``dt``; ``a = dt * tau_mem_inv``):

- ``lifbox``: norse ``LIFBox``: ``v <- v + a * (v_leak - v + I)``; spike if ``v > v_th``; reset to
  ``v_reset``. With the default ``dt = 1e-3`` and ``tau_mem_inv = 500`` (a = 0.5) the leak is an exact
  Loihi ``dv = 2048``.
- ``cubalif``: norse ``LIF`` (current based): ``i <- i + I``; ``v <- v + a * (v_leak - v + i)``;
  ``i <- i * (1 - dt * tau_syn_inv)``; spike/reset as above. Same update order as Loihi's ``u``/``v``.
- ``if``: integrate-and-fire without leak (used by ANN->SNN conversion): ``v <- v + I``; spike if
  ``v > v_th``; reset to ``v_reset`` (Loihi's only reset) or by subtraction (norse-only, not exportable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from norse.torch.functional.lif import LIFFeedForwardState, LIFParameters, lif_feed_forward_step
from norse.torch.functional.lif_box import (
    LIFBoxFeedForwardState,
    LIFBoxParameters,
    lif_box_feed_forward_step,
)
from norse.torch.functional.threshold import threshold
from torch import nn

from lasnn.distill.fused_lifbox import lifbox_sequence

NEURON_KINDS = ("lifbox", "cubalif", "if")


@dataclass(frozen=True)
class NeuronConfig:
    """Parameters shared by all neurons of a layer (defaults: Loihi-friendly LIFBox, see module doc)."""

    kind: str = "lifbox"
    dt: float = 1e-3
    tau_mem_inv: float = 500.0
    tau_syn_inv: float = 1000.0
    v_th: float = 1.0
    v_leak: float = 0.0
    v_reset: float = 0.0
    reset: str = "zero"  # "zero" (to v_reset) or "subtract" (only kind "if"; not exportable)
    surrogate: str = "super"  # norse threshold method
    surrogate_alpha: float = 100.0  # passed to norse; its "super" surrogate (norse 1.1) does not use it

    def __post_init__(self) -> None:
        if self.kind not in NEURON_KINDS:
            raise ValueError(f"unknown neuron kind {self.kind!r}; expected one of {', '.join(NEURON_KINDS)}")
        if self.reset not in ("zero", "subtract"):
            raise ValueError(f"unknown reset {self.reset!r}; expected 'zero' or 'subtract'")

    def to_dict(self) -> dict:
        return asdict(self)


class SpikingNeurons(nn.Module):
    """A layer of spiking neurons over ``[T, B, ...]`` input currents; returns spikes of the same shape.

    ``v_th`` is a buffer so that conversion can set a per-layer threshold. When ``record_membrane`` is
    True the membrane potential before reset is kept in ``self.membrane`` (``[T, B, ...]``) for the
    membrane-based attention aggregation.
    """

    def __init__(self, config: NeuronConfig | None = None) -> None:
        super().__init__()
        self.config = config or NeuronConfig()
        self.register_buffer("v_th", torch.tensor(float(self.config.v_th)))
        self.record_membrane = False
        self.membrane: torch.Tensor | None = None
        c = self.config
        # the fused LIFBox's constants as norse holds them (0-dim float32 tensors; dt * tau_mem_inv is
        # formed in float32), so that float64 runs match norse too; the start potential is v_leak as given
        self._fused_constants = (
            float(c.dt * torch.as_tensor(c.tau_mem_inv)),
            float(torch.as_tensor(c.v_leak)),
            float(torch.as_tensor(c.v_reset)),
            c.v_leak,
        )

    def extra_repr(self) -> str:
        c = self.config
        return f"kind={c.kind}, tau_mem_inv={c.tau_mem_inv}, v_th={float(self.v_th):g}, dt={c.dt}"

    def forward(self, currents: torch.Tensor) -> torch.Tensor:
        c = self.config
        # membrane state in float32 under bf16/fp16 autocast: a bf16 potential near v_th = 1 would resolve
        # only steps of 1/128 (spikes, 0 or 1, are exact in any dtype); float64 stays float64
        if currents.dtype in (torch.float16, torch.bfloat16):
            currents = currents.float()
        if c.kind == "lifbox" and c.surrogate == "super":  # the same neuron, fused (see fused_lifbox)
            spikes_t, membrane = lifbox_sequence(currents, self.v_th, *self._fused_constants)
            self.membrane = membrane if self.record_membrane else None
            return spikes_t
        steps = currents.shape[0]
        spikes, membranes = [], []
        if c.kind == "lifbox":
            p = LIFBoxParameters(
                tau_mem_inv=torch.as_tensor(c.tau_mem_inv),
                v_leak=torch.as_tensor(c.v_leak),
                v_th=self.v_th,
                v_reset=torch.as_tensor(c.v_reset),
                method=c.surrogate,
                alpha=torch.as_tensor(c.surrogate_alpha),
            )
            state = LIFBoxFeedForwardState(v=torch.full_like(currents[0], c.v_leak))
            for t in range(steps):
                if self.record_membrane:
                    membranes.append(state.v + c.dt * c.tau_mem_inv * (currents[t] + c.v_leak - state.v))
                z, state = lif_box_feed_forward_step(currents[t], state, p, dt=c.dt)
                spikes.append(z)
        elif c.kind == "cubalif":
            p = LIFParameters(
                tau_syn_inv=torch.as_tensor(c.tau_syn_inv),
                tau_mem_inv=torch.as_tensor(c.tau_mem_inv),
                v_leak=torch.as_tensor(c.v_leak),
                v_th=self.v_th,
                v_reset=torch.as_tensor(c.v_reset),
                method=c.surrogate,
                alpha=torch.as_tensor(c.surrogate_alpha),
            )
            state = LIFFeedForwardState(
                v=torch.full_like(currents[0], c.v_leak), i=torch.zeros_like(currents[0])
            )
            for t in range(steps):
                if self.record_membrane:
                    i_new = state.i + currents[t]
                    membranes.append(state.v + c.dt * c.tau_mem_inv * (c.v_leak - state.v + i_new))
                z, state = lif_feed_forward_step(currents[t], state, p, dt=c.dt)
                spikes.append(z)
        else:  # "if": hand-written because norse has no reset-by-subtraction IF neuron
            v = torch.full_like(currents[0], c.v_reset)
            for t in range(steps):
                v = v + currents[t]
                if self.record_membrane:
                    membranes.append(v)
                z = threshold(v - self.v_th, c.surrogate, torch.as_tensor(c.surrogate_alpha))
                v = v - z * self.v_th if c.reset == "subtract" else (1 - z) * v + z * c.v_reset
                spikes.append(z)
        self.membrane = torch.stack(membranes) if self.record_membrane else None
        return torch.stack(spikes)


class SeqSynapse(nn.Module):
    """A conv or linear layer with optional batch norm, applied to every time step at once."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, norm: nn.BatchNorm2d | nn.BatchNorm1d | None = None):
        super().__init__()
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise TypeError(f"SeqSynapse takes nn.Conv2d or nn.Linear, not {type(layer).__name__}")
        self.layer = layer
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, batch = x.shape[:2]
        if steps > 1 and x.stride(0) == 0:
            # the same input at every step (direct encoding's view): compute once, repeat the currents.
            # Batch statistics are those of the T copies (same mean and biased variance); only the
            # running variance's n/(n-1) correction differs (n = B*H*W instead of T*B*H*W).
            y = self.layer(x[0])
            if self.norm is not None:
                y = self.norm(y)
            return y.unsqueeze(0).expand(steps, *y.shape)
        y = self.layer(x.flatten(0, 1))
        if self.norm is not None:
            y = self.norm(y)
        return y.unflatten(0, (steps, batch))


class SeqPool(nn.Module):
    """Average or sum pooling per time step (spike-compatible; max pooling is not)."""

    def __init__(self, kind: str, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        if kind not in ("avg", "sum"):
            raise ValueError(f"pooling kind must be 'avg' or 'sum', not {kind!r}")
        self.kind = kind
        self.kernel_size = kernel_size
        self.stride = stride or kernel_size

    def extra_repr(self) -> str:
        return f"kind={self.kind}, kernel_size={self.kernel_size}, stride={self.stride}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, batch = x.shape[:2]
        y = nn.functional.avg_pool2d(x.flatten(0, 1), self.kernel_size, self.stride)
        if self.kind == "sum":
            y = y * (self.kernel_size * self.kernel_size)
        return y.unflatten(0, (steps, batch))


class SeqFlatten(nn.Module):
    """Flattens everything after the time and batch dimensions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)


class ResidualBlock(nn.Module):
    """``neurons(branch(x) + shortcut(x))``: the skip is a synapse (1x1 conv + BN) or the identity.

    ``branch`` is a sequence of the layer types above ending in a synapse (so both paths deliver currents).
    """

    def __init__(self, branch: nn.Sequential, shortcut: SeqSynapse | None, neurons: SpikingNeurons) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.neurons = neurons

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.neurons(self.branch(x) + skip)
