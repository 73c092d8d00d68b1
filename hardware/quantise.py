"""Quantise a float lasnn ``Graph`` to a Loihi 2 ``LoihiGraph`` (integer semantics in ``loihi_graph``).

Written by hand: no library maps NIR-like graphs onto Lava's fixed-point LIF/Dense/Conv models. Steps:

1. **Synapse composition.** Loihi needs a neuron population at both ends of a synapse, so every chain of
   stateless nodes between two populations (``SumPool2d -> Scale -> Conv2d``, ``SumPool2d -> Scale ->
   Flatten -> Affine``, a residual shortcut, ...) becomes one synapse, composed exactly in float64: chains
   of convolution-like ops (conv, sum pooling, per-channel scale) into one strided convolution with a larger
   kernel (checked against the sequential ops on a random probe; border effects that break the identity
   fall back to a dense matrix, the chain's Jacobian). Constant inputs (biases pushed through the chain)
   go to the neuron bias, or to the host input (CUBA neurons fed by the host), or to the readout offset.
2. **Timing.** Each population gets a depth (longest synapse path from the input) and every synapse the
   delay that aligns it with the float graph (a shortcut that skips a stage gets one step; see
   ``loihi_graph``). Delayed synapses are Dense (Lava's Conv has no delay).
3. **Scales.** A layer's float-to-integer scale is ``vth / (v_th - v_leak)`` per neuron, with one integer
   ``vth`` per layer chosen as large as every limit allows: Conv weights within int8 (Conv ignores
   ``weight_exp``, so its scale is carried by ``vth``), the bias mantissa/exponent range, vth's 17 bits, the
   16-bit host current, and headroom of ``margin`` for ``u`` (and ``v``) in 24 bits measured on calibration
   data (a float64 run of the graph) or, without data, bounded statically from the weights. Dense weights
   then take the exponent that fills their 8 bits.
4. **Report.** Per layer: depth, ``vth`` and its bits, the scale and the limit that bound it, ``du``/``dv``
   and their decay errors, the bias and its clipped count, the expected (calibrated) or bounded (static)
   largest ``|u|``, ``|v|`` in integer units against the 24-bit range, and per synapse its kind, exponent,
   delay, fan-in, clipped weights and weight quantisation error. The emulator measures the actual ranges
   and saturation counts of a run (``EmulatorBackend.stats``).
5. **Refusal.** Whatever cannot be represented (v_reset != v_leak, a non-positive threshold, a CUBA neuron
   with a constant input that Loihi adds to v instead of u, a delay over 63 steps, an un-alignable
   recurrent edge, a fan-in over one core's synaptic memory, a threshold needing fewer than 1 integer
   step) raises ``LasnnError`` naming the layer. Nothing is clipped silently: the report counts every
   clipped weight and approximated decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lasnn.errors import LasnnError
from lasnn.export.graph import (
    Affine,
    Conv2d,
    Delay,
    Flatten,
    Graph,
    Input,
    LeakyIntegrator,
    Neuron,
    Output,
    Scale,
    SumPool2d,
)
from lasnn.export.validate import infer_shapes
from lasnn.hardware import loihi_limits as lim
from lasnn.hardware.loihi_graph import (
    ConvGeometry,
    HostSynapse,
    LoihiGraph,
    LoihiInput,
    LoihiLayer,
    LoihiReadout,
    LoihiSynapse,
    check_loihi_graph,
    dense_weight_range,
    sign_mode,
)

SYNAPSE_NODES = (Affine, Conv2d, SumPool2d, Scale, Flatten, Delay)
LAYER_NODES = (Neuron, LeakyIntegrator)
MAX_DENSE_ENTRIES = 2**24  # a composed dense matrix larger than this (128 MiB in float64) is refused
HOST_WEIGHT_BITS = 16  # host weights of the analog input stage: 16-bit (lasnn's choice, exact integer math)
EXACT = 2**53  # float64 represents every integer below this exactly


@dataclass
class PathMap:
    """A composed chain: ``dst input += M @ src output`` (float64), ``delay`` steps late."""

    src: str
    dst: str
    names: list[str]
    recurrent: bool
    delay: int
    kernel: np.ndarray | None = None  # conv form
    geometry: ConvGeometry | None = None
    matrix: np.ndarray | None = None  # dense form [n_out, n_in]

    def row_abs_sum(self, out_shape: tuple[int, ...]) -> np.ndarray:
        """Upper bound of ``sum_j |M[n, j]|`` per output neuron (conv: the whole kernel), shape out_shape."""
        if self.matrix is not None:
            return np.abs(self.matrix).sum(1).reshape(out_shape)
        per_channel = np.abs(self.kernel).sum((1, 2, 3))
        return np.broadcast_to(per_channel[:, None, None], out_shape).copy()

    def row_abs_max(self, out_shape: tuple[int, ...]) -> np.ndarray:
        if self.matrix is not None:
            return np.abs(self.matrix).max(1, initial=0.0).reshape(out_shape)
        per_channel = np.abs(self.kernel).max((1, 2, 3), initial=0.0)
        return np.broadcast_to(per_channel[:, None, None], out_shape).copy()

    def fan_in(self) -> int:
        if self.matrix is not None:
            return int((self.matrix != 0).sum(1).max(initial=0))
        return int((self.kernel != 0).sum((1, 2, 3)).max(initial=0))


# ----------------------------------------------------------------------------------------------------
# float64 evaluation of stateless nodes (the graph's semantics; used for composition and calibration)


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64))


def apply_node(node: object, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    """Apply a stateless node to a batch ``x`` [B, ...] in float64 (Delay: its linear part, the identity)."""
    b = x.shape[0]
    if isinstance(node, Affine):
        return F.linear(x.reshape(b, -1), _t(node.weight), _t(node.bias) if with_bias else None)
    if isinstance(node, Conv2d):
        return F.conv2d(
            x.reshape(b, *node.input_shape),
            _t(node.weight),
            _t(node.bias) if with_bias else None,
            stride=tuple(node.stride),
            padding=tuple(node.padding),
            dilation=tuple(node.dilation),
            groups=node.groups,
        )
    if isinstance(node, SumPool2d):
        return F.avg_pool2d(
            x.reshape(b, *node.input_shape),
            tuple(node.kernel_size),
            tuple(node.stride),
            tuple(node.padding),
            count_include_pad=True,
            divisor_override=1,
        )
    if isinstance(node, Scale):
        return x * _t(node.scale)
    if isinstance(node, Flatten):
        return x.reshape(b, -1)
    if isinstance(node, Delay):
        return x
    raise TypeError(type(node).__name__)


def _conv_form(
    node: object, shape: tuple[int, ...]
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None:
    """A node as a (groups 1, dilation 1) convolution ``(kernel, stride, padding)`` on ``shape``, or None."""
    if len(shape) != 3:
        return None
    c = shape[0]
    if isinstance(node, Conv2d):
        w = np.asarray(node.weight, dtype=np.float64)
        co, cig, kh, kw = w.shape
        g = node.groups
        full = np.zeros((co, cig * g, kh, kw))
        per = co // g
        for k in range(g):
            full[k * per : (k + 1) * per, k * cig : (k + 1) * cig] = w[k * per : (k + 1) * per]
        dy, dx = node.dilation
        if (dy, dx) != (1, 1):
            dil = np.zeros((co, cig * g, (kh - 1) * dy + 1, (kw - 1) * dx + 1))
            dil[:, :, ::dy, ::dx] = full
            full = dil
        return full, tuple(node.stride), tuple(node.padding)
    if isinstance(node, SumPool2d):
        kh, kw = node.kernel_size
        return np.eye(c)[:, :, None, None] * np.ones((1, 1, kh, kw)), tuple(node.stride), tuple(node.padding)
    if isinstance(node, Scale):
        s = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), shape)
        per_channel = s[:, :1, :1]
        if not np.array_equal(np.broadcast_to(per_channel, shape), s):
            return None
        return np.diag(per_channel[:, 0, 0])[:, :, None, None], (1, 1), (0, 0)
    if isinstance(node, Delay):
        return np.eye(c)[:, :, None, None], (1, 1), (0, 0)
    return None


def _compose(a, b):  # noqa: ANN001, ANN202 - (kernel, stride, padding) pairs
    ka, sa, pa = a
    kb, sb, pb = b
    co, _, kbh, kbw = kb.shape
    _, ci, kah, kaw = ka.shape
    kh, kw = kah + (kbh - 1) * sa[0], kaw + (kbw - 1) * sa[1]
    out = np.zeros((co, ci, kh, kw))
    for by in range(kbh):
        for bx in range(kbw):
            out[:, :, by * sa[0] : by * sa[0] + kah, bx * sa[1] : bx * sa[1] + kaw] += np.einsum(
                "om,miyx->oiyx", kb[:, :, by, bx], ka
            )
    return out, (sa[0] * sb[0], sa[1] * sb[1]), (pa[0] + pb[0] * sa[0], pa[1] + pb[1] * sa[1])


def _path_delay(graph: Graph, names: list[str], dst: str) -> int:
    total = 0
    for n in names:
        node = graph.nodes[n]
        if isinstance(node, Delay):
            steps = np.unique(np.asarray(node.steps))
            if steps.size != 1:
                raise LasnnError(
                    f"Delay node '{n}' (feeding '{dst}') has per-element delays {steps[:4]}...; "
                    "lasnn maps only a uniform delay per Delay node onto Loihi synapses."
                )
            total += int(steps[0])
    return total


def compose_path(
    graph: Graph, shapes: dict, src: str, names: list[str], dst: str, recurrent: bool
) -> PathMap:
    """Compose the stateless chain ``names`` (from ``src`` to ``dst``) into one linear map."""
    delay = _path_delay(graph, names, dst)
    src_shape = tuple(shapes[src][1])
    dst_shape = (
        tuple(shapes[dst][1]) if not isinstance(graph.nodes[dst], Output) else tuple(graph.nodes[dst].shape)
    )
    pm = PathMap(src=src, dst=dst, names=names, recurrent=recurrent, delay=delay)
    nodes = [graph.nodes[n] for n in names]

    def chain(x: torch.Tensor) -> torch.Tensor:
        for node in nodes:
            x = apply_node(node, x, with_bias=False)
        return x.reshape(x.shape[0], *dst_shape)

    # conv form: every node conv-like on 3-D shapes and the input/output shapes are images
    if len(src_shape) == 3 and len(dst_shape) == 3:
        form = (np.eye(src_shape[0])[:, :, None, None], (1, 1), (0, 0))
        shape = src_shape
        ok = True
        for n, node in zip(names, nodes, strict=True):
            f = _conv_form(node, tuple(shapes[n][0]) if shapes[n][0] is not None else shape)
            if f is None:
                ok = False
                break
            form = _compose(form, f)
            shape = tuple(shapes[n][1])
        if ok:
            kernel, stride, padding = form
            probe = torch.as_tensor(np.random.default_rng(0).standard_normal((2, *src_shape)))
            try:
                direct = F.conv2d(probe, torch.as_tensor(kernel), stride=stride, padding=padding)
                same = direct.shape[1:] == dst_shape and torch.allclose(
                    direct, chain(probe), rtol=1e-9, atol=1e-9 * float(np.abs(kernel).sum() + 1)
                )
            except RuntimeError:
                same = False
            if same:
                pm.kernel = kernel
                pm.geometry = ConvGeometry(
                    input_shape=src_shape, output_shape=dst_shape, stride=stride, padding=padding
                )
                return pm
    n_in, n_out = math.prod(src_shape), math.prod(dst_shape)
    linear = [node for node in nodes if not isinstance(node, Flatten | Delay)]
    if len(linear) == 1 and isinstance(linear[0], Affine):  # already a matrix: no composition needed
        pm.matrix = np.asarray(linear[0].weight, dtype=np.float64)
        return pm
    if n_in * n_out > MAX_DENSE_ENTRIES:
        raise LasnnError(
            f"the synapse chain {'+'.join(names) or '(identity)'} from '{src}' to '{dst}' cannot be "
            f"composed into a convolution and its dense matrix ({n_out} x {n_in}) is too large; "
            "use even image sizes or fewer neurons."
        )
    if not names:
        pm.matrix = np.eye(n_in)
        return pm
    strategy = "reverse-mode" if n_out <= n_in else "forward-mode"
    jac = torch.autograd.functional.jacobian(
        lambda x: chain(x.reshape(1, *src_shape)).reshape(-1),
        torch.zeros(n_in, dtype=torch.float64),
        vectorize=True,
        strategy=strategy,
    )
    pm.matrix = jac.numpy().reshape(n_out, n_in)
    return pm


# ----------------------------------------------------------------------------------------------------
# graph analysis


def _paths(graph: Graph, recurrent: set[tuple[str, str]]) -> list[tuple[str, list[str], str, bool]]:
    """Every (source population/Input, stateless chain, destination, recurrent?) in the graph."""
    out = []
    for dst, node in graph.nodes.items():
        if not isinstance(node, LAYER_NODES + (Output,)):
            continue
        stack: list[tuple[str, list[str], bool]] = [(dst, [], False)]
        while stack:
            cur, chain, rec = stack.pop()
            for src in graph.sources(cur):
                r = rec or (src, cur) in recurrent
                s = graph.nodes[src]
                if isinstance(s, SYNAPSE_NODES):
                    if src in chain:
                        raise LasnnError(
                            f"node '{src}' is on a cycle of stateless nodes (no neuron in the loop); "
                            "Loihi needs a neuron population on every recurrent loop."
                        )
                    stack.append((src, [src, *chain], r))
                else:
                    out.append((src, chain, dst, r))
    return out


def _constant_inputs(graph: Graph, shapes: dict, order: list[str], recurrent: set) -> dict[str, np.ndarray]:
    """The time-constant input (biases pushed through the chains) into every population and the Output."""
    const: dict[str, torch.Tensor] = {}
    result: dict[str, np.ndarray] = {}
    for name in order:
        node = graph.nodes[name]
        shape = tuple(shapes[name][1])
        if isinstance(node, Input | Neuron | LeakyIntegrator):
            const[name] = torch.zeros((1, *shape), dtype=torch.float64)
        total = None
        for src in graph.sources(name):
            value = const.get(src)
            if value is None or not bool(value.abs().max() > 0):
                continue
            if (src, name) in recurrent:
                raise LasnnError(
                    f"the recurrent edge '{src}' -> '{name}' carries a constant (a bias), which "
                    "is zero at the first step in the float graph; Loihi synapses cannot express it."
                )
            total = value if total is None else total + value.reshape(total.shape)
        if isinstance(node, SYNAPSE_NODES):
            if isinstance(node, Delay) and total is not None:
                raise LasnnError(
                    f"Delay node '{name}' delays a constant (a bias), which is zero during its first "
                    "steps in the float graph; Loihi cannot express that."
                )
            x = (
                total
                if total is not None
                else torch.zeros(
                    (1, *shapes[name][0]) if shapes[name][0] else (1, *shape), dtype=torch.float64
                )
            )
            const[name] = apply_node(node, x, with_bias=True).reshape(1, *shape)
        elif isinstance(node, LAYER_NODES + (Output,)):
            tshape = tuple(node.shape)
            result[name] = np.zeros(tshape) if total is None else total.reshape(tshape).numpy()
    return result


@dataclass
class _LayerFloat:
    """A population's float parameters after the v_leak shift (v' = v - v_leak)."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "lif" | "readout"
    alpha_v: float
    alpha_i: float | None
    gain: np.ndarray
    theta: np.ndarray | None  # v_th - v_leak (lif only)
    v_offset: np.ndarray


