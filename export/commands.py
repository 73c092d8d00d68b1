"""``lasnn export``: a student (or converted SNN) to NIR, a teacher to ONNX, or any NIR file to lasnn's
normalised NIR (validated, with dt recorded).

- ``lasnn export DIR2/student.pt -o model.nir``: lower, write, read back, and check that the float
  reference run of the written file reproduces the student's spikes on a few samples;
- ``lasnn export DIR/teacher.pt --onnx teacher.onnx``: ONNX, checked with ``onnx.checker`` and the ONNX
  reference evaluator against torch;
- ``lasnn export foreign.nir -o model.nir [--dt 1e-4] [--from sinabs]``: read another framework's NIR
  graph (``--from``: the framework whose exporter wrote it, for its dt and discretisation), validate it
  and write it with lasnn's metadata and exact per-step parameters (what ``lasnn simulate`` reads).
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from lasnn.artifacts import load_checkpoint
from lasnn.errors import LasnnError
from lasnn.export.graph import Graph
from lasnn.export.lowering import lower_student
from lasnn.export.nir_io import WRITERS, read_nir, write_nir

CHECK_SAMPLES = 2  # samples the written graph is re-run on (float64) against the student


def _checkpoint_path(path: str | os.PathLike) -> Path:
    """Accept a checkpoint file or a directory holding student.pt / converted.pt / teacher.pt."""
    path = Path(path)
    if path.is_dir():
        for name in ("student.pt", "converted.pt", "teacher.pt"):
            if (path / name).is_file():
                return path / name
        raise LasnnError(
            f"{path} is a directory without student.pt, converted.pt or teacher.pt; pass a checkpoint."
        )
    return path


def verify_against_student(student: torch.nn.Module, graph: Graph, samples: int = CHECK_SAMPLES) -> int:
    """Run the student (float64 copy) and the float reference on the same encoded inputs; raise if any layer's
    spikes differ. Returns the number of spikes compared equal."""
    from lasnn.sims.float_backend import FloatBackend  # sims reads graphs; imported only for this check

    double = copy.deepcopy(student).double().eval()
    shape = tuple(graph.nodes[graph.inputs()[0]].shape)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(samples, *shape, generator=generator, dtype=torch.float64)
    stream = double.encode(images, torch.Generator().manual_seed(1))
    recorded: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: recorded.__setitem__(n, out.detach()))
        for n, m in double.neuron_layers()
    ]
    try:
        with torch.no_grad():
            currents, _ = double.run(stream)
    finally:
        for hook in hooks:
            hook.remove()
    result = FloatBackend(np.float64, progress=False).run(graph, stream.numpy())
    total = 0
    for name, spikes in recorded.items():
        if name not in result.spikes or not np.array_equal(spikes.numpy() > 0, result.spikes[name]):
            raise LasnnError(
                f"the exported graph does not reproduce the spikes of layer '{name}' (float64, "
                f"{samples} samples); this is a lasnn bug, please report it."
            )
        total += int(result.spikes[name].sum())
    diff = float(np.abs(result.outputs - currents.numpy()).max())
    if not diff < 1e-9:
        raise LasnnError(
            f"the exported graph's readout differs from the student's by {diff:.3g}; this is a lasnn "
            "bug, please report it."
        )
    return total


def export_student(
    ckpt_path: str | os.PathLike,
    out_path: str | os.PathLike,
    verify: bool = True,
    profile: str | None = None,
) -> Graph:
    """Lower the student checkpoint ``ckpt_path`` to NIR at ``out_path``; returns the graph as read back.
    ``profile``: a reader's profile (``lasnn.export.profiles``; None or "lasnn": lasnn's own layout)."""
    from lasnn.distill.checkpoints import load_student

    student, blob = load_student(_checkpoint_path(ckpt_path))
    graph = lower_student(student, blob.get("metadata", {}))
    graph.metadata["checkpoint"] = str(ckpt_path)
    graph.metadata["checkpoint_kind"] = str(blob.get("kind"))
    if profile in (None, "lasnn"):
        write_nir(graph, out_path)
        written = read_nir(out_path)
        if verify:
            try:
                written.metadata["verified_spikes"] = verify_against_student(student, written)
            except LasnnError:  # never leave a graph that failed its check under the name asked for
                Path(out_path).unlink(missing_ok=True)
                raise
        return written
    from lasnn.export.profiles import apply_profile

    names: dict[str, str] = {}
    profiled = apply_profile(graph, profile, names)  # refuses before anything is written
    checked = verify_against_student(student, graph) if verify else None
    write_nir(profiled, out_path)
    written = read_nir(out_path)
    if verify:
        try:
            _same_as(graph, written, names)
        except LasnnError:
            Path(out_path).unlink(missing_ok=True)
            raise
        written.metadata["verified_spikes"] = checked
    return written


def _same_as(graph: Graph, profiled: Graph, names: dict[str, str], samples: int = CHECK_SAMPLES) -> None:
    """The profile's graph, as written, computes what the original does (float64 reference): the same spikes
    in every layer and outputs within float rounding (a folded scale that is not a power of two rounds)."""
    from lasnn.sims.float_backend import FloatBackend

    shape = tuple(graph.nodes[graph.inputs()[0]].shape)
    steps = int(graph.metadata.get("timesteps") or 4)
    stream = np.random.default_rng(0).random((steps, samples, *shape))
    if graph.metadata.get("encoding") != "direct":
        stream = (stream < 0.3).astype(np.float64)
    a = FloatBackend(np.float64, progress=False).run(graph, stream)
    b = FloatBackend(np.float64, progress=False).run(profiled, stream)
    for name, spikes in a.spikes.items():
        if not np.array_equal(spikes, b.spikes.get(names.get(name, name))):
            raise LasnnError(
                f"the {profiled.metadata.get('export_profile')} profile changes the spikes of layer "
                f"'{name}'; this is a lasnn bug, please report it."
            )
    if not np.allclose(a.outputs, b.outputs, rtol=1e-9, atol=1e-9 * float(np.abs(a.outputs).max() + 1)):
        raise LasnnError("the export profile changes the readout beyond float rounding; this is a lasnn bug.")


def export_teacher(ckpt_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Teacher checkpoint -> checked ONNX file; returns the check report (max abs diff vs torch)."""
    from lasnn.distill.checkpoints import load_teacher
    from lasnn.export.onnx_export import export_teacher_onnx

    model, blob = load_teacher(_checkpoint_path(ckpt_path))
    shape = tuple(int(s) for s in blob["metadata"]["input_shape"])
    return export_teacher_onnx(model, shape, out_path).to_dict()


