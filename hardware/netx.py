"""A compiled model in lava-dl's netx HDF5 format (``lasnn export-netx``), and the same file read back.

Why: ``lava.lib.dl.netx.hdf5.Network`` is how lava-dl loads a network for Lava (and from there for Loihi 2
hardware), so a compiled lasnn model written in its format runs in Intel's own loader. Written by hand
with h5py: no library converts another framework's fixed-point network into netx (lava-dl writes netx only
from its own slayer blocks). The schema is the one netx 0.6.0 reads (``lava/lib/dl/netx/hdf5.py``,
``blocks/process.py``, ``utils.py``), learnt from its source:

- ``/layer/<i>`` groups in order, each with ``type`` (``input``, ``conv``, ``flatten``, ``dense``),
  ``shape`` (C, H, W or N; netx reverses it to Lava's W, H, C), and for ``conv``/``dense`` a ``weight``
  (conv: ``[C_out, C_in, kh, kw]`` cross-correlation, which netx flips and transposes as lasnn's Lava
  backend does), conv ``stride``/``padding``/``dilation`` (y, x) and ``groups``, an optional ``bias``,
  and ``neuron/{type, iDecay, vDecay, vThMant, refDelay, gradedSpike}``. netx chains the layers in order
  (each layer is fed only by the one before), makes every neuron a Lava ``LIF`` (``LIFReset`` when the
  caller passes ``reset_interval``) with ``du = iDecay - 1``, ``dv = vDecay``, ``vth = vThMant``,
  ``bias_mant = bias`` and ``bias_exp = 6``, and puts its dense weights through its own weight-bit
  optimiser (``utils.optimize_weight_bits``), ignoring any stored exponent: a dense layer's ``weight`` is
  its effective integer weight.
- ``/lasnn``: what netx has no field for, which netx ignores: the format name and version, T, the input
  stage (mode, the host's integer first synapse stage), per layer lasnn's name, kind, depth, float scale
  and offset, the original bias mantissa/exponent and weight exponent, the readout and the notes. With it
  ``read_netx`` rebuilds the exact ``LoihiGraph`` (the round trip) and ``lasnn.sims.netx_backend`` runs
  the file through netx.

Mapping (exact, integer for integer, or refused with one sentence naming the layer):

- a LIF/CUBA layer -> the neuron of its netx block: ``iDecay = du + 1``, ``vDecay = dv``, ``vThMant = vth``;
  a bias ``bias_mant << bias_exp`` -> netx ``bias = bias / 64`` (netx fixes ``bias_exp = 6``): exact when
  every bias is a multiple of 64 within the 13-bit mantissa, which ``lasnn compile --bias-grid 64`` makes
  so (``quantise``: rounded to nearest, at most half an integer weight, the error in the report); refused
  otherwise, the sentence naming that option. The biases are checked after the structure, so a model netx
  cannot hold at all is refused for that first.
- a ``conv`` synapse (lasnn's composed pooling + conv chains included: they are one strided convolution
  already) -> ``conv`` with lasnn's int8 kernel, stride and padding (dilation 1, groups 1).
- a ``dense`` synapse -> ``dense`` with the effective weight ``W * 2**weight_exp`` (a ``flatten`` before it
  when its source is an image): exact when that is an integer matrix netx's optimiser and Lava's
  ``Dense`` reproduce (``netx_dense_problem``); a current-mode readout (``du = 4095, dv = 0``, no bias:
  ``u`` and ``v`` are linear in the weights) instead keeps ``W`` and records ``v_shift = weight_exp``:
  netx's ``u`` and ``v`` are lasnn's divided by ``2**v_shift`` exactly, while lasnn's stay inside 24 bits
  (its readout headroom). Anything else is refused.
- analog input (``input_mode = current``): netx has no host stage. lasnn's host stage (integer first
  synapse stage) is stored in ``/lasnn/host``, and its currents enter netx's first block through an
  identity synapse (1x1 ``conv`` or ``dense``, weight 1) with graded 16-bit spikes
  (``Network(input_message_bits=16)``): ``a_in`` arrives unchanged, one step later (the schedule below
  accounts for it).
- schedule: netx resets layer ``i`` at ``reset_offset + 1 + i``, one step per layer. Every netx layer
  ``i`` therefore runs float step ``t`` of sample ``n`` at Lava step ``n * P + 2 + t + i`` with
  ``Network(reset_interval=P, reset_offset=1)``, ``P >= max(T, layers + 2)`` (``reset_interval_min``):
  sample ``n``'s inputs (spikes or host currents) are sent at steps ``n * P + 1 + t``, zero in the gap.

Refused, by netx's format: skip or multi-source connections (netx chains layers), recurrent synapses
(netx's ``RecurrentDense`` keeps the previous sample's spikes in its buffer at a sample's first step;
lasnn's Lava backend masks them), delayed synapses (netx's one-step-per-layer reset schedule cannot align
them), a dense synapse into an image-shaped layer that feeds a convolution (netx's dense output is 1-D),
host currents into any but the first layer, a synapse on a cropped input (a floor pooling of an odd-sized
image before a conv, ``hardware/pool_conv.py``: netx's ``conv`` pads symmetrically and reads its whole
input, and a ``dense`` block's output is flat, so a convolution after it has no image; the airbench
student's 31 -> 15 -> 7 -> 3 stages are such synapses, the VGG student's even stages are not).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lasnn.errors import LasnnError
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
)

FORMAT = "lasnn-netx"
FORMAT_VERSION = 1
NETX_BIAS_EXP = 6  # netx's get_neuron_params passes bias_exp = 6 for every CUBA neuron (hdf5.py)
HOST_MESSAGE_BITS = lim.A_IN_BITS  # graded spikes carrying host currents: a_in is 16-bit
RESET_OFFSET = 1  # Network(reset_offset=1): layer i resets at 2 + i, right before its first step
MAX_DENSE_ENTRIES = 2**24  # a dense netx weight larger than this (int64: 128 MiB) is refused


@dataclass
class NetxBlock:
    """One netx ``conv``/``dense`` block: a lasnn layer and the synapse that feeds it."""

    name: str  # the lasnn layer
    kind: str  # "conv" | "dense"
    role: str  # "synapse" (a lasnn on-chip synapse) | "host identity" (carries host currents)
    weight: np.ndarray  # netx form: conv [C_out, C_in, kh, kw]; dense [n_out, n_in], effective integers
    layer: LoihiLayer
    synapse: str = ""  # the lasnn synapse's name
    weight_exp: int = 0  # the lasnn synapse's exponent (dense)
    v_shift: int = 0  # linear readout: lasnn's u, v = netx's << v_shift
    flatten: bool = False  # a netx 'flatten' layer precedes it
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    bias: np.ndarray | None = None  # netx bias mantissa (bias_exp 6), lasnn's shape

    @property
    def netx_shape(self) -> tuple[int, ...]:
        """The block's output shape as netx sees it: images for conv, flat for dense."""
        return tuple(self.layer.shape) if self.kind == "conv" else (self.layer.size,)


