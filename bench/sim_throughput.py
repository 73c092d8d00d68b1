"""Simulator throughput: the bit-exact emulator's images/s over Lava's images/s, same network, same machine.

Lava's Python simulator has no batch dimension and pays per time step and per read-back; the emulator
runs the same integer network batched in torch. This benchmark measures both, in one run, on:

- ``digits``: the digits student's size (VGG 32-64, 1x8x8 input, T = 4, direct encoding) on real digits
  test images;
- ``cifar``: a CIFAR-10-sized conv net (VGG 32-64, 3x32x32 input, T = 4, direct encoding) on real CIFAR-10
  test images from ``--data-root`` (``../shared/datasets/cifar10``), or random images if that is absent.

Weights are random (scaled so every layer fires; throughput does not need a trained network), quantised
once with ``lasnn.hardware.quantise`` on 64 training images. Lava runs ``--lava-samples`` samples in one
long run (the way ``lasnn simulate`` uses it: process build, compile, run, one read-back, all timed); the
emulator runs ``--emulator-samples``, timed after one warm-up batch. The Lava samples' spikes are
compared with the emulator's (they must be identical). Results go to ``bench/results/sim_throughput.md``
and ``.json`` with the machine, command and date.

    python bench/sim_throughput.py
    python bench/sim_throughput.py --device cuda --emulator-samples 10000   # emulator on a GPU
    python bench/sim_throughput.py --skip-lava --device cuda                # GPU emulator only
    python bench/sim_throughput.py --save-case cases/ ...; then elsewhere --load-case cases/ --skip-lava
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasnn.artifacts import write_bytes, write_json

RESULTS = Path(__file__).resolve().parent / "results"
T = 4
WIDTHS = ((32,), (64,))
WEIGHT_GAIN = 4.0  # random weights scaled so that the layers are active
CASE_IMAGES = 1000  # images kept with a saved case (repeated to --emulator-samples when loaded)


def _network(name: str, data_root: str | None) -> tuple[Any, np.ndarray, np.ndarray, str]:
    """(float graph, calibration stream, test images as an array [N, C, H, W], data description)."""
    from lasnn.data import first_samples, load_dataset
    from lasnn.distill.students import vgg_student
    from lasnn.encoding import encode
    from lasnn.errors import LasnnError
    from lasnn.export.lowering import lower_student

    shape = (1, 8, 8) if name == "digits" else (3, 32, 32)
    torch.manual_seed(0)
    student = vgg_student(shape, 10, widths=WIDTHS, timesteps=T, encoding="direct")
    with torch.no_grad():
        for module in student.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.weight.mul_(WEIGHT_GAIN)
    student.eval()
    graph = lower_student(student, {"timesteps": T, "encoding": "direct", "dt": 1e-3})
    dataset = "digits" if name == "digits" else "cifar10"
    try:
        test, _ = load_dataset(dataset, "test", data_root if dataset == "cifar10" else None, augment=False)
        train, _ = load_dataset(dataset, "train", data_root if dataset == "cifar10" else None, augment=False)
        images, _ = first_samples(test, None)
        calib, _ = first_samples(train, 64)
        source = f"{dataset} test split ({len(images)} images)"
    except LasnnError as error:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(2000, *shape, generator=generator)
        calib = torch.randn(64, *shape, generator=generator)
        source = f"random normal images ({error})"
    return graph, encode(calib, T, "direct").numpy(), images.numpy(), source


def _stream(images: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` images (repeated if the set is smaller), directly encoded ``[T, B, ...]``."""
    from lasnn.encoding import encode

    index = np.arange(count) % len(images)
    return encode(torch.as_tensor(images[index]), T, "direct").numpy()


