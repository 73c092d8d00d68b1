"""Run a netx HDF5 file (``lasnn export-netx``) with lava-dl's own loader in Lava's ``Loihi2SimCfg``.

Why: the point of exporting to netx is that Intel's loader, not lasnn, builds the network; so this module
builds nothing itself: ``lava.lib.dl.netx.hdf5.Network`` reads the file and makes its Lava processes
(``LIFReset`` neurons, ``Dense``/``Conv`` synapses), and lasnn only feeds the input, records, and lines
the results up with the float graph's time, as the other backends do (``BackendResult``). lava-dl is
optional (installed by ``scripts/netx_env.sh``); without it ``run_netx`` says so in one sentence.

Schedule (see ``lasnn.hardware.netx``): ``Network(reset_interval=P, reset_offset=1)`` with ``P = T +
gap``, ``gap = max(0, layers + 2 - T)``; sample ``n``'s float step ``t`` is sent into netx's input port at
Lava step ``n * P + 1 + t`` (binary spikes, or the host's integer currents as graded spikes) and netx
block ``i`` runs it at step ``n * P + 2 + t + i``. Spikes are recorded by ``FileSink`` processes on each
block's output port (Lava's ``Var.get`` reads one element per message), the readout's ``u`` (current
mode) or ``v`` (potential mode) by a ``Monitor``.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any

import numpy as np

from lasnn.errors import LasnnError
from lasnn.hardware.loihi_graph import host_currents
from lasnn.hardware.netx import RESET_OFFSET, read_netx
from lasnn.sims.backend import BackendResult


def netx_version() -> str | None:
    """lava-dl's installed version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lava-dl")
    except PackageNotFoundError:
        return None


def import_netx() -> Any:
    """``lava.lib.dl.netx.hdf5``, imported after lasnn's Lava import hooks (``lasnn.sims.lava_compat``).
    slayer prints a notice about an optional data-set toolbox to stdout when imported; it is kept off
    lasnn's output."""
    if netx_version() is None:
        raise LasnnError(
            "lava-dl (netx) is not installed; run 'make netx' (scripts/netx_env.sh) to install lava-dl 0.6.0."
        )
    from lasnn.sims.lava_backend import import_lava_runtime

    import_lava_runtime()
    with contextlib.redirect_stdout(io.StringIO()):
        from lava.lib.dl.netx import hdf5
    return hdf5


def _to_netx(x: np.ndarray, image: bool) -> np.ndarray:
    """``[T, B, *shape]`` (C, H, W or flat) -> netx's layout ``[T, B, W, H, C]`` or ``[T, B, N]``."""
    if image:
        return np.transpose(x, (0, 1, 4, 3, 2))
    return x.reshape(x.shape[0], x.shape[1], -1)


def _from_netx(x: np.ndarray, shape: tuple[int, ...], image: bool) -> np.ndarray:
    if image:
        return np.transpose(x, (0, 1, 4, 3, 2))
    return x.reshape(x.shape[0], x.shape[1], *shape)


def run_netx(path: str | os.PathLike, stream: np.ndarray) -> BackendResult:
    """Load ``path`` with netx and run ``stream`` ``[T, B, *input_shape]`` (all samples in one Lava run);
    outputs and spikes are aligned to the float graph's time like the emulator's."""
    hdf5 = import_netx()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer
    from lava.proc.monitor.process import Monitor

    from lasnn.sims.lava_processes.file_sink import FileSink

    nf = read_netx(path)
    lg = nf.loihi
    stream = np.asarray(stream)
    in_shape = tuple(lg.input.shape)
    if (
        stream.ndim != 2 + len(in_shape)
        or tuple(stream.shape[2:]) != in_shape
        or stream.shape[0] != lg.timesteps
    ):
        raise LasnnError(
            f"the input stream has shape {stream.shape}; this netx model expects [{lg.timesteps}, B, "
            f"{', '.join(map(str, in_shape))}]."
        )
    steps, samples = stream.shape[:2]
    period = max(steps, nf.reset_interval_min)
    blocks = len(nf.layers)
    total = samples * period + blocks
    first = lg.layers[nf.layers[0]]
    if lg.input.mode == "current":
        x = host_currents(lg, stream)[first.name]
    else:
        if not np.isin(stream, (0, 1)).all():
            raise LasnnError(
                "this netx model takes input spikes, but the stream holds values other than 0 and 1."
            )
        x = stream
    net = hdf5.Network(
        net_config=str(path),
        reset_interval=period,
        reset_offset=RESET_OFFSET,
        input_message_bits=nf.input_message_bits,
    )
    images = [len(layer.out.shape) == 3 for layer in net.layers]
    x = _to_netx(x, len(net.inp.shape) == 3)
    data = np.zeros((*net.inp.shape, total), dtype=np.int32)
    when = np.arange(samples)[None, :] * period + np.arange(steps)[:, None]  # [T, B]: Lava step - 1
    data[..., when] = np.moveaxis(x, (0, 1), (-2, -1)).astype(np.int32)
    source = RingBuffer(data=data)
    source.s_out.connect(net.inp)
    record = tempfile.TemporaryDirectory(prefix="lasnn-netx-")
    sinks: dict[str, str] = {}
    for i, name in enumerate(nf.layers):
        if lg.layers[name].kind == "lif" or (lg.readout.mode == "spikes" and name == lg.readout.layer):
            sinks[name] = os.path.join(record.name, f"block{i}.npy")
            sink = FileSink(shape=net.layers[i].out.shape, buffer=total, path=sinks[name], dtype="int8")
            net.layers[i].out.connect(sink.a_in)
    monitor = var = None
    if lg.readout.mode in ("current", "potential"):
        neuron = net.layers[nf.layers.index(lg.readout.layer)].neuron
        var = neuron.u if lg.readout.mode == "current" else neuron.v
        monitor = Monitor()
        monitor.probe(var, total)
    try:
        net.run(condition=RunSteps(num_steps=total), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        raw = {name: np.load(p) for name, p in sinks.items()}
        readout = None
        if monitor is not None:
            readout = np.asarray(monitor.get_data()[var.process.name][var.name])
    finally:
        net.stop()
        record.cleanup()

    def align(values: np.ndarray, name: str) -> np.ndarray:
        i = nf.layers.index(name)
        index = np.arange(samples)[None, :] * period + np.arange(steps)[:, None] + i + 1
        return _from_netx(values[index], tuple(lg.layers[name].shape), images[i])

    spikes = {name: align(values, name).astype(np.uint8) for name, values in raw.items()}
    if lg.readout.mode == "spikes":
        outputs = lg.readout_to_float(spikes[lg.readout.layer])
    else:
        shift = nf.v_shift.get(lg.readout.layer, 0)
        outputs = lg.readout_to_float(align(readout, lg.readout.layer).astype(np.int64) << shift)
    return BackendResult(
        outputs=outputs, spikes={n: s for n, s in spikes.items() if lg.layers[n].kind == "lif"}
    )
