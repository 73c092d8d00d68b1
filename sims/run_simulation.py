"""The shared driver behind ``lasnn simulate``: graph + data -> backend run -> ``run.json`` (+ spikes).

One function, ``simulate``, does everything the command line does, so that the demo and the reports
call exactly the same code:

1. read the NIR graph (``lasnn.export.nir_io.read_nir``) and take data set, encoding and T from its
   metadata unless given;
2. take the first N test samples in the data set's fixed order (``lasnn.data.first_samples``), or a
   foreign graph's pre-encoded inputs from an ``.npy`` file ``(N, T, *input_shape)``;
3. for the integer backends, run a compiled model (``lasnn compile``; ``lasnn.hardware.compiled_model``)
   or compile the ``.nir`` on the fly by the same rule: calibrated on ``calibration`` if given, else on
   training samples of the graph's data set, else static bounds; never on the samples being scored, so
   that Lava, the emulator and every subset of samples run the very same integers;
4. encode each sample (Poisson spikes from a generator seeded per sample, so every backend and every
   batch size sees the same spikes), run the backend batch by batch under a progress bar over samples,
   and accumulate top-1 accuracy and per-layer activity (``lasnn.hardware.activity.layer_activity``);
5. write ``run.json`` (keys documented in ``lasnn.sims.backend``) and, if asked, every layer's spike
   trains as ``.npz`` (``(N, T, *shape)`` per neuron node, the Output node's values as ``output``), both
   atomically.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lasnn.artifacts import atomic_write, check_writable, write_json
from lasnn.encoding import ENCODINGS
from lasnn.errors import LasnnError
from lasnn.export.graph import Graph, Input, Neuron, Output
from lasnn.hardware.compiled_model import encode_samples

BACKENDS = ("lava", "emulator", "float")
# samples per backend call (the progress bar's step); lava: per Lava run (one read-back); the emulator
# splits its calls into cache-sized chunks itself (lasnn.sims.emulator.auto_batch_size)
DEFAULT_BATCH = {"lava": 100, "emulator": 1024, "float": 256}
OUTPUT_KEY = "output"  # key of the Output node's values in a --save-spikes file


def make_backend(name: str, device: str = "cpu") -> Any:
    """The backend object for ``name`` (imported lazily: the float backend never imports Lava)."""
    if name == "float":
        from lasnn.sims.float_backend import FloatBackend

        return FloatBackend(progress=False)
    if name == "emulator":
        from lasnn.sims.emulator import EmulatorBackend

        return EmulatorBackend(device=device, progress=False)
    if name == "lava":
        from lasnn.sims.lava_backend import LavaBackend

        return LavaBackend()
    raise LasnnError(f"Unknown backend {name!r}; expected one of {', '.join(BACKENDS)}.")


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise LasnnError(f"Unknown device {device!r}; expected 'cpu' or 'cuda'.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LasnnError(f"Device {device!r} was asked for but torch sees no CUDA GPU; use --device cpu.")
    return device


def _graph_io(graph: Graph, path: str) -> tuple[str, tuple[int, ...], str, tuple[int, ...]]:
    inputs, outputs = graph.inputs(), graph.outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise LasnnError(
            f"{path} has {len(inputs)} input and {len(outputs)} output nodes; lasnn simulates graphs with "
            "exactly one of each."
        )
    in_node, out_node = graph.nodes[inputs[0]], graph.nodes[outputs[0]]
    assert isinstance(in_node, Input) and isinstance(out_node, Output)
    return inputs[0], tuple(int(s) for s in in_node.shape), outputs[0], tuple(int(s) for s in out_node.shape)


def _load_inputs(
    path: str | os.PathLike | np.ndarray, in_shape: tuple[int, ...], timesteps: int | None
) -> np.ndarray:
    """Pre-encoded inputs ``(N, T, *input_shape)`` from an ``.npy`` file (or an array), checked against the
    graph."""
    from lasnn.hardware.compiled_model import load_stream_file

    array = load_stream_file(path, in_shape, "--inputs")
    if timesteps is not None and array.shape[1] != timesteps:
        raise LasnnError(
            f"{_name(path, 'inputs')} has {array.shape[1]} time steps but --timesteps {timesteps} was given; "
            "pass inputs with that many steps."
        )
    return array


def _name(source: Any, what: str) -> str:
    """How messages and the run record name an input given as a file or as an array (the Python API)."""
    return f"the {what} array" if isinstance(source, np.ndarray) else str(source)


def _load_labels(path: str | os.PathLike | np.ndarray, count: int, classes: int) -> np.ndarray:
    if isinstance(path, np.ndarray):
        labels, path = path, _name(path, "labels")
    else:
        path = Path(path)
        try:
            labels = np.load(path, allow_pickle=False)
        except Exception as error:
            raise LasnnError(
                f"{path} is not a readable .npy array ({type(error).__name__}); pass integer labels "
                "of shape (N,) with --labels."
            ) from error
    if labels.ndim != 1 or labels.shape[0] != count or labels.dtype.kind not in "iu":
        raise LasnnError(
            f"{path} has shape {labels.shape} and dtype {labels.dtype}; expected {count} integer "
            "labels, one per input sample."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise LasnnError(
            f"{path} holds labels in {labels.min()}..{labels.max()}, but the graph has {classes} outputs "
            f"(classes 0..{classes - 1}); pass labels in that range."
        )
    return labels.astype(np.int64)


def _dataset_samples(
    name: str,
    samples: int | None,
    data_root: str | None,
    in_shape: tuple[int, ...],
    num_classes: int,
    graph_path: str,
    meta: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    from lasnn.data import dataset_info, first_samples, load_dataset

    info = dataset_info(name, data_root)
    if tuple(info.input_shape) != in_shape:
        raise LasnnError(
            f"Data set {name} has images of shape {tuple(info.input_shape)} but {graph_path} "
            f"expects input of shape {in_shape}; pass the data set the model was trained on."
        )
    if info.num_classes != num_classes:
        raise LasnnError(
            f"Data set {name} has {info.num_classes} classes but {graph_path} has "
            f"{num_classes} outputs; pass the data set the model was trained on."
        )
    for key in ("mean", "std"):
        recorded = meta.get(key)
        if recorded is not None and (
            np.shape(recorded) != np.shape(getattr(info, key))
            or not np.allclose(recorded, getattr(info, key), atol=1e-4)
        ):
            raise LasnnError(
                f"{graph_path} was trained on data normalised with {key} {list(np.round(recorded, 4))}, but "
                f"data set {name} uses {list(np.round(getattr(info, key), 4))}; pass the data set the model "
                "was trained on."
            )
    dataset, _ = load_dataset(name, "test", data_root, augment=False)
    return first_samples(dataset, samples)


def simulate(
    graph_path: str | os.PathLike | Any,
    backend: str = "emulator",
    dataset: str | None = None,
    samples: int | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    data_root: str | os.PathLike | None = None,
    inputs: str | os.PathLike | np.ndarray | None = None,
    labels: str | os.PathLike | np.ndarray | None = None,
    timesteps: int | None = None,
    out: str | os.PathLike | None = None,
    save_spikes: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    calibration: str | os.PathLike | np.ndarray | None = None,
    input_mode: str | None = None,
    dt: float | None = None,
    written_by: str | None = None,
) -> dict[str, Any]:
    """Simulate the NIR graph or compiled model (``lasnn compile``) at ``graph_path`` on ``backend`` and
    return (and write to ``out``) the run record; see the module docstring. ``samples`` = the first N test
    samples (all when None); ``calibration``/``input_mode``: how a ``.nir`` is compiled on the fly;
    ``dt``/``written_by``: how a foreign ``.nir`` is read (``lasnn.export.nir_io``)."""
    from lasnn.export.nir_io import read_nir
    from lasnn.hardware.activity import layer_activity
    from lasnn.hardware.compiled_model import CompiledModel, is_compiled_model, load_compiled

    started = time.perf_counter()
    if backend not in BACKENDS:
        raise LasnnError(f"Unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    device = _check_device(device)
    if samples is not None and samples < 1:
        raise LasnnError(f"--samples must be a positive number of samples, got {samples}.")
    if batch_size is not None and batch_size < 1:
        raise LasnnError(f"--batch-size must be a positive number of samples, got {batch_size}.")
    if timesteps is not None and timesteps < 1:
        raise LasnnError(f"--timesteps must be a positive number of time steps, got {timesteps}.")
    if inputs is not None and dataset is not None:
        raise LasnnError("Pass either --dataset or --inputs, not both.")
    if save_spikes is not None and Path(save_spikes).suffix != ".npz":
        raise LasnnError(f"--save-spikes {save_spikes} must name an .npz file.")
    for target in (out, save_spikes):  # refuse an unwritable output before the (long) simulation
        if target is not None:
            check_writable(target)
    if isinstance(graph_path, CompiledModel):  # a compiled model in memory (lasnn's Python API)
        compiled = graph_path
        graph_path = str(compiled.provenance.get("graph_file") or "compiled model")
    else:
        graph_path = str(graph_path)
        compiled = load_compiled(graph_path) if is_compiled_model(graph_path) else None
    if compiled is not None:
        fixed = {"--calibration": calibration, "--input-mode": input_mode, "--dt": dt, "--from": written_by}
        for flag, value in fixed.items():
            if value is not None:
                raise LasnnError(
                    f"{graph_path} is a compiled model, whose {flag} was fixed by lasnn compile; "
                    "recompile the graph to change it."
                )
        if timesteps is not None and timesteps != compiled.timesteps:
            raise LasnnError(
                f"{graph_path} is compiled for T = {compiled.timesteps}, not --timesteps {timesteps}; "
                "recompile it for that T."
            )
        timesteps = compiled.timesteps
        graph = compiled.graph()
    else:
        graph = read_nir(graph_path, dt=dt, written_by=written_by)
    meta = graph.metadata
    in_name, in_shape, out_name, out_shape = _graph_io(graph, graph_path)
    names = [n for n, node in graph.nodes.items() if isinstance(node, Neuron)]
    if OUTPUT_KEY in names:
        raise LasnnError(
            f"{graph_path} has a neuron node named {OUTPUT_KEY!r}, which the spike file "
            "reserves for the Output node; rename that node."
        )
    steps = timesteps if timesteps is not None else meta.get("timesteps")

    encoding: str | None = None
    label_array: np.ndarray | None = None
    if inputs is not None:
        data = _load_inputs(inputs, in_shape, timesteps)  # T: the inputs' own unless --timesteps is given
        steps = int(data.shape[1])
        if labels is not None:
            label_array = _load_labels(labels, int(data.shape[0]), math.prod(out_shape))
        if samples is not None:
            data = data[:samples]
        count = int(data.shape[0])
        if label_array is not None:
            label_array = label_array[:count]
        dataset_name = None
        images = None
    else:
        if labels is not None:
            raise LasnnError("--labels goes with --inputs; a data set brings its own labels.")
        dataset_name = dataset or meta.get("dataset")
        if dataset_name is None:
            raise LasnnError(f"{graph_path} records no data set; pass --dataset NAME or --inputs X.npy.")
        if steps is None:
            raise LasnnError(f"{graph_path} records no number of time steps; pass --timesteps T.")
        encoding = meta.get("encoding")
        if encoding not in ENCODINGS:
            raise LasnnError(
                f"{graph_path} records encoding {encoding!r}; expected one of "
                f"{', '.join(ENCODINGS)} (foreign graphs: pass pre-encoded --inputs instead)."
            )
        if len(out_shape) != 1:
            raise LasnnError(
                f"{graph_path} has output shape {out_shape}; classifying a data set needs a "
                "flat (num_classes,) output."
            )
        images, label_tensor = _dataset_samples(
            dataset_name, samples, data_root, in_shape, out_shape[0], graph_path, meta
        )
        label_array = label_tensor.numpy().astype(np.int64)
        count = int(images.shape[0])
        data = None
    steps = int(steps)
    graph.metadata["timesteps"] = steps  # the quantiser builds the Loihi schedule for this T

    runner = make_backend(backend, device)
    quant_report = None
    sim_graph: Any = graph
    if backend in ("lava", "emulator"):
        if compiled is None:  # the rule of lasnn compile: never calibrated on the samples scored here
            from lasnn.hardware.compiled_model import compile_graph

            compiled = compile_graph(
                graph_path,
                calibration=calibration,
                dataset=dataset_name,
                data_root=data_root,
                timesteps=steps,
                input_mode=input_mode,
                dt=dt,
                written_by=written_by,
            )
        sim_graph, quant_report = compiled.loihi, compiled.report
        if compiled.input_mode == "spikes" and data is not None and not np.isin(data, (0, 1)).all():
            raise LasnnError(
                f"{_name(inputs, 'inputs')} holds values other than 0 and 1, but the model takes spike "
                "input; compile it with --input-mode currents for graded inputs (e.g. event counts)."
            )

    batch = batch_size or DEFAULT_BATCH[backend]
    correct = 0
    activity: list[dict] | None = None
    spike_parts: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=count, desc=f"simulate ({backend})", unit="sample", disable=not progress)
    try:
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            if data is not None:
                stream = np.ascontiguousarray(np.moveaxis(data[start:stop], 1, 0))
            else:
                stream = encode_samples(images[start:stop], steps, encoding, seed, start)
            result = (
                runner.run(sim_graph, stream) if quant_report is None else runner.run_loihi(sim_graph, stream)
            )
            outputs = np.asarray(result.outputs)
            if outputs.shape[:2] != (steps, stop - start):
                raise LasnnError(
                    f"Backend {backend} returned outputs of shape {outputs.shape}; expected "
                    f"({steps}, {stop - start}, ...). This is a bug in the backend."
                )
            if label_array is not None:
                logits = outputs.reshape(steps, stop - start, -1).mean(axis=0)
                correct += int((logits.argmax(axis=1) == label_array[start:stop]).sum())
            # integer backends: the compiled network's own synapses (always-on source, reset) count too
            layers = layer_activity(graph, result.spikes, stream, None if quant_report is None else sim_graph)
            activity = _accumulate(activity, layers, stop - start)
            if save_spikes is not None:
                for name in names:
                    spike_parts.setdefault(name, []).append(
                        np.moveaxis(result.spikes[name], 1, 0).astype(np.uint8)
                    )
                spike_parts.setdefault(OUTPUT_KEY, []).append(np.moveaxis(outputs, 1, 0))
            bar.update(stop - start)
    finally:
        bar.close()
    for entry in activity or []:
        for key in ("spikes", "synaptic_ops", "macs", "neuron_updates", "chip_ops"):
            if key in entry and entry[key] is not None:
                entry[key] = entry[key] / count

    record = {
        "backend": backend,
        "samples": count,
        "timesteps": steps,
        "accuracy": None if label_array is None else correct / count,
        "correct": None if label_array is None else correct,
        "layers": activity or [],
        "quantisation": quant_report,
        "graph": graph_path,
        "dataset": dataset_name,
        "inputs": None if inputs is None else _name(inputs, "inputs"),
        "encoding": encoding,
        "seed": seed,
        "batch_size": batch,
        "device": device if backend == "emulator" else "cpu",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "wall_seconds": time.perf_counter() - started,
    }
    if quant_report is not None:
        record["compiled_model"] = {
            "path": graph_path if is_compiled_model(graph_path) else None,
            **compiled.provenance,
        }
    if save_spikes is not None:
        arrays = {name: np.concatenate(parts, axis=0) for name, parts in spike_parts.items()}
        with atomic_write(save_spikes, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        record["spikes_file"] = str(save_spikes)
    if out is not None:
        try:
            write_json(out, record)
        except LasnnError:  # e.g. a full disk: leave no spike file without its run record
            if save_spikes is not None:
                Path(save_spikes).unlink(missing_ok=True)
            raise
    return record


def _accumulate(total: list[dict] | None, layers: list[dict], batch: int) -> list[dict]:
    """Sum per-inference layer counts weighted by batch size (divided by the sample count at the end)."""
    counted = ("spikes", "synaptic_ops", "macs", "neuron_updates", "chip_ops")
    if total is None:
        return [{**e, **{k: e[k] * batch for k in counted if e.get(k) is not None}} for e in layers]
    for acc, entry in zip(total, layers, strict=True):
        for key in counted:
            if entry.get(key) is not None:
                acc[key] += entry[key] * batch
    return total
