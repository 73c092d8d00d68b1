"""Every script in examples/ runs as a user would run it, on the embedded digits data, and its output is
checked: accuracies above bounds, files with the expected keys, Lava equal to the emulator, the plot's
points equal to the report's figures. Their run time is a figure for the
README (measured on an idle machine), not an assertion: timed unit tests fail on a busy one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nir
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> float:
    """Run ``examples/<name>`` in a fresh interpreter; returns its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return seconds


def test_own_loop_with_a_hand_written_norse_student(tmp_path: Path) -> None:
    run_example("own_loop.py", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["teacher_accuracy"] > 0.95
    assert results["student_accuracy"] > 0.93
    assert results["pairs"] == [["lif1", "relu1"], ["lif2", "relu2"]]
    terms = results["last_batch_terms"]
    assert set(terms) == {"loss", "ce", "kd", "attention"} and terms["attention"] > 0
    assert abs(terms["loss"] - (terms["ce"] + terms["kd"] + terms["attention"])) < 1e-4


def test_torchvision_teacher(tmp_path: Path) -> None:
    run_example("torchvision_teacher.py", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["teacher_layers"] == ["layer1.1.relu", "layer2.1.relu", "layer3.1.relu"]
    assert results["pairs"] == [["features.1", "layer1.1.relu"], ["features.4", "layer2.1.relu"]]
    assert results["teacher_accuracy"] > 0.8
    assert results["student_accuracy"] > 0.85
    assert results["emulator_samples"] == 360 and results["emulator_accuracy"] > 0.85
    assert abs(results["emulator_accuracy"] - results["student_accuracy"]) <= 0.03  # fixed point vs float
    assert results["nir"]["verified_spikes"] > 0
    assert "features.1" in nir.read(tmp_path / "student.nir").nodes
    assert (tmp_path / "resnet18_digits.pt").is_file()


@pytest.fixture(scope="module")
def foreign_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("foreign")
    run_example("foreign_nir.py", "--out", str(out))
    return out


@pytest.mark.lava
def test_foreign_nir_compile_simulate_report(foreign_run: Path) -> None:
    results = json.loads((foreign_run / "results.json").read_text())
    accuracy = results["emulator_accuracy"]
    assert list(accuracy) == ["4", "8", "16", "32"] and results["emulator_samples"] == 360
    assert accuracy["16"] > 0.9 and accuracy["32"] > 0.9
    assert results["lava_samples"] == 20 and results["lava_vs_emulator_identical"] is True
    assert results["lava_spikes_compared"] > 1000
    report = json.loads(Path(results["report"]).read_text())
    assert report["format"] == "lasnn-report" and len(report["runs"]) == 5
    assert {"loihi", "memory"} <= set(report["energy_models"])
    emulator = [r for r in report["runs"] if r["backend"] == "emulator"]
    energies = [r["energy"]["loihi"]["energy"] for r in emulator]
    assert energies == sorted(energies) and energies[0] > 0  # more steps, more neuron updates
    assert [r["accuracy"] for r in emulator] == list(accuracy.values())
    for name in ("report.md", "report.html", "lava_run.json"):
        assert (foreign_run / ("report" if name.startswith("report") else "") / name).is_file()


@pytest.mark.lava
def test_plot_accuracy_against_energy(foreign_run: Path, tmp_path: Path) -> None:
    report_file = foreign_run / "report" / "report.json"
    run_example("plot_report.py", str(report_file), "--model", "memory", "--out", str(tmp_path))
    png = (tmp_path / "accuracy_energy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    points = json.loads((tmp_path / "points.json").read_text())
    report = json.loads(report_file.read_text())
    assert points["model"] == "memory" and len(points["points"]) == len(report["runs"])
    for point, run in zip(points["points"], report["runs"], strict=True):
        assert point["accuracy"] == run["accuracy"]
        assert point["energy_j"] == run["energy"]["memory"]["energy"]
