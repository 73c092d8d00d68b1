"""The lasnn benchmark suite: ``python -m bench`` (run from the repository root).

Runs, in one process and one run, on the machine it is started on:

1. training throughput (``bench/train_throughput.py``): images/s of the ANN teacher, an ANN with the
   student's layers, the CE-only student and the LaSNN student, and issue 8's ratios;
2. simulator throughput (``bench/sim_throughput.py``): the bit-exact emulator's images/s over Lava's on the
   same network, with the spike trains checked identical;
3. the end-to-end demo (``lasnn demo --quick``, or the full one with ``--demo full``), timed as a
   subprocess, with its peak RSS;
4. peak memory of each part (CPU: peak RSS; GPU: ``torch.cuda.max_memory_allocated``).

It writes ``bench/results/<machine>-<date>.json`` and ``.md`` (machine: CPU model and core count, or the
GPU's name), each recording the machine, the command and the date.

    python -m bench --quick                 # smoke run (digits-sized networks, few steps, quick demo)
    python -m bench                         # CPU: small CIFAR-10 student, digits + CIFAR sims, quick demo
    python -m bench --device cuda           # GPU: ResNet-19-class student at T=4, batch 128; GPU emulator
    python -m bench --device cuda --skip-lava --skip demo   # on a GPU machine without Lava
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lasnn.artifacts import write_bytes, write_json

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))  # the suite's modules, also runnable on their own as scripts

import sim_throughput  # noqa: E402
import train_throughput  # noqa: E402


def machine_info(device: str) -> dict[str, Any]:
    """CPU model and cores, GPU (if used), software versions: what a figure needs to be compared."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_slug(info: dict[str, Any]) -> str:
    name = info["gpu"] or f"{info['cpu']}-{info['cpus']}cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    case = args.train_config or ("digits" if args.quick else "resnet19" if args.cuda else "small")
    batch = args.train_batch or (128 if args.cuda else 32)
    steps, rounds = (2, 3) if args.quick else (args.train_steps, 5)
    return train_throughput.measure(case, args.device, batch, steps, 1 if args.quick else 2, rounds)


