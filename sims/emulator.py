"""A batched emulator of Lava's Loihi 2 fixed-point models, bit-exact to them, in torch (CPU or GPU).

Written by hand: Lava's Python simulator has no batch dimension and costs milliseconds per step, and no
library reproduces its integer arithmetic in batch. The emulator runs a ``LoihiGraph`` (see
``lasnn.hardware.loihi_graph`` for the exact semantics) with every integer in int64 and the wrap-around of
Lava's int32 numpy arithmetic reproduced where it applies (a_in sums, the ``<< 6`` shift, the u and v
additions), the 24-bit single wrap of ``u``, the clip of ``v``, Conv's 24-bit ``a_buf`` wrap, Dense's
``weight_exp`` shift (arithmetic, flooring) and synapse delays.

Time: every layer runs float step ``t`` of a sample at its own Lava step (its depth), so the emulator steps
through float time directly: layer L at float step t receives a synapse's spikes of the source's float step
``t - g`` with ``g = 1 + delay + depth(src) - depth(dst)`` (0 for aligned feed-forward synapses, 1 for
aligned recurrent ones), and zero before the sample's first step. Results are therefore time-aligned with
the float graph, as ``sims/backend.py`` requires, and samples are independent.

Synaptic sums are computed as float64 matrix products / convolutions of integers and rounded: every partial
sum is an integer far below 2**53, so the result is exact whatever algorithm the library picks (even an
FFT or Winograd convolution, whose tiny errors the rounding removes).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lasnn.cpu_memory import keep_freed_memory
from lasnn.errors import LasnnError
from lasnn.export.graph import Graph
from lasnn.hardware.loihi_graph import (
    ACT_SHIFT,
    DECAY_SHIFT,
    UV_BITS,
    VTH_SHIFT,
    ConvGeometry,
    LoihiGraph,
    check_loihi_graph,
    crop_input,
    host_currents_torch,
)
from lasnn.hardware.quantise import quantise
from lasnn.sims.backend import BackendResult

_UV_MAX = 2 ** (UV_BITS - 1)
_UNITY = 2**DECAY_SHIFT


def wrap32(x: torch.Tensor) -> torch.Tensor:
    """int32 two's-complement wrap of an int64 tensor (numpy's int32 arithmetic overflow)."""
    return ((x + 2**31) & (2**32 - 1)) - 2**31


def wrap24(x: torch.Tensor) -> torch.Tensor:
    """Lava Conv's ``signed_clamp(x, bits=24)``: ``(x + 2**23) % 2**24 - 2**23``."""
    return torch.remainder(x + 2**23, 2**24) - 2**23


def _decay(x: torch.Tensor, keep: int, bound: int) -> torch.Tensor:
    """``trunc(x * keep / 4096)`` exactly (Lava: ``sign(p) * (|p| >> 12)`` of the int64 product), in ``x``'s
    dtype; the product goes through int64 unless ``bound * keep / gcd`` provably fits int32."""
    if keep == _UNITY:
        return x
    g = math.gcd(keep, _UNITY)
    k, s = keep // g, _UNITY // g
    if x.dtype == torch.int32 and bound * k >= 2**31:
        return torch.div(x.to(torch.int64) * k, s, rounding_mode="trunc").to(torch.int32)
    return torch.div(x * k if k != 1 else x, s, rounding_mode="trunc")


