"""Quantise a float lasnn ``Graph`` to a Loihi 2 ``LoihiGraph`` (integer semantics in ``loihi_graph``).

Written by hand: no library maps NIR-like graphs onto Lava's fixed-point LIF/Dense/Conv models. Steps:

1. **Synapse composition.** Loihi needs a neuron population at both ends of a synapse, so every chain of
   stateless nodes between two populations (``SumPool2d -> Scale -> Conv2d``, ``SumPool2d -> Scale ->
   Flatten -> Affine``, a residual shortcut, ...) becomes one synapse, composed exactly in float64: chains
   of convolution-like ops (conv, sum pooling, per-channel scale) into one strided convolution with a larger
   kernel (checked against the sequential ops on a random probe; a floor pooling that drops an odd image's
   last rows/cols makes it read the input cropped to the pooled region, ``pool_conv``; other border effects
   that break the identity fall back to a dense matrix, the chain's Jacobian). A ``Delay`` with
   per-element steps splits its path
   into one synapse per distinct delay. Constant inputs (biases pushed through the chain, recurrent edges
   and ``Delay`` nodes included, each with the step from which the float graph delivers it) go to the
   neuron bias (Loihi adds it to v: a constant present from step 0 into a neuron without synaptic
   current), the host input (CUBA neurons fed by the host), the readout offset, or else a synapse from one
   always-on source neuron (``loihi_graph``), whose weight is the constant current and whose delay sets
   the step it starts at. A reset potential other than the rest potential is a synapse of the layer
   onto itself that adds the reset offset one step after each spike.
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
   and their decay errors, the bias, its clipped count and rounding error (and, with a bias grid, how many
   biases the grid moved), the expected (calibrated) or bounded (static)
   largest ``|u|``, ``|v|`` in integer units against the 24-bit range, and per synapse its kind, exponent,
   delay, fan-in, clipped weights and weight quantisation error. The emulator measures the actual ranges
   and saturation counts of a run (``EmulatorBackend.stats``).
5. **Bias grid** (``bias_grid``, ``lasnn compile --bias-grid 64``). Loihi's bias is ``mant << exp`` with a
   3-bit exponent per neuron, and lasnn picks the smallest exponent that fits each value; lava-dl netx
   fixes ``bias_exp = 6`` for every neuron, so a netx bias is a multiple of 64 (``hardware/netx.py``).
   With a grid ``g = 2**e`` every bias is ``rint(b / g) << e`` (one exponent, the 13-bit mantissa's range
   bounding ``vth`` like the free encoding's), so the compiled integers, which the emulator and Lava run,
   are exactly what netx can hold. A step of 64 in ``v`` is one unit of the synaptic input (``a_in`` is
   shifted by 6 into ``u``), i.e. the weights' own resolution: the rounding error is at most half an
   integer weight, ``1 / (2 vth)`` of the threshold. A finer grid relative to the threshold would need a
   larger ``vth`` with the weights scaled along, but ``vth`` is already the largest that the binding limit
   (int8 conv weights, the 16-bit host current, u/v headroom, vth's 17 bits) allows, so no exact rescaling
   makes it finer.
6. **Refusal.** Whatever cannot be represented raises ``LasnnError`` naming the layer, why, and what to
   do (the table below lists every refusal). Nothing is clipped silently: the report counts every
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
from lasnn.hardware.pool_conv import cropped_conv_geometry

SYNAPSE_NODES = (Affine, Conv2d, SumPool2d, Scale, Flatten, Delay)
LAYER_NODES = (Neuron, LeakyIntegrator)
MAX_DENSE_ENTRIES = 2**24  # a composed dense matrix larger than this (128 MiB in float64) is refused
HOST_WEIGHT_BITS = 16  # host weights of the analog input stage: 16-bit (lasnn's choice, exact integer math)
EXACT = 2**53  # float64 represents every integer below this exactly
SOURCE_NAME = "bias_source"  # the always-on source population (suffixed with '_' if the graph has the name)

# ----------------------------------------------------------------------------------------------------
# What is mapped and what is refused (issue 15: map what Loihi represents exactly, refuse the rest).
#
# graph feature                                    | on Loihi
# -------------------------------------------------+-----------------------------------------------------
# constant input into a CUBA neuron (a bias)       | mapped: always-on source -> Dense (weight = current)
# constant on a recurrent edge (absent at t = 0)   | mapped: source synapse delivering from step 1 on
# Delay of a constant (absent for d steps)         | mapped: source synapse delivering from step d on
# constant into a layer over 63 stages deep        | mapped: a second source deeper in the pipeline
# Delay with per-element steps                     | mapped: one synapse per distinct delay
# v_reset != v_leak, no synaptic current           | mapped: self-synapse adding the reset offset
# Output fed straight by the Input                 | mapped: a readout population
# v_reset != v_leak, CUBA                          | refused: the offset would enter u and persist
# LI readout beside other Output sources           | refused: an LI potential is not sent as spikes
# non-spiking layer feeding another layer          | refused: Lava's LIF sends binary spikes only
# v_threshold <= v_leak                            | refused: Loihi's threshold is unsigned, v rests at 0
# per-neuron alpha_v / alpha_i                     | refused: one du, dv per Lava LIF (a split of the
#                                                  |          layer per decay could map it; not done)
# cycle of stateless nodes (no neuron on it)       | refused: synapses connect neurons, hold no state
# recurrent loop through several populations       | refused: each synapse stage costs one step
#   closing in fewer steps than it has stages      |          (add a Delay on the recurrent edge)
# delay over 63 steps on a graph path              | refused: 6-bit synaptic delays (relay neurons
#                                                  |          could carry longer ones; not done)
# fan-in over one core's synaptic memory           | refused: a neuron's synapses live in its core
# threshold below one integer step, readout scale  | refused: the limits leave no integer resolution
# a composed matrix too large, host range          | refused: memory / exact-integer limits of lasnn


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
    tag: str = ""  # appended to the synapse name (one part of a path split by per-element delays)

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


def delay_variants(graph: Graph, names: list[str]) -> list[dict[str, tuple[object, int]]]:
    """The parts of a chain split by its per-element ``Delay`` nodes: one override per part, mapping each
    such Delay to (a 0/1 ``Scale`` selecting the elements of one delay value, that delay). A chain without
    per-element delays has one part and no override. The parts sum to the chain (every element has one
    delay), and each part is a synapse with one uniform delay."""
    parts: list[dict[str, tuple[object, int]]] = [{}]
    for n in names:
        node = graph.nodes[n]
        if not isinstance(node, Delay):
            continue
        steps = np.asarray(node.steps)
        values = np.unique(steps)
        if values.size < 2:
            continue
        parts = [
            {**part, n: (Scale((steps == d).astype(np.float64)), int(d))} for part in parts for d in values
        ]
    return parts


def _path_delay(graph: Graph, names: list[str], overrides: dict[str, tuple[object, int]]) -> int:
    total = 0
    for n in names:
        node = graph.nodes[n]
        if n in overrides:
            total += overrides[n][1]
        elif isinstance(node, Delay):
            total += int(np.asarray(node.steps).flat[0]) if np.asarray(node.steps).size else 0
    return total


def compose_path(
    graph: Graph,
    shapes: dict,
    src: str,
    names: list[str],
    dst: str,
    recurrent: bool,
    overrides: dict[str, tuple[object, int]] | None = None,
) -> PathMap:
    """Compose the stateless chain ``names`` (from ``src`` to ``dst``) into one linear map; ``overrides``
    (from ``delay_variants``) replaces per-element Delay nodes by one part of them."""
    overrides = overrides or {}
    delay = _path_delay(graph, names, overrides)
    src_shape = tuple(shapes[src][1])
    dst_shape = (
        tuple(shapes[dst][1]) if not isinstance(graph.nodes[dst], Output) else tuple(graph.nodes[dst].shape)
    )
    tag = "".join(f"@{n}={overrides[n][1]}" for n in names if n in overrides)
    pm = PathMap(src=src, dst=dst, names=names, recurrent=recurrent, delay=delay, tag=tag)
    nodes = [overrides[n][0] if n in overrides else graph.nodes[n] for n in names]

    def chain(x: torch.Tensor) -> torch.Tensor:
        for node in nodes:
            x = apply_node(node, x, with_bias=False)
        return x.reshape(x.shape[0], *dst_shape)

    # conv form: every node conv-like on 3-D shapes and the input/output shapes are images
    if len(src_shape) == 3 and len(dst_shape) == 3:
        form = (np.eye(src_shape[0])[:, :, None, None], (1, 1), (0, 0))
        shape = src_shape
        ok = True
        forms = []
        for n, node in zip(names, nodes, strict=True):
            f = _conv_form(node, tuple(shapes[n][0]) if shapes[n][0] is not None else shape)
            if f is None:
                ok = False
                break
            forms.append(f)
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
            # a floor pooling that drops rows/cols: the same convolution on the cropped input (pool_conv)
            geometry = cropped_conv_geometry(form, forms, src_shape, dst_shape, chain)
            if geometry is not None:
                pm.kernel, pm.geometry = kernel, geometry
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
                            "Loihi's synapses connect neuron populations and hold no state, so it cannot "
                            "be represented: put a neuron layer on the loop."
                        )
                    stack.append((src, [src, *chain], r))
                else:
                    out.append((src, chain, dst, r))
    return out


def _constant_inputs(
    graph: Graph, shapes: dict, order: list[str], recurrent: set
) -> dict[str, dict[int, np.ndarray]]:
    """The time-constant inputs (biases pushed through the chains) into every population and the Output,
    by the step from which the float graph delivers them: ``{start: value}``. A bias is there from step 0;
    a recurrent edge carries the previous step (zero at step 0), so it moves a constant to ``start + 1``;
    a ``Delay`` of ``d`` steps to ``start + d`` (per element). A population's output carries none.

    Computed from the sources backwards (memoised), because the source of a recurrent edge comes after its
    destination in the schedule; every cycle passes a population (``_paths`` refuses the others)."""
    memo: dict[str, dict[int, torch.Tensor]] = {}

    def add(into: dict[int, torch.Tensor], start: int, value: torch.Tensor) -> None:
        into[start] = value if start not in into else into[start] + value.reshape(into[start].shape)

    def incoming(name: str) -> dict[int, torch.Tensor]:
        total: dict[int, torch.Tensor] = {}
        for src in graph.sources(name):
            shift = 1 if (src, name) in recurrent else 0
            for start, value in output(src).items():
                add(total, start + shift, value)
        return total

    def output(name: str) -> dict[int, torch.Tensor]:
        if name in memo:
            return memo[name]
        node = graph.nodes[name]
        result: dict[int, torch.Tensor] = {}
        if isinstance(node, SYNAPSE_NODES):
            shape = tuple(shapes[name][1])
            in_shape = tuple(shapes[name][0]) if shapes[name][0] else shape
            for start, value in incoming(name).items():
                if isinstance(node, Delay):
                    steps = torch.as_tensor(np.asarray(node.steps))
                    value = value.reshape(1, *shape)
                    for d in torch.unique(steps).tolist():
                        add(result, start + int(d), torch.where(steps == d, value, torch.zeros_like(value)))
                else:
                    add(result, start, apply_node(node, value, with_bias=False).reshape(1, *shape))
            if not isinstance(node, Delay):
                bias = apply_node(node, torch.zeros((1, *in_shape), dtype=torch.float64)).reshape(1, *shape)
                if bool(bias.abs().max() > 0):
                    add(result, 0, bias)
        memo[name] = {k: v for k, v in result.items() if bool(v.abs().max() > 0)}
        return memo[name]

    result: dict[str, dict[int, np.ndarray]] = {}
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, LAYER_NODES + (Output,)):
            tshape = tuple(node.shape)
            result[name] = {
                start: value.reshape(tshape).numpy()
                for start, value in sorted(incoming(name).items())
                if bool(value.abs().max() > 0)
            }
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
    reset: np.ndarray | None = None  # v_reset - v_leak where it is not 0 (lif without synaptic current)


def _layer_float(name: str, node: object) -> _LayerFloat:
    shape = tuple(node.shape)

    def uniform(field: str) -> float:
        values = np.asarray(getattr(node, field), dtype=np.float64)
        if not np.allclose(values, values.flat[0], rtol=1e-9, atol=1e-12):
            raise LasnnError(
                f"layer '{name}' has per-neuron '{field}' values ({values.min():g}..{values.max():g}); "
                "a Lava LIF population has one decay constant (du, dv), so it cannot be represented: "
                "make the decay uniform per layer, or split the layer into layers of uniform decay."
            )
        return float(values.flat[0])

    alpha_v = uniform("alpha_v")
    alpha_i = uniform("alpha_i") if node.alpha_i is not None else None
    v_leak = np.broadcast_to(np.asarray(node.v_leak, dtype=np.float64), shape).copy()
    gain = np.broadcast_to(np.asarray(node.gain, dtype=np.float64), shape).copy()
    if isinstance(node, Neuron):
        v_reset = np.broadcast_to(np.asarray(node.v_reset, dtype=np.float64), shape)
        reset = None
        if not np.allclose(v_reset, v_leak, rtol=1e-9, atol=1e-12):
            if alpha_i is not None:
                raise LasnnError(
                    f"layer '{name}' is current-based (CUBA) and resets to v_reset={v_reset.flat[0]:g} "
                    f"but rests at v_leak={v_leak.flat[0]:g}; Loihi resets v to its rest (0) and the "
                    "offset could only be fed back through the current u, which carries it into later "
                    "steps, so it cannot be represented: use v_reset = v_leak or a neuron without "
                    "synaptic current."
                )
            reset = v_reset - v_leak
        theta = np.broadcast_to(np.asarray(node.v_threshold, dtype=np.float64), shape) - v_leak
        if (theta <= 0).any():
            raise LasnnError(
                f"layer '{name}' has a threshold at or below its rest potential "
                f"(v_threshold - v_leak = {theta.min():g}); Loihi compares v, which rests at 0, with an "
                "unsigned threshold, so it cannot be represented: expected v_threshold above v_leak."
            )
        return _LayerFloat(name, shape, "lif", alpha_v, alpha_i, gain, theta, v_leak, reset)
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
                if isinstance(node, Delay):  # per element, as the float backend delays
                    hist = delays.setdefault(name, [])
                    hist.append(total)
                    steps = torch.as_tensor(np.asarray(node.steps))
                    out = torch.zeros_like(total)
                    for d in torch.unique(steps).tolist():
                        if d < len(hist):
                            out = torch.where(steps == d, hist[-1 - int(d)], out)
                    cur[name] = out
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


def check_bias_grid(grid: int | None) -> int | None:
    """The bias grid checked: a power of two from 1 to 128 (``2**bias_exp``), or None (lasnn's free
    per-neuron exponent); anything else is one ``LasnnError`` sentence."""
    if grid is None:
        return None
    steps = [2**e for e in range(lim.BIAS_EXP_MIN, lim.BIAS_EXP_MAX + 1)]
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or int(grid) not in steps:
        raise LasnnError(
            f"bias grid {grid!r} is not a power of two from 1 to {steps[-1]} (Loihi's bias is mant << exp, "
            "exp 0..7); use --bias-grid 64 for lava-dl netx."
        )
    return int(grid)


def _bias_encode(bias: np.ndarray, grid: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Mantissa/exponent pairs (13-bit signed, 0..7) with the smallest exponent that fits each value, or
    with the one exponent ``log2(grid)`` (every bias on multiples of ``grid``, rounded to nearest);
    returns (mantissa, exponent, number of values that had to be clipped)."""
    if grid is not None:
        exp = np.full(bias.shape, int(grid).bit_length() - 1, dtype=np.int64)
    else:
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
    bias_grid: int | None = None,
) -> tuple[LoihiGraph, dict]:
    """Quantise ``graph`` to Loihi 2 fixed point; returns the ``LoihiGraph`` and a per-layer report.

    ``calibration_stream`` ``[T, B, *input_shape]`` (encoded like the data the graph will see) sets the
    scales from measured activity; without it, scales come from static worst-case bounds.
    ``input_mode`` ("spikes" or "current") overrides the choice made from the graph's encoding.
    ``bias_grid`` (a power of two, e.g. 64 for lava-dl netx) puts every neuron bias on its multiples
    (module docstring, step 5).
    """
    bias_grid = check_bias_grid(bias_grid)
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
                f"the non-spiking layer '{src}' feeds '{dst}'; Lava's LIF sends only binary spikes, so "
                "its potential cannot be passed on: make it a spiking layer, or the graph's readout."
            )
        if isinstance(graph.nodes[src], LeakyIntegrator) and readout_mode == "current":
            raise LasnnError(
                f"the Output '{output_name}' adds the potential of the non-spiking layer '{src}' to other "
                "inputs; Loihi reads a potential only as the readout itself, so it cannot be represented: "
                "feed the Output from that layer alone."
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
        parts = delay_variants(graph, chain)
        for overrides in parts:
            pm = compose_path(graph, shapes, src, chain, dst, rec, overrides)
            if len(parts) == 1 or pm.row_abs_max(_out_shape(graph, shapes, dst)).max(initial=0.0) > 0:
                maps.append(pm)  # (a part that selects no element of a split Delay is left out)

    # --- depths and delays -------------------------------------------------------------------------
    host_mode = input_mode == "current"
    depth: dict[str, int] = {input_name: 0}
    layer_order = [n for n in order if n in floats]
    for name in layer_order:
        # a CUBA layer whose constant current starts at step 0 and that the host does not feed needs a
        # source synapse one stage ahead of it: at least depth 1 (only a layer fed solely through
        # recurrent edges would otherwise sit at depth 0)
        needs_stage = floats[name].alpha_i is not None and 0 in const.get(name, {})
        needs_stage = needs_stage and not any(
            host_mode and pm.src == input_name for pm in maps if pm.dst == name
        )
        d = 1 if needs_stage else 0
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
                f"the recurrent connection from '{pm.src}' to '{pm.dst}' closes a loop over "
                f"{depth[pm.src] - depth[pm.dst] + 1} populations in one step, but each Loihi synapse "
                f"stage takes a step, so it cannot be represented: give that edge a Delay of at least "
                f"{-pm_delay} step(s) (in the trained graph too)."
            )
        if pm_delay > lim.MAX_DELAY:
            raise LasnnError(
                f"the connection from '{pm.src}' to '{pm.dst}' needs a delay of {pm_delay} steps; "
                f"Loihi 2 synapses delay at most {lim.MAX_DELAY} (6 bits), so it cannot be represented: "
                "shorten the Delay or the skipped part of the network."
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
    source_name = SOURCE_NAME
    while any(n == source_name or n.startswith(source_name + "@") for n in graph.nodes):
        source_name += "_"
    source_depths: dict[str, int] = {}  # always-on sources: name -> depth (one per depth that is needed)
    source_reports: list[dict] = []

    for name in layer_order:
        lf = floats[name]
        into = [pm for pm in maps if pm.dst == name]
        for pm in into:
            fan = pm.fan_in()
            if fan > lim.MAX_FAN_IN:
                raise LasnnError(
                    f"layer '{name}' has a fan-in of {fan} synapses from '{pm.src}'; one Loihi 2 "
                    f"core holds at most {lim.MAX_FAN_IN} (estimate, see loihi_limits), and a neuron's "
                    "synapses live in its core, so it cannot be represented: use fewer inputs per neuron."
                )
        zeros = np.zeros(lf.shape)
        comps = const.get(name, {})  # {start step: constant input (float current)}
        current_readout = name == output_name and readout_mode == "current"
        cuba = lf.alpha_i is not None
        # a constant from step 0 into a neuron without current memory is Loihi's bias (added to v every
        # step); the current readout's is added back on the host (LoihiReadout.offset); every other constant
        # (into a CUBA neuron's u, or one that starts later) is a current: a bias from the host input stage
        # or a synapse from the always-on source ("terms", in float v units per step, by start step)
        c_bias = zeros if (current_readout or cuba) else lf.gain * comps.get(0, zeros)
        terms = {t: lf.gain * c for t, c in comps.items() if t > 0 or cuba}
        host_into = [pm for pm in into if host_mode and pm.src == input_name]
        host_term = terms.pop(0) if host_into and 0 in terms else None
        # the reset offset (float v units, added one step after a spike); it decays with v first
        reset = None if lf.reset is None else lf.reset * (1.0 - lf.alpha_v)
        if reset is not None and not np.abs(reset).max() > 0:
            reset = None  # a full leak (alpha_v = 1) forgets the reset potential within the step
        extra_u = sum((np.abs(x) for x in terms.values()), zeros)
        extra_u = extra_u + (np.abs(host_term) if host_term is not None else 0.0)
        theta = lf.theta if lf.theta is not None else np.ones(lf.shape)
        gain = lf.gain
        # u headroom: the largest |gain * i| per neuron (float), measured or bounded; the reset offset is
        # a current on the chip only (the float graph sets v instead)
        if stats is not None and name in stats:
            u_peak = stats[name] if name != output_name else stats[name] + np.abs(comps.get(0, zeros))
            u_peak = np.broadcast_to(u_peak, lf.shape) + (np.abs(reset) if reset is not None else 0.0)
            v_peak = np.broadcast_to(stats.get(name + "#v", 0.0), lf.shape)
            source = "calibration"
        else:
            u_peak = np.zeros(lf.shape)
            for pm in into:
                src_peak = in_max_float if (host_mode and pm.src == input_name) else 1.0
                u_peak = u_peak + gain * pm.row_abs_sum(lf.shape) * src_peak
            u_peak = u_peak + extra_u
            if lf.alpha_i is not None:
                u_peak = u_peak / max(lf.alpha_i, 1.0 / lim.DECAY_UNITY)
            u_peak = u_peak + (np.abs(reset) if reset is not None else 0.0)
            v_peak = (u_peak + np.abs(c_bias)) * min(timesteps, 1.0 / max(lf.alpha_v, 1e-300))
            if lf.reset is not None:
                v_peak = np.maximum(v_peak, np.abs(lf.reset))
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
            bmax = lim.BIAS_MANT_MAX * float(bias_grid or 2**lim.BIAS_EXP_MAX)
            bounds["bias range"] = float(np.min(bmax / (64.0 * np.maximum(np.abs(c_bias), 1e-300) / ratio)))
        for pm in into:
            if host_mode and pm.src == input_name:
                bounds["16-bit host current"] = min(
                    bounds.get("16-bit host current", np.inf), float(np.min(lim.A_IN_MAX / (u_peak / ratio)))
                )
                continue
            wmax = np.maximum(gain * pm.row_abs_max(lf.shape), 1e-300)
            if (
                pm.kernel is not None
                and pm.delay == 0
                and pm.geometry.crop is None
                and _uniform_per_channel(gain / ratio)
            ):
                bounds[f"int8 conv weights from '{pm.src}'"] = float(
                    np.min(lim.CONV_WEIGHT[1] * ratio / wmax)
                )
            else:
                bounds[f"weight exponent from '{pm.src}'"] = float(
                    np.min(254 * 2.0**lim.WEIGHT_EXP_MAX * ratio / wmax)
                )
        dense_max = 254 * 2.0**lim.WEIGHT_EXP_MAX  # the largest Dense a_out (one spike, exponent 7)
        for value in terms.values():
            bounds["bias synapse range"] = min(
                bounds.get("bias synapse range", np.inf),
                float(np.min(dense_max * ratio / np.maximum(np.abs(value), 1e-300))),
            )
        if reset is not None:
            worst = np.maximum(np.abs(reset), 1e-300)
            bounds["reset synapse range"] = float(np.min(dense_max * ratio / worst))
        binding = min(bounds, key=bounds.get)
        vth_real = bounds[binding]
        if lf.kind == "lif":
            vth = int(math.floor(vth_real))
            if vth < 1:
                raise LasnnError(
                    f"layer '{name}' cannot be represented: its threshold would be {vth_real:.3g} "
                    f"integer units (limited by {binding}), below 1; make that limit looser (e.g. "
                    "smaller weights relative to the threshold)."
                )
            scale = vth / ratio
        else:
            vth = lim.VTH_MAX
            scale = np.full(lf.shape, vth_real * 1.0) / ratio  # readouts: theta = 1, free real scale
            if not np.all(np.isfinite(scale)) or scale.min() <= 0:
                raise LasnnError(
                    f"readout '{name}' cannot be represented: no positive finite scale fits (limited by "
                    f"{binding}); check its input weights for zeros or infinities."
                )
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
        bias_mant, bias_exp, bias_clipped = _bias_encode(bias_v, bias_grid)
        bias_int = np.left_shift(bias_mant.astype(np.int64), bias_exp.astype(np.int64))
        bias_error = float(np.abs(bias_int - bias_v).max(initial=0.0))  # v units (64 per vth unit)
        bias_rounded = 0
        if bias_grid is not None:  # the biases the grid moved from lasnn's free encoding
            free_mant, free_exp, _ = _bias_encode(bias_v)
            free = np.left_shift(free_mant.astype(np.int64), free_exp.astype(np.int64))
            bias_rounded = int((free != bias_int).sum())
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
                bias_a_in = host_term * scale if host_term is not None and pm is host_into[0] else None
                hs, rep = _host_synapse(pm, row_scale, in_scale, bias_a_in, lf.shape)
                host.append(hs)
                syn_reports.append(rep)
                continue
            syn, rep = _chip_synapse(pm, row_scale, lf.shape)
            synapses.append(syn)
            syn_reports.append(rep)
        for t, value in sorted(terms.items()):  # constant currents from an always-on source
            # the source at depth 0, or (where the synaptic delay would exceed 63 steps) at the largest
            # multiple of 64 that leaves a delay of 0..63: a few sources serve any depth
            src_depth = (t - 1 + depth[name]) // (lim.MAX_DELAY + 1) * (lim.MAX_DELAY + 1)
            src = source_name if src_depth == 0 else f"{source_name}@{src_depth}"
            source_depths[src] = src_depth
            syn, rep = _source_synapse(src, name, value * scale, t, depth[name] - src_depth)
            synapses.append(syn)
            syn_reports.append(rep)
            source_reports.append(rep)
        if reset is not None:
            syn, rep = _reset_synapse(name, reset * scale)
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
                "bias_grid": bias_grid,
                "bias_rounded": bias_rounded,
                "bias_error_max": bias_error,
                "bias_error_threshold": bias_error / (64.0 * vth) if lf.kind == "lif" else None,
                "u_expected_max": float(np.max(64.0 * scale * u_peak)) if source == "calibration" else None,
                "u_bound": float(np.max(64.0 * scale * u_peak)) if source != "calibration" else None,
                "v_expected_max": float(np.max(64.0 * scale * v_peak)) if source == "calibration" else None,
                "v_bound": float(np.max(64.0 * scale * v_peak)) if source != "calibration" else None,
                "uv_range": lim.UV_MAX,
                "synapses": syn_reports,
            }
        )

    # always-on neurons (module docstring of loihi_graph), first in the schedule
    sources = {
        src: LoihiLayer(
            name=src,
            shape=(1,),
            kind="source",
            du=lim.DU_MAX,
            dv=0,
            vth=0,
            bias_mant=np.ones(1, dtype=np.int32),
            bias_exp=np.zeros(1, dtype=np.int32),
            scale=np.ones(1),
            v_offset=np.zeros(1),
            depth=d,
        )
        for src, d in sorted(source_depths.items(), key=lambda item: item[1])
    }
    layers = {**sources, **layers}
    readout_offset = (
        const[output_name].get(0, np.zeros(graph.nodes[output_name].shape))
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
        metadata={
            **graph.metadata,
            "margin": margin,
            "calibrated": stats is not None,
            "bias_grid": bias_grid,
        },
    )
    check_loihi_graph(lg)
    report = {
        "input_mode": input_mode,
        "in_scale": float(in_scale),
        "timesteps": timesteps,
        "pipeline_depth": lg.depth,
        "readout": readout_mode,
        "calibrated": stats is not None,
        "bias_grid": bias_grid,
        "biases_rounded": int(sum(r["bias_rounded"] for r in report_layers)),
        "bias_error_threshold_max": max(
            (r["bias_error_threshold"] for r in report_layers if r["bias_error_threshold"] is not None),
            default=0.0,
        ),
        "layers": report_layers,
        "bias_source": None
        if not source_reports
        else {
            "names": list(sources),
            "neurons": len(sources),
            "synapses": [r["name"] for r in source_reports],
            "synaptic_ops_per_step": int(sum(r["weights_nonzero"] for r in source_reports)),
        },
    }
    return lg, report