@dataclass
class NetxPlan:
    blocks: list[NetxBlock]
    input_shape: tuple[int, ...]  # what netx's input port takes (spikes, or host currents)
    input_message_bits: int
    notes: list[str] = field(default_factory=list)

    @property
    def reset_interval_min(self) -> int:
        return len(self.blocks) + 2


# ----------------------------------------------------------------------------------------------------
# exactness of dense weights through netx


def netx_dense_problem(weight: np.ndarray) -> str | None:
    """Why netx 0.6.0 + Lava's ``Dense`` would not reproduce the integer matrix ``weight`` exactly (None:
    they do, ``a_out = weight @ s``).

    netx's ``optimize_weight_bits`` shifts the weights left by ``sb`` bits and sets ``weight_exp = -sb``;
    Lava's ``PyDenseModelBitAcc`` then picks its own sign mode, clips to 8 bits and truncates to the bit
    count netx computed. Derived from that code: the truncation never drops a set bit, so the result is
    exact unless a clip bites, which happens when (a) netx's own clip of mixed signs to [-256, 254] or
    excitatory weights over 255 (its shift goes negative), (b) all weights are <= 0 and the largest
    magnitude is a power of two: netx shifts it to -256, Lava's inhibitory mode clips that to -255, or
    (c) all weights are 0 (netx's optimiser divides by zero). tests/test_netx_export.py checks this rule
    against netx's and Lava's own functions."""
    w = np.asarray(weight, dtype=np.int64)
    lo, hi = int(w.min(initial=0)), int(w.max(initial=0))
    if lo == 0 and hi == 0:
        return "all its weights are zero (netx's weight optimiser cannot take an all-zero matrix)"
    if lo >= 0 and hi > 255:
        return f"its effective weights reach {hi}; netx's dense weights are 8-bit (at most 255)"
    if lo < 0 < hi and (hi > 254 or lo < -256):
        return f"its effective weights span {lo}..{hi}; netx's mixed-sign dense weights are -256..254"
    if hi <= 0 and (-lo > 255 or (-lo & (-lo - 1)) == 0):
        return (
            f"its weights are all <= 0 with largest magnitude {-lo}, a power of two (or over 255), which "
            "netx shifts to -256 and Lava's inhibitory Dense clips"
        )
    return None


