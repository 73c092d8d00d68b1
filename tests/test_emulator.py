"""The emulator against an independent numpy re-implementation of Lava's fixed-point process models.

The reference below follows lava-nc 0.10.0's source line by line (``lava/proc/lif/models.py``
``AbstractPyLifModelFixed``/``PyLifResetModelBitAcc``, ``lava/proc/dense/models.py``
``PyDenseModelBitAcc`` and ``PyDelayDenseModelBitAcc``, ``lava/proc/conv/models.py`` ``PyConvModelFixed``), in
numpy int32 arrays as Lava keeps them, and it runs in *Lava time*: samples streamed back to back, every
population a LIFReset with its reset offset, every synapse a one-step buffer (plus delay). The emulator runs
in float time. Agreement of every spike and readout value checks the arithmetic and the time alignment of the
contract.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lasnn.sims  # noqa: F401 - installs the Lava import hook before lava.utils is imported
from lasnn.errors import LasnnError
from lasnn.export.graph import Affine, Conv2d, Flatten, Graph, Input, Neuron, Output, Scale, SumPool2d
from lasnn.hardware.loihi_graph import (
    ConvGeometry,
    HostSynapse,
    LoihiGraph,
    LoihiInput,
    LoihiLayer,
    LoihiReadout,
    LoihiSynapse,
)
from lasnn.sims.emulator import EmulatorBackend, lif_step, wrap24

# ----------------------------------------------------------------------------------------------------
# independent reference


def _corr2d(x: np.ndarray, k: np.ndarray, stride: tuple[int, int], pad: tuple[int, int]) -> np.ndarray:
    """Plain-loop cross-correlation (torch's convention) of one (C, H, W) image, int64."""
    c_out, c_in, kh, kw = k.shape
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (xp.shape[1] - kh) // stride[0] + 1
    wo = (xp.shape[2] - kw) // stride[1] + 1
    out = np.zeros((c_out, ho, wo), dtype=np.int64)
    for o in range(c_out):
        for y in range(ho):
            for z in range(wo):
                patch = xp[:, y * stride[0] : y * stride[0] + kh, z * stride[1] : z * stride[1] + kw]
                out[o, y, z] = int((patch.astype(np.int64) * k[o].astype(np.int64)).sum())
    return out


def _lif_reference(u, v, a_in, du, dv, bias, vth):  # noqa: ANN001, ANN202 - Lava's subthr_dynamics, verbatim
    max_uv = 2**23
    decayed_curr = np.int64(u) * (4096 - (du + 1))
    decayed_curr = np.sign(decayed_curr) * np.right_shift(np.abs(decayed_curr), 12)
    decayed_curr = np.int32(decayed_curr)
    activation_in = np.left_shift(a_in.astype(np.int32), 6)
    decayed_curr += activation_in
    wrapped = np.where(decayed_curr > max_uv, decayed_curr - 2 * max_uv, decayed_curr)
    wrapped = np.where(wrapped <= -max_uv, decayed_curr + 2 * max_uv, wrapped)
    u = wrapped.astype(np.int32)
    decayed_volt = np.int64(v) * (4096 - dv)
    decayed_volt = np.sign(decayed_volt) * np.right_shift(np.abs(decayed_volt), 12)
    decayed_volt = np.int32(decayed_volt)
    updated = decayed_volt + u + bias.astype(np.int32)
    v = np.clip(updated, -max_uv + 1, max_uv - 1).astype(np.int32)
    spikes = v > (vth << 6)
    v[spikes] = 0
    return u, v, spikes


def lava_reference(lg: LoihiGraph, stream: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Stream all samples through Lava-time processes; return (raw readout [T, B, ...], spikes by layer)."""
    from lava.utils.weightutils import SignMode, clip_weights, determine_sign_mode, truncate_weights

    steps, batch = stream.shape[:2]
    period = lg.steps_per_sample(0)
    total = lg.total_steps(batch, 0)
    depth = max(layer.depth for layer in lg.layers.values())
    # host currents: the contract's integer recipe, re-done in numpy (dense host synapses only here)
    host: dict[str, np.ndarray] = {}
    for hs in lg.input.host:
        assert hs.geometry is None
        xq = np.clip(np.rint(stream * lg.input.in_scale), -lg.input.in_max, lg.input.in_max).astype(np.int64)
        if hs.delay:
            xq = np.concatenate([np.zeros_like(xq[: hs.delay]), xq[: steps - hs.delay]])
        acc = np.einsum("tbi,oi->tbo", xq.reshape(steps, batch, -1), hs.weight.astype(np.int64))
        acc = acc + hs.bias.reshape(-1)
        host[hs.dst] = host.get(hs.dst, 0) + ((acc + (1 << (hs.shift - 1))) >> hs.shift)
    # synapse processes
    syn_state = []
    for syn in lg.synapses:
        w = np.asarray(syn.weight)
        if syn.kind == "dense":
            mat = syn.matrix().toarray() if syn.geometry is not None else w
            mode = determine_sign_mode(mat)
            mat2 = truncate_weights(clip_weights(mat, mode, num_bits=8), mode, 8)
            assert np.array_equal(mat2, mat), "quantised weights must be left unchanged by Lava"
            assert mode in (SignMode.MIXED, SignMode.EXCITATORY, SignMode.INHIBITORY)
            syn_state.append(
                {"w": mat2.astype(np.int32), "buf": np.zeros((mat.shape[0], syn.delay + 1), np.int64)}
            )
        else:
            syn_state.append({"w": w, "buf": None})
    u = {n: np.zeros(layer.size, np.int32) for n, layer in lg.layers.items()}
    v = {n: np.zeros(layer.size, np.int32) for n, layer in lg.layers.items()}
    spikes_rec = {n: np.zeros((total + 1, layer.size), bool) for n, layer in lg.layers.items()}
    u_rec = {n: np.zeros((total + 1, layer.size), np.int64) for n, layer in lg.layers.items()}
    v_rec = {n: np.zeros((total + 1, layer.size), np.int64) for n, layer in lg.layers.items()}
    for tau in range(1, total + 1):
        # 1) synapses send their buffers
        sent = []
        for syn, st in zip(lg.synapses, syn_state, strict=True):
            sent.append(st["buf"][:, 0].copy() if syn.kind == "dense" else st.get("a_buf", 0))
        # 2) neurons
        out_spikes = {}
        for name, layer in lg.layers.items():
            a_in = np.zeros(layer.size, np.int64)
            for syn, a in zip(lg.synapses, sent, strict=True):
                if syn.dst == name:
                    a_in = a_in + a
            local = tau - 1 - layer.depth
            if name in host and local >= 0 and local // period < batch and local % period < steps:
                a_in = a_in + host[name][local % period, local // period]
            if tau % period == (1 + layer.depth) % period:  # LIFReset, before the update
                u[name][:] = 0
                v[name][:] = 0
            bias = np.left_shift(layer.bias_mant.astype(np.int32), layer.bias_exp).reshape(-1)
            u[name], v[name], s = _lif_reference(
                u[name], v[name], a_in.astype(np.int32), layer.du, layer.dv, bias, layer.vth
            )
            out_spikes[name] = s
            spikes_rec[name][tau], u_rec[name][tau], v_rec[name][tau] = s, u[name], v[name]
        # 3) synapses receive this step's spikes
        n_in, t_in = (tau - 1) // period, (tau - 1) % period
        in_spk = (
            stream[t_in, n_in].reshape(-1) if n_in < batch and t_in < steps else np.zeros(stream[0, 0].size)
        )
        for syn, st in zip(lg.synapses, syn_state, strict=True):
            s_in = in_spk if syn.src == lg.input.name else out_spikes[syn.src].astype(np.int64)
            if syn.kind == "dense":
                acc = st["w"][:, s_in.astype(bool)].sum(axis=1).astype(np.int64)
                acc = (
                    np.left_shift(acc, syn.weight_exp)
                    if syn.weight_exp > 0
                    else np.right_shift(acc, -syn.weight_exp)
                )
                buf = st["buf"]
                buf[:, 0] = 0
                st["buf"] = np.roll(buf, -1, axis=1)
                st["buf"][:, syn.delay] += acc
            else:
                g = syn.geometry
                acc = _corr2d(s_in.reshape(g.input_shape), syn.weight, g.stride, g.padding).reshape(-1)
                st["a_buf"] = (acc + 2**23) % 2**24 - 2**23
    # extract each layer's window of each sample
    spikes = {}
    for name, layer in lg.layers.items():
        idx = np.array([[n * period + 1 + t + layer.depth for n in range(batch)] for t in range(steps)])
        spikes[name] = spikes_rec[name][idx].reshape(steps, batch, *layer.shape)
    ro = lg.readout
    layer = lg.layers[ro.layer]
    idx = np.array([[n * period + 1 + t + layer.depth for n in range(batch)] for t in range(steps)])
    src = {"current": u_rec, "potential": v_rec}.get(ro.mode)
    raw = (src[ro.layer] if src is not None else spikes_rec[ro.layer].astype(np.int64))[idx]
    assert depth == lg.depth
    return raw.reshape(steps, batch, *layer.shape), spikes


# ----------------------------------------------------------------------------------------------------
# random Loihi graphs


def _layer(rng, name, shape, depth, kind="lif", du=4095, dv=None, vth=None, bias_scale=0):  # noqa: ANN001, ANN202
    n = int(np.prod(shape))
    return LoihiLayer(
        name=name,
        shape=shape,
        kind=kind,
        du=du,
        dv=int(rng.integers(0, 4096)) if dv is None else dv,
        vth=int(rng.integers(20, 400)) if vth is None else vth,
        bias_mant=rng.integers(-bias_scale, bias_scale + 1, size=shape).astype(np.int32)
        if bias_scale
        else np.zeros(shape, np.int32),
        bias_exp=rng.integers(0, 4, size=shape).astype(np.int32) if bias_scale else np.zeros(shape, np.int32),
        scale=np.full(shape, 1.0 + n % 3),
        v_offset=np.zeros(shape),
        depth=depth,
    )


def _mixed_even(rng, shape, high=254):  # noqa: ANN001, ANN202
    return (rng.integers(-high // 2, high // 2 + 1, size=shape) * 2).astype(np.int32)


def feedforward_graph(rng: np.random.Generator, wrap: bool = False) -> LoihiGraph:
    """Spike input -> Dense -> CUBA LIF (2,5,5) -> Conv -> LIF (3,5,5) -> [Conv + delayed Dense shortcut from
    the first layer] -> LIF (3,5,5) -> Dense -> current readout (4)."""
    layers = {
        "a": _layer(rng, "a", (2, 5, 5), 1, du=int(rng.integers(0, 4095)), bias_scale=60),
        "b": _layer(rng, "b", (3, 5, 5), 2),
        "c": _layer(rng, "c", (3, 5, 5), 3, bias_scale=30),
        "out": _layer(rng, "out", (4,), 4, kind="readout", du=4095, dv=0, vth=2**17 - 1),
    }
    g_conv = ConvGeometry(input_shape=(2, 5, 5), output_shape=(3, 5, 5), stride=(1, 1), padding=(1, 1))
    g_skip = ConvGeometry(input_shape=(2, 5, 5), output_shape=(3, 5, 5))
    syns = [
        LoihiSynapse("in", "input", "a", "dense", _mixed_even(rng, (50, 12)), weight_exp=7 if wrap else -1),
        LoihiSynapse(
            "ab",
            "a",
            "b",
            "conv",
            rng.integers(-128, 128, size=(3, 2, 3, 3)).astype(np.int32),
            geometry=g_conv,
        ),
        LoihiSynapse(
            "bc",
            "b",
            "c",
            "conv",
            rng.integers(-128, 128, size=(3, 3, 3, 3)).astype(np.int32),
            geometry=ConvGeometry((3, 5, 5), (3, 5, 5), (1, 1), (1, 1)),
        ),
        LoihiSynapse(
            "ac",
            "a",
            "c",
            "dense",
            rng.integers(0, 256, size=(3, 2, 1, 1)).astype(np.int32),
            weight_exp=2,
            delay=1,
            geometry=g_skip,
        ),
        LoihiSynapse("cout", "c", "out", "dense", _mixed_even(rng, (4, 75)), weight_exp=3),
    ]
    return LoihiGraph(
        input=LoihiInput(name="input", shape=(12,), mode="spikes"),
        layers=layers,
        synapses=syns,
        readout=LoihiReadout(name="output", mode="current", layer="out", offset=rng.standard_normal(4)),
        timesteps=5,
    )


def host_recurrent_graph(rng: np.random.Generator) -> LoihiGraph:
    """Analog input computed on the host -> CUBA LIF (6) with a recurrent Dense -> LIF (5) -> LI readout."""
    layers = {
        "h": _layer(rng, "h", (6,), 0, du=1000, dv=500, vth=300),
        "k": _layer(rng, "k", (5,), 1, dv=2048, bias_scale=100),
        "li": _layer(rng, "li", (3,), 2, kind="readout", du=3000, dv=300, vth=2**17 - 1),
    }
    host = [
        HostSynapse(
            "host", "h", rng.integers(-30000, 30000, size=(6, 4)), rng.integers(-5000, 5000, size=6), shift=12
        )
    ]
    syns = [
        LoihiSynapse("rec", "h", "h", "dense", _mixed_even(rng, (6, 6)), weight_exp=1, recurrent=True),
        LoihiSynapse("hk", "h", "k", "dense", _mixed_even(rng, (5, 6)), weight_exp=2),
        LoihiSynapse(
            "kli", "k", "li", "dense", rng.integers(0, 256, size=(3, 5)).astype(np.int32), weight_exp=0
        ),
    ]
    return LoihiGraph(
        input=LoihiInput(
            name="input", shape=(4,), mode="current", in_scale=1000.0, in_max=2**15 - 1, host=host
        ),
        layers=layers,
        synapses=syns,
        readout=LoihiReadout(name="output", mode="potential", layer="li", offset=np.zeros(3)),
        timesteps=6,
    )


@pytest.mark.parametrize("wrap", [False, True])
def test_emulator_matches_lava_reference_feedforward(wrap: bool) -> None:
    rng = np.random.default_rng(3 + wrap)
    lg = feedforward_graph(rng, wrap=wrap)
    stream = (rng.random((5, 7, 12)) < 0.5).astype(np.float64)
    # chunks of 3: chunking must not matter
    emu = EmulatorBackend(progress=False, collect_stats=True, batch_size=3)
    result = emu.run_loihi(lg, stream)
    raw, spikes = lava_reference(lg, stream)
    for name in ("a", "b", "c"):
        assert np.array_equal(result.spikes[name], spikes[name]), name
        assert 0 < spikes[name].mean() < 1, f"layer {name} is silent or saturated; the test would be weak"
    assert np.array_equal(result.outputs, lg.readout_to_float(raw))
    if wrap:  # the huge input weights must have exercised the 24-bit wrap of u and the clip of v
        assert emu.stats["a"]["u_wraps"] > 0 and emu.stats["a"]["v_clips"] > 0
    else:
        assert emu.stats["a"]["u_wraps"] == 0


def test_emulator_matches_lava_reference_host_input_and_recurrence() -> None:
    rng = np.random.default_rng(11)
    lg = host_recurrent_graph(rng)
    stream = rng.standard_normal((6, 5, 4))
    stream[2, 1, 3] = 40.0  # beyond the host's 16-bit input range (32767 / in_scale 1000): clipped, counted
    emu = EmulatorBackend(progress=False, collect_stats=True)
    result = emu.run_loihi(lg, stream)
    assert emu.stats["input_clipped"] == 1
    # the recurrent buffer must not carry a sample's last spikes into the next: run samples one by one
    for b in range(stream.shape[1]):
        raw, spikes = lava_reference(lg, stream[:, b : b + 1])
        for name in ("h", "k"):
            assert np.array_equal(result.spikes[name][:, b : b + 1], spikes[name]), (name, b)
        assert np.array_equal(result.outputs[:, b : b + 1], lg.readout_to_float(raw))
    assert 0 < result.spikes["h"].mean() < 1 and 0 < result.spikes["k"].mean() < 1


def _spiking_graph(shape: tuple[int, ...], layers: dict, syns: list, timesteps: int) -> LoihiGraph:
    """A graph with spike input of ``shape`` and the membrane potential of 3-neuron layer "out" as readout."""
    return LoihiGraph(
        input=LoihiInput(name="input", shape=shape, mode="spikes"),
        layers=layers,
        synapses=syns,
        readout=LoihiReadout(name="output", mode="potential", layer="out", offset=np.zeros(3)),
        timesteps=timesteps,
    )


def fast_path_graph(rng: np.random.Generator) -> LoihiGraph:
    """Spike input (2,6,6) -> Conv -> LIF (4,6,6) -> Dense (floor shift) + delayed Dense from the input ->
    LIF (5) -> Dense (floor shift) -> LI readout (3, its v read): ranges the emulator's float32 path admits
    (du = 4095, power-of-two v decays, small sums)."""
    layers = {
        "a": _layer(rng, "a", (4, 6, 6), 1, dv=2048, vth=60, bias_scale=40),
        "b": _layer(rng, "b", (5,), 2, dv=0, vth=300),
        "out": _layer(rng, "out", (3,), 3, kind="readout", dv=2048, vth=2**17 - 1, bias_scale=40),
    }
    syns = [
        LoihiSynapse(
            "ia",
            "input",
            "a",
            "conv",
            rng.integers(-128, 128, size=(4, 2, 3, 3)).astype(np.int32),
            geometry=ConvGeometry((2, 6, 6), (4, 6, 6), (1, 1), (1, 1)),
        ),
        LoihiSynapse("ab", "a", "b", "dense", _mixed_even(rng, (5, 144)), weight_exp=-2),
        LoihiSynapse("ib", "input", "b", "dense", _mixed_even(rng, (5, 72)), weight_exp=1, delay=1),
        LoihiSynapse("bo", "b", "out", "dense", _mixed_even(rng, (3, 5)), weight_exp=-2),
    ]
    return _spiking_graph((2, 6, 6), layers, syns, timesteps=5)


@pytest.mark.parametrize("make", [fast_path_graph, host_recurrent_graph, feedforward_graph])
def test_emulator_float32_path_is_exact(make) -> None:  # noqa: ANN001
    """Without stats, layers with small ranges run in float32: same spikes and outputs as Lava's equations
    and as the integer path (stats mode), whatever the chunking."""
    from lasnn.sims.emulator import _Compiled

    rng = np.random.default_rng(21)
    lg = make(rng)
    fast = _Compiled(lg, torch.device("cpu")).fast
    if make is fast_path_graph:
        assert fast == {"a": True, "b": True, "out": True}  # the float32 path is what this case tests
    else:
        assert any(fast.values()) and not all(fast.values())  # mixed float32 and integer layers
    if lg.input.mode == "spikes":
        stream = (rng.random((lg.timesteps, 7, *lg.input.shape)) < 0.5).astype(np.float64)
    else:
        stream = rng.standard_normal((lg.timesteps, 7, *lg.input.shape))
    quick = EmulatorBackend(progress=False, batch_size=3).run_loihi(lg, stream)
    exact = EmulatorBackend(progress=False, collect_stats=True).run_loihi(lg, stream)
    assert np.array_equal(quick.outputs, exact.outputs)
    assert set(quick.spikes) == set(exact.spikes)
    assert all(np.array_equal(quick.spikes[n], exact.spikes[n]) for n in quick.spikes)
    raw, spikes = lava_reference(lg, stream) if lg.input.mode == "spikes" else (None, None)
    if spikes is not None:  # (host-input graphs: compared sample by sample in the test above)
        for name in quick.spikes:
            assert np.array_equal(quick.spikes[name], spikes[name]), name
            assert 0 < spikes[name].mean() < 1, f"layer {name} is silent or saturated; the test would be weak"
        assert np.array_equal(quick.outputs, lg.readout_to_float(raw))


def test_wrap24_is_lavas_signed_clamp() -> None:
    from lava.proc.conv.utils import signed_clamp

    x = np.array(
        [0, 2**23 - 1, 2**23, -(2**23), -(2**23) - 1, 3 * 2**23 + 5, -(5 * 2**23) - 7], dtype=np.int64
    )
    assert np.array_equal(wrap24(torch.as_tensor(x)).numpy(), signed_clamp(x, bits=24))


def test_emulator_refuses_inconsistent_graphs() -> None:
    rng = np.random.default_rng(0)
    lg = feedforward_graph(rng)
    lg.synapses[3].delay = 0  # the shortcut would deliver a spike of a later float step: not aligned
    with pytest.raises(LasnnError, match="'ac'"):
        EmulatorBackend(progress=False).run_loihi(lg, (rng.random((5, 2, 12)) < 0.5).astype(float))
    lg = feedforward_graph(rng)
    lg.synapses[1].weight[0, 0, 0, 0] = 300  # not int8
    with pytest.raises(LasnnError, match="synapse 'ab'"):
        EmulatorBackend(progress=False).run_loihi(lg, (rng.random((5, 2, 12)) < 0.5).astype(float))
    with pytest.raises(LasnnError, match="values other than 0 and 1"):
        EmulatorBackend(progress=False).run_loihi(feedforward_graph(rng), rng.random((5, 2, 12)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_emulator_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(5)
    lg = feedforward_graph(rng, wrap=True)
    stream = (rng.random((5, 9, 12)) < 0.5).astype(np.float64)
    cpu = EmulatorBackend(progress=False).run_loihi(lg, stream)
    gpu = EmulatorBackend(device="cuda", progress=False).run_loihi(lg, stream)
    assert np.array_equal(cpu.outputs, gpu.outputs)
    assert all(np.array_equal(cpu.spikes[n], gpu.spikes[n]) for n in cpu.spikes)
    lg = fast_path_graph(rng)  # the float32 path on the GPU
    stream = (rng.random((5, 9, 2, 6, 6)) < 0.5).astype(np.float64)
    cpu = EmulatorBackend(progress=False, collect_stats=True).run_loihi(lg, stream)
    gpu = EmulatorBackend(device="cuda", progress=False).run_loihi(lg, stream)
    assert np.array_equal(cpu.outputs, gpu.outputs)
    assert all(np.array_equal(cpu.spikes[n], gpu.spikes[n]) for n in cpu.spikes)


@pytest.mark.parametrize("du,dv", [(4095, 0), (0, 4095), (1234, 321), (4095, 2048)])
def test_lif_step_matches_lava_equations_in_extreme_ranges(du: int, dv: int) -> None:
    """Inputs up to 2**30 overflow Lava's int32 arithmetic; the emulator must wrap exactly as numpy does."""
    rng = np.random.default_rng(du + dv)
    n = 4000
    u = rng.integers(-(2**23) + 1, 2**23, size=n).astype(np.int32)
    v = rng.integers(-(2**23) + 1, 2**23, size=n).astype(np.int32)
    bias = (rng.integers(-4096, 4096, size=n) << rng.integers(0, 8, size=n)).astype(np.int32)
    for scale in (2**10, 2**17, 2**26, 2**30):
        a_in = rng.integers(-scale, scale, size=n).astype(np.int32)
        ref_u, ref_v, ref_s = _lif_reference(u.copy(), v.copy(), a_in, du, dv, bias, 1000)
        t = lambda a: torch.as_tensor(a.astype(np.int64))  # noqa: E731
        out = lif_step(t(u), t(v), t(a_in), du, dv, t(bias), 1000)
        assert np.array_equal(out[0].numpy(), ref_u) and np.array_equal(out[1].numpy(), ref_v)
        assert np.array_equal(out[2].numpy(), ref_s)
        if scale <= 2**17:  # small enough that int32 cannot overflow: the fast path must agree
            for cast in (t, lambda a: torch.as_tensor(a.astype(np.int32))):  # int64 and int32 states
                fast = lif_step(cast(u), cast(v), cast(a_in), du, dv, cast(bias), 1000, int32_possible=False)
                assert np.array_equal(fast[1].numpy(), ref_v) and np.array_equal(fast[0].numpy(), ref_u)
                assert np.array_equal(fast[2].numpy(), ref_s)
        u, v = ref_u, ref_v


def _trained_like_graph() -> tuple[Graph, np.ndarray]:
    """A small direct-encoded CNN (conv, pool+conv, pool+linear readout) with weights that make both layers
    fire at rates like a trained student's (~5-25 %), and 200 input images."""
    rng = np.random.default_rng(0)
    f = lambda shape, v: np.full(shape, v)  # noqa: E731

    def lif(shape: tuple[int, ...]) -> Neuron:
        return Neuron(
            shape=shape,
            alpha_v=f(shape, 0.5),
            gain=f(shape, 0.5),
            v_threshold=f(shape, 1.0),
            v_reset=f(shape, 0.0),
            v_leak=f(shape, 0.0),
        )

    nodes = {
        "input": Input((1, 8, 8)),
        "c1": Conv2d(
            rng.standard_normal((8, 1, 3, 3)) * 0.8, rng.standard_normal(8) * 0.2, (1, 8, 8), padding=(1, 1)
        ),
        "n1": lif((8, 8, 8)),
        "p1": SumPool2d((2, 2), (2, 2), (8, 8, 8)),
        "s1": Scale(np.array(0.25)),
        "c2": Conv2d(
            rng.standard_normal((16, 8, 3, 3)) * 0.6, rng.standard_normal(16) * 0.2, (8, 4, 4), padding=(1, 1)
        ),
        "n2": lif((16, 4, 4)),
        "p2": SumPool2d((2, 2), (2, 2), (16, 4, 4)),
        "s2": Scale(np.array(0.25)),
        "f": Flatten((16, 2, 2)),
        "fc": Affine(rng.standard_normal((10, 64)) * 0.5, rng.standard_normal(10) * 0.1),
        "output": Output((10,)),
    }
    names = list(nodes)
    graph = Graph(nodes, list(zip(names, names[1:], strict=False)), {"timesteps": 4, "encoding": "direct"})
    return graph, np.repeat(rng.standard_normal((1, 200, 1, 8, 8)), 4, axis=0)


def test_emulator_tracks_the_float_backend() -> None:
    from lasnn.sims.float_backend import FloatBackend

    graph, stream = _trained_like_graph()
    emu = EmulatorBackend(progress=False, collect_stats=True, calibration_stream=stream[:, :50])
    fixed = emu.run(graph, stream)
    ref = FloatBackend(progress=False).run(graph, stream)
    assert set(fixed.spikes) == set(ref.spikes) == {"n1", "n2"}
    for name in ref.spikes:
        assert 0.03 < ref.spikes[name].mean() < 0.5
        assert (fixed.spikes[name] != ref.spikes[name]).mean() < 0.01  # < 1 % of spikes differ
    agree = (fixed.outputs.mean(0).argmax(-1) == ref.outputs.mean(0).argmax(-1)).mean()
    assert agree >= 0.9
    assert fixed.outputs.shape == ref.outputs.shape
    assert emu.report is not None and emu.stats["n1"]["u_wraps"] == 0 and emu.stats["n1"]["v_clips"] == 0


def test_emulator_threads_are_scoped_to_the_run() -> None:
    """A CPU run picks its own thread count (idle cores, or ``num_threads``) and gives torch's back."""
    import os

    from lasnn.sims.emulator import _idle_cpus, cpu_threads

    assert 1 <= cpu_threads() <= torch.get_num_threads()
    idle = _idle_cpus()
    if os.path.exists("/proc/stat"):
        assert idle is not None and 0.0 <= idle <= (os.cpu_count() or 1)
    rng = np.random.default_rng(8)
    lg = fast_path_graph(rng)
    stream = (rng.random((5, 4, 2, 6, 6)) < 0.5).astype(np.float64)
    before = torch.get_num_threads()
    one = EmulatorBackend(progress=False, num_threads=1).run_loihi(lg, stream)
    assert torch.get_num_threads() == before
    auto = EmulatorBackend(progress=False).run_loihi(lg, stream)
    assert np.array_equal(one.outputs, auto.outputs)


def pooled_conv_graph(rng: np.random.Generator) -> LoihiGraph:
    """Spike input (3,8,8) -> Conv 6x6 stride 2 whose kernel repeats a 3x3 kernel over 2x2 blocks (what a
    student's 2x2 pooling followed by a 3x3 conv composes into) -> LIF (4,4,4) -> Dense -> LI readout."""
    small = rng.integers(-40, 41, size=(4, 3, 3, 3)).astype(np.int32)
    layers = {
        "a": _layer(rng, "a", (4, 4, 4), 1, dv=2048, vth=40, bias_scale=20),
        "out": _layer(rng, "out", (3,), 2, kind="readout", dv=2048, vth=2**17 - 1),
    }
    kernel = np.repeat(np.repeat(small, 2, axis=2), 2, axis=3)
    geometry = ConvGeometry((3, 8, 8), (4, 4, 4), (2, 2), (2, 2))
    syns = [
        LoihiSynapse("ia", "input", "a", "conv", kernel, geometry=geometry),
        LoihiSynapse("ao", "a", "out", "dense", _mixed_even(rng, (3, 64)), weight_exp=-1),
    ]
    return _spiking_graph((3, 8, 8), layers, syns, timesteps=6)


def test_pooled_conv_factorisation_is_exact() -> None:
    """A block-repeated stride-2 kernel runs as sum pooling + 3x3 conv: same spikes as Lava's equations and
    as the integer path; a kernel that is not block-repeated (or padding not a multiple of 2) is not."""
    from lasnn.sims.emulator import _Compiled, pooled_conv

    rng = np.random.default_rng(5)
    lg = pooled_conv_graph(rng)
    compiled = _Compiled(lg, torch.device("cpu"))
    factor, kernel, padding = compiled.pooled["ia"]
    assert factor == 2 and tuple(kernel.shape) == (4, 3, 3, 3) and padding == (1, 1)
    assert compiled.fast["a"]
    stream = (rng.random((lg.timesteps, 9, *lg.input.shape)) < 0.4).astype(np.float64)
    quick = EmulatorBackend(progress=False).run_loihi(lg, stream)
    integer = EmulatorBackend(progress=False, collect_stats=True).run_loihi(lg, stream)
    raw, spikes = lava_reference(lg, stream)
    assert 0 < spikes["a"].mean() < 1
    assert np.array_equal(quick.spikes["a"], spikes["a"]) and np.array_equal(integer.spikes["a"], spikes["a"])
    assert np.array_equal(quick.outputs, lg.readout_to_float(raw))

    geometry = lg.synapses[0].geometry
    broken = np.asarray(lg.synapses[0].weight).copy()
    broken[0, 0, 0, 1] += 2  # one tap differs from its block
    assert pooled_conv(broken, geometry) is None
    odd_padding = ConvGeometry((3, 8, 8), (4, 4, 4), (2, 2), (1, 1))
    assert pooled_conv(np.asarray(lg.synapses[0].weight), odd_padding) is None
