"""The fused multi-step LIFBox (distill/fused_lifbox.py) against norse's per-step LIFBox, step by step."""

from __future__ import annotations

import pytest
import torch
from norse.torch.functional.lif_box import (
    LIFBoxFeedForwardState,
    LIFBoxParameters,
    lif_box_feed_forward_step,
)

from lasnn.distill.spiking_layers import NeuronConfig, SpikingNeurons


def _norse_loop(
    currents: torch.Tensor, config: NeuronConfig, v_th: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes and membrane before reset from norse's step function, T calls (the reference)."""
    p = LIFBoxParameters(
        tau_mem_inv=torch.as_tensor(config.tau_mem_inv),
        v_leak=torch.as_tensor(config.v_leak),
        v_th=v_th,
        v_reset=torch.as_tensor(config.v_reset),
        method="super",
        alpha=torch.as_tensor(config.surrogate_alpha),
    )
    state = LIFBoxFeedForwardState(v=torch.full_like(currents[0], config.v_leak))
    spikes, membranes = [], []
    for t in range(currents.shape[0]):
        # v_decayed exactly as norse forms it, kept for the membrane aggregation
        membranes.append(state.v + config.dt * p.tau_mem_inv * (currents[t] + p.v_leak - state.v))
        z, state = lif_box_feed_forward_step(currents[t], state, p, dt=config.dt)
        spikes.append(z)
    return torch.stack(spikes), torch.stack(membranes)


CONFIGS = [
    NeuronConfig(),  # the students' default: a = 0.5, leak 0, reset 0, v_th 1
    NeuronConfig(tau_mem_inv=300.0, v_leak=0.1, v_reset=-0.2),
    NeuronConfig(tau_mem_inv=1000.0),  # a = 1: no memory
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "leak-reset", "a=1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_lifbox_equals_norse_step_loop(config: NeuronConfig, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    v_th = 0.8
    currents = (torch.randn(7, 5, 3, 4, 4, dtype=dtype) * 1.5 + 0.6).requires_grad_()
    w_spikes = torch.randn(currents.shape, dtype=dtype)
    w_membrane = torch.randn(currents.shape, dtype=dtype)

    neurons = SpikingNeurons(config).to(dtype)
    neurons.v_th.fill_(v_th)
    neurons.record_membrane = True
    spikes = neurons(currents)
    membrane = neurons.membrane
    assert neurons.membrane is not None
    (grad,) = torch.autograd.grad((spikes * w_spikes).sum() + (membrane * w_membrane).sum(), currents)

    ref_spikes, ref_membrane = _norse_loop(currents, config, neurons.v_th)
    (ref_grad,) = torch.autograd.grad(
        (ref_spikes * w_spikes).sum() + (ref_membrane * w_membrane).sum(), currents
    )
    assert 0.1 < float(spikes.detach().mean()) < 0.9  # both regimes (firing and silent) are exercised
    assert torch.equal(spikes, ref_spikes)
    assert torch.allclose(membrane, ref_membrane, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(grad, ref_grad, rtol=tol, atol=tol)
    # a wrong recursion (e.g. no gradient through the reset) would differ by far more than rounding
    assert float((grad - ref_grad).abs().max()) < 1e3 * tol * float(ref_grad.abs().max())


def test_fused_lifbox_spikes_only_and_broadcast_input() -> None:
    """Gradient from spikes alone, with a time-expanded (stride-0) input as direct encoding produces."""
    torch.manual_seed(1)
    config = NeuronConfig()
    base = (torch.randn(4, 6) + 0.8).requires_grad_()
    currents = base.unsqueeze(0).expand(5, 4, 6)
    spikes = SpikingNeurons(config)(currents)
    (grad,) = torch.autograd.grad(spikes.sum(), base)
    ref_spikes, _ = _norse_loop(currents, config, torch.tensor(1.0))
    (ref_grad,) = torch.autograd.grad(ref_spikes.sum(), base)
    assert torch.equal(spikes, ref_spikes)
    assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert float(grad.abs().sum()) > 0