def _effective_dense(syn: LoihiSynapse) -> np.ndarray | None:
    """``W * 2**weight_exp`` as integers, or None when a negative exponent drops bits (floor division)."""
    w = syn.matrix().toarray().astype(np.int64)
    e = int(syn.weight_exp)
    if e >= 0:
        return w << e
    if np.any(w % (1 << -e)):
        return None
    return w >> -e


def _linear_readout(lg: LoihiGraph, layer: LoihiLayer) -> bool:
    return (
        lg.readout.mode == "current"
        and lg.readout.layer == layer.name
        and layer.du == lim.DU_MAX
        and layer.dv == 0
        and not np.any(layer.bias())
    )


# ----------------------------------------------------------------------------------------------------
# planning: LoihiGraph -> netx blocks (or one refusal sentence)


def plan_netx(lg: LoihiGraph) -> NetxPlan:
    """Map ``lg`` onto netx blocks by the rules of the module docstring; ``LasnnError`` names the layer
    that netx cannot express."""
    check_loihi_graph(lg)
    names = sorted(lg.layers, key=lambda n: lg.layers[n].depth)
    current = lg.input.mode == "current"
    notes: list[str] = []
    blocks: list[NetxBlock] = []
    for name, layer in lg.layers.items():
        if layer.kind not in ("lif", "readout"):  # e.g. an always-on source of CUBA biases
            fed = ", ".join(f"'{s.dst}'" for s in lg.synapses if s.src == name) or "nothing"
            raise LasnnError(
                f"layer '{name}' is a {layer.kind} population feeding {fed} besides the layer chain; netx "
                "chains layers, each fed only by the one before, so it is not exported."
            )
    for syn in lg.synapses:
        if syn.recurrent or syn.src == syn.dst:
            raise LasnnError(
                f"layer '{syn.dst}' has a recurrent synapse ('{syn.name}'); netx's RecurrentDense keeps the "
                "previous sample's spikes in its buffer at a sample's first step, so it is not exported."
            )
    for hs in lg.input.host:
        if hs.dst != names[0]:
            raise LasnnError(
                f"layer '{hs.dst}' receives host-computed input currents but is not the first layer; netx "
                "takes input only at its first layer."
            )
    for k, name in enumerate(names):
        layer = lg.layers[name]
        into = lg.synapses_into(name)
        expected_depth = k if current else k + 1
        if k == 0 and current:
            if into:
                raise LasnnError(
                    f"layer '{name}' receives host currents and on-chip synapses from "
                    f"{', '.join(repr(s.src) for s in into)}; netx's first layer has one input."
                )
            block = _identity_block(layer)
            notes.append(
                f"layer '{name}': its input currents are computed on the host (stored in /lasnn/host) and "
                f"enter netx through an identity {block.kind} with {HOST_MESSAGE_BITS}-bit graded spikes "
                f"(Network(input_message_bits={HOST_MESSAGE_BITS})), one synapse stage that lasnn's own "
                "backends do not have."
            )
        else:
            source = lg.input.name if k == 0 else names[k - 1]
            if len(into) != 1 or into[0].src != source:
                found = ", ".join(repr(s.src) for s in into) or "nothing"
                raise LasnnError(
                    f"layer '{name}' is fed by {found}; netx chains layers, each fed only by the one "
                    f"before ('{source}'), so skip or multi-source connections are not exported."
                )
            syn = into[0]
            if syn.delay:
                raise LasnnError(
                    f"the synapse into layer '{name}' ('{syn.name}') has a delay of {syn.delay} steps; "
                    "netx's reset schedule (one step per layer) cannot align delayed synapses."
                )
            src_shape = tuple(lg.input.shape) if k == 0 else blocks[-1].netx_shape
            block = _synapse_block(lg, layer, syn, src_shape, notes)
        if layer.depth != expected_depth:
            raise LasnnError(
                f"layer '{name}' runs at pipeline depth {layer.depth}, not {expected_depth}; netx's reset "
                "schedule (one step per layer) cannot express that."
            )
        blocks.append(block)
    for block in blocks:  # after the structure: a model netx cannot hold is refused for that first
        block.bias = _netx_bias(block.layer)
    ro = lg.readout
    notes.append(
        f"readout '{ro.name}' ({ro.mode} mode) of layer '{ro.layer}': netx has no readout; "
        + (
            "the logits are the layer's u (its current) per step, scaled by /lasnn's scale and offset."
            if ro.mode == "current"
            else "the outputs are its v, scaled by /lasnn's scale and offset."
            if ro.mode == "potential"
            else "the outputs are its spikes."
        )
    )
    input_shape = tuple(lg.layers[names[0]].shape) if current else tuple(lg.input.shape)
    return NetxPlan(
        blocks=blocks,
        input_shape=input_shape,
        input_message_bits=HOST_MESSAGE_BITS if current else 0,
        notes=notes,
    )


