"""Example 3: a NIR file from elsewhere through the Loihi path: compile -> simulate on the bit-exact emulator
and on Lava -> energy/latency report; digits, under a minute on 2 CPU cores.

    python examples/foreign_nir.py --out runs/examples/foreign

The "foreign" file is written here with NIR's own node classes, the way sinabs or snnTorch export an
integrate-and-fire CNN: no lasnn metadata, no time step, pre-encoded inputs. It comes from a small ReLU CNN
trained for a few seconds and converted (thresholds from the 99.9th percentile of each layer's activation).
It is compiled once per T, calibrated on training images (never on the scored ones), run on all test images
on the emulator, and on the first images on Lava, whose spike trains must equal the emulator's. Writes the
NIR file, the run records, the spike files, ``report/`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

import lasnn

TIMESTEPS = (4, 8, 16, 32)  # the emulator runs each; Lava runs LAVA_T
LAVA_T, LAVA_SAMPLES = 16, 20


def foreign_nir_file(path: Path, train: lasnn.Data) -> None:
    """Train a ReLU CNN briefly, convert it to IF neurons and write it as a plain NIR graph."""
    ann = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(256, 10)
    )
    opt = torch.optim.Adam(ann.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(train.labels), generator=generator).split(64):
            loss = nn.functional.cross_entropy(ann(train.images[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    conv, fc = ann[0], ann[4]
    with torch.no_grad():
        theta = float(
            torch.quantile(ann[1](conv(train.images)).flatten(), 0.999)
        )  # rate 1 = activation theta
    w = lambda t: t.detach().double().numpy()  # noqa: E731
    shape = (16, 8, 8)
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([1, 8, 8])}),
            "conv": nir.Conv2d(
                input_shape=(8, 8),
                weight=w(conv.weight),
                stride=1,
                padding=1,
                dilation=1,
                groups=1,
                bias=w(conv.bias),
            ),
            "if1": nir.IF(r=np.ones(shape), v_threshold=np.full(shape, theta), v_reset=np.zeros(shape)),
            "pool": nir.SumPool2d(
                kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])
            ),
            "flat": nir.Flatten(input_type={"input": np.array([16, 4, 4])}, start_dim=0),
            # average pooling = sum pooling / 4; a spike rate r stands for the activation r * theta
            "fc": nir.Affine(weight=w(fc.weight) * theta / 4, bias=w(fc.bias)),
            "output": nir.Output(output_type={"output": np.array([10])}),
        },
        edges=[
            ("input", "conv"),
            ("conv", "if1"),
            ("if1", "pool"),
            ("pool", "flat"),
            ("flat", "fc"),
            ("fc", "output"),
        ],
    )
    nir.write(path, graph)


def analog_stream(data: lasnn.Data, steps: int) -> np.ndarray:
    """Pre-encoded inputs (N, T, C, H, W): each image as the same graded input at every step."""
    return np.repeat(data.images.double().numpy()[:, None], steps, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/foreign")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(1)  # nets this small run as fast on one thread, and never fight other processes
    torch.manual_seed(0)
    train, test = lasnn.load_data("digits", "train"), lasnn.load_data("digits", "test")
    graph_file = out / "foreign.nir"
    foreign_nir_file(graph_file, train)
    labels = test.labels.numpy()

    runs, names = [], []
    for steps in TIMESTEPS:
        model = lasnn.compile_loihi(
            graph_file, calibration=analog_stream(train, steps)[:256], input_mode="currents"
        )
        spikes = out / "emulator_spikes.npz" if steps == LAVA_T else None
        run = lasnn.simulate(
            model, "emulator", inputs=analog_stream(test, steps), labels=labels, save_spikes=spikes
        )
        runs.append(run)
        names.append(f"IF CNN, T = {steps} (emulator)")
        if steps == LAVA_T:
            inputs = analog_stream(test, steps)[:LAVA_SAMPLES]
            lava = lasnn.simulate(
                model,
                "lava",
                inputs=inputs,
                labels=labels[:LAVA_SAMPLES],
                save_spikes=out / "lava_spikes.npz",
                out=out / "lava_run.json",
            )
            cores = lasnn.loihi_resources(model)["cores"]
    runs.append(lava)
    names.append(f"IF CNN, T = {LAVA_T} (Lava, first {LAVA_SAMPLES})")
    with np.load(out / "lava_spikes.npz") as a, np.load(out / "emulator_spikes.npz") as b:
        identical = all(np.array_equal(a[k], b[k][:LAVA_SAMPLES]) for k in a.files if k != "output")
        lava_spikes = int(sum(a[k].sum() for k in a.files if k != "output"))

    report = lasnn.energy_report(runs, out / "report", labels=names)
    results = {
        "graph": str(graph_file),
        "emulator_accuracy": {str(r["timesteps"]): r["accuracy"] for r in runs[:-1]},
        "emulator_samples": runs[0]["samples"],
        "lava_accuracy": lava["accuracy"],
        "lava_samples": lava["samples"],
        "lava_vs_emulator_identical": identical,
        "lava_spikes_compared": lava_spikes,
        "loihi_cores": cores,
        "report": report["files"]["report.json"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
