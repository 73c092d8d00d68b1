"""The quantised Loihi 2 network: plain dataclasses of integers, and the exact integer semantics that the
bit-exact emulator (``lasnn.sims.emulator``) and the Lava backend (``lasnn.sims.lava_backend``) both
implement. This docstring is that contract. Written by hand (no library describes a Loihi network
independently of Lava's process objects); the arithmetic below is read from lava-nc 0.10.0's fixed-point
process models, cited per rule.

Populations (``LoihiLayer``) are Lava ``LIFReset`` processes (``lava/proc/lif/models.py``,
``PyLifResetModelBitAcc`` = ``AbstractPyLifModelFixed``). Per Lava time step, for every neuron::

    a_in   = sum of this step's a_out of every synapse into the layer, plus a host current (int)
    if time_step % reset_interval == reset_offset:  u = 0; v = 0            (LIFReset, before the update)
    du_eff = du + 1                                                          (ds_offset = 1)
    u      = trunc0(u * (4096 - du_eff) / 4096) + (a_in << 6)                (trunc0: rounds toward zero)
    u      = u - 2**24 if u > 2**23 else (u + 2**24 if u <= -2**23 else u)   (one wrap, as Lava writes it)
    v      = trunc0(v * (4096 - dv) / 4096) + u + (bias_mant << bias_exp)    (dm_offset = 0; bias not << 6)
    v      = clip(v, -(2**23 - 1), 2**23 - 1)
    spike  = v > (vth << 6);   v = 0 where spike                             (u is not reset)

``trunc0(x)`` is ``sign(x) * (|x| >> 12)`` on the int64 product. ``du``, ``dv``, ``vth`` are one value
per layer (Lava scalars); ``bias_mant``/``bias_exp`` are per neuron. ``du = 4095`` makes ``u = a_in << 6``
exactly (no current memory: the non-CUBA neurons).

Synapses (``LoihiSynapse``), all delivering binary spikes (``num_message_bits = 0``):

- ``kind = "dense"`` is Lava ``Dense`` (``delay == 0``) or ``DelayDense``/``DelaySparse`` (``delay > 0``),
  ``lava/proc/dense/models.py`` ``PyDenseModelBitAcc``: the weights given here are already representable
  (mixed signs: even values in [-256, 254]; all >= 0: [0, 255]; all <= 0: [-255, 0]), so Lava's
  ``clip_weights``/``truncate_weights`` (``lava/utils/weightutils.py``) leave them unchanged. Per step::

      a_out(t) = a_buff;  a_buff = (W @ s(t)) << weight_exp  (weight_exp >= 0)
                                 = (W @ s(t)) >> -weight_exp (weight_exp < 0, arithmetic: floor)

  i.e. spikes of step t arrive at step ``t + 1 + delay``. Pass ``weight_exp`` and ``sign_mode`` (from
  ``lava_sign_mode``) to the Lava process. No wrap is applied to a_out.
- ``kind = "conv"`` is Lava ``Conv`` (``lava/proc/conv/models.py`` ``PyConvModelFixed``): ``weight_exp`` is
  ignored by Lava (lava issue #803), so it is always 0 here and the scale lives in ``vth``; weights are
  int8 ([-128, 127], Loihi's 8-bit weights; Lava's simulator does not clip them, we never exceed them);
  ``a_out(t) = a_buf;  a_buf = signed_wrap_24(conv(s(t), W))`` (``utils.signed_clamp``: modulo 2**24).
  Conv synapses always have ``delay == 0``.

A ``dense`` synapse may carry its weights as a conv kernel plus ``geometry`` (a convolution structure,
e.g. a residual shortcut that needs a delay, or a convolution that reads its input cropped to
``ConvGeometry.crop``: a pooling of an odd-sized image followed by a padded conv, ``pool_conv``): its
connectivity is then ``matrix()`` (scipy CSR), and its arithmetic is still Dense's. All shapes here are
the float graph's, C-order (C, H, W) for images; the weight matrix indexes neurons by their C-order flat
index. Lava's Conv works in (W, H, C) order: the Lava backend permutes (``conv_weight_whc``).

Input stage (``LoihiInput``):

- ``mode = "spikes"`` (poisson/latency encodings): the encoded binary stream enters through ordinary
  on-chip synapses whose ``src`` is the input's name (a Lava ``RingBuffer`` source).
- ``mode = "current"`` (``direct``/analog encoding): the first synapse stage (every path from the Input to
  a neuron layer) is computed on the host, in exact integer arithmetic, and its result is injected into
  the destination layer's ``a_in`` (a ``RingBuffer`` connected straight to the LIF's ``a_in``). Why not
  graded spikes through an on-chip Conv: fidelity (16-bit currents from 16-bit host weights instead of
  8-bit pixels times 8-bit weights whose large fan-in sums risk Lava Conv's 24-bit wrap), one synapse
  stage less latency, and the first layer's MACs are the one operation an analog input forces anyway;
  energy reports count them as host MACs. The host arithmetic (``host_currents``) is integer, so its
  result does not depend on batch size, device or summation order::

      x_q  = clip(rint(x * in_scale), -in_max, in_max)              (int64)
      acc  = W_host @ x_q (or conv)                                (int64, exact: bounded below 2**53)
      a_in = (acc + bias_host + 2**(shift - 1)) >> shift           (shift >= 1; rounds half up)

Time and schedule. Every layer has a ``depth`` (Lava step offset): float step ``t`` (0-based) of sample
``n`` runs in layer L at Lava ``time_step = n * P + 1 + t + L.depth`` (Lava counts from 1), where
``P = steps_per_sample(gap) = T + gap``. Input spikes of float step t are sent at ``n * P + 1 + t`` (depth
0); host currents for layer L at that layer's own step; both are zero for ``t >= T``. A synapse from S to
D has ``delay = D.depth - S.depth - 1`` (feed-forward) or ``D.depth - S.depth`` (recurrent, which in the
float graph carries the previous step), plus any Delay node of the graph on its path, so every input
arrives exactly aligned (a residual shortcut that skips a stage gets ``delay = 1``). Each LIFReset has
``reset_interval = P`` and ``reset_offset = (1 + depth) % P``: a layer is zeroed right before its first
step of every sample. At that step every feed-forward synapse delivers its source's first step of the
same sample, so samples can follow each other without gap (``gap = 0``) and still never mix. Run
``total_steps(N, gap) = N * P + max depth`` steps for N samples. The single exception: a recurrent
synapse's buffer at a layer's first step holds the layer's own spikes of the step before (previous
sample); the float graph has zero there, the emulator has zero there, and the Lava backend must make it
zero (clear the synapse buffer, or choose a gap in which the layer is silent, and check it).

Always-on source (``kind = "source"``): a population (lasnn makes one of one neuron where needed, and one more
per 64 pipeline stages beyond the first 64, since a synapse delays at most 63 steps) with
no input, ``du = 4095, dv = 0, vth = 0`` and bias 1, so that ``v = 1 > 0`` and it spikes at every Lava step,
before and after every reset. A ``dense`` synapse from it with weight ``W`` (``role = "bias"``) adds the
integer current ``W << weight_exp`` to its destination's ``a_in`` at every step: a constant that enters
``u`` (Loihi's own bias enters ``v``), i.e. a bias of a current-based neuron, or a constant the float graph
delivers only from step ``s`` on (through a recurrent edge, ``s = 1``, or a ``Delay`` of ``s`` steps): its
synapse then has ``delay = s - 1 + D.depth - source.depth``, so the first ``s`` steps of every sample read
"before the sample" and are zero (the emulator's rule; Lava's masked synapse, see ``lava_backend``). The
source's spikes are not results (no backend returns them) but they cost synaptic operations, which
``activity`` charges. ``role = "reset"`` marks a synapse from a layer to itself (recurrent, diagonal) that
adds the float graph's reset offset ``(v_reset - v_leak) * (1 - alpha_v)`` one step after each spike (Loihi
resets v to 0); ``role = "graph"`` is every synapse of the float graph.

Readout (``LoihiReadout``): ``mode = "current"`` (a lasnn student: the head's currents, averaged over T,
are the logits) is a layer with ``du = 4095, dv = 0, vth = VTH_MAX, bias 0``: its ``u`` at each step is
that step's head current ``a_in << 6`` (float: ``u / (64 * scale) + offset``) and its ``v`` accumulates
their sum (logits ``= v_last / (64 * scale * T) + offset``). ``mode = "potential"`` (a NIR LI readout):
float ``= v / (64 * scale) + offset``. ``mode = "spikes"``: the Output is fed straight by a spiking layer.

Scales: for a layer, float membrane ``v = v_int / (64 * scale) + v_offset`` and float threshold
``= vth / scale + v_offset`` (``scale`` per neuron, float64). For non-spiking host values see above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

# Bit widths are in lasnn.hardware.loihi_limits (with their sources); the few the contract needs:
UV_BITS = 24  # u, v: lava/proc/lif/models.py AbstractPyLifModelFixed (uv_bitwidth = 24)
DECAY_SHIFT = 12  # du, dv: 12-bit, decay_unity = 2**12 (same file)
ACT_SHIFT = 6  # a_in << 6 (act_shift, same file)
VTH_SHIFT = 6  # vth << 6 (vth_shift, same file)
VTH_MAX = 2**17 - 1  # vth: unsigned 17-bit (PyLifModelBitAcc docstring, LavaPyType precision=17)
LAYER_KINDS = ("lif", "readout", "source")
SYNAPSE_KINDS = ("dense", "conv")
SYNAPSE_ROLES = ("graph", "bias", "reset")
READOUT_MODES = ("current", "potential", "spikes")
INPUT_MODES = ("spikes", "current")


@dataclass
class ConvGeometry:
    """A 2-D convolution structure (dilation 1, groups 1: the quantiser expands those into the kernel)."""

    input_shape: tuple[int, int, int]  # (C, H, W)
    output_shape: tuple[int, int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    # (rows, cols) of the input the convolution reads, from the top left; the rest of the input reaches
    # nothing (a floor pooling of an odd size drops its last row and column: ``lasnn.hardware.pool_conv``).
    # None: the whole input. Lava's Conv cannot crop, so only ``dense`` synapses carry a crop.
    crop: tuple[int, int] | None = None


@dataclass
class LoihiLayer:
    """One Lava ``LIFReset`` population (see the module docstring for its exact update)."""

    name: str  # the float graph's Neuron / LeakyIntegrator node name (or the readout's name)
    shape: tuple[int, ...]
    kind: str  # "lif" | "readout" | "source" (always on, see the module docstring)
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray  # int32, shape
    bias_exp: np.ndarray  # int32, shape, 0..7
    scale: np.ndarray  # float64, shape: v_int = 64 * scale * (v_float - v_offset)
    v_offset: np.ndarray  # float64, shape
    depth: int = 0

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def bias(self) -> np.ndarray:
        """Effective bias ``bias_mant << bias_exp`` (int64, shape), as Lava's ``scale_bias`` computes it."""
        return np.left_shift(self.bias_mant.astype(np.int64), self.bias_exp.astype(np.int64))


