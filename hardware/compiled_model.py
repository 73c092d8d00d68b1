"""The compiled Loihi model: the fixed-point network as an artifact of its own (``lasnn compile``).

Why an artifact: the integers are what both integer backends (Lava, the emulator) execute, so they must
not depend on which samples, or how many, a later ``lasnn simulate`` scores. A ``CompiledModel`` is
made once, from the graph and a calibration set fixed by one rule, and every backend and every subset of
samples then runs the very same integers. It holds:

- ``loihi``: the ``LoihiGraph`` (weights, exponents, delays, thresholds, decays, biases, the layers'
  depths, i.e. the schedule, the input stage and its mode, the readout), see ``loihi_graph``;
- ``report``: the quantiser's per-layer report (``quantise``);
- ``provenance``: the source graph's sha256, its dt, the calibration source and size, how the input
  mode was chosen, the lasnn and library versions;
- ``graph_nir``: the source NIR file byte for byte (its sha256 is ``provenance['graph_sha256']``), so
  the float reference and the activity counts of ``simulate`` use the graph the integers came from.

**Calibration rule** (``compile_graph``): an explicit calibration array/file (``--calibration X.npy``, the
layout of ``simulate --inputs``: ``(N, T, *input_shape)``) if given; else the first
``CALIBRATION_SAMPLES`` training samples of the graph's data set (recorded or ``--dataset``), encoded with
the graph's encoding; else none, and the scales come from the quantiser's static worst-case bounds. Never
the samples being scored. **Input mode**: ``--input-mode`` if given, else the graph's metadata
(``input_mode``, or ``encoding``: ``direct`` means analog currents), else spikes (NIR graphs of other
frameworks take spike trains); never the values of a batch.

File format (written by hand: no library stores a Loihi network independently of Lava's processes):
an uncompressed-by-default numpy ``.npz`` (zip of ``.npy`` arrays, read with ``allow_pickle=False``)
holding ``__header__`` (UTF-8 JSON: format, version, the dataclass tree with array references, report,
provenance), ``__graph__`` (the NIR bytes) and one ``aN`` entry per array. Written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasnn.artifacts import atomic_write, versions
from lasnn.errors import LasnnError
from lasnn.export.graph import Graph
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

FORMAT = "lasnn-compiled-model"
FORMAT_VERSION = 1
CALIBRATION_SAMPLES = 256  # training samples the scales are calibrated on (the data-set rule)
INPUT_MODE_FLAGS = {"spikes": "spikes", "currents": "current", "current": "current"}
_TYPES = {
    cls.__name__: cls
    for cls in (LoihiGraph, LoihiInput, LoihiLayer, LoihiSynapse, HostSynapse, LoihiReadout, ConvGeometry)
}


@dataclass
class CompiledModel:
    """A quantised Loihi 2 network with its report and provenance (module docstring)."""

    loihi: LoihiGraph
    report: dict[str, Any]
    provenance: dict[str, Any]
    graph_nir: bytes

    @property
    def timesteps(self) -> int:
        return int(self.loihi.timesteps)

    @property
    def input_mode(self) -> str:
        return self.loihi.input.mode

    @property
    def schedule(self) -> dict[str, dict[str, int]]:
        """Per layer: Lava step offset (depth), ``LIFReset`` reset interval and offset (no gap)."""
        lg = self.loihi
        return {
            name: {
                "depth": layer.depth,
                "reset_interval": lg.steps_per_sample(0),
                "reset_offset": lg.reset_offset(name, 0),
            }
            for name, layer in lg.layers.items()
        }

    @property
    def delays(self) -> dict[str, int]:
        """Extra delay steps of every on-chip synapse (beyond Lava's built-in one), by synapse name."""
        return {f"{s.src}->{s.dst}": int(s.delay) for s in self.loihi.synapses}

    def graph(self) -> Graph:
        """The float graph the integers were compiled from (read from the stored NIR bytes)."""
        import nir

        from lasnn.export.nir_io import nir_to_graph

        graph = nir_to_graph(
            nir.read(io.BytesIO(self.graph_nir), type_check=False),  # type checked when it was compiled
            dt=self.provenance.get("dt"),
            where="the compiled model",
            written_by=self.provenance.get("nir_writer"),
        )
        graph.metadata["timesteps"] = self.timesteps
        return graph

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically (see the module docstring for the format)."""
        arrays: dict[str, np.ndarray] = {}
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "loihi": _encode(self.loihi, arrays),
            "report": _encode(self.report, arrays),
            "provenance": _encode(self.provenance, arrays),
        }
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf8"), dtype=np.uint8)
        arrays["__graph__"] = np.frombuffer(self.graph_nir, dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        with atomic_write(path, "wb") as handle:
            handle.write(buffer.getvalue())


def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON-able tree of ``obj``: dataclasses tagged by type, arrays by reference, tuples tagged."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _encode(getattr(obj, f.name), arrays) for f in dataclasses.fields(obj)}
        return {"__type__": type(obj).__name__, **fields}
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a compiled model")


def _decode(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        return np.asarray(arrays[obj["__array__"]])
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    if "__type__" in obj:
        cls = _TYPES.get(obj["__type__"])
        if cls is None:
            raise KeyError(obj["__type__"])
        return cls(**{k: _decode(v, arrays) for k, v in obj.items() if k != "__type__"})
    return {k: _decode(v, arrays) for k, v in obj.items()}


def is_compiled_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by ``CompiledModel.save`` (a zip with lasnn's header)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return "__header__.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_compiled(path: str | os.PathLike) -> CompiledModel:
    """Read and check a compiled model; every failure is one ``LasnnError`` sentence naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LasnnError(f"{path} does not exist or is not a file; pass a model written by lasnn compile.")
    if not is_compiled_model(path):
        raise LasnnError(
            f"{path} is not a lasnn compiled model (no lasnn header); create one with "
            "'lasnn compile GRAPH.nir -o MODEL'."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(bytes(archive["__header__"]).decode("utf8"))
            if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
                raise LasnnError(
                    f"{path} is a compiled model of format {header.get('format')!r} version "
                    f"{header.get('format_version')!r}; this lasnn reads {FORMAT!r} version "
                    f"{FORMAT_VERSION}, recompile it."
                )
            graph_nir = bytes(archive["__graph__"])
            arrays = {k: archive[k] for k in archive.files if not k.startswith("__")}
            model = CompiledModel(
                loihi=_decode(header["loihi"], arrays),
                report=_decode(header["report"], arrays),
                provenance=_decode(header["provenance"], arrays),
                graph_nir=graph_nir,
            )
    except LasnnError:
        raise
    except Exception as error:  # zip/json/key errors of a damaged or foreign file
        raise LasnnError(
            f"{path} cannot be read as a compiled model ({type(error).__name__}); it is damaged, "
            "recompile it."
        ) from error
    digest = hashlib.sha256(model.graph_nir).hexdigest()
    if digest != model.provenance.get("graph_sha256"):
        raise LasnnError(f"{path} holds a graph whose sha256 does not match its provenance; recompile it.")
    try:
        check_loihi_graph(model.loihi)
    except LasnnError as error:
        raise LasnnError(f"{path} holds an invalid Loihi network: {error}") from error
    return model


# ----------------------------------------------------------------------------------------------------
# compiling


def load_stream_file(
    path: str | os.PathLike | np.ndarray, in_shape: tuple[int, ...], flag: str
) -> np.ndarray:
    """A pre-encoded stream ``(N, T, *input_shape)`` from an ``.npy`` file (or an array given from Python,
    lasnn's API), checked against the graph."""
    if isinstance(path, np.ndarray):
        array, path = path, f"the {flag.lstrip('-')} array"
    else:
        path = Path(path)
        if not path.is_file():
            raise LasnnError(
                f"{path} does not exist; pass an .npy array of shape (N, T, *input_shape) with {flag}."
            )
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as error:  # numpy raises ValueError/OSError/EOFError for bad files
            raise LasnnError(
                f"{path} is not a readable .npy array ({type(error).__name__}); pass an array of "
                "shape (N, T, *input_shape) saved with numpy.save."
            ) from error
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise LasnnError(
            f"{path} holds {getattr(array, 'dtype', type(array))} data; expected a numeric array "
            "of shape (N, T, *input_shape)."
        )
    if array.ndim != 2 + len(in_shape) or tuple(array.shape[2:]) != in_shape:
        raise LasnnError(
            f"{path} has shape {array.shape}; the graph's input expects (N, T, "
            f"{', '.join(map(str, in_shape))})."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise LasnnError(f"{path} has shape {array.shape}; it needs at least one sample and one time step.")
    if not np.isfinite(array).all():
        raise LasnnError(f"{path} contains NaN or infinite values; inputs must be finite.")
    return array


def encode_samples(
    images: torch.Tensor, timesteps: int, encoding: str, seed: int, first_index: int
) -> np.ndarray:
    """Encode ``[B, C, H, W]`` images to ``[T, B, ...]``; Poisson noise from one generator per sample
    (seeded by ``seed`` and the sample's index) so results do not depend on batching or backend."""
    from lasnn.encoding import encode

    if encoding != "poisson":
        return encode(images, timesteps, encoding).numpy()
    parts = []
    for i in range(images.shape[0]):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + first_index + i)
        parts.append(encode(images[i : i + 1], timesteps, encoding, gen))
    return torch.cat(parts, dim=1).numpy()


def resolve_input_mode(graph: Graph, input_mode: str | None) -> tuple[str, str]:
    """(mode, why) by the rule of the module docstring."""
    if input_mode is not None:
        if input_mode not in INPUT_MODE_FLAGS:
            raise LasnnError(f"input mode {input_mode!r} is unknown; expected 'spikes' or 'currents'.")
        return INPUT_MODE_FLAGS[input_mode], "flag"
    recorded = graph.metadata.get("input_mode")
    if recorded in INPUT_MODE_FLAGS:
        return INPUT_MODE_FLAGS[recorded], "graph metadata 'input_mode'"
    encoding = graph.metadata.get("encoding")
    if encoding is not None:
        return ("current" if encoding == "direct" else "spikes"), f"graph encoding {encoding!r}"
    return "spikes", "default for graphs that record no encoding (NIR inputs are spike trains)"


def _graph_and_bytes(
    graph: Graph | str | os.PathLike, dt: float | None, written_by: str | None = None
) -> tuple[Graph, bytes, str | None]:
    from lasnn.export.nir_io import graph_to_nir, read_nir

    if isinstance(graph, Graph):
        if written_by is not None:
            raise LasnnError("--from names the writer of a foreign .nir file; this graph is lasnn's own.")
        import nir

        buffer = io.BytesIO()
        nir.write(buffer, graph_to_nir(graph))
        return graph, buffer.getvalue(), None
    path = Path(graph)
    loaded = read_nir(path, dt=dt, written_by=written_by)
    return loaded, path.read_bytes(), str(path)


def compile_graph(
    graph: Graph | str | os.PathLike,
    *,
    calibration: np.ndarray | str | os.PathLike | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    timesteps: int | None = None,
    input_mode: str | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
    seed: int = 0,
    margin: float = 2.0,
    dt: float | None = None,
    written_by: str | None = None,
    bias_grid: int | None = None,
) -> CompiledModel:
    """Quantise a NIR graph (a path or a lasnn ``Graph``) into a ``CompiledModel`` by the calibration and
    input-mode rules of the module docstring. ``calibration``: an array or ``.npy`` path ``(N, T, *shape)``;
    ``seed``: of the Poisson encoding of data-set calibration samples (encoded with ``seed + 1``);
    ``dt``/``written_by``: how a foreign file is read (``lasnn.export.nir_io``; kept in the provenance);
    ``bias_grid``: every neuron bias on multiples of it (64: what lava-dl netx holds; ``quantise``)."""
    from lasnn.hardware.quantise import check_bias_grid, quantise

    bias_grid = check_bias_grid(bias_grid)

    if calibration_samples < 1:
        raise LasnnError(f"--calibration-samples must be positive, got {calibration_samples}.")
    if timesteps is not None and timesteps < 1:
        raise LasnnError(f"--timesteps must be a positive number of time steps, got {timesteps}.")
    graph, graph_bytes, graph_file = _graph_and_bytes(graph, dt, written_by)
    (in_name,) = graph.inputs()
    in_shape = tuple(int(s) for s in graph.nodes[in_name].shape)
    mode, mode_source = resolve_input_mode(graph, input_mode)
    meta = graph.metadata
    steps = timesteps if timesteps is not None else meta.get("timesteps")
    calib: np.ndarray | None = None
    cal: dict[str, Any] = {"source": "none (static worst-case bounds)", "samples": 0}
    if calibration is not None:
        if isinstance(calibration, np.ndarray):
            array = load_stream_file(calibration, in_shape, "--calibration")
            cal = {"source": "array"}
        else:
            array = load_stream_file(calibration, in_shape, "--calibration")
            cal = {"source": "file", "file": str(calibration)}
        array = array[:calibration_samples]
        cal["sha256"] = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        steps = int(steps if steps is not None else array.shape[1])
        if array.shape[1] != steps:
            raise LasnnError(
                f"the calibration data has {array.shape[1]} time steps but the model is compiled for "
                f"T = {steps}; pass calibration inputs with {steps} steps."
            )
        calib = np.ascontiguousarray(np.moveaxis(array, 1, 0))
        cal["samples"] = int(array.shape[0])
    elif dataset is not None or meta.get("dataset") is not None:
        from lasnn.data import dataset_info, first_samples, load_dataset
        from lasnn.encoding import ENCODINGS

        name = dataset or meta["dataset"]
        encoding = meta.get("encoding")
        if encoding not in ENCODINGS:
            raise LasnnError(
                f"the graph records encoding {encoding!r}, so training samples of {name} cannot be "
                "encoded for calibration; pass --calibration X.npy (pre-encoded, (N, T, *input_shape))."
            )
        if steps is None:
            raise LasnnError("the graph records no number of time steps; pass --timesteps T.")
        info = dataset_info(name, data_root)
        if tuple(info.input_shape) != in_shape:
            raise LasnnError(
                f"data set {name} has images of shape {tuple(info.input_shape)} but the graph expects "
                f"{in_shape}; pass the data set the model was trained on, or --calibration X.npy."
            )
        train, _ = load_dataset(name, "train", None if data_root is None else str(data_root), augment=False)
        images, _ = first_samples(train, calibration_samples)
        calib = encode_samples(images, int(steps), encoding, seed + 1, 0)
        cal = {
            "source": "dataset",
            "dataset": name,
            "split": "train",
            "samples": int(images.shape[0]),
            "encoding": encoding,
            "seed": seed + 1,
        }
    if steps is None:
        raise LasnnError(
            "the graph records no number of time steps and no calibration data was given; pass --timesteps T."
        )
    graph.metadata["timesteps"] = int(steps)
    lg, report = quantise(graph, calib, input_mode=mode, margin=margin, bias_grid=bias_grid)
    report["calibration"] = cal
    provenance = {
        "graph_sha256": hashlib.sha256(graph_bytes).hexdigest(),
        "graph_file": graph_file,
        "dt": float(meta["dt"]) if meta.get("dt") is not None else None,
        "nir_writer": written_by,
        "timesteps": int(steps),
        "input_mode": mode,
        "input_mode_source": mode_source,
        "calibration": cal,
        "margin": margin,
        "bias_grid": bias_grid,
        "lasnn_version": versions()["lasnn"],
        "versions": versions(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return CompiledModel(loihi=lg, report=report, provenance=provenance, graph_nir=graph_bytes)
