"""Export profiles against the real readers: the digits student (VGG) and a residual student, exported
for each reader, loaded by that framework's own NIR reader in its side environment (made by ``make
readers``, ``scripts/reader_envs.sh``), run on digits test images, and compared layer by layer with lasnn's
float64 reference of the same file. The run writes the compatibility matrix ``docs/reader_matrix.md``
(the README quotes it). Readers compute in float32: spikes must match exactly, outputs to float32
rounding (relative 1e-5 of the largest output).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lasnn.errors import LasnnError
from lasnn.export.nir_io import read_nir, write_nir
from lasnn.export.profiles import PROFILES, apply_profile

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / ".venv-readers"
MATRIX = REPO / "docs" / "reader_matrix.md"
FOREIGN_SECTION = "## foreign exporters -> lasnn backends"  # tests/test_foreign_exporters.py's part
SAMPLES = 6
T = 4
# reader -> (python that has it, dt passed to it, profiles tried)
READERS = {
    "snntorch": (ENVS / "snntorch" / "bin" / "python", 1e-4, ("snntorch", "portable")),
    "norse": (Path(sys.executable), 1e-3, ("norse", "portable")),
}


def _student(arch: str):  # noqa: ANN202 - a lasnn Graph
    sys.path.insert(0, str(Path(__file__).parent))
    from test_lava_backend import _student_graph

    graph = _student_graph(arch, "direct")
    graph.metadata.update({"dataset": "digits", "timesteps": T})
    return graph


def _node_types(graph) -> str:  # noqa: ANN001
    kinds = sorted({type(n).__name__ for n in graph.nodes.values()} - {"Input", "Output"})
    pools = str(graph.metadata.get("lasnn_avgpool", ""))
    kinds = ["AvgPool2d" if k == "SumPool2d" and pools else k for k in kinds]
    return ", ".join(kinds)


@pytest.mark.slow
def test_readers_reproduce_the_float_reference_and_write_the_matrix(tmp_path: Path) -> None:
    from test_lava_backend import _test_stream

    missing = [r for r, (python, *_) in READERS.items() if not python.exists()]
    if missing:
        pytest.skip(f"reader environment(s) {', '.join(missing)} absent; run 'make readers'")
    stream = _test_stream("direct", SAMPLES)
    np.save(tmp_path / "x.npy", stream.astype(np.float32))
    rows = []
    results: dict[tuple[str, str, str], str] = {}
    students = {
        "digits VGG student (untrained)": _student("vgg"),
        "residual student (untrained)": _student("resnet"),
    }
    for reader, (python, fixed_dt, profiles) in READERS.items():
        for profile in profiles:
            # norse takes dt as an argument: the file's; snnTorch's reader fixes it
            dt = fixed_dt if reader == "snntorch" else PROFILES[profile].dt
            _run_reader(reader, python, dt, profile, students, stream, tmp_path, results, rows)
    # the bar: snnTorch and norse reproduce the digits student through their profiles
    for reader in ("snntorch", "norse"):
        assert results[(reader, reader, "digits VGG student (untrained)")].startswith("spikes identical")
    # sinabs: the export refuses lasnn's students in one sentence naming the node
    for student_name, graph in students.items():
        with pytest.raises(LasnnError, match=r"sinabs 3\.1\.3 from_nir cannot express node 'features\.1'"):
            apply_profile(graph, "sinabs")
        results[("sinabs", "sinabs", student_name)] = (
            "refused by export: reset to v_reset, one spike per step"
        )
    sinabs_line = _sinabs_reads_portable(tmp_path, students["digits VGG student (untrained)"])
    versions_by_reader = {key[0]: v for key, v, _ in rows}
    _write_matrix(results, versions_by_reader, {k: t for k, _, t in rows}, sinabs_line)


def _run_reader(reader, python, dt, profile, students, stream, tmp_path, results, rows) -> None:  # noqa: ANN001
    """Export each student for ``profile``, run the files through ``reader`` in one call, compare."""
    from lasnn.sims.float_backend import FloatBackend

    jobs, pending = [], []
    for student_name, graph in students.items():
        key = (reader, profile, student_name)
        try:
            profiled = apply_profile(graph, profile)
        except LasnnError as error:
            results[key] = f"refused by export: {error}"
            continue
        path = tmp_path / f"{reader}-{profile}-{len(jobs)}.nir"
        write_nir(profiled, path)
        out = path.with_suffix(".npz")
        jobs += [str(path), str(tmp_path / "x.npy"), str(out)]
        pending.append((key, path, out, profiled))
    if jobs:
        run = subprocess.run(
            [str(python), str(REPO / "scripts" / "nir_reader_run.py"), reader, str(dt), *jobs],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-2000:]
    for key, path, out, profiled in pending:
        got = np.load(out)
        if "__error__" in got.files:
            results[key] = f"reader fails: {bytes(got['__error__']).decode()}"
            continue
        versions = json.loads(bytes(got["__versions__"]).decode())
        ref = FloatBackend(np.float64, progress=False).run(read_nir(path), stream)
        layers = dict(ref.spikes)
        mismatched = {
            n: int((got[n].reshape(s.shape) != s).sum()) if n in got.files else -1 for n, s in layers.items()
        }
        out_ref = ref.outputs
        if got["output"].size != out_ref.size:
            per_step = got["output"].size // (T * SAMPLES)
            results[key] = (
                f"reader runs a different graph: {per_step} output values per step instead of "
                f"{out_ref[0, 0].size} (a residual join run before one of its inputs)"
            )
            continue
        diff = float(np.abs(got["output"].reshape(out_ref.shape) - out_ref).max())
        scale = float(np.abs(out_ref).max())
        spikes = sum(int(s.sum()) for s in layers.values())
        exact = all(v == 0 for v in mismatched.values())
        results[key] = (
            f"{'spikes identical' if exact else 'SPIKES DIFFER ' + str(mismatched)} in "
            f"{len(layers)} layers ({spikes} spikes); output max abs diff {diff:.2g} "
            f"(largest output {scale:.3g})"
        )
        if exact and diff <= 1e-5 * scale:
            results[key] += ", float32 rounding"
        rows.append((key, versions, _node_types(profiled)))
        if key[1] == key[0]:  # a reader's own profile must reproduce the student where it loads
            assert exact, (key, mismatched)
            assert diff <= 1e-5 * scale, (key, diff, scale)


def _sinabs_reads_portable(tmp_path: Path, graph) -> str:  # noqa: ANN001
    """Whether sinabs's environment (nir 1.0.4) can read a portable file (it carries v_reset)."""
    python = ENVS / "sinabs" / "bin" / "python"
    if not python.exists():
        return "sinabs environment absent (make readers)"
    path = tmp_path / "portable.nir"
    write_nir(apply_profile(graph, "portable"), path)
    code = (
        "import nir, sinabs, importlib.metadata as m; v = m.version('sinabs'), nir.__version__\n"
        f"try:\n    nir.read({str(path)!r}); print(*v, 'reads')\n"
        "except Exception as e:\n    print(*v, 'fails:', type(e).__name__, str(e).splitlines()[0][:120])"
    )
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip()