def _layer_float(name: str, node: object) -> _LayerFloat:
    shape = tuple(node.shape)

    def uniform(field: str) -> float:
        values = np.asarray(getattr(node, field), dtype=np.float64)
        if not np.allclose(values, values.flat[0], rtol=1e-9, atol=1e-12):
            raise LasnnError(
                f"layer '{name}' has per-neuron '{field}' values ({values.min():g}..{values.max():g}); "
                "a Loihi population shares one decay constant, so it must be uniform."
            )
        return float(values.flat[0])

    alpha_v = uniform("alpha_v")
    alpha_i = uniform("alpha_i") if node.alpha_i is not None else None
    v_leak = np.broadcast_to(np.asarray(node.v_leak, dtype=np.float64), shape).copy()
    gain = np.broadcast_to(np.asarray(node.gain, dtype=np.float64), shape).copy()
    if isinstance(node, Neuron):
        v_reset = np.broadcast_to(np.asarray(node.v_reset, dtype=np.float64), shape)
        if not np.allclose(v_reset, v_leak, rtol=1e-9, atol=1e-12):
            raise LasnnError(
                f"layer '{name}' resets to v_reset={v_reset.flat[0]:g} but rests at "
                f"v_leak={v_leak.flat[0]:g}; Loihi starts and resets every neuron at the same "
                "potential, so v_reset must equal v_leak."
            )
        theta = np.broadcast_to(np.asarray(node.v_threshold, dtype=np.float64), shape) - v_leak
        if (theta <= 0).any():
            raise LasnnError(
                f"layer '{name}' has a threshold at or below its rest potential "
                f"(v_threshold - v_leak = {theta.min():g}); Loihi's threshold is unsigned, expected > 0."
            )
        return _LayerFloat(name, shape, "lif", alpha_v, alpha_i, gain, theta, v_leak)
    return _LayerFloat(name, shape, "readout", alpha_v, alpha_i, gain, None, v_leak)


