"""A fused multi-step LIFBox neuron: T steps of norse's ``lif_box_feed_forward_step`` as one autograd node.

Why by hand: norse (1.1) offers the LIFBox neuron only as a per-step function, so a T-step layer built
from it records about a dozen autograd nodes per step, allocates a zero-filled ``[T, ...]`` gradient for
every ``currents[t]`` slice and stacks the outputs (issue 8 measured it: the student step cost 1.7x T
ANN steps on CPU, most of the excess in those elementwise ops). Here the forward is four ops per step
into preallocated buffers (fresh large tensors cost page faults on CPU) and the backward is the same
recursion run in reverse, with everything that does not depend on the recursion (the surrogate
derivative, the reset terms) computed once over the whole ``[T, ...]`` tensor.

It reproduces norse exactly, including two of its choices that a reader might not expect:
- the forward: ``v_dec = v + dt * tau_mem_inv * (I + v_leak - v)``, ``z = H(v_dec - v_th)``,
  ``v = (1 - z) * v_dec + z * v_reset``, evaluated in the same order (so spikes are bit-identical);
- the backward: norse's SuperSpike surrogate ``dz/dv = 1 / (|v_dec - v_th| + 1)^2`` (norse 1.1 ignores
  ``alpha`` for ``method="super"``), and the gradient also flows through the reset
  (``dv/dz = v_reset - v_dec``), as norse does not detach it.
``tests/test_fused_lifbox.py`` checks spikes, membrane and gradients against norse's step loop.
Only ``method="super"`` is fused; other surrogates take norse's loop (``SpikingNeurons``).
"""

from __future__ import annotations

import math

import torch


class LIFBoxSequence(torch.autograd.Function):
    """``(currents [T, ...], v_th, a, v_leak, v_reset, v_start) -> (spikes, membrane before reset)``, both
    ``[T, ...]``.

    ``a`` is ``dt * tau_mem_inv`` as norse computes it (in float32), ``v_start`` the initial potential.
    ``v_th`` is a buffer (no gradient).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        currents: torch.Tensor,
        v_th: torch.Tensor,
        a: float,
        v_leak: float,
        v_reset: float,
        v_start: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps = currents.shape[0]
        membrane = torch.empty(currents.shape, dtype=currents.dtype, device=currents.device)
        fired = torch.empty(currents.shape, dtype=torch.bool, device=currents.device)
        v = torch.full_like(membrane[0], v_start)
        drive = torch.empty_like(v)
        reset_to = torch.tensor(v_reset, dtype=currents.dtype, device=currents.device)
        # a power of two multiplies exactly, so v + a * drive in one op (even as a fused multiply-add) rounds
        # as norse's separate product and sum do; any other ``a`` takes the two ops
        exact_scale = a > 0 and math.frexp(a)[0] == 0.5
        for t in range(steps):
            # norse: dv = dt * tau_mem_inv * (input + v_leak - v); v_decayed = v + dv
            if v_leak != 0.0:
                torch.add(currents[t], v_leak, out=drive)
                drive.sub_(v)
            else:
                torch.sub(currents[t], v, out=drive)
            if exact_scale:
                torch.add(v, drive, alpha=a, out=membrane[t])
            else:
                torch.add(v, drive.mul_(a), out=membrane[t])
            torch.gt(membrane[t], v_th, out=fired[t])  # heaviside(v_decayed - v_th) > 0
            torch.where(fired[t], reset_to, membrane[t], out=v)  # (1 - z) * v + z * v_reset, z in {0, 1}
        spikes = fired.to(currents.dtype)
        ctx.save_for_backward(membrane, spikes, v_th)  # the spikes, not a second bool->float copy
        ctx.v_reset, ctx.a = v_reset, a
        return spikes, membrane

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad_spikes: torch.Tensor | None,
        grad_membrane: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        membrane, spikes, v_th = ctx.saved_tensors
        a = ctx.a
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(membrane)
        # SuperSpike (norse): dz/dv_dec = 1 / (|v_dec - v_th| + 1)^2, over all steps at once
        surrogate = (membrane - v_th).abs_().add_(1.0).pow_(-2)
        # d v_new / d v_dec = (1 - z) + (v_reset - v_dec) * dz/dv_dec   (norse does not detach the reset)
        above_reset = membrane if ctx.v_reset == 0.0 else membrane - ctx.v_reset
        carry = spikes.neg().add_(1.0).addcmul_(above_reset, surrogate, value=-1.0)
        # the part of dL/dv_dec that does not depend on later steps: dL/dz * dz/dv_dec (+ dL/d membrane)
        local = surrogate.mul_(grad_spikes)
        if grad_membrane is not None:
            local.add_(grad_membrane)
        keep = 1.0 - a  # d v_dec / d v_prev
        for t in range(membrane.shape[0] - 2, -1, -1):
            # dL/dv_dec(t) += dL/dv_dec(t+1) * d v_dec(t+1) / d v_new(t) * d v_new(t) / d v_dec(t)
            local[t].addcmul_(local[t + 1], carry[t], value=keep)
        return local.mul_(a), None, None, None, None, None


@torch.compiler.disable
def lifbox_sequence(
    currents: torch.Tensor, v_th: torch.Tensor, a: float, v_leak: float, v_reset: float, v_start: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``LIFBoxSequence.apply``, kept out of ``torch.compile`` graphs (a graph break): inductor failed on
    the traced loop under dynamic shapes, and a compiled functional version of the same loop measured no
    faster on CPU (32 ms against 31.5 ms forward + backward for a 4x32x32x32x32 layer)."""
    return LIFBoxSequence.apply(currents, v_th, a, v_leak, v_reset, v_start)