def normalise_nir(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    dt: float | None = None,
    profile: str | None = None,
    written_by: str | None = None,
) -> Graph:
    """Read any NIR file (foreign or lasnn; ``written_by``: the framework that wrote it, see
    ``nir_io.WRITERS``), validate it, and write it with lasnn's metadata (rewritten for a reader's
    ``profile`` if given)."""
    graph = read_nir(in_path, dt=dt, written_by=written_by)
    return write_normalised(graph, out_path, profile)


def write_normalised(graph: Graph, out_path: str | os.PathLike, profile: str | None = None) -> Graph:
    """Write a graph read from any NIR source in lasnn's layout (or a reader's ``profile``), checked."""
    if profile not in (None, "lasnn"):
        from lasnn.export.profiles import apply_profile

        names: dict[str, str] = {}
        write_nir(apply_profile(graph, profile, names), out_path)
        written = read_nir(out_path)
        try:  # the file as written (AvgPool2d of the snnTorch profile included) against the original
            _same_as(graph, written, names)
        except LasnnError:
            Path(out_path).unlink(missing_ok=True)
            raise
        return written
    write_nir(graph, out_path)
    return read_nir(out_path)


def run(args: argparse.Namespace) -> int:
    from lasnn.api import export_nir, export_onnx  # the verb is a thin caller of the Python API

    source = Path(args.checkpoint)
    if source.is_file() and source.suffix == ".nir" or (source.is_file() and h5py.is_hdf5(source)):
        out = Path(args.output or source.with_name(source.stem + ".lasnn.nir"))
        result = export_nir(source, out, dt=args.dt, profile=args.profile, written_by=args.written_by)
        print(f"wrote {out}: {result.summary()}")
        return 0
    path = _checkpoint_path(source)
    kind = load_checkpoint(path, ("student", "converted", "teacher")).get("kind")
    if kind == "teacher":
        if args.output and not args.onnx:
            raise LasnnError(
                f"{path} is a teacher; teachers export to ONNX, pass --onnx FILE.onnx instead of -o."
            )
        out = Path(args.onnx or path.with_name("teacher.onnx"))
        report = export_onnx(path, out)
        print(
            f"wrote {out}: opset {report['opset']}, onnx.checker passed, max |torch - ONNX reference| = "
            f"{report['max_abs_diff']:.3g} on {report['samples']} samples (limit {report['tolerance']:g})"
        )
        return 0
    if args.onnx:
        raise LasnnError(
            f"{path} is a {kind} (spiking) checkpoint; ONNX export is for teachers, use -o FILE.nir."
        )
    out = Path(args.output or path.with_name("model.nir"))
    result = export_nir(path, out, verify=not args.no_verify, profile=args.profile or "portable")
    checked = result.verified_spikes
    tail = (
        f"; float reference reproduces the student's {checked} spikes on {CHECK_SAMPLES} samples"
        if checked is not None
        else ""
    )
    print(f"wrote {out}: {result.summary()}{tail}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="student -> NIR, teacher -> ONNX, or any NIR file -> lasnn's validated NIR",
        description="Export a distilled or converted student checkpoint to a NIR graph (written with "
        "nir.write, read back with type checking, and re-run against the student), a teacher checkpoint to "
        "ONNX (checked with onnx.checker and the ONNX reference evaluator), or read another framework's NIR "
        "file and write it validated with lasnn's metadata.",
    )
    p.add_argument(
        "checkpoint", help="student.pt / converted.pt / teacher.pt (or their directory), or a .nir file"
    )
    p.add_argument("-o", "--output", help="NIR file to write (default: model.nir beside the checkpoint)")
    p.add_argument(
        "--onnx", help="ONNX file to write for a teacher checkpoint (default: teacher.onnx beside it)"
    )
    p.add_argument(
        "--dt",
        type=float,
        default=None,
        help="time step in seconds for a foreign NIR file without one (default: its metadata, else 1e-4)",
    )
    p.add_argument(
        "--from",
        dest="written_by",
        choices=tuple(WRITERS),
        help="the framework whose own exporter wrote a foreign .nir, for its dt and discretisation (NIR "
        "files record neither): snntorch dt 1e-4; norse dt 1e-6 (to_nir's dt 1e-3 squared: it writes tau "
        "times dt) and its LIFCell's unscaled input current; sinabs tau in steps, exp(-1/tau) decay",
    )
    p.add_argument(
        "--for",
        dest="profile",
        choices=("portable", "snntorch", "norse", "sinabs", "lasnn"),
        help="the reader to write for: its dt, node set and names (default for a student: portable, "
        "dt = 1e-4, no Scale nodes, no dots in names; lasnn: lasnn's own layout, dt = 1e-3; a .nir input "
        "is rewritten only when --for is given)",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip re-running the written graph against the student"
    )
    p.set_defaults(func=run)