def bench_network(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from lasnn.hardware.quantise import quantise
    from lasnn.sims.emulator import EmulatorBackend, auto_batch_size

    if args.load_case:  # a network quantised elsewhere (e.g. for a GPU machine without norse/nir)
        with open(Path(args.load_case) / f"{name}.pkl", "rb") as handle:
            case = pickle.load(handle)
        lg, images = case["lg"], case["images"]
        source = f"{case['source']}, first {len(images)} kept in the case and repeated"
    else:
        graph, calib, images, source = _network(name, args.data_root)
        lg, _ = quantise(graph, calib)
    if args.save_case:
        Path(args.save_case).mkdir(parents=True, exist_ok=True)
        case = {"lg": lg, "images": images[:CASE_IMAGES], "source": source}
        write_bytes(Path(args.save_case) / f"{name}.pkl", pickle.dumps(case))
    neurons = sum(layer.size for layer in lg.layers.values())
    result: dict[str, Any] = {
        "network": name,
        "data": source,
        "timesteps": T,
        "neurons": neurons,
        "layers": {n: list(layer.shape) for n, layer in lg.layers.items()},
    }

    emulator = EmulatorBackend(device=args.device, batch_size=args.batch_size, progress=False)
    stream = _stream(images, args.emulator_samples)
    warm = args.batch_size or auto_batch_size(lg, torch.device(args.device))
    emulator.run_loihi(lg, stream[:, :warm])  # warm-up (allocations, CUDA context)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    rounds_s = []  # the fastest of several rounds: other processes' load only ever adds time
    for _ in range(max(1, getattr(args, "emulator_rounds", 1))):
        started = time.perf_counter()
        emulated = emulator.run_loihi(lg, stream)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rounds_s.append(time.perf_counter() - started)
    emu_seconds = min(rounds_s)
    result["emulator"] = {
        "device": args.device,
        "samples": args.emulator_samples,
        "batch_size": emulator.last_batch_size,
        "seconds": emu_seconds,
        "rounds_seconds": rounds_s,
        "threads": torch.get_num_threads() if args.device.startswith("cuda") else emulator.last_threads,
        "images_per_s": args.emulator_samples / emu_seconds,
        "spikes_per_image": float(sum(s.sum() for s in emulated.spikes.values())) / args.emulator_samples,
    }
    if args.skip_lava:
        return result

    from lasnn.sims.lava_backend import LavaBackend

    lava = LavaBackend()
    lava_stream = stream[:, : args.lava_samples]
    started = time.perf_counter()
    simulated = lava.run_loihi(lg, lava_stream)
    lava_seconds = time.perf_counter() - started
    timing = lava.timings[-1]
    identical = all(
        np.array_equal(simulated.spikes[n], emulated.spikes[n][:, : args.lava_samples])
        for n in emulated.spikes
    ) and np.array_equal(simulated.outputs, emulated.outputs[:, : args.lava_samples])
    result["lava"] = {
        "samples": args.lava_samples,
        "seconds": lava_seconds,
        "images_per_s": args.lava_samples / lava_seconds,
        "ms_per_lava_step": 1e3 * timing["compile_and_run_s"] / timing["steps"],
        "timing": timing,
        "spikes_identical_to_emulator": bool(identical),
    }
    result["ratio"] = result["emulator"]["images_per_s"] / result["lava"]["images_per_s"]
    return result


def _machine(device: str) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _markdown(record: dict[str, Any]) -> str:
    lines = [
        "# Simulator throughput: emulator vs Lava",
        "",
        f"- date: {record['date']}",
        f"- command: `{record['command']}`",
        f"- machine: {record['machine']['processor']}, {record['machine']['cpus']} CPUs, "
        f"{record['machine'].get('gpu', 'no GPU used')}; {record['machine']['platform']}",
        "",
        "| network | neurons | T | emulator images/s (device, samples) | Lava images/s (samples) | ratio | "
        "Lava ms/step | spikes identical |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["results"]:
        emu, lava = r["emulator"], r.get("lava")
        lava_text = f"{lava['images_per_s']:.2f} ({lava['samples']})" if lava else "not run"
        ratio = f"{r['ratio']:.0f}x" if lava else "-"
        step = f"{lava['ms_per_lava_step']:.1f}" if lava else "-"
        same = str(lava["spikes_identical_to_emulator"]) if lava else "-"
        lines.append(
            f"| {r['network']} | {r['neurons']} | {r['timesteps']} | {emu['images_per_s']:.1f} "
            f"({emu['device']}, {emu['samples']}) | {lava_text} | {ratio} | {step} | {same} |"
        )
    lines += [
        "",
        "Data: " + "; ".join(f"{r['network']}: {r['data']}" for r in record["results"]),
        "",
        "Lava's time is end to end for one run of all its samples (build the processes, compile, start, "
        "run, read back once), as `lasnn simulate --backend lava` spends it; ms/step is the compile+run "
        "phase over the run's steps. The emulator is timed after a warm-up batch, fastest of its rounds.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="digits,cifar", help="comma-separated: digits, cifar")
    parser.add_argument(
        "--data-root",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"),
        help="CIFAR-10 location (default: ../shared)",
    )
    parser.add_argument("--device", default="cpu", help="emulator device (cpu or cuda)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="emulator chunk size (default: the emulator's own choice)",
    )
    parser.add_argument("--emulator-samples", type=int, default=1000)
    parser.add_argument("--lava-samples", type=int, default=50)
    parser.add_argument(
        "--emulator-rounds", type=int, default=3, help="emulator timings; the fastest is kept"
    )
    parser.add_argument("--skip-lava", action="store_true", help="emulator only (e.g. on a GPU machine)")
    parser.add_argument("--out", default=str(RESULTS / "sim_throughput"), help="output path without suffix")
    parser.add_argument("--save-case", help="also save each quantised network and 1000 of its images here")
    parser.add_argument(
        "--load-case", help="take the quantised networks and images from --save-case's folder"
    )
    args = parser.parse_args(argv)
    if args.lava_samples > args.emulator_samples:
        parser.error(
            "--lava-samples must not exceed --emulator-samples (Lava's spikes are checked against them)"
        )
    results = []
    for name in args.networks.split(","):
        result = bench_network(name.strip(), args)
        results.append(result)
        emu = result["emulator"]["images_per_s"]
        if "lava" in result:
            print(
                f"{name}: emulator {emu:.1f} images/s ({args.device}), "
                f"Lava {result['lava']['images_per_s']:.2f} images/s -> ratio {result['ratio']:.0f}x; "
                f"spikes identical: {result['lava']['spikes_identical_to_emulator']}",
                flush=True,
            )
        else:
            print(f"{name}: emulator {emu:.1f} images/s ({args.device})", flush=True)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/sim_throughput.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": _machine(args.device),
        "results": results,
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), record)
    write_bytes(out.with_suffix(".md"), _markdown(record).encode())
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    print(json.dumps({r["network"]: r.get("ratio") for r in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
