"""``lasnn demo --quick`` end to end: every stage runs and leaves a report with sane accuracy figures."""

from __future__ import annotations

import json

import pytest

from lasnn import demo
from lasnn.cli import main


@pytest.mark.slow
@pytest.mark.lava
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.html'}" in printed
    for line in ("LaSNN student (Lava)", "converted SNN (emulator)", "teacher ANN"):
        assert line in printed

    for name in (
        "teacher/teacher.pt",
        "student/student.pt",
        "converted/student.pt",
        "student.nir",
        "converted.nir",
        "summary.json",
        "report/report.html",
        "report/report.md",
        "report/report.json",
        "report/energy.png",
        "report/accuracy_energy.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    runs = {r["label"]: r for r in report["runs"]}
    settings = demo.SETTINGS["quick"]
    assert runs["LaSNN student (Lava)"]["samples"] == settings["lava_samples"]
    assert runs["LaSNN student (emulator)"]["samples"] == settings["emulator_samples"]
    assert runs["converted SNN (emulator)"]["timesteps"] == summary["converted_timesteps"]
    # the emulator is bit-exact to Lava: identical spike trains in every layer on the samples Lava ran
    agreement = summary["lava_vs_emulator"]
    assert agreement["samples"] == settings["lava_samples"] and agreement["spikes"] > 0
    assert agreement["identical"], agreement["differing_spikes"]
    assert "identical" in printed
    # sane accuracies: all fractions; trained networks well above chance (10 classes) even after one epoch
    assert report["teacher"]["accuracy"] > 0.5
    assert runs["LaSNN student (emulator)"]["accuracy"] > 0.3
    for run in runs.values():
        assert 0.0 <= run["accuracy"] <= 1.0
        assert run["totals"]["spikes"] > 0 and run["energy"]["loihi"]["energy"] > 0
    # the float reference and the quantised emulator run the same student on the same samples
    float_acc = runs["LaSNN student (float)"]["accuracy"]
    assert abs(runs["LaSNN student (emulator)"]["accuracy"] - float_acc) <= 0.1  # same 60 samples