def _identity_block(layer: LoihiLayer) -> NetxBlock:
    shape = tuple(layer.shape)
    if len(shape) == 3:
        kernel = np.eye(shape[0], dtype=np.int64)[:, :, None, None]
        return NetxBlock(name=layer.name, kind="conv", role="host identity", weight=kernel, layer=layer)
    if layer.size**2 > MAX_DENSE_ENTRIES:
        raise LasnnError(
            f"layer '{layer.name}' has {layer.size} neurons; its identity synapse for host currents would "
            "be a dense matrix too large for netx."
        )
    eye = np.eye(layer.size, dtype=np.int64)
    return NetxBlock(name=layer.name, kind="dense", role="host identity", weight=eye, layer=layer)


def _synapse_block(
    lg: LoihiGraph, layer: LoihiLayer, syn: LoihiSynapse, src_shape: tuple[int, ...], notes: list[str]
) -> NetxBlock:
    name = layer.name
    convs_after = [s for s in lg.synapses if s.src == name and s.kind == "conv"]
    if syn.geometry is not None and syn.geometry.crop is not None and convs_after:
        h, w = syn.geometry.crop
        raise LasnnError(
            f"the synapse into layer '{name}' ('{syn.name}') reads its source cropped to {h} x {w} (a "
            "pooling of an odd-sized image before a conv, hardware/pool_conv.py) and the layer feeds a "
            "convolution; netx's conv pads symmetrically and reads its whole input, and a dense block's "
            "output is flat, so no netx block expresses it: use image sizes that every pooling divides "
            "(e.g. the VGG student)."
        )
    if syn.kind == "conv":
        g = syn.geometry
        if len(src_shape) != 3 or tuple(g.input_shape) != src_shape:
            raise LasnnError(
                f"layer '{name}' is fed by a convolution over {tuple(g.input_shape)}, but netx's layer "
                f"before it has shape {src_shape} (a dense layer's output is flat in netx)."
            )
        return NetxBlock(
            name=name,
            kind="conv",
            role="synapse",
            weight=np.asarray(syn.weight, dtype=np.int64),
            layer=layer,
            synapse=syn.name,
            stride=tuple(int(s) for s in g.stride),
            padding=tuple(int(p) for p in g.padding),
        )
    n_in = math.prod(src_shape)
    if layer.size * n_in > MAX_DENSE_ENTRIES:
        raise LasnnError(
            f"the dense synapse into layer '{name}' is a {layer.size} x {n_in} matrix, too large for netx's "
            "dense weight."
        )
    block = NetxBlock(
        name=name,
        kind="dense",
        role="synapse",
        weight=np.zeros((0, 0), dtype=np.int64),
        layer=layer,
        synapse=syn.name,
        weight_exp=int(syn.weight_exp),
        flatten=len(src_shape) > 1,
    )
    effective = _effective_dense(syn)
    problem = (
        f"its weight exponent {syn.weight_exp} floors the sums (netx's dense weights are integers)"
        if effective is None
        else netx_dense_problem(effective)
    )
    if problem is None:
        block.weight = effective
        return block
    raw = syn.matrix().toarray().astype(np.int64)
    if _linear_readout(lg, layer) and syn.weight_exp > 0 and netx_dense_problem(raw) is None:
        block.weight, block.v_shift = raw, int(syn.weight_exp)
        notes.append(
            f"readout layer '{name}': its weight exponent {syn.weight_exp} is kept out of netx's weights "
            f"(netx's dense weights are 8-bit integers), so netx's u and v are lasnn's divided by "
            f"2**{syn.weight_exp}, exactly (du = 4095, dv = 0, no bias), while lasnn's stay within 24 bits."
        )
        return block
    raise LasnnError(
        f"the dense synapse into layer '{name}' ('{syn.name}') cannot be exported to netx: {problem}."
    )