def _write_matrix(results: dict, versions: dict, node_types: dict, sinabs_line: str) -> None:
    lines = [
        "## lasnn export profiles -> other readers",
        "",
        "<!-- written by tests/test_readers.py; do not edit by hand -->",
        "| reader | versions | profile (dt) | student | node types in the file | what matches |",
        "|---|---|---|---|---|---|",
    ]
    for (reader, profile, student), text in sorted(results.items()):
        v = versions.get(reader, {})
        ver = (
            ", ".join(f"{k} {val}" for k, val in v.items())
            if v
            else ("sinabs 3.1.3" if reader == "sinabs" else "")
        )
        types = node_types.get((reader, profile, student), "")
        dt = PROFILES[profile].dt
        lines.append(f"| {reader} | {ver} | {profile} ({dt:g} s) | {student} | {types} | {text} |")
    lines += ["", f"sinabs environment reading a portable file: {sinabs_line}", ""]
    # the other direction (tests/test_foreign_exporters.py) writes its own section below: keep it
    old = MATRIX.read_text() if MATRIX.exists() else ""
    other = old[old.index(FOREIGN_SECTION) :] if FOREIGN_SECTION in old else ""
    MATRIX.parent.mkdir(exist_ok=True)
    MATRIX.write_text("\n".join(lines) + ("\n" + other if other else ""))


def test_export_for_reader_cli(tmp_path: Path, capsys) -> None:
    """``lasnn export FILE.nir --for READER``: the profile and its dt are recorded, Scale nodes are folded
    (the float reference then gives the original's spikes: checked inside export), names lose their dots;
    a graph the reader cannot run is refused in one sentence naming the node, and nothing is written."""
    from lasnn.cli import main

    for arch in ("vgg", "resnet"):
        write_nir(_student(arch), tmp_path / f"{arch}.nir")
    assert (
        main(["export", str(tmp_path / "vgg.nir"), "--for", "snntorch", "-o", str(tmp_path / "s.nir")]) == 0
    )
    written = read_nir(tmp_path / "s.nir")
    assert written.metadata["export_profile"] == "snntorch" and written.metadata["dt"] == 1e-4
    import nir

    raw = nir.read(tmp_path / "s.nir")  # the file as a reader sees it (lasnn reads AvgPool2d as sum + scale)
    assert not any("." in n for n in raw.nodes) and "features_1" in raw.nodes
    kinds = {type(n).__name__ for n in raw.nodes.values()}
    assert "Scale" not in kinds and "SumPool2d" not in kinds and "AvgPool2d" in kinds
    code = main(["export", str(tmp_path / "resnet.nir"), "--for", "norse", "-o", str(tmp_path / "r.nir")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "'features.3.neurons'" in err and "norse" in err
    assert not (tmp_path / "r.nir").exists()