def lif_step(
    u: torch.Tensor,
    v: torch.Tensor,
    a_in: torch.Tensor,
    du: int,
    dv: int,
    bias: torch.Tensor,
    vth: int,
    int32_possible: bool = True,
    u_wrap_possible: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One ``AbstractPyLifModelFixed`` update: (u, v, spikes, u wrapped? or None, v before its clip).

    Tensors are int64, or int32 where the caller proved that no int32 overflow can happen
    (``int32_possible`` False); ``u_wrap_possible`` False skips the 24-bit wrap of u where the caller proved
    it cannot happen. The results are identical either way, only faster."""
    if int32_possible:  # reproduce numpy's int32 wrap-around of Lava's arithmetic
        cur = wrap32(wrap32(a_in) << ACT_SHIFT)
        if du != _UNITY - 1:
            cur = wrap32(_decay(u, _UNITY - (du + 1), 2**63) + cur)
    else:
        cur = a_in << ACT_SHIFT
        if du != _UNITY - 1:  # decay constant 4096 (du = 4095) leaves exactly 0 of the old current
            cur = _decay(u, _UNITY - (du + 1), 2**31) + cur
    wrapped = None
    if u_wrap_possible:
        u_hi, u_lo = cur > _UV_MAX, cur <= -_UV_MAX
        u = torch.where(u_hi, cur - 2 * _UV_MAX, torch.where(u_lo, cur + 2 * _UV_MAX, cur))
        wrapped = u_hi | u_lo
    else:
        u = cur
    total = _decay(v, _UNITY - dv, _UV_MAX) + u + bias
    if int32_possible:
        total = wrap32(total)
    v = total.clamp(-(_UV_MAX - 1), _UV_MAX - 1)
    spikes = v > (vth << VTH_SHIFT)
    return u, v.masked_fill(spikes, 0), spikes, wrapped, total


def _idle_cpus(window_s: float = 0.1) -> float | None:
    """Idle CPUs now: the idle share of all CPU time over ``window_s`` seconds (``/proc/stat``, Linux), times
    the CPU count; None where ``/proc/stat`` is absent."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def cpu_threads() -> int:
    """Threads for a CPU run: torch's count, cut to the cores other processes leave idle. The emulator's
    many short kernels end in OpenMP barriers; a thread whose core is busy with another process stalls
    every barrier (measured on a loaded 2-core machine: 2 threads gave 400 to 12000 images/s on the digits
    network, 1 thread a steady 5700 to 7300). Idle cores are measured over 0.1 s from ``/proc/stat``; the
    1-minute load average (the fallback elsewhere) lags a finished burst of work by about a minute."""
    idle = _idle_cpus()
    if idle is None:
        try:
            idle = (os.cpu_count() or 1) - os.getloadavg()[0]
        except OSError:  # no load average on this platform
            return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), int(idle + 0.5)))