@dataclass
class LoihiSynapse:
    """One Lava connection process between two populations (or from the input spike source)."""

    name: str  # float graph node names on the path, joined by '+', for reports
    src: str  # a layer name, or the input's name for input spikes
    dst: str
    kind: str  # "dense" | "conv"
    weight: np.ndarray  # int32: dense [n_out, n_in] or, with geometry, a kernel [C_out, C_in, kh, kw]
    weight_exp: int = 0  # dense only
    delay: int = 0  # extra steps beyond Lava's built-in one (dense only)
    geometry: ConvGeometry | None = None
    recurrent: bool = False
    num_message_bits: int = 0  # binary spikes everywhere (analog input is injected as host current)
    role: str = "graph"  # "graph" | "bias" (from the always-on source) | "reset" (module docstring)

    def matrix(self) -> sp.csr_matrix:
        """The connectivity as a [n_out, n_in] CSR matrix over C-order flat neuron indices."""
        if self.geometry is None:
            return sp.csr_matrix(self.weight.astype(np.int64))
        return conv_matrix(self.weight, self.geometry)

    def lava_sign_mode(self) -> int:
        """Lava ``SignMode`` value of these weights (1 mixed, 2 excitatory, 3 inhibitory), like
        ``lava.utils.weightutils.determine_sign_mode`` applied to the kernel or matrix."""
        return sign_mode(self.weight)


