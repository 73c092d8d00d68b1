"""Reports: totals recomputed independently from report.json, a self-contained HTML that parses and renders
in headless Chromium, the teacher's MAC energy, and user errors."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from lasnn.cli import main
from lasnn.errors import LasnnError
from lasnn.export.graph import Affine, Conv2d, Flatten, Graph, Input, Neuron, Output, SumPool2d
from lasnn.hardware.activity import layer_activity
from lasnn.reports.plots import accuracy_energy_points
from lasnn.reports.report import load_run, make_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _neuron(shape):
    z = np.zeros(shape)
    return Neuron(shape=shape, alpha_v=z + 0.5, gain=z + 0.5, v_threshold=z + 1, v_reset=z, v_leak=z)


def _run_json(path: Path, rate: float, timesteps: int, accuracy: float | None, seed: int) -> Path:
    """A run.json whose layers come from real activity counting on a small conv graph."""
    g = Graph(
        {
            "input": Input((1, 8, 8)),
            "conv": Conv2d(np.ones((4, 1, 3, 3)), None, (1, 8, 8), (1, 1), (1, 1)),
            "lif1": _neuron((4, 8, 8)),
            "pool": SumPool2d((2, 2), (2, 2), (4, 8, 8)),
            "flat": Flatten((4, 4, 4)),
            "fc": Affine(np.ones((10, 64))),
            "output": Output((10,)),
        },
        [
            ("input", "conv"),
            ("conv", "lif1"),
            ("lif1", "pool"),
            ("pool", "flat"),
            ("flat", "fc"),
            ("fc", "output"),
        ],
        {"encoding": "direct"},
    )
    rng = np.random.default_rng(seed)
    stream = rng.normal(size=(timesteps, 3, 1, 8, 8))
    spikes = {"lif1": (rng.random((timesteps, 3, 4, 8, 8)) < rate).astype(np.uint8)}
    run = {
        "backend": "emulator",
        "samples": 3,
        "timesteps": timesteps,
        "accuracy": accuracy,
        "dataset": "digits",
        "encoding": "direct",
        "graph": f"{path.stem}.nir",
        "layers": layer_activity(g, spikes, stream),
        "quantisation": None,
    }
    path.write_text(json.dumps(run))
    return path


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            value = attrs.get(key)
            if value and not value.startswith("data:") and not value.startswith("#"):
                self.external.append(value)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    a = _run_json(tmp / "student.json", 0.1, 4, 0.95, 0)
    b = _run_json(tmp / "converted.json", 0.3, 16, 0.90, 1)
    out = tmp / "out"
    result = make_report([a, b], out, labels=["LaSNN student", "converted SNN"])
    return out, result


def test_report_files_and_totals_recomputed(report_dir):
    out, result = report_dir
    for name in (
        "report.md",
        "report.html",
        "report.json",
        "layers_0.png",
        "layers_1.png",
        "energy.png",
        "accuracy_energy.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(PNG_MAGIC)
    report = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["LaSNN student", "converted SNN"]
    for run in report["runs"]:
        for name, model in report["energy_models"].items():
            if "snn" not in model["per_event"]:
                assert name not in run["energy"]
                continue
            c, host = model["per_event"]["snn"], model["per_event"]["host"]["mac"]
            expected = 0.0
            for layer in run["layers"]:  # the formula written out, costs read back from report.json
                ac = layer["synaptic_ops"] - layer["macs"]
                expected += (
                    ac * c["synop"]
                    + layer["macs"] / run["timesteps"] * host  # direct input: host MACs once per inference
                    + layer["spikes"] * c["neuron_active"]
                    + (layer["neuron_updates"] - layer["spikes"]) * c["neuron_inactive"]
                    + layer["spikes"] * c["spike"]
                )
            assert run["energy"][name]["energy"] == pytest.approx(expected, rel=1e-12)
            assert sum(layer["energy"][name] for layer in run["layers"]) == pytest.approx(expected, rel=1e-12)
        assert run["totals"]["spikes"] == pytest.approx(sum(layer["spikes"] for layer in run["layers"]))
        acs = sum(layer["synaptic_ops"] - layer["macs"] for layer in run["layers"])
        assert run["neurobench"]["SynapticOperations"]["Effective_ACs"] == pytest.approx(acs)
        lat = run["latency"]["loihi"]
        assert lat["latency"] == pytest.approx(lat["steps"] * lat["time_per_step"])
        assert lat["steps"] == run["timesteps"] + len(run["layers"])
    # the loihi constants carry their source
    assert "Davies" in report["energy_models"]["loihi"]["constants"]["synop"]["source"]
    assert "Horowitz" in report["energy_models"]["compute_fp32"]["constants"]["fp32_add"]["source"]
    md = (out / "report.md").read_text()
    assert "latency" in md.lower() and "t_step" in md and "LaSNN student" in md


def test_html_is_self_contained_and_parses(report_dir):
    out, _ = report_dir
    text = (out / "report.html").read_text()
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.tags.count("img") == 4 and "table" in parser.tags
    assert not parser.external, parser.external
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "<script" not in text and "<link" not in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    from PIL import Image

    out, _ = report_dir
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        (out / "report.html").resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert image.shape == (2000, 1200)
    assert image.std() > 10  # not a blank page: text, tables and plots
    assert (image < 128).mean() > 0.005  # some dark pixels (text, bars)


def test_teacher_energy_from_macs(tmp_path):
    from lasnn.distill.checkpoints import save_teacher
    from lasnn.distill.teachers import build_teacher

    config = dict(arch="small_cnn", in_shape=[1, 8, 8], num_classes=10, width=1.0)
    net = build_teacher(config)
    meta = dict(
        dataset="digits",
        data_root=None,
        input_shape=[1, 8, 8],
        num_classes=10,
        mean=[0.0],
        std=[1.0],
        seed=0,
        test_accuracy=0.97,
    )
    save_teacher(tmp_path / "teacher.pt", net, config, meta)
    # MACs counted independently: every conv/linear output element times its fan-in
    macs = 0
    hooks = []

    def count(mod, _inp, outp):
        nonlocal macs
        fan_in = mod.weight[0].numel()
        macs += outp.numel() * fan_in

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            hooks.append(m.register_forward_hook(count))
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 1, 8, 8))
    run = _run_json(tmp_path / "run.json", 0.1, 4, 0.9, 2)
    result = make_report([run], tmp_path / "rep", teacher=tmp_path)
    teacher = result["report"]["teacher"]
    assert teacher["macs"] == macs and teacher["accuracy"] == 0.97
    assert teacher["energy"]["compute_fp32"] == pytest.approx(macs * 4.6e-12)
    assert teacher["energy"]["compute_int8"] == pytest.approx(macs * 0.23e-12)
    assert "loihi" not in teacher["energy"]  # the Loihi model prices SNNs only
    assert (tmp_path / "rep" / "accuracy_energy.png").is_file()


def test_bad_run_json_is_a_user_error(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"backend": "lava", "timesteps": 4, "layers": [{"name": "a", "neurons": 3}]}))
    with pytest.raises(LasnnError, match="spikes"):
        load_run(bad)
    bad.write_text("{")
    with pytest.raises(LasnnError, match="not valid JSON"):
        load_run(bad)
    with pytest.raises(LasnnError, match="does not exist"):
        load_run(tmp_path / "missing.json")


def test_report_command(tmp_path, capsys):
    run = _run_json(tmp_path / "run.json", 0.2, 4, 0.9, 3)
    assert main(["report", str(run), "-o", str(tmp_path / "rep"), "--energy-model", "loihi"]) == 0
    printed = capsys.readouterr().out
    assert "energy / inf. [loihi]" in printed and "report.html" in printed
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert list(report["energy_models"]) == ["loihi"]
    # a user error is one line on stderr and exit status 2
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "rep2")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err


def test_headlines_backend_groups_and_sweep(tmp_path):
    from lasnn.distill.checkpoints import save_teacher
    from lasnn.distill.teachers import build_teacher

    config = dict(arch="small_cnn", in_shape=[1, 8, 8], num_classes=10, width=1.0)
    meta = dict(
        dataset="digits", data_root=None, input_shape=[1, 8, 8], num_classes=10, mean=[0.0], std=[1.0]
    )
    save_teacher(
        tmp_path / "teacher.pt", build_teacher(config), config, {**meta, "seed": 0, "test_accuracy": 0.9}
    )
    a = _run_json(tmp_path / "student.json", 0.1, 4, 0.95, 0)  # the same graph (student.nir) and spikes ...
    b_run = json.loads(a.read_text())
    b_run["backend"] = "float"  # ... on another backend, one layer's spikes 1 % off
    b_run["layers"][0]["spikes"] *= 1.01
    b = tmp_path / "float.json"
    b.write_text(json.dumps(b_run))
    sweep = tmp_path / "sweep.json"
    rows = [
        {
            "energy_weight": w,
            "test_accuracy": acc,
            "loihi_energy_per_inference_j": e,
            "command": f"lasnn x {w}",
        }
        for w, acc, e in ((0, 0.98, 6e-6), (1, 0.975, 2.5e-6), (3, 0.9, 1e-6))
    ]
    sweep.write_text(json.dumps({"rows": rows}))
    result = make_report([a, b], tmp_path / "rep", teacher=tmp_path, sweep=sweep)
    report = result["report"]
    (group,) = report["backend_groups"]
    assert group["backends"] == ["emulator", "float"] and group["runs"] == [0, 1]
    assert group["max_rel_spike_difference"] == pytest.approx(0.01 / 1.01)
    first = report["runs"][0]
    ratio = first["energy"]["loihi"]["energy"] / report["teacher"]["energy"]["memory"]
    assert f"{ratio:.2g}x the teacher under memory" in report["headlines"][0]  # Loihi vs the fair ANN models
    assert "95.00 % at T = 4" in report["headlines"][0] and "latency" in report["headlines"][0]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("## student (") == 1  # the second backend's run of the same graph is not repeated
    assert "shown once below" in md and "lasnn x 3" in md and "modelled" in md
    assert (tmp_path / "rep" / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"energy_weight": 0}]}))
    with pytest.raises(LasnnError, match="no rows with"):
        make_report([a], tmp_path / "rep2", sweep=bad)


def test_runs_without_accuracy_report_without_the_accuracy_plot(tmp_path, capsys):
    """Runs with no labels (e.g. a foreign graph on --inputs) have no accuracy: the accuracy-vs-energy plot
    has no point and matplotlib refuses a log axis without one, so the report leaves that plot out and says
    why; a run with an accuracy beside one without still gets the plot, with that run's points only."""
    a = _run_json(tmp_path / "a.json", 0.1, 4, None, 0)
    b = _run_json(tmp_path / "b.json", 0.3, 4, None, 1)
    out = tmp_path / "rep"
    assert (
        main(
            ["report", str(a), str(b), "-o", str(out), "--energy-model", "loihi", "--energy-model", "memory"]
        )
        == 0
    )
    capsys.readouterr()
    assert not (out / "accuracy_energy.png").exists()
    report = json.loads((out / "report.json").read_text())
    assert "accuracy_energy.png" not in report["plots"] and "energy.png" in report["plots"]
    note = report["accuracy_energy_note"]
    assert "none of the 2 runs has an accuracy" in note
    assert (
        note in (out / "report.md").read_text()
        and "![accuracy vs energy]" not in (out / "report.md").read_text()
    )
    assert html_escape(note) in (out / "report.html").read_text()
    c = _run_json(tmp_path / "c.json", 0.2, 4, 0.8, 2)
    result = make_report([a, c], tmp_path / "rep2", energy_models=["loihi", "memory"])
    assert (tmp_path / "rep2" / "accuracy_energy.png").read_bytes().startswith(PNG_MAGIC)
    assert "accuracy_energy_note" not in result["report"]
    points = accuracy_energy_points(result["report"])
    assert [(p["run"], p["model"]) for p in points] == [(1, 0), (1, 1)]
    assert [p["energy"] for p in points] == [
        result["report"]["runs"][1]["energy"][m]["energy"] for m in ("loihi", "memory")
    ]