# ----------------------------------------------------------------------------------------------------
# calibration: a float64 run of the graph recording the largest |gain * i| of every population


@torch.no_grad()
def calibrate(graph: Graph, stream: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Max over steps and samples of ``|gain * i|`` (the per-step change of v) for every population, of
    ``|output|`` for the Output, and ``|x|`` for the Input; float64, per element."""
    shapes = infer_shapes(graph, "graph")
    order, recurrent = graph.schedule()
    stream = np.asarray(stream, dtype=np.float64)
    stats: dict[str, np.ndarray] = {}
    # small per-step tensors: one thread (on a busy 2-core machine two threads made a T = 300 run of a
    # small CNN 15x slower, 11.7 s against 0.73 s, measured)
    largest = max(math.prod(shapes[n][1]) for n in order if shapes[n][1] is not None)
    threads = torch.get_num_threads()
    if largest * min(batch_size, stream.shape[1]) < 2**18:
        torch.set_num_threads(1)
    try:
        return _calibrate(graph, stream, batch_size, shapes, order, recurrent, stats)
    finally:
        torch.set_num_threads(threads)


def _calibrate(graph, stream, batch_size, shapes, order, recurrent, stats):  # noqa: ANN001, ANN202
    def record(name: str, value: torch.Tensor) -> None:
        m = value.abs().amax(0).numpy()
        stats[name] = m if name not in stats else np.maximum(stats[name], m)

    for start in range(0, stream.shape[1], batch_size):
        x_all = torch.as_tensor(stream[:, start : start + batch_size])
        steps, batch = x_all.shape[:2]
        state: dict[str, dict[str, torch.Tensor]] = {}
        delays: dict[str, list[torch.Tensor]] = {}
        previous: dict[str, torch.Tensor] = {}
        for t in range(steps):
            cur: dict[str, torch.Tensor] = {}
            for name in order:
                node = graph.nodes[name]
                if isinstance(node, Input):
                    cur[name] = x_all[t]
                    record(name, x_all[t])
                    continue
                total = None
                for src in graph.sources(name):
                    if (src, name) in recurrent:
                        value = previous.get(src, torch.zeros((batch, *shapes[src][1]), dtype=torch.float64))
                    else:
                        value = cur[src]
                    total = value if total is None else total + value.reshape(total.shape)
                if isinstance(node, Delay):
                    hist = delays.setdefault(name, [])
                    hist.append(total)
                    d = int(np.asarray(node.steps).max())
                    cur[name] = hist[-1 - d] if d < len(hist) else torch.zeros_like(total)
                elif isinstance(node, SYNAPSE_NODES):
                    cur[name] = apply_node(node, total)
                elif isinstance(node, Output):
                    cur[name] = total.reshape(batch, *node.shape)
                    record(name, cur[name])
                else:
                    total = total.reshape(batch, *node.shape)
                    st = state.setdefault(
                        name,
                        {
                            "v": _t(node.v_leak).expand(batch, *node.shape).clone(),
                            "i": torch.zeros((batch, *node.shape), dtype=torch.float64),
                        },
                    )
                    i = total if node.alpha_i is None else st["i"] * (1 - _t(node.alpha_i)) + total
                    gi = _t(node.gain) * i
                    record(name, gi)
                    v = st["v"] * (1 - _t(node.alpha_v)) + _t(node.alpha_v) * _t(node.v_leak) + gi
                    st["i"] = i
                    if isinstance(node, Neuron):
                        spike = v > _t(node.v_threshold)
                        st["v"] = torch.where(spike, _t(node.v_reset).expand_as(v), v)
                        cur[name] = spike.to(torch.float64)
                    else:
                        st["v"] = v
                        cur[name] = v
                    record(name + "#v", v - _t(node.v_leak))
            previous = cur
    return stats


# ----------------------------------------------------------------------------------------------------
# integer encodings


def _bias_encode(bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mantissa/exponent pairs (13-bit signed, 0..7) with the smallest exponent that fits each value;
    returns (mantissa, exponent, number of values that had to be clipped)."""
    exp = np.full(bias.shape, lim.BIAS_EXP_MAX, dtype=np.int64)
    for e in range(lim.BIAS_EXP_MAX, -1, -1):
        m = np.rint(bias / 2.0**e)
        exp = np.where((m <= lim.BIAS_MANT_MAX) & (m >= lim.BIAS_MANT_MIN), e, exp)
    raw = np.rint(bias / 2.0**exp)
    mant = np.clip(raw, lim.BIAS_MANT_MIN, lim.BIAS_MANT_MAX)
    return mant.astype(np.int32), exp.astype(np.int32), int((mant != raw).sum())


def quantise_dense(w_eff: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Integer Dense weights ``w * 2**exp ~ w_eff`` in Lava's representable set (see ``dense_weight_range``)
    with the exponent that fills 8 bits. Returns (weights int32, weight_exp, number clipped)."""
    mode = sign_mode(w_eff)
    low, high, step = dense_weight_range(mode)
    pos = float(np.max(w_eff, initial=0.0))
    neg = float(-np.min(w_eff, initial=0.0))
    if pos == 0 and neg == 0:
        return np.zeros(w_eff.shape, dtype=np.int32), 0, 0
    # the smallest exponent with both signs inside the range (rounding to `step` cannot leave it)
    exp = max(
        math.ceil(math.log2(pos / high)) if pos > 0 else -(10**9),
        math.ceil(math.log2(neg / -low)) if neg > 0 else -(10**9),
    )
    exp = min(max(exp, lim.WEIGHT_EXP_MIN), lim.WEIGHT_EXP_MAX)
    raw = np.rint(w_eff / 2.0**exp / step) * step
    clipped = np.clip(raw, low, high)
    return clipped.astype(np.int32), exp, int((raw != clipped).sum())


# ----------------------------------------------------------------------------------------------------


def quantise(
    graph: Graph,
    calibration_stream: np.ndarray | None = None,
    input_mode: str | None = None,
    margin: float = 2.0,
) -> tuple[LoihiGraph, dict]:
    """Quantise ``graph`` to Loihi 2 fixed point; returns the ``LoihiGraph`` and a per-layer report.

    ``calibration_stream`` ``[T, B, *input_shape]`` (encoded like the data the graph will see) sets the
    scales from measured activity; without it, scales come from static worst-case bounds.
    ``input_mode`` ("spikes" or "current") overrides the choice made from the graph's encoding.
    """
    shapes = infer_shapes(graph, "graph")
    order, recurrent = graph.schedule()
    (input_name,) = graph.inputs()
    (output_name,) = graph.outputs()
    in_shape = tuple(graph.nodes[input_name].shape)
    timesteps = int(graph.metadata.get("timesteps", 0) or 0)
    if calibration_stream is not None:
        calibration_stream = np.asarray(calibration_stream, dtype=np.float64)
        if calibration_stream.ndim != 2 + len(in_shape) or tuple(calibration_stream.shape[2:]) != in_shape:
            raise LasnnError(
                f"the calibration stream has shape {calibration_stream.shape}; expected "
                f"[T, B, {', '.join(map(str, in_shape))}]."
            )
        timesteps = timesteps or calibration_stream.shape[0]
    if timesteps < 1:
        raise LasnnError(
            "the graph records no 'timesteps' in its metadata and no calibration stream was given; "
            "pass --timesteps (or a calibration stream) to quantise it."
        )
    encoding = graph.metadata.get("encoding")
    if input_mode is None:
        if encoding is not None:
            input_mode = "current" if encoding == "direct" else "spikes"
        elif calibration_stream is not None:
            binary = np.isin(calibration_stream, (0.0, 1.0)).all()
            input_mode = "spikes" if binary else "current"
        else:
            input_mode = "spikes"
    if input_mode not in ("spikes", "current"):
        raise LasnnError(f"input mode {input_mode!r} is unknown; expected 'spikes' or 'current'.")

    # --- populations and paths -------------------------------------------------------------------------
    paths = _paths(graph, recurrent)
    out_sources = [p for p in paths if p[2] == output_name]
    readout_mode = "current"
    if (
        len(out_sources) == 1
        and not out_sources[0][1]
        and isinstance(graph.nodes[out_sources[0][0]], LAYER_NODES)
    ):
        readout_mode = "spikes" if isinstance(graph.nodes[out_sources[0][0]], Neuron) else "potential"
    for src, chain, dst, _ in paths:
        if isinstance(graph.nodes[src], LeakyIntegrator) and not (dst == output_name and not chain):
            raise LasnnError(
                f"the non-spiking layer '{src}' feeds '{dst}'; on Loihi only the readout may be "
                "non-spiking (its potential is not sent as spikes)."
            )
        if isinstance(graph.nodes[src], Input) and dst == output_name:
            raise LasnnError(
                f"the Output '{output_name}' is fed straight from the Input; lasnn maps networks "
                "with at least one neuron population between them."
            )
    if readout_mode != "current" and len(out_sources) != 1:
        raise LasnnError(
            f"the Output '{output_name}' mixes a neuron layer with other inputs; expected either "
            "one layer or synapse chains into it."
        )
    floats: dict[str, _LayerFloat] = {}
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, LAYER_NODES):
            floats[name] = _layer_float(name, node)
    readout_layer = output_name if readout_mode == "current" else out_sources[0][0]
    if readout_mode == "current":
        shape = tuple(graph.nodes[output_name].shape)
        floats[output_name] = _LayerFloat(
            output_name, shape, "readout", 0.0, None, np.ones(shape), None, np.zeros(shape)
        )

    const = _constant_inputs(graph, shapes, order, recurrent)
    maps: list[PathMap] = []
    for src, chain, dst, rec in paths:
        if dst == output_name and readout_mode != "current":
            continue
        maps.append(compose_path(graph, shapes, src, chain, dst, rec))

    # --- depths and delays -------------------------------------------------------------------------
    host_mode = input_mode == "current"
    depth: dict[str, int] = {input_name: 0}
    layer_order = [n for n in order if n in floats]
    for name in layer_order:
        d = 0
        for pm in maps:
            if pm.dst == name and not pm.recurrent and not (host_mode and pm.src == input_name):
                d = max(d, depth[pm.src] + 1)
        depth[name] = d
    for pm in maps:
        if host_mode and pm.src == input_name:
            continue
        pm_delay = depth[pm.dst] - depth[pm.src] + pm.delay - (0 if pm.recurrent else 1)
        if pm_delay < 0:
            raise LasnnError(
                f"the recurrent connection from '{pm.src}' to '{pm.dst}' reaches back over "
                f"{-pm_delay} Loihi pipeline step(s); Loihi's synapses cannot deliver it in time."
            )
        if pm_delay > lim.MAX_DELAY:
            raise LasnnError(
                f"the connection from '{pm.src}' to '{pm.dst}' needs a delay of {pm_delay} steps; "
                f"Loihi 2 synapses delay at most {lim.MAX_DELAY}."
            )
        pm.delay = pm_delay

    # --- calibration ---------------------------------------------------------------------------------
    stats = calibrate(graph, calibration_stream) if calibration_stream is not None else None
    in_max_float = None
    if host_mode:
        # the input range: exact for normalised images (pixels in [0, 1] through the recorded mean/std);
        # otherwise the calibration data's largest |x| with 25 % headroom (inputs beyond it are clipped by
        # the host and counted by the emulator as "input_clipped")
        if graph.metadata.get("mean") is not None and graph.metadata.get("std") is not None:
            mean = np.asarray(graph.metadata["mean"], dtype=np.float64)
            std = np.asarray(graph.metadata["std"], dtype=np.float64)
            in_max_float = float(np.max(np.maximum(np.abs(-mean / std), np.abs((1 - mean) / std))))
        elif stats is not None:
            in_max_float = 1.25 * float(stats[input_name].max())
        else:
            raise LasnnError(
                "the graph takes analog input (currents) but records no 'mean'/'std' and no "
                "calibration data was given; pass --calibration X.npy so the input range is known."
            )
        in_max_float = max(in_max_float, 1e-12)

    # --- per-layer scales ----------------------------------------------------------------------------
    layers: dict[str, LoihiLayer] = {}
    synapses: list[LoihiSynapse] = []
    host: list[HostSynapse] = []
    report_layers: list[dict] = []
    in_scale = (2**15 - 1) / in_max_float if host_mode else 1.0

    for name in layer_order:
        lf = floats[name]
        into = [pm for pm in maps if pm.dst == name]
        for pm in into:
            fan = pm.fan_in()
            if fan > lim.MAX_FAN_IN:
                raise LasnnError(
                    f"layer '{name}' has a fan-in of {fan} synapses from '{pm.src}'; one Loihi 2 "
                    f"core holds at most {lim.MAX_FAN_IN} (estimate, see loihi_limits)."
                )
        cst = const.get(name, np.zeros(lf.shape))
        # the readout's constant is added back on the host (LoihiReadout.offset)
        c_bias = np.zeros(lf.shape) if name == output_name and readout_mode == "current" else lf.gain * cst
        host_into = [pm for pm in into if host_mode and pm.src == input_name]
        cuba_const_to_host = lf.alpha_i is not None and bool(np.abs(cst).max() > 0)
        if cuba_const_to_host and not host_into:
            raise LasnnError(
                f"layer '{name}' is current-based (CUBA) and receives a constant input (a bias); "
                "Loihi adds biases to v, not to the current u, so it cannot be represented."
            )
        if cuba_const_to_host:
            c_bias = np.zeros(lf.shape)
        theta = lf.theta if lf.theta is not None else np.ones(lf.shape)
        gain = lf.gain
        # u headroom: the largest |gain * i| per neuron (float), measured or bounded
        if stats is not None and name in stats:
            u_peak = stats[name] if name != output_name else stats[name] + np.abs(cst)
            u_peak = np.broadcast_to(u_peak, lf.shape)
            v_peak = np.broadcast_to(stats.get(name + "#v", 0.0), lf.shape)
            source = "calibration"
        else:
            u_peak = np.zeros(lf.shape)
            for pm in into:
                src_peak = in_max_float if (host_mode and pm.src == input_name) else 1.0
                u_peak = u_peak + gain * pm.row_abs_sum(lf.shape) * src_peak
            u_peak = u_peak + (np.abs(gain * cst) if cuba_const_to_host else 0.0)
            if lf.alpha_i is not None:
                u_peak = u_peak / max(lf.alpha_i, 1.0 / lim.DECAY_UNITY)
            v_peak = (u_peak + np.abs(c_bias)) * min(timesteps, 1.0 / max(lf.alpha_v, 1e-300))
            source = "static bound"
        u_peak = np.maximum(u_peak, 1e-300)
        ratio = theta  # scale = vth / theta per neuron
        bounds: dict[str, float] = {"vth 17-bit": float(lim.VTH_MAX)} if lf.kind == "lif" else {}
        head = float(lim.UV_MAX) / margin
        bounds["u headroom"] = float(np.min(head / (64.0 * u_peak / ratio)))
        if lf.kind == "readout" and readout_mode == "current":
            bounds["accumulator headroom"] = float(np.min(head / (64.0 * timesteps * u_peak / ratio)))
        elif float(np.max(v_peak)) > 0:
            bounds["v headroom"] = float(np.min(head / (64.0 * np.maximum(v_peak, 1e-300) / ratio)))
        if np.abs(c_bias).max() > 0:
            bmax = lim.BIAS_MANT_MAX * 2.0**lim.BIAS_EXP_MAX
            bounds["bias range"] = float(np.min(bmax / (64.0 * np.maximum(np.abs(c_bias), 1e-300) / ratio)))
        for pm in into:
            if host_mode and pm.src == input_name:
                bounds["16-bit host current"] = min(
                    bounds.get("16-bit host current", np.inf), float(np.min(lim.A_IN_MAX / (u_peak / ratio)))
                )
                continue
            wmax = np.maximum(gain * pm.row_abs_max(lf.shape), 1e-300)
            if pm.kernel is not None and pm.delay == 0 and _uniform_per_channel(gain / ratio):
                bounds[f"int8 conv weights from '{pm.src}'"] = float(
                    np.min(lim.CONV_WEIGHT[1] * ratio / wmax)
                )
            else:
                bounds[f"weight exponent from '{pm.src}'"] = float(
                    np.min(254 * 2.0**lim.WEIGHT_EXP_MAX * ratio / wmax)
                )
        binding = min(bounds, key=bounds.get)
        vth_real = bounds[binding]
        if lf.kind == "lif":
            vth = int(math.floor(vth_real))
            if vth < 1:
                raise LasnnError(
                    f"layer '{name}' cannot be represented: its threshold would be {vth_real:.3g} "
                    f"integer units (limited by {binding}); expected at least 1."
                )
            scale = vth / ratio
        else:
            vth = lim.VTH_MAX
            scale = np.full(lf.shape, vth_real * 1.0) / ratio  # readouts: theta = 1, free real scale
            if not np.all(np.isfinite(scale)) or scale.min() <= 0:
                raise LasnnError(f"readout '{name}' cannot be scaled (limited by {binding}).")
        # neuron constants
        if lf.alpha_i is None:
            du, du_err = lim.DU_MAX, 0.0
        else:
            du_real = lf.alpha_i * lim.DECAY_UNITY - 1
            du = int(min(max(round(du_real), 0), lim.DU_MAX))
            du_err = abs((du + 1) / lim.DECAY_UNITY - lf.alpha_i)
        if lf.kind == "readout" and readout_mode == "current":
            dv, dv_err = 0, 0.0
        else:
            dv = int(min(max(round(lf.alpha_v * lim.DECAY_UNITY), 0), lim.DV_MAX))
            dv_err = abs(dv / lim.DECAY_UNITY - lf.alpha_v)
        bias_v = 64.0 * scale * c_bias
        bias_mant, bias_exp, bias_clipped = _bias_encode(bias_v)
        layers[name] = LoihiLayer(
            name=name,
            shape=lf.shape,
            kind=lf.kind,
            du=du,
            dv=dv,
            vth=vth,
            bias_mant=bias_mant,
            bias_exp=bias_exp,
            scale=np.asarray(scale, dtype=np.float64),
            v_offset=lf.v_offset if name != output_name or readout_mode != "current" else np.zeros(lf.shape),
            depth=depth[name],
        )
        syn_reports = []
        for pm in into:
            row_scale = gain * scale  # float current -> a_in units
            if host_mode and pm.src == input_name:
                hs, rep = _host_synapse(
                    pm, row_scale, in_scale, cst * row_scale if cuba_const_to_host else None, lf.shape
                )
                host.append(hs)
                syn_reports.append(rep)
                continue
            syn, rep = _chip_synapse(pm, row_scale, lf.shape)
            synapses.append(syn)
            syn_reports.append(rep)
        report_layers.append(
            {
                "name": name,
                "kind": lf.kind,
                "neurons": int(math.prod(lf.shape)),
                "depth": depth[name],
                "vth": vth,
                "vth_bits": int(vth).bit_length(),
                "scale_min": float(np.min(scale)),
                "scale_max": float(np.max(scale)),
                "limited_by": binding,
                "headroom_source": source,
                "du": du,
                "dv": dv,
                "du_error": du_err,
                "dv_error": dv_err,
                "bias_max": float(np.abs(bias_v).max(initial=0.0)),
                "bias_clipped": bias_clipped,
                "u_expected_max": float(np.max(64.0 * scale * u_peak)) if source == "calibration" else None,
                "u_bound": float(np.max(64.0 * scale * u_peak)) if source != "calibration" else None,
                "v_expected_max": float(np.max(64.0 * scale * v_peak)) if source == "calibration" else None,
                "v_bound": float(np.max(64.0 * scale * v_peak)) if source != "calibration" else None,
                "uv_range": lim.UV_MAX,
                "synapses": syn_reports,
            }
        )

    readout_offset = (
        const[output_name]
        if readout_mode == "current"
        else (
            floats[readout_layer].v_offset
            if readout_mode == "potential"
            else np.zeros(graph.nodes[output_name].shape)
        )
    )
    lg = LoihiGraph(
        input=LoihiInput(
            name=input_name,
            shape=in_shape,
            mode=input_mode,
            in_scale=float(in_scale),
            in_max=2**15 - 1,
            host=host,
        ),
        layers=layers,
        synapses=synapses,
        readout=LoihiReadout(
            name=output_name,
            mode=readout_mode,
            layer=readout_layer,
            offset=np.asarray(readout_offset, dtype=np.float64).reshape(graph.nodes[output_name].shape),
        ),
        timesteps=timesteps,
        metadata={**graph.metadata, "margin": margin, "calibrated": stats is not None},
    )
    check_loihi_graph(lg)
    report = {
        "input_mode": input_mode,
        "in_scale": float(in_scale),
        "timesteps": timesteps,
        "pipeline_depth": lg.depth,
        "readout": readout_mode,
        "calibrated": stats is not None,
        "layers": report_layers,
    }
    return lg, report


def _uniform_per_channel(values: np.ndarray) -> bool:
    if values.ndim != 3:
        return False
    return bool(np.allclose(values, values[:, :1, :1], rtol=1e-12, atol=0))


def _chip_synapse(
    pm: PathMap, row_scale: np.ndarray, out_shape: tuple[int, ...]
) -> tuple[LoihiSynapse, dict]:
    name = "+".join(pm.names) or f"{pm.src}->{pm.dst}"
    if pm.kernel is not None and _uniform_per_channel(row_scale):
        w_eff = pm.kernel * row_scale[:, 0, 0][:, None, None, None]
        if pm.delay == 0:
            raw = np.rint(w_eff)
            w = np.clip(raw, *lim.CONV_WEIGHT)
            syn = LoihiSynapse(
                name=name,
                src=pm.src,
                dst=pm.dst,
                kind="conv",
                weight=w.astype(np.int32),
                geometry=pm.geometry,
                recurrent=pm.recurrent,
            )
            return syn, _syn_report(syn, w_eff, w.astype(np.float64), int((raw != w).sum()), pm)
        w, exp, clipped = quantise_dense(w_eff)
        syn = LoihiSynapse(
            name=name,
            src=pm.src,
            dst=pm.dst,
            kind="dense",
            weight=w,
            weight_exp=exp,
            delay=pm.delay,
            geometry=pm.geometry,
            recurrent=pm.recurrent,
        )
        return syn, _syn_report(syn, w_eff, w * 2.0**exp, clipped, pm)
    matrix = pm.matrix if pm.matrix is not None else _kernel_matrix(pm)
    w_eff = matrix * row_scale.reshape(-1, 1)
    w, exp, clipped = quantise_dense(w_eff)
    syn = LoihiSynapse(
        name=name,
        src=pm.src,
        dst=pm.dst,
        kind="dense",
        weight=w,
        weight_exp=exp,
        delay=pm.delay,
        recurrent=pm.recurrent,
    )
    return syn, _syn_report(syn, w_eff, w * 2.0**exp, clipped, pm)


def _kernel_matrix(pm: PathMap) -> np.ndarray:
    from lasnn.hardware.loihi_graph import conv_matrix

    n = math.prod(pm.geometry.output_shape) * math.prod(pm.geometry.input_shape)
    if n > MAX_DENSE_ENTRIES:
        raise LasnnError(
            f"the synapse from '{pm.src}' to '{pm.dst}' needs per-neuron scales that a convolution "
            "cannot carry, and its dense matrix is too large."
        )
    return conv_matrix(pm.kernel, pm.geometry).toarray().astype(np.float64)


def _syn_report(syn: LoihiSynapse, w_eff: np.ndarray, w_back: np.ndarray, clipped: int, pm: PathMap) -> dict:
    peak = float(np.abs(w_eff).max(initial=0.0)) or 1.0
    err = np.abs(w_back - w_eff)
    return {
        "name": syn.name,
        "src": syn.src,
        "kind": syn.kind,
        "weight_exp": syn.weight_exp,
        "delay": syn.delay,
        "recurrent": syn.recurrent,
        "fan_in": pm.fan_in(),
        "weights": int(syn.weight.size),
        "weights_clipped": clipped,
        "weight_max_int": int(np.abs(syn.weight).max(initial=0)),
        "weight_error_rel_max": float(err.max(initial=0.0) / peak),
        "weight_error_rel_rms": float(np.sqrt(np.mean(err**2)) / peak) if err.size else 0.0,
    }


def _host_synapse(
    pm: PathMap,
    row_scale: np.ndarray,
    in_scale: float,
    const_a_in: np.ndarray | None,
    out_shape: tuple[int, ...],
) -> tuple[HostSynapse, dict]:
    name = "+".join(pm.names) or f"{pm.src}->{pm.dst}"
    if pm.kernel is not None and _uniform_per_channel(row_scale):
        w_eff = pm.kernel * row_scale[:, 0, 0][:, None, None, None] / in_scale
        geometry = pm.geometry
    else:
        matrix = pm.matrix if pm.matrix is not None else _kernel_matrix(pm)
        w_eff = matrix * row_scale.reshape(-1, 1) / in_scale
        geometry = None
    peak = float(np.abs(w_eff).max(initial=0.0)) or 1.0
    shift = max(1, HOST_WEIGHT_BITS - 1 - math.ceil(math.log2(peak)))
    in_max = 2**15 - 1
    while True:
        w = np.rint(w_eff * 2.0**shift).astype(np.int64)
        bias = (
            np.zeros(out_shape, dtype=np.int64)
            if const_a_in is None
            else np.rint(const_a_in * 2.0**shift).astype(np.int64)
        )
        worst = float(np.abs(w).reshape(w.shape[0], -1).sum(1).max(initial=0)) * in_max + float(
            np.abs(bias).max(initial=0)
        )
        if worst < EXACT / 4 or shift == 1:
            break
        shift -= 1
    if worst >= EXACT / 4:
        raise LasnnError(
            f"the host input stage into '{pm.dst}' would exceed exact integer range; its weights are "
            "too large relative to the layer's threshold."
        )
    hs = HostSynapse(
        name=name, dst=pm.dst, weight=w, bias=bias, shift=shift, geometry=geometry, delay=pm.delay
    )
    err = np.abs(w / 2.0**shift - w_eff)
    rep = {
        "name": name,
        "src": pm.src,
        "kind": "host",
        "shift": shift,
        "delay": pm.delay,
        "fan_in": pm.fan_in(),
        "weights": int(w.size),
        "weights_clipped": 0,
        "weight_max_int": int(np.abs(w).max(initial=0)),
        "weight_error_rel_max": float(err.max(initial=0.0) / peak),
    }
    return hs, rep