def _out_shape(graph: Graph, shapes: dict, name: str) -> tuple[int, ...]:
    node = graph.nodes[name]
    return tuple(node.shape) if isinstance(node, Output) else tuple(shapes[name][1])


def _uniform_per_channel(values: np.ndarray) -> bool:
    if values.ndim != 3:
        return False
    return bool(np.allclose(values, values[:, :1, :1], rtol=1e-12, atol=0))


def _chip_synapse(
    pm: PathMap, row_scale: np.ndarray, out_shape: tuple[int, ...]
) -> tuple[LoihiSynapse, dict]:
    name = ("+".join(pm.names) or f"{pm.src}->{pm.dst}") + pm.tag
    if pm.kernel is not None and _uniform_per_channel(row_scale):
        w_eff = pm.kernel * row_scale[:, 0, 0][:, None, None, None]
        if pm.delay == 0 and pm.geometry.crop is None:  # Lava's Conv: no delay, no crop (pool_conv)
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


def _source_synapse(
    source: str, dst: str, a_in: np.ndarray, start: int, depth: int
) -> tuple[LoihiSynapse, dict]:
    """The synapse from an always-on source that adds the constant current ``a_in`` (float, a_in units, the
    destination's shape) from float step ``start`` on: one 8-bit weight per neuron with a shared exponent;
    ``delay = start - 1 + depth`` (``depth``: the destination's depth less the source's) makes it arrive at
    the destination's step ``start``."""
    w_eff = np.asarray(a_in, dtype=np.float64).reshape(-1, 1)
    w, exp, clipped = quantise_dense(w_eff)
    syn = LoihiSynapse(
        name=f"{source}->{dst}" + (f"@{start}" if start else ""),
        src=source,
        dst=dst,
        kind="dense",
        weight=w,
        weight_exp=exp,
        delay=start - 1 + depth,
        role="bias",
    )
    peak = float(np.abs(w_eff).max(initial=0.0)) or 1.0
    err = np.abs(w * 2.0**exp - w_eff)
    return syn, {
        "name": syn.name,
        "src": source,
        "kind": "dense",
        "role": "bias",
        "start": start,
        "weight_exp": exp,
        "delay": syn.delay,
        "recurrent": False,
        "fan_in": 1,
        "weights": int(w.size),
        "weights_nonzero": int(np.count_nonzero(w)),
        "weights_clipped": clipped,
        "weight_max_int": int(np.abs(w).max(initial=0)),
        "weight_error_rel_max": float(err.max(initial=0.0) / peak),
        "weight_error_rel_rms": float(np.sqrt(np.mean(err**2)) / peak),
    }