def _netx_bias(layer: LoihiLayer) -> np.ndarray | None:
    bias = layer.bias()
    if not np.any(bias):
        return None
    unit = 1 << NETX_BIAS_EXP
    mant = bias // unit
    bad = (bias % unit != 0) | (mant < lim.BIAS_MANT_MIN) | (mant > lim.BIAS_MANT_MAX)
    if np.any(bad):
        raise LasnnError(
            f"layer '{layer.name}' has {int(bad.sum())} biases that are not multiples of {unit} within "
            f"{lim.BIAS_MANT_MIN * unit}..{lim.BIAS_MANT_MAX * unit}; netx fixes bias_exp = "
            f"{NETX_BIAS_EXP}, so they cannot be exported exactly: compile the graph with 'lasnn compile "
            f"GRAPH.nir -o MODEL --bias-grid {unit}', which rounds every bias to a multiple of {unit} (the "
            "quantisation report gives the error)."
        )
    return mant


# ----------------------------------------------------------------------------------------------------
# writing


def write_netx(model: Any, path: str | os.PathLike) -> NetxPlan:
    """Write a ``CompiledModel`` (or a bare ``LoihiGraph``) as a netx HDF5 file, atomically; returns the plan
    (blocks and notes). Refusals are one ``LasnnError`` sentence naming the layer."""
    import h5py

    from lasnn.artifacts import atomic_write, versions

    lg = model if isinstance(model, LoihiGraph) else model.loihi
    provenance = {} if isinstance(model, LoihiGraph) else dict(model.provenance)
    plan = plan_netx(lg)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        layer = f.create_group("layer")
        index = 0

        def group(kind: str, shape: tuple[int, ...]) -> Any:
            nonlocal index
            g = layer.create_group(str(index))
            index += 1
            g.create_dataset("type", (1,), "S10", [kind.encode("ascii")])
            g.create_dataset("shape", data=np.asarray(shape, dtype=np.int64))
            return g

        group("input", plan.input_shape)
        for k, block in enumerate(plan.blocks):
            if block.flatten:
                group("flatten", plan.blocks[k - 1].netx_shape if k else plan.input_shape)
            g = group(block.kind, tuple(block.layer.shape))
            g.create_dataset("weight", data=block.weight)
            if block.kind == "conv":
                g.create_dataset("stride", data=np.asarray(block.stride, dtype=np.int64))
                g.create_dataset("padding", data=np.asarray(block.padding, dtype=np.int64))
                g.create_dataset("dilation", data=np.asarray((1, 1), dtype=np.int64))
                g.create_dataset("groups", data=1)
            else:
                g.create_dataset("inFeatures", data=int(block.weight.shape[1]))
                g.create_dataset("outFeatures", data=int(block.weight.shape[0]))
            if block.bias is not None:
                bias = block.bias
                # netx matches per-neuron conv biases in its W, H, C order; dense neurons are flat
                bias = np.transpose(bias, (2, 1, 0)) if block.kind == "conv" else bias.reshape(-1)
                g.create_dataset("bias", data=np.ascontiguousarray(bias, dtype=np.int64))
            ly = block.layer
            g.create_dataset("neuron/type", data="CUBA")
            g.create_dataset("neuron/iDecay", data=int(ly.du) + 1)
            g.create_dataset("neuron/vDecay", data=int(ly.dv))
            g.create_dataset("neuron/vThMant", data=int(ly.vth))
            g.create_dataset("neuron/refDelay", data=1)
            g.create_dataset("neuron/gradedSpike", data=False)
        _write_lasnn_group(f.create_group("lasnn"), lg, plan, provenance, versions())
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return plan