def pooled_conv(weight: np.ndarray, geometry: ConvGeometry) -> tuple[int, np.ndarray, tuple[int, int]] | None:
    """``(s, kernel, padding)`` when an integer conv of stride ``s`` equals an ``s x s`` sum pooling followed
    by a stride-1 conv with ``kernel``, else None.

    A float student's pooling followed by a conv is composed into one Loihi synapse of stride ``s`` whose
    kernel repeats every weight over an ``s x s`` block (equal floats quantise to equal integers). Summing
    the spikes of each block first and convolving with one weight per block gives the same integers with
    ``s*s`` times fewer multiply-adds. Decided on the integer weights themselves (exact equality), so it
    never changes a result; the padding and the (cropped) input size must be multiples of ``s``."""
    (sh, sw), (ph, pw) = geometry.stride, geometry.padding
    _, height, width = geometry.input_shape
    height, width = geometry.crop if geometry.crop is not None else (height, width)
    if sh != sw or sh < 2 or weight.ndim != 4:
        return None
    s = sh
    kh, kw = weight.shape[2:]
    if kh % s or kw % s or ph % s or pw % s or height % s or width % s:
        return None
    kernel = weight[:, :, ::s, ::s]
    for a in range(s):
        for b in range(s):
            if not np.array_equal(weight[:, :, a::s, b::s], kernel):
                return None
    return s, np.ascontiguousarray(kernel), (ph // s, pw // s)


# A chunk's largest layer state (float32) is kept near this size on CPU, so that the dozen elementwise
# passes of a time step hit the last-level cache instead of memory (measured on the CIFAR-sized bench net,
# 2-core EPYC: 1,580 images/s at 64-96 images per chunk against 1,160 at 512; the digits net, 300x smaller
# per image, keeps gaining up to ~2,000 per chunk from fewer Python calls).
CPU_CHUNK_BYTES = 12 * 2**20
GPU_CHUNK = 4096  # a GPU wants large batches; 4096 CIFAR-sized samples fit an H100 easily


def auto_batch_size(lg: LoihiGraph, device: torch.device) -> int:
    """Samples per chunk when the caller sets none: cache-sized on CPU (``CPU_CHUNK_BYTES``), large on GPU."""
    if device.type != "cpu":
        return GPU_CHUNK
    largest = max((layer.size for layer in lg.layers.values()), default=1)
    return int(min(4096, max(16, CPU_CHUNK_BYTES // (4 * largest))))


class _Compiled:
    """A LoihiGraph's integer parameters on a device, and the per-synapse float-step lags."""

    def __init__(self, lg: LoihiGraph, device: torch.device) -> None:
        self.lg = lg
        self.order = sorted(lg.layers, key=lambda n: lg.layers[n].depth)
        position = {n: i for i, n in enumerate(self.order)}
        depth_of = {n: layer.depth for n, layer in lg.layers.items()}
        depth_of[lg.input.name] = 0
        self.syn = []
        self.pooled: dict[str, tuple[int, torch.Tensor, tuple[int, int]]] = {}
        self.dense_nhwc: dict[str, torch.Tensor] = {}
        for syn in lg.synapses:
            lag = 1 + syn.delay + depth_of[syn.src] - depth_of[syn.dst]
            if lag < 0 or (lag == 0 and syn.src in position and position[syn.src] >= position[syn.dst]):
                raise LasnnError(
                    f"synapse '{syn.name}' ({syn.src} -> {syn.dst}) would deliver spikes before they "
                    f"are emitted (delay {syn.delay}, depths {depth_of[syn.src]} -> "
                    f"{depth_of[syn.dst]}); the Loihi graph's depths and delays are inconsistent."
                )
            w = torch.as_tensor(np.asarray(syn.weight), dtype=torch.float64, device=device)
            exact32 = int(
                np.abs(np.asarray(syn.weight, dtype=np.int64)).reshape(len(w), -1).sum(1).max(initial=0)
            )
            w32 = w.float() if exact32 < 2**24 else None
            if w32 is not None and syn.geometry is not None:
                pooled = pooled_conv(np.asarray(syn.weight), syn.geometry)
                if pooled is not None:  # (pool factor, kernel on the pooled input, its padding)
                    self.pooled[syn.name] = (
                        pooled[0],
                        torch.as_tensor(pooled[1], dtype=torch.float32, device=device).contiguous(
                            memory_format=torch.channels_last
                        ),
                        pooled[2],
                    )
                # oneDNN/cuDNN convolve NHWC faster
                w32 = w32.contiguous(memory_format=torch.channels_last)
            src_shape = tuple(lg.layers[syn.src].shape) if syn.src in lg.layers else ()
            if w32 is not None and syn.geometry is None and len(src_shape) == 3:
                # columns in NHWC order, for the channels-last spikes of an image-shaped source (no copy)
                self.dense_nhwc[syn.name] = (
                    w32.reshape(len(w32), *src_shape).permute(0, 2, 3, 1).reshape(len(w32), -1).contiguous()
                )
            self.syn.append((syn, lag, (w, w32)))
        self.max_lag = max([lag for _, lag, _ in self.syn], default=0)
        self.bias = {
            n: torch.as_tensor(layer.bias(), dtype=torch.int64, device=device)
            for n, layer in lg.layers.items()
        }
        # static bound of |a_in| per layer, to skip wrap-arounds that cannot happen
        a_bound = {n: 0 for n in lg.layers}
        for hs in lg.input.host:
            acc = np.abs(hs.weight).reshape(hs.weight.shape[0], -1).sum(1).max(initial=0) * lg.input.in_max
            a_bound[hs.dst] += (int(acc) + int(np.abs(hs.bias).max(initial=0)) >> hs.shift) + 1
        for syn, _, _ in self.syn:
            rows = np.abs(np.asarray(syn.weight, dtype=np.int64)).reshape(syn.weight.shape[0], -1).sum(1)
            peak = int(rows.max(initial=0))
            if syn.kind == "conv":
                peak = min(peak, 2**23)
            else:
                peak = peak << syn.weight_exp if syn.weight_exp >= 0 else (peak >> -syn.weight_exp) + 1
            a_bound[syn.dst] += peak
        bias_peak = {n: int(np.abs(layer.bias()).max(initial=0)) for n, layer in lg.layers.items()}
        self.int32_possible = {
            n: (a_bound[n] << ACT_SHIFT) * 2 + 2**UV_BITS + bias_peak[n] >= 2**31 for n in lg.layers
        }
        self.conv_wrap_possible = {
            syn.name: int(
                np.abs(np.asarray(syn.weight, dtype=np.int64))
                .reshape(syn.weight.shape[0], -1)
                .sum(1)
                .max(initial=0)
            )
            >= 2**23
            for syn, _, _ in self.syn
            if syn.kind == "conv"
        }
        # int32 states where no int32 overflow can happen (half the memory traffic), else int64
        self.dtype = {n: torch.int64 if self.int32_possible[n] else torch.int32 for n in lg.layers}
        self.bias = {n: b.to(self.dtype[n]) for n, b in self.bias.items()}
        self.u_wrap_possible = {
            n: lg.layers[n].du != _UNITY - 1 or (a_bound[n] << ACT_SHIFT) > _UV_MAX for n in lg.layers
        }
        # float32 fast path (see ``_fast_step``): every value it holds is an integer below 2**24 in
        # magnitude, and every operation on it is exact there (sums of such integers, multiplication by
        # 64, division by a power of two then trunc, compare, clip)
        self.fast = {}
        for n, layer in lg.layers.items():
            keep = _UNITY - layer.dv
            self.fast[n] = (
                not self.int32_possible[n]
                and not self.u_wrap_possible[n]  # implies du == 4095 and |a_in << 6| <= 2**23
                and keep & (keep - 1) == 0  # v decay: trunc(v / power of two), exact in float32
                and bias_peak[n] < 2**24
            )
        self.fast_keep_div = {n: _UNITY // (_UNITY - lg.layers[n].dv) for n in lg.layers if self.fast[n]}
        self.fast_bias = {
            n: (self.bias[n].to(torch.float32) if bias_peak[n] else None) for n in lg.layers if self.fast[n]
        }


class EmulatorBackend:
    """Bit-exact batched Loihi emulator: ``EmulatorBackend(device="cpu"|"cuda").run(graph, stream)``.

    ``run`` quantises the float graph (with ``calibration_stream`` if given, else static bounds) and keeps
    the ``LoihiGraph`` and report in ``self.loihi_graph`` / ``self.report``; ``run_loihi`` runs a
    ``LoihiGraph`` directly. After a run ``self.stats`` holds per-layer integer ranges (max |u|, max |v|
    before its clip) and saturation counts (u wraps, v clips, conv a_buf wraps, readout spikes, analog
    inputs clipped by the host) if ``collect_stats`` is True (calibration / stats mode: every layer then
    runs the int path, which measures them). Without stats, layers whose integer ranges provably stay below
    2**24 (``_Compiled.fast``) run a float32 in-place path with the same results, several times faster.
    On CPU a run uses ``num_threads`` threads (default: ``cpu_threads()``, the idle cores at the first run).
    """

    name = "emulator"

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int | None = None,
        calibration_stream: np.ndarray | None = None,
        progress: bool = True,
        collect_stats: bool = False,
        num_threads: int | None = None,
    ) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise LasnnError(f"device {device!r} was requested for the emulator, but torch sees no CUDA GPU.")
        self.device = torch.device(device)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.last_batch_size: int | None = None  # the chunk size of the last run
        self.calibration_stream = calibration_stream
        self.progress = progress
        self.collect_stats = collect_stats
        self.num_threads = num_threads
        self.loihi_graph: LoihiGraph | None = None
        self.report: dict | None = None
        self.stats: dict[str, dict] = {}
        self.last_threads: int | None = None  # CPU threads of the last run

    def run(self, graph: Graph, stream: np.ndarray) -> BackendResult:
        self.loihi_graph, self.report = quantise(graph, self.calibration_stream)
        return self.run_loihi(self.loihi_graph, stream)

    def run_loihi(self, lg: LoihiGraph, stream: np.ndarray) -> BackendResult:
        check_loihi_graph(lg)
        stream = np.asarray(stream)
        shape = tuple(lg.input.shape)
        if stream.ndim != 2 + len(shape) or tuple(stream.shape[2:]) != shape:
            raise LasnnError(
                f"the input stream has shape {stream.shape}; this graph expects [T, B, "
                f"{', '.join(map(str, shape))}]."
            )
        if lg.input.mode == "spikes" and not np.isin(stream, (0, 1)).all():
            raise LasnnError(
                "the input stream holds values other than 0 and 1, but this Loihi graph takes "
                "spikes; encode it with a spike encoding (poisson/latency) or quantise for 'current'."
            )
        compiled = _Compiled(lg, self.device)
        previous = torch.get_num_threads()
        if self.device.type == "cpu":
            if self.num_threads is None:  # idle cores, measured once per backend (it takes 0.1 s)
                self.num_threads = cpu_threads()
            torch.set_num_threads(self.num_threads)
            self.last_threads = torch.get_num_threads()
            keep_freed_memory()  # per-step tensors of tens of MiB: reuse instead of page faults
        try:
            return self._run_chunks(compiled, stream)
        finally:
            torch.set_num_threads(previous)

    def _run_chunks(self, compiled: _Compiled, stream: np.ndarray) -> BackendResult:
        lg = compiled.lg
        self.stats = {}
        outs, spikes = [], {n: [] for n, layer in lg.layers.items() if layer.kind == "lif"}
        size = self.batch_size or auto_batch_size(lg, self.device)
        self.last_batch_size = size
        chunks = range(0, stream.shape[1], size)
        for b in tqdm(chunks, desc="emulator", unit="batch", disable=not self.progress or len(chunks) < 2):
            out, spk = self._run_chunk(compiled, stream[:, b : b + size])
            outs.append(out)
            for n in spikes:
                spikes[n].append(spk[n])
        raw = np.concatenate(outs, axis=1)
        return BackendResult(
            outputs=lg.readout_to_float(raw).astype(np.float64),
            spikes={n: np.concatenate(s, axis=1) for n, s in spikes.items()},
        )

    @torch.no_grad()
    def _run_chunk(self, c: _Compiled, stream: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        lg, dev = c.lg, self.device
        steps, batch = stream.shape[:2]
        x = torch.as_tensor(stream, device=dev)
        # a step's host currents depend on that step's input only (delay-free host synapses): with a direct
        # encoding's constant stream one step is computed (by the contract's own function) and reused
        constant = (
            lg.input.mode == "current"
            and steps > 1
            and not any(hs.delay for hs in lg.input.host)
            and bool((x[1:] == x[:1]).all())
        )
        # float64 host currents when every layer they feed runs the float32 path (saves an int64 copy)
        float_host = all(c.fast[hs.dst] and not self.collect_stats for hs in lg.input.host)
        host = host_currents_torch(lg, x[:1] if constant else x, dev, as_float64=float_host)
        if lg.input.mode == "current" and self.collect_stats:  # the host clips inputs beyond its range
            clipped = int(
                (torch.round(x.to(torch.float64) * lg.input.in_scale).abs() > lg.input.in_max).sum()
            )
            self.stats["input_clipped"] = self.stats.get("input_clipped", 0) + clipped
        spikes_in = x.to(torch.float64) if lg.input.mode == "spikes" else None  # exact 0/1
        slow = [n for n in lg.layers if not (c.fast[n] and not self.collect_stats)]
        zeros = {n: torch.zeros((batch, *lg.layers[n].shape), dtype=c.dtype[n], device=dev) for n in slow}
        u = {n: z.clone() for n, z in zeros.items()}
        v = {n: z.clone() for n, z in zeros.items()}
        history: dict[str, list[torch.Tensor]] = {n: [] for n in lg.layers}  # bool spikes per step
        stat_t = {
            n: {
                k: torch.zeros((), dtype=torch.int64, device=dev)
                for k in ("u_max", "v_max", "u_wraps", "v_clips")
            }
            for n in lg.layers
        }
        conv_wraps = {syn.name: torch.zeros((), dtype=torch.int64, device=dev) for syn, _, _ in c.syn}
        ro = lg.readout
        fast = {n: c.fast[n] and not self.collect_stats for n in lg.layers}
        # spikes of every LIF layer, written in place step by step; an image-shaped fast layer's record is
        # laid out channels-last per step like its state, so that writing a step is a plain pass
        spike_record: dict[str, torch.Tensor] = {}
        for n, layer in lg.layers.items():
            if layer.kind != "lif":
                continue
            if fast[n] and len(layer.shape) == 3:
                ch, h, w = layer.shape
                spike_record[n] = torch.empty((steps, batch, h, w, ch), dtype=torch.bool, device=dev).permute(
                    0, 1, 4, 2, 3
                )
            else:
                spike_record[n] = torch.empty((steps, batch, *layer.shape), dtype=torch.bool, device=dev)
        readout_record = []

        # fast layers: float32 states, image-shaped ones channels-last (NHWC, the layout the convolutions
        # prefer and return, so that elementwise steps and convolutions never reorder memory); host
        # currents pre-multiplied by 64 (u = a_in << 6; exact: |a_in << 6| < 2**24)
        def float32_layout(x: torch.Tensor) -> torch.Tensor:  # one copy: convert and lay out together
            fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
            return x.to(dtype=torch.float32, memory_format=fmt, copy=True)

        host_f = {
            n: [float32_layout(h[i]).mul_(2**ACT_SHIFT) for i in range(h.shape[0])]
            for n, h in host.items()
            if fast[n]
        }
        v_f = {
            n: float32_layout(torch.zeros((), device=dev).expand(batch, *lg.layers[n].shape))
            for n in lg.layers
            if fast[n]
        }
        for t in range(steps):
            ht = 0 if constant else t  # the host currents' step
            for name in c.order:
                layer = lg.layers[name]
                if fast[name]:
                    record = spike_record[name][t] if name in spike_record else None
                    u_f, s_f = self._fast_step(
                        c, name, t, batch, host_f, ht, v_f[name], spikes_in, history, record
                    )
                    history[name].append(s_f)
                    if name == ro.layer:
                        value = {"current": u_f, "potential": v_f[name]}.get(ro.mode, s_f)
                        readout_record.append(value.to(torch.int64))
                    continue
                wide = c.int32_possible[name]
                a_in = host[name][ht].to(c.dtype[name]) if name in host else zeros[name]
                a_in = wrap32(a_in) if wide else a_in
                for syn, lag, w in c.syn:
                    if syn.dst != name or t - lag < 0:
                        continue
                    src = spikes_in[t - lag] if syn.src == lg.input.name else history[syn.src][t - lag]
                    acc = self._synapse(syn, w, src.reshape(batch, -1), batch, c.dtype[name])
                    if syn.kind == "conv":
                        if c.conv_wrap_possible[syn.name]:
                            wrapped = wrap24(acc)
                            conv_wraps[syn.name] += (wrapped != acc).sum()
                            acc = wrapped
                    else:
                        acc = acc << syn.weight_exp if syn.weight_exp > 0 else acc >> -syn.weight_exp
                        acc = wrap32(acc) if wide else acc  # a_out travels through an int32 channel
                    a_in = a_in + acc.reshape(batch, *layer.shape)
                a_in = wrap32(a_in) if wide else a_in
                u[name], v[name], s, u_wrap, total = lif_step(
                    u[name],
                    v[name],
                    a_in,
                    layer.du,
                    layer.dv,
                    c.bias[name],
                    layer.vth,
                    int32_possible=wide,
                    u_wrap_possible=c.u_wrap_possible[name],
                )
                if self.collect_stats:
                    st = stat_t[name]
                    st["u_max"] = torch.maximum(st["u_max"], u[name].abs().max())
                    st["v_max"] = torch.maximum(st["v_max"], total.abs().max())
                    st["v_clips"] += (total.abs() >= _UV_MAX).sum()
                    if u_wrap is not None:
                        st["u_wraps"] += u_wrap.sum()
                history[name].append(s)
                if layer.kind == "lif":
                    spike_record[name][t].copy_(s)
                if name == ro.layer:
                    if ro.mode == "current":
                        readout_record.append(u[name])  # lif_step returns new tensors: no copy needed
                    elif ro.mode == "potential":
                        readout_record.append(v[name])
                    else:
                        readout_record.append(s.to(torch.int64))
                    if layer.kind == "readout":
                        st = stat_t[name]
                        st.setdefault("readout_spikes", torch.zeros((), dtype=torch.int64, device=dev))
                        st["readout_spikes"] += s.sum()
            for name in lg.layers:  # keep only the history that can still be read
                if len(history[name]) > c.max_lag + 1:
                    history[name][-(c.max_lag + 2)] = None  # type: ignore[call-overload]
        self._merge_stats(stat_t, conv_wraps)
        out = torch.stack(readout_record).cpu().numpy()
        return out, {n: r.contiguous().cpu().numpy() for n, r in spike_record.items()}

    def _fast_step(
        self,
        c: _Compiled,
        name: str,
        t: int,
        batch: int,
        host_f: dict[str, torch.Tensor],
        host_t: int,
        v: torch.Tensor,
        spikes_in: torch.Tensor | None,
        history: dict[str, list],
        record: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``lif_step`` of a layer that ``_Compiled.fast`` admits, in float32 and in place on ``v``:
        (u, spikes as float32 0/1), the spikes also written to ``record`` (bool) if given. Exact because
        every value is an integer below 2**24 in magnitude (u = a_in << 6 with du = 4095, no u wrap and no
        int32 overflow possible, a power-of-two v decay) and float32 adds, multiplies by powers of two,
        truncates, compares and clips such integers exactly; a total beyond 2**24 (rounded) still clips to
        the same bound since rounding is monotonic. No per-neuron Python."""
        lg = c.lg
        layer = lg.layers[name]
        a = None  # a fresh tensor of our own (the host currents are shared: never modified in place)
        for syn, lag, w in c.syn:
            if syn.dst != name or t - lag < 0:
                continue
            src = spikes_in[t - lag] if syn.src == lg.input.name else history[syn.src][t - lag]
            acc = self._synapse_f32(c, syn, w, src, batch).reshape(batch, *layer.shape)
            a = acc if a is None else a.add_(acc)
        u = None if a is None else a.mul_(2**ACT_SHIFT)
        if name in host_f:  # already << 6
            u = host_f[name][host_t] if u is None else u.add_(host_f[name][host_t])
        if u is None:
            u = torch.zeros_like(v)
        if c.fast_keep_div[name] != 1:
            v.div_(c.fast_keep_div[name], rounding_mode="trunc")
        v.add_(u)
        if c.fast_bias[name] is not None:
            v.add_(c.fast_bias[name])
        v.clamp_(-(_UV_MAX - 1), _UV_MAX - 1)
        threshold = layer.vth << VTH_SHIFT
        # the comparison written straight into float32 (and into the bool record) is a single pass each;
        # a bool result converted to float32 measured 3-10x slower
        spikes_f = torch.gt(v, threshold, out=torch.empty_like(v))
        if record is not None:
            torch.gt(v, threshold, out=record)
        # reset to 0 where it spiked: v - v * s is exactly 0 there and v elsewhere (a multiply-add pass,
        # measured 2.5 ms against 22 ms for masked_fill_ on 16M channels-last values)
        v.addcmul_(v, spikes_f, value=-1)
        return u, spikes_f

    def _synapse_f32(
        self,
        c: _Compiled,
        syn,  # noqa: ANN001
        w: tuple[torch.Tensor, torch.Tensor | None],
        s: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """A synapse's a_out into a fast layer as a fresh float32 tensor (exact integers): its sum and Dense's
        ``weight_exp`` shift (``* 2**e``, or ``floor(* 2**e)``, exact in float). The float32 sum is taken when
        ``w[1]`` exists and the result is all integers (see ``_synapse``); otherwise the exact integer path
        runs and its result (``|a_out| < 2**24`` by the layer's bound) is converted."""
        if w[1] is not None:
            x = s.to(torch.float32)  # spikes of their layer's shape (the C-order flattening is logical)
            if syn.name in c.pooled:  # sum pooling then the small kernel: the same integers (pooled_conv)
                factor, kernel, padding = c.pooled[syn.name]
                x = crop_input(x.reshape(batch, *syn.geometry.input_shape), syn.geometry)
                x = F.avg_pool2d(x, factor, divisor_override=1)
                acc = F.conv2d(x, kernel, padding=padding)
            elif syn.geometry is not None:
                g = syn.geometry
                x = crop_input(x.reshape(batch, *g.input_shape), g)
                acc = F.conv2d(x, w[1], stride=g.stride, padding=g.padding)
            elif (
                syn.name in c.dense_nhwc
                and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last)
            ):
                acc = x.permute(0, 2, 3, 1).reshape(batch, -1) @ c.dense_nhwc[syn.name].T  # a view, no copy
            else:
                acc = x.reshape(batch, -1) @ w[1].T
            if torch.equal(torch.round(acc), acc):
                if syn.kind == "conv" or syn.weight_exp == 0:
                    return acc
                if syn.weight_exp > 0:
                    return acc.mul_(2.0**syn.weight_exp)
                return acc.mul_(2.0**syn.weight_exp).floor_()
        acc = self._synapse(syn, (w[0], None), s.reshape(batch, -1), batch)
        if syn.kind == "dense":
            acc = acc << syn.weight_exp if syn.weight_exp > 0 else acc >> -syn.weight_exp
        return acc.to(torch.float32)

    @staticmethod
    def _synapse(  # noqa: ANN205
        syn,  # noqa: ANN001
        w: tuple[torch.Tensor, torch.Tensor | None],
        s: torch.Tensor,
        batch: int,
        dtype: torch.dtype = torch.int64,
    ):
        """Exact integer synaptic sum of binary spikes ``s``. With ``w[1]`` (a float32 copy, given when every
        partial sum is an integer below 2**24) it runs in float32 and is accepted only if every result is an
        integer (any inexact algorithm, e.g. FFT or Winograd, shows up as fractions); else float64."""
        for weight in (w[1], w[0]) if w[1] is not None else (w[0],):
            x = s.to(weight.dtype)
            if syn.geometry is not None:
                g = syn.geometry
                x = crop_input(x.reshape(batch, *g.input_shape), g)
                acc = F.conv2d(x, weight, stride=g.stride, padding=g.padding)
            else:
                acc = x @ weight.T
            rounded = torch.round(acc)
            if weight.dtype == torch.float64 or torch.equal(rounded, acc):
                return rounded.to(dtype)
        raise AssertionError("unreachable")  # the float64 pass always returns

    def _merge_stats(self, stat_t: dict, conv_wraps: dict) -> None:
        for name, st in stat_t.items():
            cur = self.stats.setdefault(name, {})
            for key, value in st.items():
                value = int(value)
                if key.endswith("_max"):
                    cur[key] = max(cur.get(key, 0), value)
                else:
                    cur[key] = cur.get(key, 0) + value
        wraps = self.stats.setdefault("conv_abuf_wraps", {})
        for name, value in conv_wraps.items():
            wraps[name] = wraps.get(name, 0) + int(value)
