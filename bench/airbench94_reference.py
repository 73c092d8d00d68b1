"""airbench94's own script on this machine and this data: the ceiling lasnn's CIFAR teacher is held to.

Why: the published 94.0 % (arXiv 2404.00498) is for fp16 on a GPU with the original CIFAR-10 pixels; the
shared copy is JPEG-stored (RMSE ~8 of 255 against the originals, ../shared/datasets/README.md) and CI has
no GPU. Running Keller Jordan's script itself, unchanged apart from what a CPU needs, separates what the
data and machine allow from what lasnn's re-implementation (distill/airbench_recipe.py) loses.

The script is not vendored: pass a checkout of github.com/KellerJordan/cifar10-airbench (written against
commit f1c599c4, 2025-03-02). Its ``legacy/airbench94.py`` is read, and these replacements are made in a
copy (each must match exactly once, else the run stops and names it):
- fp32 on the CPU instead of fp16 on CUDA (the net, the loader's images, ``torch.load``'s device);
- CPU timers (``time.perf_counter``) instead of CUDA events;
- one run instead of 25; ``--epochs`` may shorten ``train_epochs`` (9.9) for a quick check.
The data are lasnn's decoded copy (``lasnn.data.load_dataset``) saved in the ``train.pt``/``test.pt`` form
the script caches from torchvision, so no download is attempted.

    python bench/airbench94_reference.py --airbench /path/to/cifar10-airbench \\
        --data-root ../shared/datasets/cifar10 --results bench/results/airbench94_reference_cpu

Writes ``<results>.json`` and ``.md`` (per-epoch test accuracy without and, at the end, with airbench's
test-time augmentation; machine, date, command, the upstream commit if the checkout is a git repository).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_table import machine  # noqa: E402

from lasnn.artifacts import write_bytes, write_json  # noqa: E402

UPSTREAM = "legacy/airbench94.py"

# (what the upstream line says, what the CPU copy says); each must occur exactly once
REPLACEMENTS = (
    ("data = torch.load(data_path, map_location=torch.device(gpu))", "data = torch.load(data_path)"),
    ("self.images.half() / 255", "self.images.float() / 255"),
    ("net = net.half().cuda()", "net = net.float()"),
    (
        "starter = torch.cuda.Event(enable_timing=True)",
        "starter = _CpuTimer()",
    ),
    ("ender = torch.cuda.Event(enable_timing=True)", "ender = _CpuTimer()"),
    (
        "accs = torch.tensor([main(run) for run in range(25)])",
        "accs = torch.tensor([main(run) for run in range(1)])",
    ),
)
CPU_TIMER = '''
import time as _time


class _CpuTimer:
    """Stands in for a CUDA timing event on a CPU (added by lasnn's bench/airbench94_reference.py)."""

    def record(self):
        self.t = _time.perf_counter()

    def elapsed_time(self, other):
        return 1e3 * (other.t - self.t)

'''
ROW = re.compile(
    r"^\|\s*\S*\s*\|\s*(\d+|eval)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]*)\s*\|\s*([\d.]+)"
)


def cpu_copy(source: str, epochs: float | None) -> str:
    """The upstream script with the CPU replacements; raises SystemExit naming a replacement that fails."""
    for old, new in REPLACEMENTS:
        count = source.count(old)
        if count != 1:
            raise SystemExit(
                f"airbench94_reference: {UPSTREAM} has {count} copies of {old!r} (expected 1); this script "
                "was written against commit f1c599c4 of KellerJordan/cifar10-airbench, check out that one."
            )
        source = source.replace(old, new)
    source = source.replace("torch.cuda.synchronize()", "pass")
    if epochs is not None:
        source, count = re.subn(r"'train_epochs': [\d.]+,", f"'train_epochs': {epochs!r},", source)
        if count != 1:
            raise SystemExit(f"airbench94_reference: no single 'train_epochs' entry in {UPSTREAM}.")
    marker = "#############################################\n#                DataLoader"
    if marker not in source:
        raise SystemExit(f"airbench94_reference: the DataLoader section header of {UPSTREAM} was not found.")
    return source.replace(marker, CPU_TIMER + marker, 1)


def write_data(data_root: str, work: Path) -> None:
    """lasnn's decoded CIFAR-10 as ``work/cifar10/{train,test}.pt`` in the layout the script caches."""
    import torch

    from lasnn.data import load_dataset

    (work / "cifar10").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        dataset, info = load_dataset("cifar10", split, data_root, augment=False)
        images = dataset.images.permute(0, 2, 3, 1).contiguous()  # NHWC uint8, as torchvision's .data
        blob = {"images": images, "labels": dataset.labels, "classes": list(info.class_names)}
        torch.save(blob, work / "cifar10" / f"{split}.pt")


def parse(log: str) -> list[dict[str, float | str]]:
    """The script's printed table: one entry per epoch and the final (``eval``) one with TTA."""
    rows = []
    for line in log.splitlines():
        match = ROW.match(line.strip())
        if match:
            epoch, loss, train_acc, val_acc, tta, seconds = match.groups()
            rows.append(
                dict(
                    epoch=epoch if epoch == "eval" else int(epoch) + 1,
                    train_loss=float(loss),
                    train_accuracy=float(train_acc),
                    test_accuracy=float(val_acc),
                    test_accuracy_tta=float(tta) if tta else None,
                    seconds=float(seconds),
                )
            )
    return rows


def commit_of(checkout: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def write_results(stem: Path, record: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# airbench94's own script on this machine and data (reference for lasnn's CIFAR teacher)",
        "",
        f"Machine: {record['machine']}; date {record['date']}; upstream commit {record['upstream_commit']}.",
        f"Command: `{record['command']}`",
        "Upstream changes (bench/airbench94_reference.py): fp32 on the CPU, CPU timers, one run.",
        "Data: the shared JPEG-stored CIFAR-10 copy, all 10,000 test images.",
        *([f"Note: {record['note']}."] if record.get("note") else []),
        "",
        "| epoch | train loss | train acc % (last batch) | test % | test % with TTA | seconds so far |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["epochs"]:
        tta = "" if r["test_accuracy_tta"] is None else f"{100 * r['test_accuracy_tta']:.2f}"
        lines.append(
            f"| {r['epoch']} | {r['train_loss']:.4f} | {100 * r['train_accuracy']:.2f} | "
            f"{100 * r['test_accuracy']:.2f} | {tta} | {r['seconds']:.0f} |"
        )
    write_json(stem.with_suffix(".json"), record)
    write_bytes(stem.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--airbench", required=True, help="a checkout of KellerJordan/cifar10-airbench")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "airbench94_reference"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "airbench94_reference_cpu"))
    parser.add_argument("--epochs", type=float, help="shorten train_epochs (default: the script's 9.9)")
    args = parser.parse_args(argv)
    checkout = Path(args.airbench)
    upstream = checkout / UPSTREAM
    if not upstream.is_file():
        raise SystemExit(f"airbench94_reference: {upstream} does not exist; pass --airbench <checkout>.")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    script = work / "airbench94_cpu.py"
    script.write_text(cpu_copy(upstream.read_text(), args.epochs))
    write_data(args.data_root, work)
    started = time.time()
    done = subprocess.run([sys.executable, script.name], cwd=work, capture_output=True, text=True)
    (work / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(
            f"airbench94_reference: the script failed (exit {done.returncode}); see {work}/log.txt"
        )
    record = dict(
        command="python bench/airbench94_reference.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        machine=machine(),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        upstream_commit=commit_of(checkout),
        wall_seconds=time.time() - started,
        epochs=parse(done.stdout),
    )
    write_results(Path(args.results), record)
    print(f"airbench94_reference: wrote {args.results}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