def _write_lasnn_group(
    g: Any, lg: LoihiGraph, plan: NetxPlan, provenance: dict[str, Any], lib_versions: dict[str, str]
) -> None:
    inp, ro = lg.input, lg.readout
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "timesteps": int(lg.timesteps),
        "input_name": inp.name,
        "input_mode": inp.mode,
        "input_shape": json.dumps(list(inp.shape)),
        "in_scale": float(inp.in_scale),
        "in_max": int(inp.in_max),
        "input_message_bits": plan.input_message_bits,
        "reset_offset": RESET_OFFSET,
        "reset_interval_min": plan.reset_interval_min,
        "layers": json.dumps([b.name for b in plan.blocks]),
        "readout_name": ro.name,
        "readout_mode": ro.mode,
        "readout_layer": ro.layer,
        "notes": json.dumps(plan.notes),
        "graph_sha256": str(provenance.get("graph_sha256", "")),
        "lasnn_version": lib_versions["lasnn"],
    }
    for key, value in attrs.items():
        g.attrs[key] = value
    g.create_dataset("readout_offset", data=np.asarray(ro.offset, dtype=np.float64))
    for block in plan.blocks:
        ly = block.layer
        sub = g.create_group(f"layers/{ly.name}")
        for key, value in (
            ("kind", ly.kind),
            ("depth", int(ly.depth)),
            ("role", block.role),
            ("synapse", block.synapse),
            ("weight_exp", block.weight_exp),
            ("v_shift", block.v_shift),
            ("shape", json.dumps(list(ly.shape))),
        ):
            sub.attrs[key] = value
        for key, value in (
            ("scale", np.asarray(ly.scale, dtype=np.float64)),
            ("v_offset", np.asarray(ly.v_offset, dtype=np.float64)),
            ("bias_mant", np.asarray(ly.bias_mant, dtype=np.int32)),
            ("bias_exp", np.asarray(ly.bias_exp, dtype=np.int32)),
        ):
            sub.create_dataset(key, data=np.broadcast_to(value, tuple(ly.shape)))
    for i, hs in enumerate(inp.host):
        sub = g.create_group(f"host/{i}")
        sub.attrs["name"], sub.attrs["dst"] = hs.name, hs.dst
        sub.attrs["shift"], sub.attrs["delay"] = int(hs.shift), int(hs.delay)
        if hs.geometry is not None:
            sub.attrs["geometry"] = json.dumps(_geometry_json(hs.geometry))
        sub.create_dataset("weight", data=np.asarray(hs.weight, dtype=np.int64))
        sub.create_dataset("bias", data=np.asarray(hs.bias, dtype=np.int64))