@dataclass
class HostSynapse:
    """A path from the analog input to a layer, computed on the host in integers (module docstring)."""

    name: str
    dst: str
    weight: np.ndarray  # int64: [n_out, n_in] or, with geometry, a kernel
    bias: np.ndarray  # int64, the destination's shape (constant input already in acc units)
    shift: int
    geometry: ConvGeometry | None = None
    delay: int = 0  # float-graph Delay steps on the path (the host shifts the stream)


@dataclass
class LoihiInput:
    name: str  # the float graph's Input node name
    shape: tuple[int, ...]
    mode: str  # "spikes" | "current"
    in_scale: float = 1.0  # current mode: x_q = rint(x * in_scale)
    in_max: int = 2**15 - 1
    host: list[HostSynapse] = field(default_factory=list)


@dataclass
class LoihiReadout:
    name: str  # the float graph's Output node name
    mode: str  # "current" | "potential" | "spikes"
    layer: str  # the population read
    offset: np.ndarray  # float64, output shape: added after scaling back (current/potential)


@dataclass
class LoihiGraph:
    """A quantised network: populations in topological order, synapses, input stage and readout."""

    input: LoihiInput
    layers: dict[str, LoihiLayer]
    synapses: list[LoihiSynapse]
    readout: LoihiReadout
    timesteps: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """Pipeline depth: the largest layer depth (extra Lava steps after the last input step)."""
        return max(layer.depth for layer in self.layers.values())

    def steps_per_sample(self, gap: int = 0) -> int:
        return self.timesteps + gap

    def total_steps(self, samples: int, gap: int = 0) -> int:
        return samples * self.steps_per_sample(gap) + self.depth

    def lava_step(self, sample: int, t: int, layer: str, gap: int = 0) -> int:
        """Lava ``time_step`` (1-based) at which ``layer`` runs float step ``t`` of ``sample``."""
        return sample * self.steps_per_sample(gap) + 1 + t + self.layers[layer].depth

    def reset_offset(self, layer: str, gap: int = 0) -> int:
        """``LIFReset`` ``reset_offset`` of ``layer`` (with ``reset_interval = steps_per_sample(gap)``)."""
        return (1 + self.layers[layer].depth) % self.steps_per_sample(gap)

    def readout_to_float(self, values: np.ndarray) -> np.ndarray:
        """Scale the readout layer's integer ``u`` (current mode) or ``v`` (potential mode) ``[T, B, *shape]``
        back to float output units; spikes (spikes mode) are returned as float."""
        ro = self.readout
        if ro.mode == "spikes":
            return np.asarray(values, dtype=np.float64)
        layer = self.layers[ro.layer]
        return np.asarray(values, dtype=np.float64) / (2**ACT_SHIFT * layer.scale) + ro.offset

    def synapses_into(self, layer: str) -> list[LoihiSynapse]:
        return [s for s in self.synapses if s.dst == layer]