def run_sims(args: argparse.Namespace) -> list[dict[str, Any]]:
    networks = args.sim_networks or ("digits" if args.quick else "digits,cifar")
    ns = argparse.Namespace(
        data_root=args.data_root,
        device=args.device,
        batch_size=args.sim_batch,  # None: the emulator's own chunk size (cache-sized on CPU, 4096 on GPU)
        emulator_samples=args.emulator_samples or (512 if args.quick else 2000),
        lava_samples=args.lava_samples or (8 if args.quick else 50),
        emulator_rounds=1 if args.quick else 3,
        skip_lava=args.skip_lava,
        load_case=args.load_case,
        save_case=None,
    )
    results = []
    for name in networks.split(","):
        if args.cuda:
            torch.cuda.reset_peak_memory_stats()
        result = sim_throughput.bench_network(name.strip(), ns)
        result["process_peak_rss_bytes"] = _peak_rss()
        if args.cuda:
            result["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        emu = result["emulator"]["images_per_s"]
        lava = result.get("lava", {}).get("images_per_s")
        print(
            f"  sim {name}: emulator {emu:.1f} images/s"
            + (f", Lava {lava:.2f} images/s, ratio {result['ratio']:.0f}x" if lava else ""),
            flush=True,
        )
        results.append(result)
    return results


_PEAK_PREFIX = "lasnn-bench-peak-rss-bytes="
# runs the CLI, then reports the subtree's peak RSS on stderr: its own from /proc/self/status's VmHWM
# (ru_maxrss of RUSAGE_SELF would keep the parent's resident size at fork time across exec) and its
# children's ru_maxrss (KiB on Linux)
_DEMO_SCRIPT = (
    "import resource as r, sys\n"
    "from lasnn.cli import main\n"
    "try:\n"
    "    code = main()\n"
    "finally:\n"
    "    try:\n"
    "        own = [int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')][0]\n"
    "    except (OSError, IndexError):\n"
    "        own = r.getrusage(r.RUSAGE_SELF).ru_maxrss\n"
    "    peak = max(own, r.getrusage(r.RUSAGE_CHILDREN).ru_maxrss)\n"
    f"    print('{_PEAK_PREFIX}' + str(peak * 1024), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """``lasnn demo`` end to end in a subprocess. Its peak RSS is read inside it at exit (the largest of its
    own and its children's): this process's ``RUSAGE_CHILDREN`` would also count Lava's forked workers of
    the simulator benchmark, which share this process's memory (see ``_DEMO_SCRIPT``)."""
    with tempfile.TemporaryDirectory(prefix="lasnn-bench-demo-") as out:
        command = [sys.executable, "-c", _DEMO_SCRIPT, "demo", "--out", out]
        command += ["--device", args.device]
        if args.demo == "quick":
            command.append("--quick")
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    peak = [line for line in proc.stderr.splitlines() if line.startswith(_PEAK_PREFIX)]
    result = {
        "mode": args.demo,
        "command": " ".join(["lasnn", *command[3:]]),
        "seconds": seconds,
        "returncode": proc.returncode,
        "children_peak_rss_bytes": int(peak[-1][len(_PEAK_PREFIX) :]) if peak else None,
    }
    if proc.returncode != 0:
        result["stderr_tail"] = proc.stderr[-2000:]
    print(f"  demo --{args.demo}: {seconds:.1f} s (exit {proc.returncode})", flush=True)
    return result


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [
        "# lasnn benchmark suite",
        "",
        f"- date: {record['date']}",
        f"- command: `{record['command']}`",
        f"- machine: {m['cpu']}, {m['cpus']} CPUs (torch threads {m['torch_threads']}), "
        f"GPU: {m['gpu'] or 'none used'}; {m['platform']}; torch {m['torch']}",
        f"- device: {record['device']}; total {record['seconds']:.0f} s",
        "",
    ]
    train = record.get("training")
    if train:
        lines += [
            f"## Training throughput ({train['case']}: student {train['student']}, teacher "
            f"{train['teacher']}, batch {train['batch_size']}, {train['device']}, bf16 autocast "
            f"{train['amp_bf16']}, {train['torch_threads']} threads; fastest of {train['rounds']} rounds of "
            f"{train['steps']} steps)",
            "",
            "| model | images/s | s/step | peak memory |",
            "| --- | --- | --- | --- |",
        ]
        for name, r in train["models"].items():
            peak = r.get("cuda_peak_allocated_bytes", r["process_peak_rss_bytes"])
            lines.append(f"| {name} | {r['images_per_s']:.1f} | {r['seconds_per_step']:.4f} | {_mib(peak)} |")
        ratios, targets = train["ratios"], train["targets"]
        lines += [
            "",
            f"- LaSNN step / CE step: **{ratios['lasnn_over_ce_step']:.2f}** "
            f"(target <= {targets['lasnn_over_ce_step']})",
            f"- CE student step / (T x ANN-twin step): **{ratios['ce_student_over_T_ann_twin_step']:.2f}** "
            f"(target <= {targets['ce_student_over_T_ann_twin_step']})",
            "",
        ]
    sims = record.get("simulators")
    if sims:
        lines += [
            "## Simulators: bit-exact emulator vs Lava (same network, same run)",
            "",
            "| network | neurons | emulator images/s (device, batch, samples, threads) | "
            "Lava images/s (samples) | ratio | spikes identical |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in sims:
            emu, lava = r["emulator"], r.get("lava")
            lines.append(
                f"| {r['network']} | {r['neurons']} | {emu['images_per_s']:.1f} ({emu['device']}, "
                f"{emu['batch_size']}, {emu['samples']}, {emu.get('threads')} threads) | "
                + (
                    f"{lava['images_per_s']:.2f} ({lava['samples']}) | {r['ratio']:.0f}x | "
                    f"{lava['spikes_identical_to_emulator']} |"
                    if lava
                    else "not run | - | - |"
                )
            )
        lines.append("")
    demo = record.get("demo")
    if demo:
        lines += [
            "## End-to-end demo",
            "",
            f"`{demo['command']}`: {demo['seconds']:.1f} s, exit {demo['returncode']}, peak RSS "
            f"{_mib(demo['children_peak_rss_bytes'])}",
            "",
        ]
    lines += [f"Peak RSS of the suite's process: {_mib(record['process_peak_rss_bytes'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="lasnn benchmark suite")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (training and emulator)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small networks, few steps")
    parser.add_argument("--train-config", choices=sorted(train_throughput.CASES), help="training case")
    parser.add_argument("--train-batch", type=int, help="training batch (default 32 CPU, 128 GPU)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per round (5 rounds)")
    parser.add_argument("--sim-networks", help="comma-separated: digits, cifar")
    parser.add_argument(
        "--sim-batch",
        type=int,
        help="emulator chunk size (default: its own, cache-sized on CPU, 4096 on GPU)",
    )
    parser.add_argument("--emulator-samples", type=int)
    parser.add_argument("--lava-samples", type=int)
    parser.add_argument("--skip-lava", action="store_true", help="emulator only (no Lava on the machine)")
    parser.add_argument("--load-case", help="quantised networks saved by sim_throughput.py --save-case")
    parser.add_argument(
        "--data-root",
        default=str(ROOT.parent / "shared" / "datasets" / "cifar10"),
        help="CIFAR-10 location for the simulator benchmark",
    )
    parser.add_argument("--demo", choices=("quick", "full"), default="quick", help="which lasnn demo to time")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: train, sim, demo")
    parser.add_argument("--out-dir", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    args.cuda = args.device.startswith("cuda")
    if args.cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was requested, but torch sees no CUDA GPU")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"train", "sim", "demo"}:
        parser.error(f"--skip {args.skip!r}: expected a comma-separated subset of train, sim, demo")

    started = time.perf_counter()
    now = datetime.datetime.now(datetime.timezone.utc)
    info = machine_info(args.device)
    record: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "quick": args.quick,
        "machine": info,
    }
    if "train" not in skip:
        print("training throughput ...", flush=True)
        record["training"] = run_training(args)
    if "sim" not in skip:
        print("simulator throughput ...", flush=True)
        record["simulators"] = run_sims(args)
    if "demo" not in skip:
        print(f"demo ({args.demo}) ...", flush=True)
        record["demo"] = run_demo(args)
    record["process_peak_rss_bytes"] = _peak_rss()
    record["seconds"] = time.perf_counter() - started
    stem = Path(args.out_dir) / f"{machine_slug(info)}-{now.strftime('%Y%m%d-%H%M%S')}"
    write_json(stem.with_suffix(".json"), record)
    write_bytes(stem.with_suffix(".md"), markdown(record).encode())
    print(f"wrote {stem}.json and {stem}.md")
    return 0 if record.get("demo", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
