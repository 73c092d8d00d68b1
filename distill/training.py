"""The one training loop behind ``lasnn teach`` and ``lasnn distill`` (nanoGPT-style: no callbacks).

What differs between the two verbs is a ``loss_fn(images, labels, progress) -> (loss, logits, terms)``
and a ``predict_fn(images) -> logits``; everything else is here: SGD with momentum and a per-step cosine
learning rate, AMP (bfloat16) on GPU, a tqdm bar, evaluation after every epoch, an atomic training-state
checkpoint (``DIR/checkpoint.pt``) after every epoch and on Ctrl-C, ``resume``, and NaN detection.

Determinism: the shuffling order of epoch ``e`` comes from a generator seeded with ``(seed, e)``; each
sample's augmentation is drawn from a seed of (seed, e, sample index) (``distributed.SeededItems``), so it
is the same whichever process or worker loads the sample; the global RNG (Poisson encoding) is reseeded
at the start of every epoch. An epoch's randomness therefore does not depend on what ran before it; a
Ctrl-C checkpoint additionally stores the RNG state and the position in the epoch. With deterministic
algorithms (``torch.use_deterministic_algorithms``, on by default on CPU) a resumed run therefore ends
with exactly the weights of an uninterrupted one. A run killed without warning (SIGKILL) resumes from
its last end-of-epoch checkpoint.

Under ``torchrun`` (see ``distributed``) the same loop is data parallel: every rank takes its slice of
the same global batches, the loss, accuracy and NaN check are of the global batch (one all-reduce per
step, which also carries a Ctrl-C so that all ranks stop at the same step), the test set is split over
the ranks, and only rank 0 shows bars and writes the checkpoint (the others wait at a barrier). The
checkpoint holds the unwrapped model, optimizer, scheduler and epoch, and the number of steps per epoch
depends only on the global batch, so a run resumes under any number of processes. RNG on resume: the
per-epoch seed of rank r is ``(seed, epoch) + r * 2**40`` (rank 0 = single process); a mid-epoch
checkpoint stores every rank's RNG state and restores it when the world size is unchanged; with another
world size the rest of that epoch reseeds from (seed, epoch, step, rank), which changes only the
stochastic encodings' draws (augmentation is per sample), so a deterministic encoding resumes exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from lasnn.artifacts import load_checkpoint, remove_stale_temporaries, save_checkpoint
from lasnn.cpu_memory import keep_freed_memory
from lasnn.data import ImageArrayDataset
from lasnn.distill import airbench_recipe, distributed
from lasnn.errors import LasnnError

LossFn = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor, dict[str, float]]]
PredictFn = Callable[[torch.Tensor], torch.Tensor]
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainSettings:
    """Optimiser and run settings. ``amp`` and ``deterministic`` default to: AMP on GPU only,
    deterministic algorithms on CPU only (on GPU they cost speed; pass ``deterministic=True``)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    amp: bool | None = None
    deterministic: bool | None = None
    num_workers: int = 0
    recipe: str = "sgd"

    def __post_init__(self) -> None:
        if self.recipe not in airbench_recipe.RECIPES:
            raise LasnnError(
                f"--recipe {self.recipe!r} is unknown; expected one of {', '.join(airbench_recipe.RECIPES)}."
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LasnnError(f"--{name.replace('_', '-')} is {value!r}; expected a positive integer.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise LasnnError(f"--lr is {self.lr!r}; expected a positive number.")

    @property
    def use_amp(self) -> bool:
        return self.device.startswith("cuda") if self.amp is None else self.amp

    @property
    def use_deterministic(self) -> bool:
        return not self.device.startswith("cuda") if self.deterministic is None else self.deterministic


def resolve_device(name: str | None) -> str:
    """``auto`` (or None) picks CUDA when present; an unavailable device is a user error. Under torchrun
    ``cuda`` is the process's own GPU, ``cuda:LOCAL_RANK``."""
    if name in (None, "auto"):
        return distributed.local_device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LasnnError(f"--device {name} was requested but torch sees no CUDA GPU; use --device cpu.")
    if not (name == "cpu" or name.startswith("cuda")):
        raise LasnnError(f"--device {name!r} is not supported; expected auto, cpu or cuda[:N].")
    return distributed.local_device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
    # warn_only: a few CUDA kernels (pooling backward) have no deterministic form; CPU ones all do
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopFlag:
    """Turns the first Ctrl-C into a request to stop after the current step (the second one interrupts
    at once), so that the checkpoint written on stopping is never of a half-applied step.

    Under torchrun a Ctrl-C reaches each worker twice (from the terminal and forwarded by the agent,
    which kills the workers 30 s later), and a cluster's preemption arrives as SIGTERM forwarded by
    the agent: there every SIGINT and SIGTERM only requests the stop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        signals = [signal.SIGINT, signal.SIGTERM] if distributed.launched() else [signal.SIGINT]
        with contextlib.suppress(ValueError):  # not in the main thread: leave Ctrl-C alone
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested and not distributed.launched():
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:  # None: installed outside Python, cannot be put back
                signal.signal(sig, previous)


def evaluate(
    predict_fn: PredictFn,
    dataset: Dataset,
    batch_size: int,
    device: str,
    seed: int = 0,
    amp: bool = False,
    desc: str = "test",
) -> float:
    """Top-1 accuracy of ``predict_fn`` on ``dataset`` (fixed RNG, so stochastic encodings repeat).
    Under torchrun every rank evaluates its interleaved share and the counts are summed."""
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    correct = total = 0
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed + rank * 2**40)
        bar = tqdm(loader, desc=desc, leave=False, unit="batch", disable=None if rank == 0 else True)
        for images, labels in bar:
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                logits = predict_fn(images)
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
    correct, total = distributed.all_sum([correct, total])
    return correct / max(total, 1)


def _check_finite(loss: torch.Tensor, epoch: int, step: int, ckpt: Path) -> None:
    if not torch.isfinite(loss).all():
        kept = (
            f"the last good checkpoint {ckpt} is kept" if ckpt.exists() else "no checkpoint was written yet"
        )
        raise LasnnError(
            f"The training loss became {float(loss)} at epoch {epoch + 1}, step {step + 1}; {kept}; "
            "lower --lr and restart (or --resume)."
        )


def _check_replicas_agree(model: nn.Module, ckpt: Path) -> None:
    """Under torchrun, refuse to save when the ranks' weights differ (a loss that called the model
    directly instead of through ``distributed.data_parallel`` trains unsynchronised replicas)."""
    if distributed.world_size() == 1:
        return
    sums = torch.stack([v.detach().double().sum().cpu() for v in model.state_dict().values()])
    replicas = distributed.gather_objects(sums)
    if not all(torch.allclose(r, replicas[0], rtol=1e-6, atol=1e-9) for r in replicas):
        raise LasnnError(
            f"The {len(replicas)} processes hold different weights, so {ckpt} is not written; the training "
            "loss must call the model through lasnn.distill.distributed.data_parallel."
        )


def _batches(order: torch.Tensor, batch_size: int, world: int = 1) -> list[list[int]]:
    """The global batches of an epoch; a last batch of one sample (or fewer than one per rank) is dropped:
    a batch of one breaks batch norm."""
    chunks = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < max(2, world):
        chunks.pop()
    return chunks


def _tensor_batches(
    dataset: ImageArrayDataset,
    batches: list[list[int]],
    start: int,
    seed: int,
    epoch: int,
    world: int,
    rank: int,
) -> Any:
    """The airbench recipe's batches: each global batch augmented as one tensor (the epoch's alternating
    flips, translations from a generator of (seed, epoch, step)), then this rank's shard taken, so the
    pixels do not depend on the world size."""
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    shift = airbench_recipe.translation_for(dataset.images.shape[-2])
    flips = airbench_recipe.alternating_flips(seed, len(dataset), epoch)
    for step in range(start, len(batches)):
        index = torch.tensor(batches[step])
        generator = airbench_recipe.step_generator(seed, epoch, step)
        images = airbench_recipe.batch_augment(
            dataset.images[index], mean, std, generator, shift, dataset.mirror, flips[index]
        )
        mine = torch.tensor(distributed.shard(list(range(len(index))), world, rank))
        yield images[mine], dataset.labels[index][mine]


BN_RECALIBRATION_SAMPLES = 2048


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module,
    predict_fn: PredictFn,
    dataset: ImageArrayDataset,
    batch_size: int,
    seed: int,
    device: str,
    samples: int = BN_RECALIBRATION_SAMPLES,
) -> None:
    """Recompute every batch norm's running statistics as the plain average over ``samples`` un-augmented
    training images (a seeded draw), for the final weights.

    Why: the lookahead replaces the weights by their slow average, for which the running statistics
    (collected on the fast weights at a high learning rate, momentum 0.1) are stale; measured on the CIFAR
    airbench teacher after 8 of 10 epochs: 68.0 % on 1,000 test images with the running statistics, 82.1 %
    recalibrated (82.5 % with the batches' own statistics)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7_777))[:samples]
    model.train()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if len(chunk) > 1:
                predict_fn(dataset.normalised(chunk).to(device))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    predict_fn: PredictFn,
    train_set: Dataset,
    test_set: Dataset,
    settings: TrainSettings,
    out_dir: str | os.PathLike,
    run_config: dict[str, Any],
    resume: bool = False,
    desc: str = "train",
) -> dict[str, Any]:
    """Train ``model`` (whose parameters ``loss_fn`` must use) and return the metrics dict.

    ``run_config`` (JSON-like) describes the run; ``resume`` refuses a checkpoint of a different run.
    Writes ``out_dir/checkpoint.pt`` after every epoch; the caller writes the final model and metrics.
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    seed_everything(settings.seed, settings.use_deterministic)
    if torch.device(settings.device).type == "cpu":
        keep_freed_memory()  # large per-step tensors reuse memory instead of page-faulting it in anew
    distributed.setup(settings.device)
    device = distributed.local_device(settings.device)
    if device != settings.device:
        settings = replace(settings, device=device)
    if settings.batch_size < distributed.world_size():
        raise LasnnError(
            f"--batch-size {settings.batch_size} is smaller than the {distributed.world_size()} processes; "
            "expected a global batch of at least one sample per process."
        )
    try:
        return _fit(
            model, loss_fn, predict_fn, train_set, test_set, settings, Path(out_dir), run_config, resume, desc
        )
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _fit(
    model: nn.Module,
    loss_fn: LossFn,
    predict_fn: PredictFn,
    train_set: Dataset,
    test_set: Dataset,
    settings: TrainSettings,
    out_dir: Path,
    run_config: dict[str, Any],
    resume: bool,
    desc: str,
) -> dict[str, Any]:
    ckpt = out_dir / CHECKPOINT
    device = settings.device
    world, rank = distributed.world_size(), distributed.rank()
    main = rank == 0
    if main:  # a run killed while writing its checkpoint leaves a temporary file beside it
        remove_stale_temporaries(ckpt)
    say = tqdm.write if main else (lambda _text: None)
    model.to(device)
    n = len(train_set)
    steps_per_epoch = len(_batches(torch.arange(n), settings.batch_size, world))
    total_steps = settings.epochs * steps_per_epoch
    lookahead = None
    if settings.recipe == "airbench":
        if not isinstance(train_set, ImageArrayDataset):
            raise LasnnError("--recipe airbench needs an in-memory image data set (lasnn.data.load_dataset).")
        optimizer = airbench_recipe.optimizer(model, settings.lr, settings.batch_size)
        scheduler = airbench_recipe.scheduler(optimizer, total_steps, steps_per_epoch)
        lookahead = airbench_recipe.Lookahead(model, total_steps)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    start_epoch, start_step, history, partial, rng, rng_ranks = 0, 0, [], None, None, None
    run_config = {**run_config, "train": asdict(settings) | {"device": None}}

    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, ("training_state",), ("state_dict", "optimizer", "scheduler", "epoch"))
        saved = state["metadata"].get("run_config", {})
        for key in sorted(set(saved) | set(run_config)):
            if saved.get(key) != run_config.get(key):
                raise LasnnError(
                    f"{ckpt} belongs to a run with a different {key!r} ({saved.get(key)!r} vs now "
                    f"{run_config.get(key)!r}); resume with the same options or use a new --out."
                )
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if lookahead is not None:
            lookahead.load_state_dict(state["lookahead"])
        start_epoch, start_step = state["epoch"], state.get("step", 0)
        history, partial, rng = state.get("history", []), state.get("partial"), state.get("rng")
        if state.get("world_size", 1) == world:
            rng_ranks = state.get("rng_ranks")
        elif rng is not None:
            rng = None
            say(
                f"{desc}: the checkpoint was written by {state.get('world_size', 1)} processes, this run has "
                f"{world}; the rest of epoch {start_epoch + 1} reseeds its random encodings"
            )
        say(f"{desc}: resuming from {ckpt} at epoch {start_epoch + 1}, step {start_step + 1}")
    elif resume:
        say(f"{desc}: --resume given but {ckpt} does not exist; starting from scratch")

    def save_state(epoch: int, step: int, partial_stats: dict | None) -> None:
        for name, value in model.state_dict().items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise LasnnError(
                    f"Weight {name!r} became non-finite in epoch {epoch + 1}; the last good "
                    f"checkpoint {ckpt} is kept; lower --lr and restart."
                )
        _check_replicas_agree(model, ckpt)
        states = distributed.gather_objects(_rng_state()) if step else None  # a collective: every rank
        if main:
            save_checkpoint(
                ckpt,
                "training_state",
                {"run_config": run_config},
                state_dict=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                epoch=epoch,
                step=step,
                history=history,
                partial=partial_stats,
                rng=states[0] if states else None,
                rng_ranks=states,
                world_size=world,
                lookahead=lookahead.state_dict() if lookahead is not None else None,
            )
        distributed.barrier()

    started = time.perf_counter()
    with _StopFlag() as stop:
        for epoch in range(start_epoch, settings.epochs):
            epoch_seed = settings.seed * 1_000_003 + epoch
            batches = _batches(_epoch_order(n, settings.seed, epoch), settings.batch_size, world)
            if start_step and rng is not None:
                _set_rng_state(rng_ranks[rank] if rng_ranks else rng)
            elif start_step:  # mid-epoch checkpoint of another world size
                torch.manual_seed(epoch_seed + start_step * 1_000_000_007 + rank * 2**40)
            else:
                torch.manual_seed(epoch_seed + rank * 2**40)
            stats = partial or {"loss": 0.0, "correct": 0, "seen": 0, "terms": {}, "seconds": 0.0}
            # own generator: creating the iterator must not draw from the global RNG (it would shift a
            # resumed epoch's randomness); worker processes are seeded from it
            if lookahead is not None:
                loader = _tensor_batches(train_set, batches, start_step, settings.seed, epoch, world, rank)
            else:
                loader = DataLoader(
                    distributed.SeededItems(train_set, epoch_seed),
                    batch_sampler=[distributed.shard(b, world, rank) for b in batches[start_step:]],
                    num_workers=settings.num_workers,
                    pin_memory=device.startswith("cuda"),
                    generator=torch.Generator().manual_seed(epoch_seed),
                )
            model.train()
            bar = tqdm(
                loader,
                total=steps_per_epoch,
                initial=start_step,
                unit="batch",
                # also into a log file (long background runs), there every 30 s instead of every update
                disable=not main,
                mininterval=0.1 if sys.stderr.isatty() else 30,
                desc=f"{desc} epoch {epoch + 1}/{settings.epochs}",
                dynamic_ncols=True,
            )
            tick = time.perf_counter()
            step = start_step
            stopping = False
            for step, (images, labels) in enumerate(bar, start=start_step):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                progress = (epoch * steps_per_epoch + step) / total_steps
                with torch.autocast(
                    device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=settings.use_amp
                ):
                    loss, logits, terms = loss_fn(images, labels, progress)
                local = len(labels)
                values = [
                    float(loss.detach()) * local,
                    int((logits.detach().argmax(1) == labels).sum()),
                    local,
                    float(stop.requested),
                    *(terms[k] * local for k in sorted(terms)),
                ]
                # one all-reduce per step: global loss (NaN on any rank stops all), accuracy, Ctrl-C
                loss_sum, correct, seen, stops, *term_sums = distributed.all_sum(values)
                _check_finite(torch.tensor(loss_sum), epoch, step, ckpt)
                stopping = stops > 0
                optimizer.zero_grad(set_to_none=True)
                # DDP averages the ranks' gradients: weight by this rank's share of the global batch
                (loss if world == 1 else loss * (local * world / seen)).backward()
                optimizer.step()
                scheduler.step()
                if lookahead is not None:
                    lookahead.update(model, epoch * steps_per_epoch + step + 1)
                stats["loss"] += loss_sum
                stats["correct"] += int(correct)
                stats["seen"] += int(seen)
                for key, value in zip(sorted(terms), term_sums, strict=True):
                    stats["terms"][key] = stats["terms"].get(key, 0.0) + value
                elapsed = stats["seconds"] + time.perf_counter() - tick
                rate = stats["seen"] / max(elapsed, 1e-9)
                left = (total_steps - epoch * steps_per_epoch - step - 1) * settings.batch_size / rate
                bar.set_postfix(
                    loss=f"{stats['loss'] / stats['seen']:.3f}",
                    acc=f"{stats['correct'] / stats['seen']:.3f}",
                    img_s=f"{rate:.0f}",
                    eta=f"{left / 60:.1f}min",
                    refresh=False,
                )
                if stopping and step + 1 < len(batches):
                    stats["seconds"] = elapsed
                    save_state(epoch, step + 1, stats)
                    bar.close()
                    say(f"{desc}: interrupted; state saved to {ckpt}; continue with --resume")
                    raise KeyboardInterrupt
            bar.close()
            seconds = stats["seconds"] + time.perf_counter() - tick
            model.eval()
            test_accuracy = evaluate(
                predict_fn, test_set, max(settings.batch_size, 256), device, settings.seed, settings.use_amp
            )
            seen = max(stats["seen"], 1)
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": stats["loss"] / seen,
                    "train_accuracy": stats["correct"] / seen,
                    **{f"train_{k}": v / seen for k, v in stats["terms"].items()},
                    "test_accuracy": test_accuracy,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": seconds,
                    "images_per_s": seen / max(seconds, 1e-9),
                }
            )
            say(
                f"{desc} epoch {epoch + 1}/{settings.epochs}: loss {history[-1]['train_loss']:.4f}, "
                f"train acc {history[-1]['train_accuracy']:.4f}, test acc {test_accuracy:.4f}, "
                f"{history[-1]['images_per_s']:.0f} images/s"
            )
            start_step, partial, rng, rng_ranks = 0, None, None, None
            save_state(epoch + 1, 0, None)
            if distributed.any_rank(stopping or stop.requested) and epoch + 1 < settings.epochs:
                say(f"{desc}: interrupted; state saved to {ckpt}; continue with --resume")
                raise KeyboardInterrupt
    if not history:
        raise LasnnError(f"{ckpt} records no finished epoch; delete it or train for at least one epoch.")
    if lookahead is not None and "test_accuracy_before_bn_recalibration" not in history[-1]:
        # after the loop, also when resuming a finished run, so both paths end with the same weights
        recalibrate_batch_norm(model, predict_fn, train_set, settings.batch_size, settings.seed, device)
        model.eval()
        last = history[-1]
        last["test_accuracy_before_bn_recalibration"] = last["test_accuracy"]
        last["test_accuracy"] = evaluate(
            predict_fn, test_set, max(settings.batch_size, 256), device, settings.seed, settings.use_amp
        )
        say(
            f"{desc}: batch-norm statistics recalibrated on {BN_RECALIBRATION_SAMPLES} training images: "
            f"test acc {last['test_accuracy_before_bn_recalibration']:.4f} -> {last['test_accuracy']:.4f}"
        )
    return {
        "test_accuracy": history[-1]["test_accuracy"],
        "epochs": settings.epochs,
        "history": history,
        "train_seconds": sum(h["seconds"] for h in history),
        "wall_seconds": time.perf_counter() - started,
        "settings": asdict(settings),
        "world_size": world,
    }
