"""The ``lava`` backend: a quantised graph on Lava's Loihi 2 simulator (``Loihi2SimCfg``, ``fixed_pt``).

It maps a ``LoihiGraph`` (``lasnn.hardware.loihi_graph``, whose docstring is the integer contract) onto
Lava's own processes, one to one:

- every population is a ``LIFReset`` (``du``, ``dv``, ``vth``, per-neuron ``bias_mant``/``bias_exp``), reset
  right before its first step of every sample (``reset_interval`` = steps per sample, ``reset_offset`` from
  the layer's pipeline depth), so a whole batch runs as ONE long Lava run: starting a run costs seconds
  (compilation, one OS process per Lava process) and every read-back more, so samples are never run (or
  read) one at a time;
- ``conv`` synapses are ``Conv`` processes; Lava's images are (W, H, C) and its convolution flips the
  kernel (``lava/proc/conv/utils.py`` passes ``weight[:, ::-1, ::-1]`` to a correlation), so populations
  keep the graph's (C, H, W) layout and connect to ``Conv`` through transposed ports, with the kernel in
  ``(C_out, kw, kh, C_in)`` order and flipped;
- ``dense`` synapses are ``Dense`` (no delay), ``DelayDense`` (delay > 0; a residual shortcut that skips a
  stage) or, for large sparse connectivity, ``Sparse`` / ``DelaySparse`` (e.g. a convolution on a cropped
  input, ``lasnn.hardware.pool_conv``, which Lava's ``Conv`` cannot express); a synapse whose buffer would
  carry spikes of the previous sample into a layer's first steps (a recurrent connection, a path through a
  graph ``Delay``, or a constant from the always-on source that the float graph delivers only from a
  later step on) is a ``MaskedDelayDense`` (``lasnn.sims.lava_processes``), Lava's ``DelayDense`` model
  that delivers zeros there;
- the always-on source (``kind = "source"``, constant currents) is a ``LIFReset`` like any population:
  with no input, threshold 0 and bias 1 it spikes at every Lava step, resets included; its spikes are
  not recorded;
- input spikes (``poisson``/``latency`` encodings) come from a ``RingBuffer`` source; for analog input
  (``direct`` encoding) the first synapse stage is computed on the host in exact integers
  (``loihi_graph.host_currents``) and injected into the first layers' ``a_in`` through ``RingBuffer``
  sources: this is the contract's choice (16-bit host currents instead of 8-bit pixels times 8-bit weights
  through a Conv whose large fan-in sums would risk its 24-bit wrap), and every backend injects the same
  integers;
- spikes are recorded by ``FileSink`` processes (``lasnn.sims.lava_processes``: Lava's receiving
  ``RingBuffer`` that hands its recording back through a file, because Lava's ``Var.get`` transfers one
  element per message, ~40 us each), the readout's ``u`` (current mode) or ``v`` (potential mode) by a
  ``Monitor``; everything is read back once after the run.

Results are re-aligned to the float graph's time (Lava's one-step delay per synapse stage removed) and
keyed by the float graph's neuron node names, exactly like the emulator's.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lasnn.errors import LasnnError
from lasnn.export.graph import Graph
from lasnn.hardware.loihi_graph import LoihiGraph, LoihiLayer, LoihiSynapse, check_loihi_graph, host_currents
from lasnn.sims.backend import BackendResult

SPARSE_MIN_ENTRIES = 1 << 20  # dense matrices at least this large and under 10% full become Lava Sparse
SPARSE_MAX_DENSITY = 0.1
DENSE_MAX_ENTRIES = 1 << 26  # a dense int32 matrix of 256 MiB (Lava's DelayDense copies it every step)
RING_MAX_VALUE = 2**31 - 1  # RingBuffer sources send int32 (lava/proc/io/source.py PySendModelFixed)


@dataclass
class _Network:
    """The Lava processes of one run and what is needed to read them back."""

    processes: list[Any]
    sinks: dict[str, str]  # layer name -> .npy file its FileSink writes at the end of the run
    monitor: Any | None
    readout_var: Any | None
    total_steps: int


LAVA_MP_MODULE = "lava.magma.runtime.message_infrastructure.multiprocessing"


def import_lava_runtime() -> None:
    """Import Lava's runtime even when this process already fixed its multiprocessing start method.

    Lava 0.10.0 calls ``multiprocessing.set_start_method('fork')`` (without ``force``) when its runtime is
    first imported, which raises "context has already been set" once anything has asked for the start
    method (tqdm does, for its lock). If the method already is 'fork', Lava's call is made idempotent for
    the duration of that import; any other method cannot run Lava's simulator and is refused.
    """
    import importlib
    import multiprocessing
    import sys

    import lasnn.sims  # noqa: F401 - installs the lava_compat import hook

    if LAVA_MP_MODULE in sys.modules:
        return
    current = multiprocessing.get_start_method(allow_none=True)
    if current is None:
        importlib.import_module(LAVA_MP_MODULE)
        return
    if current != "fork":
        raise LasnnError(
            f"Lava's simulator needs the 'fork' multiprocessing start method, but this process uses "
            f"{current!r}; run the lava backend in a process that has not chosen another start method."
        )
    original = multiprocessing.set_start_method

    def idempotent(method: str, force: bool = False) -> None:
        original(method, force=force or method == current)

    multiprocessing.set_start_method = idempotent
    try:
        importlib.import_module(LAVA_MP_MODULE)
    finally:
        multiprocessing.set_start_method = original


def _import_lava() -> dict[str, Any]:
    """Import Lava lazily (after ``lasnn.sims`` installed its Python 3.11 hook) and return the classes."""
    import_lava_runtime()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import DelayDense, Dense
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.monitor.process import Monitor
    from lava.proc.sparse.process import DelaySparse, Sparse
    from lava.utils.weightutils import SignMode

    from lasnn.sims.lava_processes.file_sink import FileSink
    from lasnn.sims.lava_processes.masked_dense import MaskedDelayDense

    return dict(
        RunSteps=RunSteps,
        Loihi2SimCfg=Loihi2SimCfg,
        Conv=Conv,
        Dense=Dense,
        DelayDense=DelayDense,
        FileSink=FileSink,
        Source=Source,
        LIFReset=LIFReset,
        Monitor=Monitor,
        Sparse=Sparse,
        DelaySparse=DelaySparse,
        SignMode=SignMode,
        MaskedDelayDense=MaskedDelayDense,
    )


def lava_conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """A torch-style ``[C_out, C_in, kh, kw]`` cross-correlation kernel as Lava ``Conv``'s weight: layout
    ``[C_out, kw, kh, C_in]`` and spatially flipped, because Lava convolves (``lava/proc/conv/utils.py``)."""
    return np.ascontiguousarray(np.transpose(kernel, (0, 3, 2, 1))[:, ::-1, ::-1, :]).astype(np.int32)


def mask_length(lg: LoihiGraph, syn: LoihiSynapse) -> int:
    """Steps at the start of each sample in which ``syn`` would deliver the previous sample's spikes.

    A synapse delivers at Lava step ``s`` what its source sent at ``s - 1 - delay``. The destination runs
    float step ``t`` at ``s = base + t + dst.depth``; the source sent its float step ``t'`` at ``base + t' +
    src.depth``, so ``t' = t - (delay + 1 - (dst.depth - src.depth))``: the first ``delay + 1 -
    (dst.depth - src.depth)`` steps of a sample refer to before the sample. Zero for a feed-forward synapse
    without graph delay, one for a recurrent connection.
    """
    src_depth = lg.layers[syn.src].depth if syn.src in lg.layers else 0
    length = syn.delay + 1 - (lg.layers[syn.dst].depth - src_depth)
    if length < 0:
        raise LasnnError(
            f"Quantised synapse {syn.name!r} from {syn.src!r} to {syn.dst!r} has delay {syn.delay}, "
            "too short for the layers' depths; the quantised graph is inconsistent."
        )
    return length


class LavaBackend:
    """Runs graphs on Lava's fixed-point Loihi 2 simulator; ``run(graph, stream) -> BackendResult``.

    ``graph`` is a ``LoihiGraph``, or a float ``Graph`` that is quantised first (calibrated on ``stream``).
    All samples of the stream run in one Lava run (split into runs of at most ``max_samples_per_run``).
    """

    name = "lava"

    def __init__(self, max_samples_per_run: int = 1000) -> None:
        self.max_samples_per_run = int(max_samples_per_run)
        self.last_loihi_graph: LoihiGraph | None = None
        self.timings: list[dict[str, float]] = []  # per Lava run: build, compile+run, read-back seconds

    def run(self, graph: Graph | LoihiGraph, stream: np.ndarray) -> BackendResult:
        stream = np.asarray(stream)
        lg = graph if isinstance(graph, LoihiGraph) else _quantise(graph, stream)
        return self.run_loihi(lg, stream)

    def run_loihi(self, lg: LoihiGraph, stream: np.ndarray) -> BackendResult:
        """Run a quantised graph on ``stream`` ``[T, B, *input_shape]``."""
        stream = np.asarray(stream)
        check_loihi_graph(lg)
        self.last_loihi_graph = lg
        in_shape = tuple(lg.input.shape)
        if stream.ndim != 2 + len(in_shape) or tuple(stream.shape[2:]) != in_shape:
            raise LasnnError(
                f"The input stream has shape {stream.shape}; this graph expects [T, B, "
                f"{', '.join(map(str, in_shape))}]."
            )
        if stream.shape[0] != lg.timesteps:
            raise LasnnError(
                f"The input stream has {stream.shape[0]} time steps but the quantised graph was "
                f"built for T = {lg.timesteps}; quantise it for this T."
            )
        batch = stream.shape[1]
        parts = [
            self._run_batch(lg, stream[:, b : b + self.max_samples_per_run])
            for b in range(0, batch, self.max_samples_per_run)
        ]
        if len(parts) == 1:
            return parts[0]
        return BackendResult(
            outputs=np.concatenate([p.outputs for p in parts], axis=1),
            spikes={k: np.concatenate([p.spikes[k] for p in parts], axis=1) for k in parts[0].spikes},
        )

    def _run_batch(self, lg: LoihiGraph, stream: np.ndarray) -> BackendResult:
        lava = _import_lava()
        samples = stream.shape[1]
        started = time.perf_counter()
        record_dir = tempfile.TemporaryDirectory(prefix="lasnn-lava-")
        net = build_network(lava, lg, stream, record_dir.name)
        first = net.processes[0]
        try:
            built = time.perf_counter()
            # compiles, starts one OS process per Lava process, and runs all samples
            first.run(
                condition=lava["RunSteps"](num_steps=net.total_steps),
                run_cfg=lava["Loihi2SimCfg"](select_tag="fixed_pt"),
            )
            ran = time.perf_counter()
            spikes_raw = {name: _load_recording(path, name) for name, path in net.sinks.items()}
            readout_raw = None
            if net.monitor is not None:
                data = net.monitor.get_data()
                readout_raw = np.asarray(data[net.readout_var[0]][net.readout_var[1]])  # [steps, *shape]
            read = time.perf_counter()
        finally:
            first.stop()
            record_dir.cleanup()
        self.timings.append(
            {
                "samples": samples,
                "steps": net.total_steps,
                "processes": len(net.processes),
                "build_s": built - started,
                "compile_and_run_s": ran - built,
                "read_s": read - ran,
                "total_s": time.perf_counter() - started,
            }
        )
        spikes = {
            name: _align(lg, lg.layers[name], raw, samples).astype(np.uint8)
            for name, raw in spikes_raw.items()
        }
        ro = lg.readout
        layer = lg.layers[ro.layer]
        if ro.mode == "spikes":
            values = spikes.get(ro.layer)
            if values is None:
                raise LasnnError(
                    f"The readout layer {ro.layer!r} records no spikes; the quantised graph is inconsistent."
                )
            outputs = lg.readout_to_float(values)
        else:
            outputs = lg.readout_to_float(_align(lg, layer, readout_raw, samples).astype(np.int64))
        spikes = {name: s for name, s in spikes.items() if lg.layers[name].kind == "lif"}
        return BackendResult(outputs=outputs, spikes=spikes)


def _load_recording(path: str, layer: str) -> np.ndarray:
    """A ``FileSink`` recording ``[steps, *shape]``."""
    if not os.path.isfile(path):
        raise LasnnError(f"Lava wrote no spike recording for layer {layer!r}; the run did not complete.")
    return np.load(path)


def _align(lg: LoihiGraph, layer: LoihiLayer, raw: np.ndarray, samples: int) -> np.ndarray:
    """Lava-time ``[steps, *shape]`` -> float-graph time ``[T, B, *shape]`` for ``layer``."""
    period = lg.steps_per_sample(0)
    t = np.arange(lg.timesteps)
    n = np.arange(samples)
    index = n[None, :] * period + t[:, None] + layer.depth  # Lava step - 1
    return raw[index]


def _quantise(graph: Graph, stream: np.ndarray) -> LoihiGraph:
    from lasnn.hardware.quantise import quantise

    lg, _ = quantise(graph, stream)
    return lg


def build_network(lava: dict[str, Any], lg: LoihiGraph, stream: np.ndarray, record_dir: str) -> _Network:
    """Create and connect the Lava processes for ``stream`` ``[T, B, *input_shape]`` (not yet run); spike
    recordings will be written to ``record_dir``."""
    samples = stream.shape[1]
    period = lg.steps_per_sample(0)
    total = lg.total_steps(samples, 0)
    steps_index = np.arange(samples)[None, :] * period + np.arange(lg.timesteps)[:, None]  # [T, B]
    processes: list[Any] = []

    lif: dict[str, Any] = {}
    for name, layer in lg.layers.items():
        lif[name] = lava["LIFReset"](
            shape=tuple(layer.shape),
            du=int(layer.du),
            dv=int(layer.dv),
            vth=int(layer.vth),
            bias_mant=np.asarray(layer.bias_mant, dtype=np.int32).reshape(layer.shape),
            bias_exp=np.asarray(layer.bias_exp, dtype=np.int32).reshape(layer.shape),
            reset_interval=period,
            reset_offset=lg.reset_offset(name, 0),
            name=f"lif:{name}",
        )
        processes.append(lif[name])

    source = None
    if lg.input.mode == "spikes":
        data = np.zeros((*lg.input.shape, total), dtype=np.int32)
        values = np.moveaxis(np.asarray(stream), (0, 1), (-2, -1))  # [*shape, T, B]
        if not np.isin(values, (0, 1)).all():
            raise LasnnError(
                "The quantised graph takes input spikes, but the input stream holds values "
                "other than 0 and 1; use a spike encoding or an analog (current) input stage."
            )
        data[..., steps_index] = values.astype(np.int32)
        source = lava["Source"](data=data)
        processes.append(source)
    elif lg.input.mode == "current":
        for dst, currents in host_currents(lg, stream).items():
            layer = lg.layers[dst]
            if np.abs(currents).max(initial=0) > RING_MAX_VALUE:
                raise LasnnError(
                    f"Host currents into layer {dst!r} exceed int32; the quantised graph is inconsistent."
                )
            data = np.zeros((*layer.shape, total), dtype=np.int32)
            data[..., steps_index + layer.depth] = np.moveaxis(currents, (0, 1), (-2, -1)).astype(np.int32)
            inject = lava["Source"](data=data)
            inject.s_out.connect(lif[dst].a_in)
            processes.append(inject)
    else:
        raise LasnnError(
            f"Unknown input mode {lg.input.mode!r} in the quantised graph; expected 'spikes' or 'current'."
        )

    for syn in lg.synapses:
        if syn.src in lif:
            src_port, src_shape = lif[syn.src].s_out, tuple(lg.layers[syn.src].shape)
        elif syn.src == lg.input.name and source is not None:
            src_port, src_shape = source.s_out, tuple(lg.input.shape)
        else:
            raise LasnnError(
                f"Quantised synapse {syn.name!r} comes from {syn.src!r}, which is neither a layer "
                "nor the spike input; the quantised graph is inconsistent."
            )
        if syn.dst not in lif:
            raise LasnnError(
                f"Quantised synapse {syn.name!r} goes to {syn.dst!r}, which is not a layer; the "
                "quantised graph is inconsistent."
            )
        dst_shape = tuple(lg.layers[syn.dst].shape)
        processes.append(_connect(lava, lg, syn, src_port, src_shape, lif[syn.dst], dst_shape, period))

    sinks: dict[str, str] = {}
    for index, (name, layer) in enumerate(lg.layers.items()):
        if layer.kind == "lif" or lg.readout.mode == "spikes" and name == lg.readout.layer:
            sinks[name] = os.path.join(record_dir, f"layer{index}.npy")
            sink = lava["FileSink"](shape=tuple(layer.shape), buffer=total, path=sinks[name], dtype="int8")
            lif[name].s_out.connect(sink.a_in)
            processes.append(sink)
    monitor = None
    readout_var = None
    if lg.readout.mode in ("current", "potential"):
        monitor = lava["Monitor"]()
        target = lif[lg.readout.layer]
        var = target.u if lg.readout.mode == "current" else target.v
        monitor.probe(var, total)
        readout_var = (target.name, var.name)
        processes.append(monitor)
    elif lg.readout.mode != "spikes":
        raise LasnnError(
            f"Unknown readout mode {lg.readout.mode!r} in the quantised graph; expected "
            "'current', 'potential' or 'spikes'."
        )
    return _Network(
        processes=processes, sinks=sinks, monitor=monitor, readout_var=readout_var, total_steps=total
    )


def _connect(
    lava: dict[str, Any],
    lg: LoihiGraph,
    syn: LoihiSynapse,
    src_port: Any,
    src_shape: tuple[int, ...],
    dst: Any,
    dst_shape: tuple[int, ...],
    period: int,
) -> Any:
    """Create the Lava connection process for ``syn`` and wire it from ``src_port`` to ``dst.a_in``."""
    masked = mask_length(lg, syn)
    name = f"syn:{syn.name}"
    if syn.kind == "conv":
        g = syn.geometry
        if g is None or syn.delay != 0 or masked != 0:
            raise LasnnError(
                f"Quantised conv synapse {syn.name!r} needs a geometry and no delay; the quantised "
                "graph is inconsistent."
            )
        if tuple(g.input_shape) != src_shape and math.prod(g.input_shape) != math.prod(src_shape):
            raise LasnnError(
                f"Quantised conv synapse {syn.name!r} expects input {g.input_shape}, its source "
                f"has shape {src_shape}."
            )
        c, h, w = g.input_shape
        conv = lava["Conv"](
            weight=lava_conv_kernel(syn.weight),
            input_shape=(w, h, c),
            padding=(int(g.padding[1]), int(g.padding[0])),
            stride=(int(g.stride[1]), int(g.stride[0])),
            name=name,
        )
        port = src_port if src_shape == tuple(g.input_shape) else src_port.reshape(tuple(g.input_shape))
        port.transpose([2, 1, 0]).connect(conv.s_in)
        out = conv.a_out.transpose([2, 1, 0])
        if tuple(g.output_shape) != dst_shape:
            out = out.reshape(dst_shape)
        out.connect(dst.a_in)
        return conv
    if syn.kind != "dense":
        raise LasnnError(f"Quantised synapse {syn.name!r} has kind {syn.kind!r}; expected 'dense' or 'conv'.")
    matrix = syn.matrix()
    n_out, n_in = matrix.shape
    if n_in != math.prod(src_shape) or n_out != math.prod(dst_shape):
        raise LasnnError(
            f"Quantised synapse {syn.name!r} has a {n_out}x{n_in} matrix but connects {src_shape} "
            f"to {dst_shape}."
        )
    common = dict(
        weight_exp=int(syn.weight_exp),
        sign_mode=lava["SignMode"](syn.lava_sign_mode()),
        num_weight_bits=8,
        name=name,
    )
    large = n_out * n_in >= SPARSE_MIN_ENTRIES and matrix.nnz < SPARSE_MAX_DENSITY * n_out * n_in
    if n_out * n_in > DENSE_MAX_ENTRIES and not (large and masked == 0):
        raise LasnnError(
            f"Quantised synapse {syn.name!r} is a {n_out}x{n_in} matrix, too large for Lava's dense "
            "connection processes in memory; simulate this graph with the emulator."
        )
    if masked > 0:
        proc = lava["MaskedDelayDense"](
            weights=matrix.toarray().astype(np.int32),
            delays=np.full((n_out, n_in), int(syn.delay), dtype=int),
            mask_interval=period,
            mask_offset=1 + lg.layers[syn.dst].depth,
            mask_length=masked,
            **common,
        )
    elif large and syn.delay > 0:
        weights = matrix.astype(np.int32).tocsr()
        delays = weights.copy()
        delays.data = np.full(delays.nnz, int(syn.delay), dtype=int)
        proc = lava["DelaySparse"](weights=weights, delays=delays, **common)
    elif syn.delay > 0:
        proc = lava["DelayDense"](
            weights=matrix.toarray().astype(np.int32),
            delays=np.full((n_out, n_in), int(syn.delay), dtype=int),
            **common,
        )
    elif large:
        proc = lava["Sparse"](weights=matrix.astype(np.int32).tocsr(), **common)
    else:
        proc = lava["Dense"](weights=matrix.toarray().astype(np.int32), **common)
    port = src_port if len(src_shape) == 1 else src_port.reshape((n_in,))
    port.connect(proc.s_in)
    out = proc.a_out if len(dst_shape) == 1 else proc.a_out.reshape(dst_shape)
    out.connect(dst.a_in)
    return proc