def sign_mode(weight: np.ndarray) -> int:
    """Lava's ``determine_sign_mode`` as an int: 2 excitatory (min >= 0), 3 inhibitory (max <= 0), 1 mixed."""
    if weight.size == 0 or np.min(weight) >= 0:
        return 2
    if np.max(weight) <= 0:
        return 3
    return 1


def dense_weight_range(mode: int) -> tuple[int, int, int]:
    """(low, high, step) of Lava-representable Dense weights in ``mode`` (weightutils clip + truncate at
    8 bits: mixed signs lose their LSB)."""
    return {1: (-256, 254, 2), 2: (0, 255, 1), 3: (-255, 0, 1)}[mode]


def conv_output_shape(
    geometry_in: tuple[int, int, int],
    c_out: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[int, int, int]:
    _, h, w = geometry_in
    return (
        c_out,
        (h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
        (w + 2 * padding[1] - kernel[1]) // stride[1] + 1,
    )


def conv_matrix(kernel: np.ndarray, g: ConvGeometry) -> sp.csr_matrix:
    """The [n_out, n_in] CSR matrix of a (groups 1, dilation 1) convolution, C-order flat indices; int64 for
    an integer kernel, float64 for a float one (the quantiser's dense fallback passes float kernels)."""
    c_out, c_in, kh, kw = kernel.shape
    _, h_in, w_in = g.input_shape
    h, w = g.crop if g.crop is not None else (h_in, w_in)  # the rows/cols the convolution reads
    _, ho, wo = g.output_shape
    co, oy, ox, ci, ky, kx = np.meshgrid(
        np.arange(c_out),
        np.arange(ho),
        np.arange(wo),
        np.arange(c_in),
        np.arange(kh),
        np.arange(kw),
        indexing="ij",
    )
    iy = oy * g.stride[0] - g.padding[0] + ky
    ix = ox * g.stride[1] - g.padding[1] + kx
    values = kernel[co, ci, ky, kx]
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w) & (values != 0)
    rows = ((co * ho + oy) * wo + ox)[keep]
    cols = ((ci * h_in + iy) * w_in + ix)[keep]
    dtype = np.int64 if np.issubdtype(kernel.dtype, np.integer) else np.float64
    return sp.csr_matrix(
        (values[keep].astype(dtype), (rows, cols)), shape=(c_out * ho * wo, c_in * h_in * w_in)
    )


def crop_input(x: Any, g: ConvGeometry) -> Any:
    """Images ``x`` [..., H, W] (torch or numpy) as the convolution of ``g`` reads them: a view cropped to
    ``g.crop`` (the whole image without one)."""
    return x if g.crop is None else x[..., : g.crop[0], : g.crop[1]]


def conv_weight_whc(kernel: np.ndarray) -> np.ndarray:
    """A [C_out, C_in, kh, kw] correlation kernel (torch's convention, used here) as Lava Conv's weight:
    layout [C_out, kw, kh, C_in] (Lava images are W, H, C) and spatially flipped, because Lava's
    ``conv_scipy`` is a true convolution (``scipy.signal.convolve2d``)."""
    return np.ascontiguousarray(np.transpose(kernel[:, :, ::-1, ::-1], (0, 3, 2, 1)))


def host_currents(lg: LoihiGraph, stream: np.ndarray) -> dict[str, np.ndarray]:
    """The host-computed ``a_in`` ``[T, B, *shape]`` (int64, numpy) of every layer fed by the analog input."""
    out = host_currents_torch(lg, torch.as_tensor(np.asarray(stream)), torch.device("cpu"))
    return {k: v.numpy() for k, v in out.items()}


def host_currents_torch(
    lg: LoihiGraph, stream: torch.Tensor, device: torch.device, as_float64: bool = False
) -> dict[str, torch.Tensor]:
    """``host_currents`` on a torch device: exact integer arithmetic (float64 convolutions of integers whose
    partial sums stay below 2**53, which the quantiser guarantees, are exact in any summation order), so the
    result does not depend on device, batch size or library. ``as_float64``: the same integers left in
    float64 (no int64 copy), for callers that compute in floating point."""
    inp = lg.input
    if inp.mode != "current":
        return {}
    x = stream.to(device=device, dtype=torch.float64)
    steps, batch = x.shape[:2]
    xq = torch.clamp(torch.round(x * inp.in_scale), -inp.in_max, inp.in_max)
    out: dict[str, torch.Tensor] = {}
    constant = steps > 1 and bool((xq[1:] == xq[:1]).all())  # direct encoding repeats the image every step
    for hs in inp.host:
        xs = xq
        if hs.delay:
            xs = torch.cat([torch.zeros_like(xq[: hs.delay]), xq[: steps - hs.delay]])[:steps]
        elif constant:  # compute one step and repeat it (identical integers)
            xs = xq[:1]
        w = torch.as_tensor(hs.weight, dtype=torch.float64, device=device)
        if hs.geometry is not None:
            g = hs.geometry
            acc = F.conv2d(
                crop_input(xs.reshape(-1, *g.input_shape), g), w, stride=g.stride, padding=g.padding
            )
        else:
            acc = xs.reshape(xs.shape[0] * batch, -1) @ w.T
        # (round(acc) + bias + 2**(shift-1)) >> shift, in place in float64: the quantiser keeps
        # sum|w| * in_max + |bias| below 2**51, so every value is an integer float64 holds exactly, and
        # floor(x / 2**shift) is the arithmetic right shift
        offset = torch.as_tensor(hs.bias + (1 << (hs.shift - 1)), dtype=torch.float64, device=device)
        acc = acc.round_().reshape(xs.shape[0], batch, *lg.layers[hs.dst].shape).add_(offset)
        a_in = acc.div_(2.0**hs.shift).floor_()
        a_in = a_in if as_float64 else a_in.to(torch.int64)
        a_in = a_in.expand(steps, *a_in.shape[1:]) if a_in.shape[0] != steps else a_in
        out[hs.dst] = a_in if hs.dst not in out else out[hs.dst] + a_in
    return out


def check_loihi_graph(lg: LoihiGraph) -> None:
    """Raise ``LasnnError`` naming the layer or synapse unless every value of ``lg`` is representable on
    Loihi 2 as this module's contract (and Lava's fixed-point models) define it."""
    from lasnn.errors import LasnnError
    from lasnn.hardware import loihi_limits as lim

    if lg.input.mode not in INPUT_MODES:
        raise LasnnError(
            f"the input stage has mode {lg.input.mode!r}; expected one of {', '.join(INPUT_MODES)}."
        )
    if lg.timesteps < 1:
        raise LasnnError(f"the Loihi graph has timesteps={lg.timesteps}; expected a positive integer.")
    for name, layer in lg.layers.items():
        where = f"layer '{name}'"
        if layer.kind not in LAYER_KINDS:
            raise LasnnError(f"{where} has kind {layer.kind!r}; expected one of {', '.join(LAYER_KINDS)}.")
        for field_name, value, low, high in (
            ("du", layer.du, 0, lim.DU_MAX),
            ("dv", layer.dv, 0, lim.DV_MAX),
            ("vth", layer.vth, 0, VTH_MAX),
            ("depth", layer.depth, 0, 10**6),
        ):
            if not low <= int(value) <= high:
                raise LasnnError(f"{where} has {field_name}={value}; Loihi expects {low}..{high}.")
        for field_name, arr, low, high in (
            ("bias_mant", layer.bias_mant, lim.BIAS_MANT_MIN, lim.BIAS_MANT_MAX),
            ("bias_exp", layer.bias_exp, lim.BIAS_EXP_MIN, lim.BIAS_EXP_MAX),
        ):
            arr = np.asarray(arr)
            if arr.shape != tuple(layer.shape) or arr.dtype.kind not in "iu":
                raise LasnnError(
                    f"{where} has {field_name} of shape {arr.shape} ({arr.dtype}); expected integers "
                    f"of shape {tuple(layer.shape)}."
                )
            if arr.size and (arr.min() < low or arr.max() > high):
                raise LasnnError(
                    f"{where} has {field_name} in {arr.min()}..{arr.max()}; Loihi expects {low}..{high}."
                )
    sources = {name for name, layer in lg.layers.items() if layer.kind == "source"}
    for name in sources:
        layer = lg.layers[name]
        fed = [s.name for s in lg.synapses if s.dst == name]
        fed += [h.name for h in lg.input.host if h.dst == name]
        if fed or layer.du != lim.DU_MAX or np.any(layer.bias() <= layer.vth << VTH_SHIFT):
            raise LasnnError(
                f"source layer '{name}' has inputs {fed}, du={layer.du} and biases {layer.bias().min()}.."
                f"{layer.bias().max()} against vth {layer.vth}; an always-on source has no input, du "
                f"{lim.DU_MAX} and a bias above vth << {VTH_SHIFT}."
            )
    names = [s.name for s in lg.synapses]
    if len(set(names)) != len(names):
        raise LasnnError(
            f"the Loihi graph has synapses of the same name ({sorted(names)}); names must be unique."
        )
    for syn in lg.synapses:
        where = f"synapse '{syn.name}' ({syn.src} -> {syn.dst})"
        if syn.dst not in lg.layers:
            raise LasnnError(f"{where} ends at an unknown layer '{syn.dst}'.")
        if syn.role not in SYNAPSE_ROLES or (syn.role == "bias") != (syn.src in sources):
            raise LasnnError(
                f"{where} has role {syn.role!r}; expected 'bias' exactly for synapses from a source layer, "
                f"else one of {', '.join(r for r in SYNAPSE_ROLES if r != 'bias')}."
            )
        if syn.role == "reset" and (syn.src != syn.dst or not syn.recurrent):
            raise LasnnError(
                f"{where} has role 'reset'; a reset synapse connects a layer to itself, recurrent."
            )
        if syn.src in lg.layers:
            n_in = lg.layers[syn.src].size
        elif syn.src == lg.input.name and lg.input.mode == "spikes":
            n_in = int(math.prod(lg.input.shape))
        else:
            raise LasnnError(f"{where} starts at '{syn.src}', which is neither a layer nor the spike input.")
        n_out = lg.layers[syn.dst].size
        w = np.asarray(syn.weight)
        if w.dtype.kind not in "iu":
            raise LasnnError(f"{where} has {w.dtype} weights; expected integers.")
        if syn.geometry is not None:
            g = syn.geometry
            if (
                w.ndim != 4
                or w.shape[0] != g.output_shape[0]
                or w.shape[1] != g.input_shape[0]
                or math.prod(g.input_shape) != n_in
                or math.prod(g.output_shape) != n_out
            ):
                raise LasnnError(
                    f"{where} has a kernel {w.shape} and geometry {g} that do not match its layers "
                    f"({n_in} -> {n_out} neurons)."
                )
        elif w.shape != (n_out, n_in):
            raise LasnnError(f"{where} has weights of shape {w.shape}; expected ({n_out}, {n_in}).")
        if syn.geometry is not None:
            _check_crop(where, syn.geometry, w.shape, syn.kind)
        if syn.kind == "conv":
            if syn.geometry is None or syn.weight_exp != 0 or syn.delay != 0:
                raise LasnnError(
                    f"{where} is a Conv with geometry={syn.geometry}, weight_exp={syn.weight_exp}, "
                    f"delay={syn.delay}; Lava's Conv needs a geometry, ignores weight_exp and has no delay."
                )
            low, high, step = lim.CONV_WEIGHT[0], lim.CONV_WEIGHT[1], 1
        elif syn.kind == "dense":
            low, high, step = dense_weight_range(sign_mode(w))
            if not lim.WEIGHT_EXP_MIN <= syn.weight_exp <= lim.WEIGHT_EXP_MAX:
                raise LasnnError(
                    f"{where} has weight_exp={syn.weight_exp}; expected "
                    f"{lim.WEIGHT_EXP_MIN}..{lim.WEIGHT_EXP_MAX}."
                )
            if not 0 <= syn.delay <= lim.MAX_DELAY:
                raise LasnnError(f"{where} has delay={syn.delay}; Loihi 2 expects 0..{lim.MAX_DELAY}.")
        else:
            raise LasnnError(f"{where} has kind {syn.kind!r}; expected one of {', '.join(SYNAPSE_KINDS)}.")
        if w.size and (w.min() < low or w.max() > high or (step > 1 and (w % step).any())):
            raise LasnnError(
                f"{where} has weights in {w.min()}..{w.max()}; a Loihi {syn.kind} synapse represents "
                f"{low}..{high}" + (" in even steps (mixed signs)." if step > 1 else ".")
            )
        if syn.num_message_bits != 0:
            raise LasnnError(
                f"{where} has num_message_bits={syn.num_message_bits}; lasnn sends binary spikes (0)."
            )
    for hs in lg.input.host:
        if hs.geometry is not None:
            _check_crop(f"host synapse '{hs.name}'", hs.geometry, np.shape(hs.weight), "host")
        if hs.dst not in lg.layers or hs.shift < 1:
            raise LasnnError(
                f"host synapse '{hs.name}' targets '{hs.dst}' with shift {hs.shift}; expected a layer "
                "and a shift >= 1."
            )
    ro = lg.readout
    if ro.mode not in READOUT_MODES or ro.layer not in lg.layers or ro.layer in sources:
        raise LasnnError(
            f"the readout '{ro.name}' has mode {ro.mode!r} on layer '{ro.layer}'; expected one of "
            f"{', '.join(READOUT_MODES)} on a known layer."
        )


def _check_crop(where: str, g: ConvGeometry, kernel_shape: tuple[int, ...], kind: str) -> None:
    """A crop lies inside the input and its convolution gives the output shape; Lava's Conv reads its whole
    input port (lava-nc 0.10.0 ports reshape, transpose and concatenate; none selects), so a Conv has none."""
    from lasnn.errors import LasnnError

    if g.crop is None:
        return
    c, h, w = g.input_shape
    crop = tuple(int(v) for v in g.crop)
    if kind == "conv" or len(crop) != 2 or not (1 <= crop[0] <= h and 1 <= crop[1] <= w):
        raise LasnnError(
            f"{where} ({kind}) reads its input {tuple(g.input_shape)} cropped to {crop}; a crop lies inside "
            "the input, and only dense or host synapses carry one (Lava's Conv reads its whole input)."
        )
    expected = conv_output_shape((c, *crop), kernel_shape[0], kernel_shape[2:4], g.stride, g.padding)
    if tuple(g.output_shape) != expected:
        raise LasnnError(
            f"{where} convolves its input cropped to {crop} into {tuple(g.output_shape)}, but its "
            f"{kernel_shape[2]}x{kernel_shape[3]} kernel, stride {tuple(g.stride)} and padding "
            f"{tuple(g.padding)} give {expected}."
        )
