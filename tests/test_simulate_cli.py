"""``lasnn simulate`` end to end: a NIR file on disk -> run.json (+ spikes .npz) for every backend.

The run records are checked against independent recomputations: accuracy from the saved readout and the
data set's own labels, per-layer spike counts from the saved spike trains, Lava == emulator spike for
spike (through the command line this time), Poisson inputs identical whatever the batch size, and
foreign graphs fed pre-encoded inputs. Bad inputs give one sentence and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lasnn.cli import main
from lasnn.export.graph import Affine, Graph, Input, LeakyIntegrator, Neuron, Output
from lasnn.export.nir_io import write_nir

T = 4


def _student_nir(path: Path, encoding: str, num_classes: int = 10) -> Path:
    """A small random VGG student on digits (weights scaled so every layer is active), as lasnn exports it."""
    from lasnn.data import dataset_info
    from lasnn.distill.students import vgg_student
    from lasnn.export.lowering import lower_student

    torch.manual_seed(0)
    student = vgg_student((1, 8, 8), num_classes, widths=((4,), (8,)), timesteps=T, encoding=encoding)
    with torch.no_grad():
        for module in student.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.weight.mul_(10.0)
    student.eval()
    info = dataset_info("digits")
    graph = lower_student(
        student,
        {
            "dataset": "digits",
            "timesteps": T,
            "encoding": encoding,
            "dt": 1e-3,
            "num_classes": num_classes,
            "input_shape": list(info.input_shape),
            "mean": list(info.mean),
            "std": list(info.std),
        },
    )
    write_nir(graph, path)
    return path


def _foreign_nir(path: Path) -> Path:
    """A recurrent CubaLIF network with an LI readout and no data set, T or encoding recorded."""
    rng = np.random.default_rng(0)
    full = lambda n, v: np.full((n,), v, dtype=np.float64)  # noqa: E731
    nodes = {
        "input": Input((12,)),
        "fc1": Affine(rng.normal(0.3, 0.6, (16, 12)), None),
        "lif1": Neuron(
            shape=(16,),
            alpha_v=full(16, 0.25),
            gain=full(16, 0.5),
            v_threshold=full(16, 0.6),
            v_reset=full(16, 0.0),
            v_leak=full(16, 0.0),
            alpha_i=full(16, 0.5),
        ),
        "rec": Affine(rng.normal(0.0, 0.4, (16, 16)), None),
        "fc2": Affine(rng.normal(0.0, 0.5, (3, 16)), None),
        "li": LeakyIntegrator(shape=(3,), alpha_v=full(3, 0.1), gain=full(3, 0.1), v_leak=full(3, 0.0)),
        "output": Output((3,)),
    }
    edges = [
        ("input", "fc1"),
        ("fc1", "lif1"),
        ("lif1", "rec"),
        ("rec", "lif1"),
        ("lif1", "fc2"),
        ("fc2", "li"),
        ("li", "output"),
    ]
    write_nir(Graph(nodes, edges, {"dt": 1e-4}), path)
    return path


def _simulate(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["simulate", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def direct_nir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _student_nir(tmp_path_factory.mktemp("direct") / "model.nir", "direct")


@pytest.mark.lava
@pytest.mark.slow
def test_simulate_lava_emulator_float_records(direct_nir: Path, tmp_path: Path, capsys) -> None:
    from lasnn.data import first_samples, load_dataset

    n = 30
    records, spikes = {}, {}
    for backend in ("emulator", "lava", "float"):
        out, npz = tmp_path / f"{backend}.json", tmp_path / f"{backend}.npz"
        code, err = _simulate(
            capsys,
            direct_nir,
            "--backend",
            backend,
            "--samples",
            n,
            "-o",
            out,
            "--save-spikes",
            npz,
            "--batch-size",
            20,
        )
        assert code == 0, err
        records[backend] = json.loads(out.read_text())
        spikes[backend] = dict(np.load(npz))
    _, labels = first_samples(load_dataset("digits", "test", augment=False)[0], n)
    for backend, record in records.items():
        assert record["backend"] == backend and record["samples"] == n and record["timesteps"] == T
        assert (
            record["dataset"] == "digits"
            and record["encoding"] == "direct"
            and record["graph"] == str(direct_nir)
        )
        assert record["wall_seconds"] > 0
        saved = spikes[backend]
        assert set(saved) == {"features.1", "features.4", "output"}
        assert saved["features.1"].shape == (n, T, 4, 8, 8) and saved["output"].shape == (n, T, 10)
        # accuracy recomputed from the saved readout and the data set's labels
        predicted = saved["output"].mean(axis=1).argmax(axis=1)
        assert record["accuracy"] == pytest.approx(float((predicted == labels.numpy()).mean()))
        # per-inference spike counts recomputed from the saved trains
        layers = {entry["name"]: entry for entry in record["layers"]}
        for name in ("features.1", "features.4"):
            assert layers[name]["spikes"] == pytest.approx(saved[name].sum() / n)
            assert layers[name]["neuron_updates"] == pytest.approx(saved[name][0].size)
            assert layers[name]["synaptic_ops"] > 0
        assert layers["features.1"]["spikes"] > 0 and layers["features.4"]["spikes"] > 0
    assert records["float"]["quantisation"] is None
    assert records["lava"]["quantisation"]["layers"] and records["emulator"]["quantisation"]["layers"]
    # Lava and the emulator run the same integer network: identical spikes, readout and records
    for key in spikes["lava"]:
        np.testing.assert_array_equal(spikes["lava"][key], spikes["emulator"][key])
    assert records["lava"]["accuracy"] == records["emulator"]["accuracy"]
    assert records["lava"]["layers"] == records["emulator"]["layers"]


def test_simulate_poisson_independent_of_batch_size(tmp_path: Path, capsys) -> None:
    model = _student_nir(tmp_path / "poisson.nir", "poisson")
    saved = []
    for batch in (7, 25):
        npz = tmp_path / f"b{batch}.npz"
        code, err = _simulate(
            capsys,
            model,
            "--samples",
            25,
            "--batch-size",
            batch,
            "-o",
            tmp_path / f"b{batch}.json",
            "--save-spikes",
            npz,
        )
        assert code == 0, err
        saved.append(dict(np.load(npz)))
    assert saved[0]["features.1"].sum() > 0
    for key in saved[0]:
        np.testing.assert_array_equal(saved[0][key], saved[1][key])


def test_simulate_foreign_graph_with_inputs(tmp_path: Path, capsys) -> None:
    from lasnn.sims.run_simulation import simulate

    model = _foreign_nir(tmp_path / "foreign.nir")
    rng = np.random.default_rng(1)
    inputs = (rng.random((20, 6, 12)) < 0.3).astype(np.float32)
    labels = rng.integers(0, 3, 20)
    np.save(tmp_path / "x.npy", inputs)
    np.save(tmp_path / "y.npy", labels)
    code, err = _simulate(
        capsys,
        model,
        "--inputs",
        tmp_path / "x.npy",
        "--labels",
        tmp_path / "y.npy",
        "-o",
        tmp_path / "run.json",
        "--save-spikes",
        tmp_path / "s.npz",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "run.json").read_text())
    saved = np.load(tmp_path / "s.npz")
    assert record["timesteps"] == 6 and record["samples"] == 20 and record["dataset"] is None
    assert saved["lif1"].shape == (20, 6, 16) and saved["output"].shape == (20, 6, 3)
    predicted = saved["output"].mean(axis=1).argmax(axis=1)
    assert record["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    # without labels: no accuracy; the Python entry point gives the same record
    again = simulate(model, backend="emulator", inputs=tmp_path / "x.npy", progress=False, samples=5)
    assert again["accuracy"] is None and again["samples"] == 5


@pytest.mark.parametrize(
    "case",
    [
        "class_mismatch",
        "no_dataset",
        "inputs_shape",
        "inputs_steps",
        "both_sources",
        "bad_samples",
        "bad_npz",
    ],
)
def test_simulate_refuses_bad_input(case: str, tmp_path: Path, capsys) -> None:
    foreign = _foreign_nir(tmp_path / "foreign.nir")
    np.save(tmp_path / "x.npy", np.zeros((4, 5, 12), dtype=np.float32))
    out = tmp_path / "run.json"
    args = {
        "class_mismatch": [_student_nir(tmp_path / "five.nir", "direct", num_classes=5)],
        "no_dataset": [foreign],
        "inputs_shape": [foreign, "--inputs", _save(tmp_path / "bad.npy", np.zeros((4, 5, 11)))],
        "inputs_steps": [foreign, "--inputs", tmp_path / "x.npy", "--timesteps", 3],
        "both_sources": [foreign, "--inputs", tmp_path / "x.npy", "--dataset", "digits"],
        "bad_samples": [foreign, "--inputs", tmp_path / "x.npy", "--samples", 0],
        "bad_npz": [foreign, "--inputs", _save_bytes(tmp_path / "junk.npy", b"not an array")],
    }[case]
    code, err = _simulate(capsys, *args, "-o", out)
    assert code == 2
    message = err.strip()
    assert message.startswith("lasnn simulate: error:") and "\n" not in message and "Traceback" not in message
    assert not out.exists()
    expected = {
        "class_mismatch": "5 outputs",
        "no_dataset": "--dataset",
        "inputs_shape": "(N, T, 12)",
        "inputs_steps": "--timesteps 3",
        "both_sources": "not both",
        "bad_samples": "--samples",
        "bad_npz": "not a readable .npy",
    }[case]
    assert expected in message


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _save_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