def _geometry_json(g: ConvGeometry) -> dict[str, list[int]]:
    crop = {} if g.crop is None else {"crop": list(g.crop)}  # hardware/pool_conv.py
    return {
        "input_shape": list(g.input_shape),
        "output_shape": list(g.output_shape),
        "stride": list(g.stride),
        "padding": list(g.padding),
        **crop,
    }


# ----------------------------------------------------------------------------------------------------
# reading back


@dataclass
class NetxFile:
    """A netx file written by ``write_netx``, read back: the exact ``LoihiGraph`` and how to run it."""

    loihi: LoihiGraph
    layers: list[str]  # lasnn layer names of netx's blocks, in order
    v_shift: dict[str, int]
    input_message_bits: int
    reset_interval_min: int
    notes: list[str]


def read_netx(path: str | os.PathLike) -> NetxFile:
    """Rebuild the ``LoihiGraph`` from a file ``write_netx`` wrote: neuron constants, weights and biases from
    the netx blocks (what netx itself reads), the rest from ``/lasnn``; the original bias encoding is
    checked against netx's bias. Any damage or foreign file is one ``LasnnError`` sentence."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise LasnnError(f"{path} does not exist; pass a netx file written by lasnn export-netx.")
    try:
        with h5py.File(path, "r") as f:
            return _read(f)
    except LasnnError as error:
        raise LasnnError(f"{path}: {error}") from error
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise LasnnError(
            f"{path} cannot be read as a lasnn netx file ({type(error).__name__}); write it with "
            "lasnn export-netx."
        ) from error


def _read(f: Any) -> NetxFile:
    g = f["lasnn"]
    if g.attrs["format"] != FORMAT or int(g.attrs["format_version"]) != FORMAT_VERSION:
        raise LasnnError(
            f"it is format {g.attrs['format']!r} version {g.attrs['format_version']}; this lasnn reads "
            f"{FORMAT!r} version {FORMAT_VERSION}, export it again."
        )
    names = json.loads(g.attrs["layers"])
    blocks = [f["layer"][str(i)] for i in range(len(f["layer"]))]
    blocks = [b for b in blocks if b["type"][0].decode("ascii") in ("conv", "dense")]
    if len(blocks) != len(names):
        raise LasnnError(f"it has {len(blocks)} netx blocks but /lasnn names {len(names)} layers.")
    mode = str(g.attrs["input_mode"])
    in_name = str(g.attrs["input_name"])
    layers: dict[str, LoihiLayer] = {}
    synapses: list[LoihiSynapse] = []
    v_shift: dict[str, int] = {}
    src, src_shape = in_name, tuple(json.loads(g.attrs["input_shape"]))
    for name, b in zip(names, blocks, strict=True):
        meta = g["layers"][name]
        shape = tuple(json.loads(meta.attrs["shape"]))
        kind = b["type"][0].decode("ascii")
        neuron = b["neuron"]
        layer = LoihiLayer(
            name=name,
            shape=shape,
            kind=str(meta.attrs["kind"]),
            du=int(neuron["iDecay"][()]) - 1,
            dv=int(neuron["vDecay"][()]),
            vth=int(neuron["vThMant"][()]),
            bias_mant=np.asarray(meta["bias_mant"][()], dtype=np.int32),
            bias_exp=np.asarray(meta["bias_exp"][()], dtype=np.int32),
            scale=np.asarray(meta["scale"][()], dtype=np.float64),
            v_offset=np.asarray(meta["v_offset"][()], dtype=np.float64),
            depth=int(meta.attrs["depth"]),
        )
        netx_bias = np.zeros(shape, dtype=np.int64)
        if "bias" in b:
            stored = np.asarray(b["bias"][()], dtype=np.int64)
            netx_bias = np.transpose(stored, (2, 1, 0)) if kind == "conv" else stored.reshape(shape)
        if not np.array_equal(netx_bias << NETX_BIAS_EXP, layer.bias()):
            raise LasnnError(f"layer '{name}' has a netx bias that differs from its stored lasnn bias.")
        layers[name] = layer
        weight = np.asarray(b["weight"][()], dtype=np.int64)
        if meta.attrs["role"] == "synapse":
            if kind == "conv":
                stride = tuple(int(s) for s in b["stride"][()])
                padding = tuple(int(p) for p in b["padding"][()])
                geometry = ConvGeometry(
                    input_shape=src_shape, output_shape=shape, stride=stride, padding=padding
                )
                syn = LoihiSynapse(
                    name=str(meta.attrs["synapse"]),
                    src=src,
                    dst=name,
                    kind="conv",
                    weight=weight.astype(np.int32),
                    geometry=geometry,
                )
            else:
                exp, shift = int(meta.attrs["weight_exp"]), int(meta.attrs["v_shift"])
                if shift:
                    raw = weight
                elif exp >= 0:
                    raw = weight >> exp
                    if not np.array_equal(raw << exp, weight):
                        raise LasnnError(
                            f"layer '{name}' has dense weights that its exponent {exp} does not divide."
                        )
                else:
                    raw = weight << -exp
                syn = LoihiSynapse(
                    name=str(meta.attrs["synapse"]),
                    src=src,
                    dst=name,
                    kind="dense",
                    weight=raw.astype(np.int32),
                    weight_exp=exp,
                )
            synapses.append(syn)
        v_shift[name] = int(meta.attrs["v_shift"])
        src, src_shape = name, shape
    host = []
    for key in sorted(g.get("host", {}), key=int):
        h = g["host"][key]
        geometry = None
        if "geometry" in h.attrs:
            gj = json.loads(h.attrs["geometry"])
            geometry = ConvGeometry(**{k: tuple(v) for k, v in gj.items()})
        host.append(
            HostSynapse(
                name=str(h.attrs["name"]),
                dst=str(h.attrs["dst"]),
                weight=np.asarray(h["weight"][()], dtype=np.int64),
                bias=np.asarray(h["bias"][()], dtype=np.int64),
                shift=int(h.attrs["shift"]),
                geometry=geometry,
                delay=int(h.attrs["delay"]),
            )
        )
    lg = LoihiGraph(
        input=LoihiInput(
            name=in_name,
            shape=tuple(json.loads(g.attrs["input_shape"])),
            mode=mode,
            in_scale=float(g.attrs["in_scale"]),
            in_max=int(g.attrs["in_max"]),
            host=host,
        ),
        layers=layers,
        synapses=synapses,
        readout=LoihiReadout(
            name=str(g.attrs["readout_name"]),
            mode=str(g.attrs["readout_mode"]),
            layer=str(g.attrs["readout_layer"]),
            offset=np.asarray(g["readout_offset"][()], dtype=np.float64),
        ),
        timesteps=int(g.attrs["timesteps"]),
    )
    check_loihi_graph(lg)
    return NetxFile(
        loihi=lg,
        layers=names,
        v_shift=v_shift,
        input_message_bits=int(g.attrs["input_message_bits"]),
        reset_interval_min=int(g.attrs["reset_interval_min"]),
        notes=json.loads(g.attrs["notes"]),
    )
