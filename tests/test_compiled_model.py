"""``lasnn compile`` and compiled models: the integers are fixed once, so every backend and every subset
of samples runs the same network.

The foreign graph is the issue's case: an IF + SumPool2d CNN on event-camera-like count frames (values
0-3) at T = 300, compiled with a calibration file of other samples and ``--input-mode currents``.
Simulated on 1, 2 and 100 samples it gives the same spikes for the common samples on the emulator and on
Lava, and Lava equals the emulator spike for spike. Before compiled models, the quantiser calibrated on
the scored samples, so the integers (and sample 0's spikes) changed with the sample count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lasnn.cli import main
from lasnn.export.graph import Affine, Conv2d, Flatten, Graph, Input, Neuron, Output, SumPool2d
from lasnn.export.nir_io import write_nir
from lasnn.hardware.compiled_model import compile_graph, is_compiled_model, load_compiled

T = 300
SHAPE = (2, 6, 6)


def _if(shape: tuple[int, ...], threshold: float) -> Neuron:
    z = np.zeros(shape)
    return Neuron(shape=shape, alpha_v=z, gain=z + 1.0, v_threshold=z + threshold, v_reset=z, v_leak=z)


def _count_cnn(path: Path) -> Path:
    rng = np.random.default_rng(4)
    nodes = {
        "input": Input(SHAPE),
        "conv1": Conv2d(rng.normal(0.2, 0.5, (4, 2, 3, 3)), None, SHAPE, padding=(1, 1)),
        "if1": _if((4, 6, 6), 4.0),
        "pool1": SumPool2d((2, 2), (2, 2), (4, 6, 6)),
        "flat": Flatten((4, 3, 3)),
        "fc": Affine(rng.normal(0.1, 0.4, (5, 36)), None),
        "if2": _if((5,), 2.0),
        "output": Output((5,)),
    }
    names = list(nodes)
    write_nir(Graph(nodes, list(zip(names[:-1], names[1:], strict=True)), {"dt": 1e-3}), path)
    return path


def _counts(seed: int, n: int) -> np.ndarray:
    """Event count frames (N, T, 2, 6, 6): mostly 0, some 1-3 events per pixel and step."""
    rng = np.random.default_rng(seed)
    return rng.poisson(0.25, (n, T, *SHAPE)).clip(0, 3).astype(np.float32)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compiled")
    graph = _count_cnn(root / "cnn.nir")
    np.save(root / "calib.npy", _counts(1, 20))
    np.save(root / "x.npy", _counts(2, 100))
    model = root / "cnn.lcm"
    in_memory = compile_graph(graph, calibration=root / "calib.npy", input_mode="currents")
    in_memory.save(model)
    return {
        "graph": graph,
        "model": model,
        "calib": root / "calib.npy",
        "x": root / "x.npy",
        "root": root,
        "in_memory": in_memory,
    }


def _spikes(files: dict[str, Path], backend: str, samples: int, model: Path | None = None, **kw) -> dict:
    from lasnn.sims.run_simulation import simulate

    npz = files["root"] / f"{backend}-{samples}-{len(kw)}.npz"
    simulate(
        model or files["model"],
        backend=backend,
        inputs=files["x"],
        samples=samples,
        save_spikes=npz,
        progress=False,
        **kw,
    )
    return dict(np.load(npz))


def test_compiled_model_round_trip_and_provenance(compiled: dict[str, Path]) -> None:
    import hashlib

    model = load_compiled(compiled["model"])
    assert is_compiled_model(compiled["model"]) and not is_compiled_model(compiled["graph"])
    prov = model.provenance
    assert prov["graph_sha256"] == hashlib.sha256(compiled["graph"].read_bytes()).hexdigest()
    assert prov["calibration"]["source"] == "file" and prov["calibration"]["samples"] == 20
    assert prov["input_mode"] == "current" and prov["input_mode_source"] == "flag"
    assert prov["lasnn_version"] and model.timesteps == T and model.input_mode == "current"
    assert model.schedule["if2"] == {"depth": 1, "reset_interval": T, "reset_offset": 2}
    assert model.report["layers"][0]["headroom_source"] == "calibration"
    # the file holds exactly the integers (and float scales) of the model that was saved
    again = compiled["in_memory"]
    assert again.report == model.report and again.provenance == model.provenance
    for name, layer in again.loihi.layers.items():
        stored = model.loihi.layers[name]
        assert (layer.vth, layer.du, layer.dv, layer.depth) == (
            stored.vth,
            stored.du,
            stored.dv,
            stored.depth,
        )
        np.testing.assert_array_equal(layer.bias_mant, stored.bias_mant)
        np.testing.assert_array_equal(layer.scale, stored.scale)
    for a, b in zip(again.loihi.synapses, model.loihi.synapses, strict=True):
        assert (a.src, a.dst, a.kind, a.weight_exp, a.delay) == (b.src, b.dst, b.kind, b.weight_exp, b.delay)
        np.testing.assert_array_equal(a.weight, b.weight)
    (hs,) = model.loihi.input.host
    np.testing.assert_array_equal(hs.weight, again.loihi.input.host[0].weight)
    assert hs.shift == again.loihi.input.host[0].shift


def test_subsets_give_identical_spikes_on_the_emulator(compiled: dict[str, Path]) -> None:
    runs = {n: _spikes(compiled, "emulator", n) for n in (1, 2, 100)}
    assert set(runs[1]) == {"if1", "if2", "output"}
    for key in runs[1]:
        np.testing.assert_array_equal(runs[1][key], runs[100][key][:1])
        np.testing.assert_array_equal(runs[2][key], runs[100][key][:2])
    for layer in ("if1", "if2"):  # a meaningful comparison: every layer active, none saturated
        assert 0 < runs[100][layer].sum() < runs[100][layer].size
    # a .nir compiled on the fly by the same rule runs the same integers
    fly = _spikes(
        compiled, "emulator", 2, model=compiled["graph"], calibration=compiled["calib"], input_mode="currents"
    )
    for key in fly:
        np.testing.assert_array_equal(fly[key], runs[100][key][:2])


@pytest.mark.lava
@pytest.mark.slow
def test_lava_subsets_equal_emulator_on_count_frames(compiled: dict[str, Path]) -> None:
    emulated = _spikes(compiled, "emulator", 100)
    for n in (1, 2):
        lava = _spikes(compiled, "lava", n)
        for key in emulated:
            np.testing.assert_array_equal(lava[key], emulated[key][:n])
    assert int(lava["if1"].sum()) > 0 and (np.load(compiled["x"])[:2] > 1).any()


def test_compile_refusals(compiled: dict[str, Path], tmp_path: Path, capsys) -> None:
    graph = compiled["graph"]
    cases = {
        # count frames into a spike-input model: refused, naming the fix
        "spikes_mode": (
            ["simulate", str(graph), "--inputs", str(compiled["x"]), "--input-mode", "spikes"],
            "--input-mode currents",
        ),
        # analog input without a calibration set: the input range is unknown
        "no_calibration": (
            ["compile", str(graph), "--input-mode", "currents", "--timesteps", str(T)],
            "--calibration",
        ),
        "model_flags": (
            ["simulate", str(compiled["model"]), "--inputs", str(compiled["x"])]
            + ["--calibration", str(compiled["calib"])],
            "recompile",
        ),
        "model_steps": (
            ["simulate", str(compiled["model"]), "--inputs", str(compiled["x"]), "--timesteps", "4"],
            "T = 300",
        ),
        "damaged": (["simulate", str(_damaged(compiled["model"], tmp_path))], "compiled model"),
    }
    for name, (args, expected) in cases.items():
        out = tmp_path / f"{name}.json"
        code = main([*args, "-o", str(out), *(["--quiet"] if args[0] == "simulate" else [])])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert err.count("\n") == 0 and expected in err, (name, err)
        assert not out.exists()


def _damaged(model: Path, tmp_path: Path) -> Path:
    data = bytearray(model.read_bytes())
    bad = tmp_path / "damaged.lcm"
    bad.write_bytes(bytes(data[: len(data) // 2]))
    import zipfile

    with zipfile.ZipFile(bad, "w") as archive:  # a zip that claims the header but holds junk
        archive.writestr("__header__.npy", b"junk")
    return bad


def test_simulate_refuses_labels_outside_the_classes(
    compiled: dict[str, Path], tmp_path: Path, capsys
) -> None:
    np.save(tmp_path / "y.npy", np.array([0, 1, 5] + [0] * 97))
    code = main(
        ["simulate", str(compiled["model"]), "--inputs", str(compiled["x"]), "--labels"]
        + [str(tmp_path / "y.npy"), "-o", str(tmp_path / "r.json"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "0..5" in err and "classes 0..4" in err


def test_compile_digits_student_from_its_data_set(tmp_path: Path, capsys) -> None:
    """A lasnn student compiles from its own data set's training split; the compiled model and the .nir
    simulated on the fly give the same emulator spikes and accuracy."""
    from test_simulate_cli import _student_nir

    nir_path = _student_nir(tmp_path / "s.nir", "direct")
    assert main(["compile", str(nir_path), "-o", str(tmp_path / "s.lcm")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["calibration"] == "dataset" and summary["calibration_samples"] == 256
    assert summary["input_mode"] == "current"
    records = {}
    for source in ("s.nir", "s.lcm"):
        records[source] = main(
            ["simulate", str(tmp_path / source), "--samples", "40", "-o", str(tmp_path / f"{source}.json")]
            + ["--save-spikes", str(tmp_path / f"{source}.npz"), "--quiet"]
        )
    a, b = np.load(tmp_path / "s.nir.npz"), np.load(tmp_path / "s.lcm.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    ra = json.loads((tmp_path / "s.nir.json").read_text())
    rb = json.loads((tmp_path / "s.lcm.json").read_text())
    assert ra["accuracy"] == rb["accuracy"] and ra["quantisation"] == rb["quantisation"]
    assert rb["compiled_model"]["calibration"]["dataset"] == "digits"