def _reset_synapse(name: str, a_in: np.ndarray) -> tuple[LoihiSynapse, dict]:
    """A layer's synapse onto itself (recurrent, one step) adding ``a_in`` (float, a_in units per neuron) one
    step after each of its spikes: the float graph's reset offset. One-to-one: a 1x1 convolution structure
    for an image layer with one value per channel, else a diagonal matrix."""
    a_in = np.asarray(a_in, dtype=np.float64)
    shape = a_in.shape
    geometry = None
    if a_in.ndim == 3 and _uniform_per_channel(a_in):
        w_eff = np.diag(a_in[:, 0, 0])[:, :, None, None]
        geometry = ConvGeometry(input_shape=shape, output_shape=shape)
    else:
        n = a_in.size
        if n * n > MAX_DENSE_ENTRIES:
            raise LasnnError(
                f"layer '{name}' resets to a potential other than its rest with per-neuron values, which "
                f"needs a {n} x {n} reset synapse, too large; use one reset potential per channel."
            )
        w_eff = np.diag(a_in.reshape(-1))
    w, exp, clipped = quantise_dense(w_eff)
    syn = LoihiSynapse(
        name=f"{name}->{name}@reset",
        src=name,
        dst=name,
        kind="dense",
        weight=w,
        weight_exp=exp,
        delay=0,
        geometry=geometry,
        recurrent=True,
        role="reset",
    )
    peak = float(np.abs(w_eff).max(initial=0.0)) or 1.0
    err = np.abs(w * 2.0**exp - w_eff)
    return syn, {
        "name": syn.name,
        "src": name,
        "kind": "dense",
        "role": "reset",
        "weight_exp": exp,
        "delay": 0,
        "recurrent": True,
        "fan_in": 1,
        "weights": int(a_in.size),
        "weights_clipped": clipped,
        "weight_max_int": int(np.abs(w).max(initial=0)),
        "weight_error_rel_max": float(err.max(initial=0.0) / peak),
    }


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
    name = ("+".join(pm.names) or f"{pm.src}->{pm.dst}") + pm.tag
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
