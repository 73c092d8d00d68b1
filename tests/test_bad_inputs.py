"""The catalogue of bad inputs (issue 9): every CLI verb, fed something wrong, must answer with one line
naming the problem, exit non-zero, print no traceback (unless ``--debug``) and leave no partial output.

Valid prerequisites (a digits teacher and student with random weights, the student's exported ``.nir``, a
float-backend ``run.json``) are built once per session with the stages' own save functions; every bad
file is derived from them (truncated, emptied, edited, NaN-poisoned), so each case differs from a valid
input by exactly the defect it names. Cases run in-process through ``lasnn.cli.main`` (one Python start-up
for all of them); a few run the installed ``lasnn`` script to check real exit codes and ``--debug``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import nir
import numpy as np
import pytest
import torch
from PIL import Image

from lasnn.cli import main

REPO = Path(__file__).resolve().parents[1]
PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm bar: "desc:  40%|████      | 2/5 [...]"


# --------------------------------------------------------------------------------------------- fixtures


def _imagefolder(root: Path, classes: int, mode: str, size: int, per_class: int = 2) -> Path:
    """A tiny ImageFolder (train/ and test/) of random images: a well-formed data set of the wrong kind."""
    rng = np.random.default_rng(classes)
    channels = 3 if mode == "RGB" else 1
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
                Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(
                    folder / f"{i}.png"
                )
    return root


def _edit_checkpoint(src: Path, dst: Path, edit) -> Path:
    """Load a valid lasnn checkpoint, apply ``edit(blob)`` and save it (test-only, not atomic)."""
    blob = torch.load(src, map_location="cpu", weights_only=False)
    edit(blob)
    torch.save(blob, dst)
    return dst


def _write_nir_graph(path: Path, nodes: dict, edges: list) -> Path:
    """A NIR file written with the ``nir`` library itself (type check off, so defects get through)."""
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    return path


def _tiny_nir(weight: np.ndarray) -> tuple[dict, list]:
    """Input(4) -> Affine(3x4) -> LIF(3) -> Output(3): a minimal valid foreign graph."""
    nodes = {
        "input": nir.Input(input_type={"input": np.array([4])}),
        "fc": nir.Affine(weight=weight, bias=np.zeros(3)),
        "lif": nir.LIF(
            tau=np.full(3, 1e-3),
            r=np.ones(3),
            v_leak=np.zeros(3),
            v_threshold=np.ones(3),
            v_reset=np.zeros(3),
        ),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }
    return nodes, [("input", "fc"), ("fc", "lif"), ("lif", "output")]


@pytest.fixture(scope="session")
def art(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Valid artifacts and every bad file the catalogue uses, in one read-only-by-convention folder."""
    from lasnn.artifacts import save_checkpoint
    from lasnn.data import dataset_info
    from lasnn.distill.checkpoints import data_metadata, save_student, save_teacher
    from lasnn.distill.students import vgg_student
    from lasnn.distill.teachers import build_teacher
    from lasnn.export.commands import export_student
    from lasnn.sims.run_simulation import simulate

    d = tmp_path_factory.mktemp("catalogue")
    info = dataset_info("digits")
    torch.manual_seed(0)
    common = data_metadata("digits", None, info, 0)
    teacher = build_teacher(
        dict(arch="small_cnn", in_shape=list(info.input_shape), num_classes=10, width=0.25)
    )
    save_teacher(d / "teacher.pt", teacher, teacher.config, common)
    student = vgg_student(info.input_shape, 10, ((4,), (8,)), 2, "direct")
    save_student(
        d / "student.pt",
        student,
        {**common, "dt": student.config["neuron"]["dt"], "loss": "ce", "teacher": str(d / "teacher.pt")},
    )
    export_student(d / "student.pt", d / "model.nir")
    simulate(d / "model.nir", backend="float", samples=4, out=d / "run.json", progress=False)

    rng = np.random.default_rng(0)
    (d / "empty.pt").write_bytes(b"")
    (d / "empty.nir").write_bytes(b"")
    (d / "random.pt").write_bytes(rng.bytes(4096))
    (d / "random.nir").write_bytes(rng.bytes(4096))
    nir_bytes = (d / "model.nir").read_bytes()
    (d / "truncated.nir").write_bytes(nir_bytes[: len(nir_bytes) // 2])
    (d / "afile").write_text("a regular file, so nothing can be created below it\n")
    (d / "nodir").mkdir()  # a directory without checkpoints
    for name in ("resume_random", "resume_nan", "resume_other", "resume_teacher"):
        (d / name).mkdir()
    (d / "resume_random" / "checkpoint.pt").write_bytes(rng.bytes(2048))
    state = {"w": torch.full((2,), float("nan"))}
    save_checkpoint(
        d / "resume_nan" / "checkpoint.pt",
        "training_state",
        {"run_config": {}},
        state_dict=state,
        optimizer={},
        scheduler={},
        epoch=1,
    )
    state = {"w": torch.zeros(2)}
    save_checkpoint(
        d / "resume_other" / "checkpoint.pt",
        "training_state",
        {"run_config": {"verb": "distill"}},
        state_dict=state,
        optimizer={},
        scheduler={},
        epoch=1,
    )
    (d / "resume_teacher" / "checkpoint.pt").write_bytes((d / "teacher.pt").read_bytes())

    teacher_pt, student_pt = d / "teacher.pt", d / "student.pt"
    _edit_checkpoint(teacher_pt, d / "teacher_v99.pt", lambda b: b.update(format_version=99))
    _edit_checkpoint(teacher_pt, d / "teacher_nostate.pt", lambda b: b.pop("state_dict"))
    _edit_checkpoint(teacher_pt, d / "teacher_nometa.pt", lambda b: b["metadata"].pop("num_classes"))
    first_weight = next(
        k for k in torch.load(teacher_pt, weights_only=False)["state_dict"] if k.endswith("weight")
    )
    _edit_checkpoint(
        teacher_pt, d / "teacher_nan.pt", lambda b: b["state_dict"][first_weight].fill_(float("nan"))
    )
    _edit_checkpoint(
        teacher_pt,
        d / "teacher_shape.pt",
        lambda b: b["state_dict"].__setitem__(first_weight, torch.zeros(3, 3)),
    )
    _edit_checkpoint(teacher_pt, d / "teacher_badconfig.pt", lambda b: b["config"].update(arch="nosuch"))
    torch.save(teacher.state_dict(), d / "plain_state.pt")  # a torch file, but not a lasnn checkpoint
    s_weight = next(
        k for k in torch.load(student_pt, weights_only=False)["state_dict"] if k.endswith("weight")
    )
    _edit_checkpoint(
        student_pt, d / "student_nan.pt", lambda b: b["state_dict"][s_weight].fill_(float("inf"))
    )
    _edit_checkpoint(student_pt, d / "student_not.pt", lambda b: b["metadata"].pop("timesteps"))
    _edit_checkpoint(student_pt, d / "student_t0.pt", lambda b: b["metadata"].update(timesteps=0))

    in_shape = tuple(info.input_shape)
    np.save(d / "inputs_ok.npy", np.zeros((3, 2, *in_shape), dtype=np.float32))
    np.save(d / "inputs_shape.npy", np.zeros((3, 2, 1, 4, 4), dtype=np.float32))
    np.save(d / "inputs_flat.npy", np.zeros((3, 64), dtype=np.float32))
    np.save(d / "inputs_complex.npy", np.zeros((3, 2, *in_shape), dtype=np.complex64))
    np.save(d / "inputs_str.npy", np.full((3, 2, *in_shape), "x"))
    inputs_nan = np.zeros((3, 2, *in_shape), dtype=np.float32)
    inputs_nan[1, 0, 0, 3, 3] = np.nan
    np.save(d / "inputs_nan.npy", inputs_nan)
    np.save(d / "inputs_empty.npy", np.zeros((0, 2, *in_shape), dtype=np.float32))
    np.save(d / "inputs_object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "labels_short.npy", np.zeros(2, dtype=np.int64))
    np.save(d / "labels_float.npy", np.zeros(3, dtype=np.float32))

    _write_nir_graph(d / "nan.nir", *_tiny_nir(np.full((3, 4), np.nan)))
    nodes, edges = _tiny_nir(np.ones((3, 4)))
    _write_nir_graph(d / "dangling.nir", nodes, [*edges, ("fc", "nowhere")])
    _write_nir_graph(
        d / "mismatch.nir", {**nodes, "fc": nir.Affine(weight=np.ones((3, 5)), bias=np.zeros(3))}, edges
    )
    with h5py.File(d / "unknown_type.nir", "w") as handle:  # a node type NIR does not define
        _copy = h5py.File(d / "model.nir", "r")
        _copy.copy("node", handle)
        _copy.close()
        first = next(iter(handle["node/nodes"]))
        del handle[f"node/nodes/{first}/type"]
        handle[f"node/nodes/{first}/type"] = "Quantum"
    with h5py.File(d / "not_nir.h5", "w") as handle:  # HDF5, but not a NIR graph
        handle["x"] = np.arange(3)

    run = json.loads((d / "run.json").read_text())
    (d / "run_invalid.json").write_text('{"backend": "float", "timesteps": ')
    (d / "run_list.json").write_text("[1, 2, 3]\n")
    (d / "run_nolayers.json").write_text(json.dumps({k: v for k, v in run.items() if k != "layers"}))
    negative = json.loads(json.dumps(run))
    negative["layers"][0]["spikes"] = -5
    (d / "run_negative.json").write_text(json.dumps(negative))
    (d / "run_t0.json").write_text(json.dumps({**run, "timesteps": 0}))
    (d / "energy_bad.json").write_text(json.dumps({"name": "bad"}))

    _imagefolder(d / "three_classes", classes=3, mode="L", size=8)
    _imagefolder(d / "rgb_ten_classes", classes=10, mode="RGB", size=8, per_class=1)
    (d / "wrong_layout" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(d / "wrong_layout" / "images" / "0.png")
    (d / "empty_root").mkdir()
    return SimpleNamespace(dir=d)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded ImageFolder caches go to a private folder, never the user's."""
    monkeypatch.setenv("LASNN_CACHE", str(tmp_path_factory.getbasetemp() / "lasnn-cache"))
    monkeypatch.delenv("LASNN_DATA_ROOT", raising=False)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _temp_leftovers(*roots: Path) -> list[str]:
    """Temporary files of ``lasnn.artifacts.atomic_write`` (``.NAME.XXXX.tmp``) left anywhere."""
    return [str(p) for root in roots for p in root.rglob(".*.tmp")]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse errors exit through SystemExit
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _check_one_line_error(code: int, err: str, verb: str, expect: str) -> None:
    assert code != 0, "a bad input must give a non-zero exit code"
    assert "Traceback" not in err, err
    # progress bars of work done before the failure (e.g. a disk that fills at the end) are not messages
    lines = [line for line in err.strip().splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"lasnn {verb}: error: "), lines[0]
    assert expect.lower() in lines[0].lower(), f"{expect!r} not named in: {lines[0]}"


# ------------------------------------------------------------------------------------------ the catalogue
# (id, argv with {a} = artifacts folder and {o} = this case's empty output folder, text the one-line error
# must contain, outputs that must not exist afterwards). Every case is a distinct defect.

O_NIR, O_RUN = "{o}/out.nir", "{o}/run.json"
CASES = [
    # --- teach
    ("teach-unknown-arch", ["teach", "--arch", "alexnet9", "--out", "{o}/t"], "alexnet9", ["{o}/t"]),
    (
        "teach-arch-unimportable",
        ["teach", "--arch", "no_such_module_xyz:make", "--out", "{o}/t"],
        "no_such_module_xyz",
        ["{o}/t"],
    ),
    ("teach-unknown-dataset", ["teach", "--dataset", "mnist", "--out", "{o}/t"], "mnist", ["{o}/t"]),
    ("teach-zero-epochs", ["teach", "--epochs", "0", "--out", "{o}/t"], "--epochs", ["{o}/t"]),
    ("teach-negative-batch", ["teach", "--batch-size", "-8", "--out", "{o}/t"], "--batch-size", ["{o}/t"]),
    ("teach-nan-lr", ["teach", "--lr", "nan", "--out", "{o}/t"], "--lr", ["{o}/t"]),
    ("teach-unknown-device", ["teach", "--device", "tpu", "--out", "{o}/t"], "tpu", ["{o}/t"]),
    ("teach-nan-width", ["teach", "--width", "nan", "--out", "{o}/t"], "--width", ["{o}/t"]),
    ("teach-zero-width", ["teach", "--width", "0", "--out", "{o}/t"], "--width", ["{o}/t"]),
    (
        "teach-qcfs-threshold-without-qcfs",
        ["teach", "--qcfs-threshold", "3", "--out", "{o}/t"],
        "--qcfs-threshold",
        ["{o}/t"],
    ),
    (
        "teach-negative-qcfs-threshold",
        ["teach", "--activation", "qcfs", "--qcfs-threshold", "-1", "--out", "{o}/t"],
        "--qcfs-threshold",
        ["{o}/t"],
    ),
    ("teach-out-under-file", ["teach", "--out", "{a}/afile/t"], "afile", []),
    (
        "teach-cifar-empty-root",
        ["teach", "--dataset", "cifar10", "--data-root", "{a}/empty_root", "--out", "{o}/t"],
        "empty_root",
        ["{o}/t"],
    ),
    (
        "teach-imagefolder-wrong-layout",
        ["teach", "--dataset", "imagefolder", "--data-root", "{a}/wrong_layout", "--out", "{o}/t"],
        "wrong_layout",
        ["{o}/t"],
    ),
    (
        "teach-init-state-random-bytes",
        ["teach", "--init-state", "{a}/random.pt", "--out", "{o}/t"],
        "random.pt",
        ["{o}/t"],
    ),
    (
        "teach-init-state-missing",
        ["teach", "--init-state", "{a}/missing.pt", "--out", "{o}/t"],
        "missing.pt",
        ["{o}/t"],
    ),
    (
        "teach-init-from-missing",
        ["teach", "--init-from", "{a}/missing_teacher", "--out", "{o}/t"],
        "missing_teacher",
        ["{o}/t"],
    ),
    (
        "teach-init-from-random-bytes",
        ["teach", "--activation", "qcfs", "--init-from", "{a}/random.pt", "--out", "{o}/t"],
        "random.pt",
        ["{o}/t"],
    ),
    (
        "teach-kd-from-missing",
        ["teach", "--kd-from", "{a}/missing_teacher", "--out", "{o}/t"],
        "missing_teacher",
        ["{o}/t"],
    ),
    (
        "teach-kd-from-random-bytes",
        ["teach", "--kd-from", "{a}/random.pt", "--out", "{o}/t"],
        "random.pt",
        ["{o}/t"],
    ),
    (
        "teach-kd-alpha-negative",
        ["teach", "--kd-from", "{a}/missing_teacher", "--kd-alpha", "-1", "--out", "{o}/t"],
        "--kd-alpha",
        ["{o}/t"],
    ),
    # --resume into a folder whose training state is damaged (the folder must be left as it was)
    (
        "teach-resume-random-bytes-state",
        ["teach", "--resume", "--epochs", "1", "--out", "{a}/resume_random"],
        "checkpoint.pt",
        [],
    ),
    (
        "teach-resume-nan-state",
        ["teach", "--resume", "--epochs", "1", "--out", "{a}/resume_nan"],
        "non-finite",
        [],
    ),
    (
        "teach-resume-state-of-another-run",
        ["teach", "--resume", "--epochs", "1", "--out", "{a}/resume_other"],
        "different",
        [],
    ),
    (
        "teach-resume-teacher-as-state",
        ["teach", "--resume", "--epochs", "1", "--out", "{a}/resume_teacher"],
        "'teacher' checkpoint",
        [],
    ),
    # --- distill
    (
        "distill-teacher-missing",
        ["distill", "--teacher", "{a}/missing.pt", "--out", "{o}/s"],
        "missing.pt",
        ["{o}/s"],
    ),
    (
        "distill-teacher-dir-without-checkpoint",
        ["distill", "--teacher", "{a}/nodir", "--out", "{o}/s"],
        "nodir",
        ["{o}/s"],
    ),
    ("distill-teacher-empty", ["distill", "--teacher", "{a}/empty.pt", "--out", "{o}/s"], "empty", ["{o}/s"]),
    (
        "distill-teacher-random-bytes",
        ["distill", "--teacher", "{a}/random.pt", "--out", "{o}/s"],
        "random.pt",
        ["{o}/s"],
    ),
    (
        "distill-teacher-is-plain-state-dict",
        ["distill", "--teacher", "{a}/plain_state.pt", "--out", "{o}/s"],
        "not a lasnn checkpoint",
        ["{o}/s"],
    ),
    (
        "distill-student-as-teacher",
        ["distill", "--teacher", "{a}/student.pt", "--out", "{o}/s"],
        "'student' checkpoint",
        ["{o}/s"],
    ),
    (
        "distill-teacher-format-v99",
        ["distill", "--teacher", "{a}/teacher_v99.pt", "--out", "{o}/s"],
        "version 99",
        ["{o}/s"],
    ),
    (
        "distill-teacher-missing-state-dict",
        ["distill", "--teacher", "{a}/teacher_nostate.pt", "--out", "{o}/s"],
        "state_dict",
        ["{o}/s"],
    ),
    (
        "distill-teacher-missing-metadata",
        ["distill", "--teacher", "{a}/teacher_nometa.pt", "--out", "{o}/s"],
        "num_classes",
        ["{o}/s"],
    ),
    (
        "distill-teacher-nan-weights",
        ["distill", "--teacher", "{a}/teacher_nan.pt", "--out", "{o}/s"],
        "non-finite",
        ["{o}/s"],
    ),
    (
        "distill-teacher-wrong-weight-shape",
        ["distill", "--teacher", "{a}/teacher_shape.pt", "--out", "{o}/s"],
        "do not fit",
        ["{o}/s"],
    ),
    (
        "distill-teacher-unknown-arch-config",
        ["distill", "--teacher", "{a}/teacher_badconfig.pt", "--out", "{o}/s"],
        "nosuch",
        ["{o}/s"],
    ),
    (
        "distill-zero-T",
        ["distill", "--teacher", "{a}/teacher.pt", "-T", "0", "--out", "{o}/s"],
        "--timesteps",
        ["{o}/s"],
    ),
    (
        "distill-negative-T",
        ["distill", "--teacher", "{a}/teacher.pt", "-T", "-3", "--out", "{o}/s"],
        "--timesteps",
        ["{o}/s"],
    ),
    (
        "distill-unknown-encoding",
        ["distill", "--teacher", "{a}/teacher.pt", "--encoding", "morse", "--out", "{o}/s"],
        "morse",
        ["{o}/s"],
    ),
    (
        "distill-unknown-student",
        ["distill", "--teacher", "{a}/teacher.pt", "--student", "transformer", "--out", "{o}/s"],
        "transformer",
        ["{o}/s"],
    ),
    (
        "distill-unknown-loss",
        ["distill", "--teacher", "{a}/teacher.pt", "--loss", "mse", "--out", "{o}/s"],
        "mse",
        ["{o}/s"],
    ),
    (
        "distill-zero-temperature",
        ["distill", "--teacher", "{a}/teacher.pt", "--tau", "0", "--out", "{o}/s"],
        "--tau",
        ["{o}/s"],
    ),
    (
        "distill-nan-attention-weight",
        ["distill", "--teacher", "{a}/teacher.pt", "--beta", "nan", "--out", "{o}/s"],
        "--beta",
        ["{o}/s"],
    ),
    (
        "distill-negative-kd-weight",
        ["distill", "--teacher", "{a}/teacher.pt", "--alpha", "-1", "--out", "{o}/s"],
        "--alpha",
        ["{o}/s"],
    ),
    (
        "distill-unknown-pair",
        ["distill", "--teacher", "{a}/teacher.pt", "--pairs", "zz:yy", "--out", "{o}/s"],
        "zz",
        ["{o}/s"],
    ),
    (
        "distill-bad-widths",
        ["distill", "--teacher", "{a}/teacher.pt", "--widths", "4,x", "--out", "{o}/s"],
        "--widths",
        ["{o}/s"],
    ),
    (
        "distill-too-many-stages",
        ["distill", "--teacher", "{a}/teacher.pt", "--widths", "4,4,4,4", "--out", "{o}/s"],
        "stages",
        ["{o}/s"],
    ),
    (
        "distill-data-wrong-class-count",
        [
            "distill",
            "--teacher",
            "{a}/teacher.pt",
            "--dataset",
            "imagefolder",
            "--data-root",
            "{a}/three_classes",
            "--out",
            "{o}/s",
        ],
        "3 classes",
        ["{o}/s"],
    ),
    (
        "distill-data-wrong-image-shape",
        [
            "distill",
            "--teacher",
            "{a}/teacher.pt",
            "--dataset",
            "imagefolder",
            "--data-root",
            "{a}/rgb_ten_classes",
            "--out",
            "{o}/s",
        ],
        "(3, 8, 8)",
        ["{o}/s"],
    ),
    (
        "distill-out-under-file",
        ["distill", "--teacher", "{a}/teacher.pt", "--out", "{a}/afile/s"],
        "afile",
        [],
    ),
    # --- convert
    (
        "convert-student-as-teacher",
        ["convert", "--teacher", "{a}/student.pt", "--out", "{o}/c"],
        "'student' checkpoint",
        ["{o}/c"],
    ),
    (
        "convert-zero-T",
        ["convert", "--teacher", "{a}/teacher.pt", "-T", "0,4", "--out", "{o}/c"],
        "--timesteps",
        ["{o}/c"],
    ),
    (
        "convert-T-not-numbers",
        ["convert", "--teacher", "{a}/teacher.pt", "-T", "four", "--out", "{o}/c"],
        "four",
        ["{o}/c"],
    ),
    (
        "convert-percentile-above-100",
        [
            "convert",
            "--teacher",
            "{a}/teacher.pt",
            "--percentile",
            "150",
            "--calibration-samples",
            "8",
            "--test-samples",
            "8",
            "--out",
            "{o}/c",
        ],
        "150",
        ["{o}/c"],
    ),
    (
        "convert-zero-calibration",
        ["convert", "--teacher", "{a}/teacher.pt", "--calibration-samples", "0", "--out", "{o}/c"],
        "--calibration-samples",
        ["{o}/c"],
    ),
    (
        "convert-unknown-reset",
        ["convert", "--teacher", "{a}/teacher.pt", "--reset", "half", "--out", "{o}/c"],
        "half",
        ["{o}/c"],
    ),
    (
        "convert-out-under-file",
        [
            "convert",
            "--teacher",
            "{a}/teacher.pt",
            "-T",
            "1",
            "--calibration-samples",
            "8",
            "--test-samples",
            "8",
            "--out",
            "{a}/afile/c",
        ],
        "afile",
        [],
    ),
    # --- export
    ("export-missing", ["export", "{a}/missing.pt", "-o", O_NIR], "missing.pt", [O_NIR]),
    ("export-dir-without-checkpoint", ["export", "{a}/nodir", "-o", O_NIR], "nodir", [O_NIR]),
    ("export-empty-pt", ["export", "{a}/empty.pt", "-o", O_NIR], "empty", [O_NIR]),
    ("export-random-bytes-pt", ["export", "{a}/random.pt", "-o", O_NIR], "random.pt", [O_NIR]),
    ("export-empty-nir", ["export", "{a}/empty.nir", "-o", O_NIR], "empty.nir", [O_NIR]),
    ("export-random-bytes-nir", ["export", "{a}/random.nir", "-o", O_NIR], "random.nir", [O_NIR]),
    ("export-truncated-nir", ["export", "{a}/truncated.nir", "-o", O_NIR], "truncated.nir", [O_NIR]),
    ("export-hdf5-not-nir", ["export", "{a}/not_nir.h5", "-o", O_NIR], "not_nir.h5", [O_NIR]),
    ("export-nir-nan-weights", ["export", "{a}/nan.nir", "-o", O_NIR], "fc", [O_NIR]),
    ("export-nir-dangling-edge", ["export", "{a}/dangling.nir", "-o", O_NIR], "nowhere", [O_NIR]),
    ("export-nir-shape-mismatch", ["export", "{a}/mismatch.nir", "-o", O_NIR], "fc", [O_NIR]),
    ("export-nir-unknown-node-type", ["export", "{a}/unknown_type.nir", "-o", O_NIR], "Quantum", [O_NIR]),
    ("export-nir-negative-dt", ["export", "{a}/model.nir", "--dt=-0.001", "-o", O_NIR], "dt", [O_NIR]),
    ("export-teacher-to-nir", ["export", "{a}/teacher.pt", "-o", O_NIR], "teacher", [O_NIR]),
    ("export-student-to-onnx", ["export", "{a}/student.pt", "--onnx", "{o}/s.onnx"], "onnx", ["{o}/s.onnx"]),
    ("export-student-nan-weights", ["export", "{a}/student_nan.pt", "-o", O_NIR], "non-finite", [O_NIR]),
    ("export-student-missing-T", ["export", "{a}/student_not.pt", "-o", O_NIR], "timesteps", [O_NIR]),
    ("export-student-zero-T", ["export", "{a}/student_t0.pt", "-o", O_NIR], "timesteps", [O_NIR]),
    ("export-student-format-v99", ["export", "{a}/teacher_v99.pt", "-o", O_NIR], "version 99", [O_NIR]),
    ("export-out-under-file", ["export", "{a}/student.pt", "-o", "{a}/afile/out.nir"], "afile", []),
    # --- simulate
    ("simulate-missing-graph", ["simulate", "{a}/missing.nir", "-o", O_RUN], "missing.nir", [O_RUN]),
    ("simulate-empty-graph", ["simulate", "{a}/empty.nir", "-o", O_RUN], "empty.nir", [O_RUN]),
    ("simulate-truncated-graph", ["simulate", "{a}/truncated.nir", "-o", O_RUN], "truncated.nir", [O_RUN]),
    ("simulate-random-bytes-graph", ["simulate", "{a}/random.nir", "-o", O_RUN], "random.nir", [O_RUN]),
    ("simulate-checkpoint-as-graph", ["simulate", "{a}/student.pt", "-o", O_RUN], "student.pt", [O_RUN]),
    (
        "simulate-nan-graph",
        ["simulate", "{a}/nan.nir", "--inputs", "{a}/inputs_ok.npy", "-o", O_RUN],
        "fc",
        [O_RUN],
    ),
    (
        "simulate-zero-T",
        ["simulate", "{a}/model.nir", "--backend", "float", "--timesteps", "0", "-o", O_RUN],
        "--timesteps",
        [O_RUN],
    ),
    (
        "simulate-negative-T",
        ["simulate", "{a}/model.nir", "--backend", "float", "--timesteps", "-2", "-o", O_RUN],
        "--timesteps",
        [O_RUN],
    ),
    (
        "simulate-zero-samples",
        ["simulate", "{a}/model.nir", "--samples", "0", "-o", O_RUN],
        "--samples",
        [O_RUN],
    ),
    (
        "simulate-unknown-backend",
        ["simulate", "{a}/model.nir", "--backend", "spinnaker", "-o", O_RUN],
        "spinnaker",
        [O_RUN],
    ),
    (
        "simulate-unknown-device",
        ["simulate", "{a}/model.nir", "--device", "tpu", "-o", O_RUN],
        "tpu",
        [O_RUN],
    ),
    (
        "simulate-inputs-wrong-shape",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_shape.npy", "-o", O_RUN],
        "inputs_shape.npy",
        [O_RUN],
    ),
    (
        "simulate-inputs-missing-time-axis",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_flat.npy", "-o", O_RUN],
        "inputs_flat.npy",
        [O_RUN],
    ),
    (
        "simulate-inputs-complex-dtype",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_complex.npy", "-o", O_RUN],
        "complex",
        [O_RUN],
    ),
    (
        "simulate-inputs-string-dtype",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_str.npy", "-o", O_RUN],
        "inputs_str.npy",
        [O_RUN],
    ),
    (
        "simulate-inputs-nan",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_nan.npy", "-o", O_RUN],
        "nan",
        [O_RUN],
    ),
    (
        "simulate-inputs-no-samples",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_empty.npy", "-o", O_RUN],
        "inputs_empty.npy",
        [O_RUN],
    ),
    (
        "simulate-inputs-pickled-objects",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_object.npy", "-o", O_RUN],
        "inputs_object.npy",
        [O_RUN],
    ),
    (
        "simulate-inputs-random-bytes",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/random.pt", "-o", O_RUN],
        "random.pt",
        [O_RUN],
    ),
    (
        "simulate-inputs-T-disagrees",
        ["simulate", "{a}/model.nir", "--inputs", "{a}/inputs_ok.npy", "--timesteps", "5", "-o", O_RUN],
        "5",
        [O_RUN],
    ),
    (
        "simulate-labels-wrong-length",
        [
            "simulate",
            "{a}/model.nir",
            "--inputs",
            "{a}/inputs_ok.npy",
            "--labels",
            "{a}/labels_short.npy",
            "-o",
            O_RUN,
        ],
        "labels_short.npy",
        [O_RUN],
    ),
    (
        "simulate-labels-float",
        [
            "simulate",
            "{a}/model.nir",
            "--inputs",
            "{a}/inputs_ok.npy",
            "--labels",
            "{a}/labels_float.npy",
            "-o",
            O_RUN,
        ],
        "labels_float.npy",
        [O_RUN],
    ),
    (
        "simulate-data-wrong-class-count",
        [
            "simulate",
            "{a}/model.nir",
            "--dataset",
            "imagefolder",
            "--data-root",
            "{a}/three_classes",
            "-o",
            O_RUN,
        ],
        "3 classes",
        [O_RUN],
    ),
    (
        "simulate-data-wrong-image-shape",
        [
            "simulate",
            "{a}/model.nir",
            "--dataset",
            "imagefolder",
            "--data-root",
            "{a}/rgb_ten_classes",
            "-o",
            O_RUN,
        ],
        "(3, 8, 8)",
        [O_RUN],
    ),
    (
        "simulate-data-wrong-layout",
        [
            "simulate",
            "{a}/model.nir",
            "--dataset",
            "imagefolder",
            "--data-root",
            "{a}/wrong_layout",
            "-o",
            O_RUN,
        ],
        "wrong_layout",
        [O_RUN],
    ),
    (
        "simulate-spikes-not-npz",
        ["simulate", "{a}/model.nir", "--save-spikes", "{o}/s.txt", "-o", O_RUN],
        "s.txt",
        [O_RUN, "{o}/s.txt"],
    ),
    (
        "simulate-out-under-file",
        ["simulate", "{a}/model.nir", "--backend", "float", "--samples", "2", "-o", "{a}/afile/run.json"],
        "afile",
        [],
    ),
    # --- report
    ("report-missing-run", ["report", "{a}/missing.json", "-o", "{o}/r"], "missing.json", ["{o}/r"]),
    ("report-empty-run", ["report", "{a}/empty.pt", "-o", "{o}/r"], "empty.pt", ["{o}/r"]),
    ("report-invalid-json", ["report", "{a}/run_invalid.json", "-o", "{o}/r"], "run_invalid.json", ["{o}/r"]),
    ("report-json-not-object", ["report", "{a}/run_list.json", "-o", "{o}/r"], "run_list.json", ["{o}/r"]),
    ("report-run-without-layers", ["report", "{a}/run_nolayers.json", "-o", "{o}/r"], "layers", ["{o}/r"]),
    ("report-negative-spikes", ["report", "{a}/run_negative.json", "-o", "{o}/r"], "spikes", ["{o}/r"]),
    ("report-zero-T", ["report", "{a}/run_t0.json", "-o", "{o}/r"], "timesteps", ["{o}/r"]),
    ("report-nir-as-run", ["report", "{a}/model.nir", "-o", "{o}/r"], "model.nir", ["{o}/r"]),
    (
        "report-student-as-teacher",
        ["report", "{a}/run.json", "--teacher", "{a}/student.pt", "-o", "{o}/r"],
        "'student' checkpoint",
        ["{o}/r"],
    ),
    (
        "report-unknown-energy-model",
        ["report", "{a}/run.json", "--energy-model", "truenorth", "-o", "{o}/r"],
        "truenorth",
        ["{o}/r"],
    ),
    (
        "report-bad-energy-model-file",
        ["report", "{a}/run.json", "--energy-model", "{a}/energy_bad.json", "-o", "{o}/r"],
        "energy_bad.json",
        ["{o}/r"],
    ),
    (
        "report-label-count",
        ["report", "{a}/run.json", "--label", "x", "--label", "y", "-o", "{o}/r"],
        "label",
        ["{o}/r"],
    ),
    ("report-out-under-file", ["report", "{a}/run.json", "-o", "{a}/afile/r"], "afile", []),
    # --- demo (each must be refused before any training starts)
    ("demo-out-under-file", ["demo", "--quick", "--out", "{a}/afile/demo"], "afile", []),
    ("demo-unknown-device", ["demo", "--quick", "--device", "tpu", "--out", "{o}/d"], "tpu", ["{o}/d"]),
    (
        "demo-negative-lava-samples",
        ["demo", "--quick", "--lava-samples", "-1", "--out", "{o}/d"],
        "--lava-samples",
        ["{o}/d"],
    ),
]


def test_catalogue_is_large_and_distinct() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30
    assert {i.split("-")[0] for i in ids} == {
        "teach",
        "distill",
        "convert",
        "export",
        "simulate",
        "report",
        "demo",
    }


@pytest.mark.parametrize(("argv", "expect", "outputs"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_is_one_line_error_without_output(
    argv: list[str],
    expect: str,
    outputs: list[str],
    art: SimpleNamespace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    before = _listing(art.dir)
    fill = {"a": str(art.dir), "o": str(tmp_path)}
    code, _, err = _run([a.format(**fill) for a in argv], capsys)
    _check_one_line_error(code, err, argv[0], expect.format(**fill))
    for output in outputs:
        assert not Path(output.format(**fill)).exists(), f"partial output {output.format(**fill)} left behind"
    assert _listing(art.dir) == before, "a bad input changed the folder of its inputs"
    assert not _temp_leftovers(tmp_path, art.dir)


# --------------------------------------------------------------------------------------- full disk (ENOSPC)


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, good_writes: int) -> None:
    """Make the (good_writes + 1)-th ``os.fsync`` fail with ENOSPC, as a full disk does on flush."""
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > good_writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(
    ("argv", "good_writes", "outputs"),
    [
        pytest.param(["export", "{a}/student.pt", "-o", O_NIR], 0, [O_NIR], id="export"),
        pytest.param(
            [
                "simulate",
                "{a}/model.nir",
                "--backend",
                "float",
                "--samples",
                "3",
                "--save-spikes",
                "{o}/spikes.npz",
                "-o",
                O_RUN,
            ],
            1,
            [O_RUN, "{o}/spikes.npz"],
            id="simulate-second-file",
        ),
        pytest.param(["report", "{a}/run.json", "-o", "{o}/r"], 2, ["{o}/r"], id="report-third-file"),
    ],
)
def test_full_disk_leaves_no_partial_output(
    argv: list[str],
    good_writes: int,
    outputs: list[str],
    art: SimpleNamespace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk that fills up mid-way: one sentence naming ENOSPC, and no file of the half-written output
    (a report folder is all or nothing)."""
    monkeypatch.chdir(tmp_path)
    _disk_full_after(monkeypatch, good_writes)
    fill = {"a": str(art.dir), "o": str(tmp_path)}
    code, _, err = _run([a.format(**fill) for a in argv], capsys)
    _check_one_line_error(code, err, argv[0], "no space left on device")
    for output in outputs:
        assert not Path(output.format(**fill)).exists(), f"partial output {output.format(**fill)} left behind"
    assert not _temp_leftovers(tmp_path, art.dir)


def test_export_whose_check_fails_leaves_no_graph(
    art: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The written graph is re-run against the student; a graph that fails that check is removed again,
    so no unverified file is left under the name asked for."""
    import lasnn.export.commands as export_commands
    from lasnn.errors import LasnnError

    def failing_check(*_args, **_kwargs):
        raise LasnnError("the exported graph does not reproduce the spikes of layer 'x' (simulated).")

    monkeypatch.setattr(export_commands, "verify_against_student", failing_check)
    code, _, err = _run(["export", str(art.dir / "student.pt"), "-o", str(tmp_path / "m.nir")], capsys)
    _check_one_line_error(code, err, "export", "does not reproduce")
    assert not (tmp_path / "m.nir").exists()
    assert not _temp_leftovers(tmp_path)


# ---------------------------------------------------------------------------------- the installed command


def _lasnn() -> list[str]:
    script = Path(sys.executable).with_name("lasnn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lasnn.cli"]


def test_installed_command_exit_codes_and_debug(art: SimpleNamespace, tmp_path: Path) -> None:
    """Real processes (warnings left on, as a user has them): exit code 2 and one line for a user error,
    and ``--debug`` shows the traceback (ending in the same LasnnError) instead of the one line."""
    env = {**os.environ, "LASNN_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONWARNINGS", None)
    commands = [
        [*_lasnn(), "export", str(art.dir / "truncated.nir"), "-o", str(tmp_path / "x.nir")],
        [*_lasnn(), "--debug", "export", str(art.dir / "random.pt"), "-o", str(tmp_path / "y.nir")],
    ]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen(c, cwd=tmp_path, env=env, **pipes) for c in commands]
    results = [(*p.communicate(timeout=300), p.returncode) for p in processes]
    _, err, code = results[0]
    assert code == 2, err
    _check_one_line_error(code, err, "export", "truncated.nir")
    _, err, code = results[1]
    assert code != 0
    assert "Traceback (most recent call last)" in err
    last = err.strip().splitlines()[-1]
    assert "LasnnError" in last and "random.pt" in last
    assert not list(tmp_path.glob("*.nir"))
    assert not _temp_leftovers(tmp_path)


def test_debug_in_process_raises_the_lasnn_error(art: SimpleNamespace, tmp_path: Path) -> None:
    from lasnn.errors import LasnnError

    with pytest.raises(LasnnError, match="missing.pt"):
        main(["--debug", "export", str(art.dir / "missing.pt"), "-o", str(tmp_path / "x.nir")])


def test_valid_prerequisites_are_accepted(art: SimpleNamespace, tmp_path: Path, capsys) -> None:
    """The control: the files every bad case is derived from are themselves accepted, so each case fails
    for its one defect."""
    code, _, err = _run(["export", str(art.dir / "model.nir"), "-o", str(tmp_path / "ok.nir")], capsys)
    assert code == 0, err
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "ok.nir").stat().st_mode & 0o777 == 0o666 & ~umask, (
        "artifacts get the usual permissions"
    )
    code, _, err = _run(
        [
            "simulate",
            str(art.dir / "model.nir"),
            "--inputs",
            str(art.dir / "inputs_ok.npy"),
            "--backend",
            "float",
            "-o",
            str(tmp_path / "run.json"),
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "run.json").read_text())["samples"] == 3
    code, _, err = _run(
        [
            "report",
            str(art.dir / "run.json"),
            "--teacher",
            str(art.dir / "teacher.pt"),
            "-o",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "r" / "report.html").is_file()
    nodes, edges = _tiny_nir(np.ones((3, 4)))
    _write_nir_graph(tmp_path / "tiny.nir", nodes, edges)
    code, _, err = _run(["export", str(tmp_path / "tiny.nir"), "-o", str(tmp_path / "tiny2.nir")], capsys)
    assert code == 0, err
