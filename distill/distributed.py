"""Data-parallel training under ``torchrun`` (torch.distributed): what ``lasnn teach``/``distill`` need so
that a run launched as ``torchrun --nproc-per-node N --no-python lasnn distill ...`` (or ``... -m
lasnn.cli distill ...``; several nodes: torchrun's ``--nnodes``/``--rdzv-endpoint``) behaves like one
process with the same global batch (``--batch-size`` is global; each rank takes ``1 / N`` of it).

- The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) is detected and the process group
  initialised on first use (NCCL for CUDA, gloo for CPU); without it every function here is a no-op
  and single-process training is unchanged.
- Sharding: every rank builds the same global batches (same permutation) and takes the interleaved
  slice ``batch[rank::world]``, which is what ``DistributedSampler`` + a per-rank batch of ``B / world``
  yields when ``world`` divides ``n`` and ``B`` (checked in tests). It is hand-written because
  ``DistributedSampler`` pads a data set whose size ``world`` does not divide with repeated samples and
  splits the last, partial batch unevenly, so it cannot reproduce the single-process run.
- Gradients: DDP averages the ranks' gradients, so a rank's loss is weighted by ``world * n_rank / n``
  (exactly 1 when the batch splits evenly): the averaged gradient is then the gradient of the global
  batch mean, also for an uneven last batch.
- Batch norm: statistics are synchronised over the global batch, so that N processes normalise as one
  would. On CUDA torch's ``SyncBatchNorm``; on CPU (gloo) ``GlooSyncBatchNorm`` below, because torch's
  ``SyncBatchNorm`` refuses CPU tensors (torch 2.14).
- Augmentation: ``SeededItems`` draws each sample's random transform from a seed of (run seed, epoch,
  sample index), so it does not depend on which rank (or worker process) loads the sample.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from lasnn.errors import LasnnError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the torch env vars)."""
    return all(name in os.environ for name in _ENV)


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise LasnnError(
            f"The environment variable {name}={text!r} is not a non-negative integer; launch with torchrun."
        )
    return value


def local_rank() -> int:
    return _env_int("LOCAL_RANK") if launched() else 0


def initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialised() else 0


def world_size() -> int:
    return dist.get_world_size() if initialised() else 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes artifacts and shows progress bars."""
    return rank() == 0


def local_device(device: str) -> str:
    """Under torchrun ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``."""
    if launched() and device == "cuda":
        return f"cuda:{local_rank()}"
    return device


def setup(device: str) -> None:
    """Initialise the process group once when launched by torchrun: NCCL for a CUDA device, else gloo."""
    if not launched() or initialised():
        return
    if _env_int("WORLD_SIZE") < 1:
        raise LasnnError("The environment variable WORLD_SIZE is 0; expected at least one process.")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(local_device(device)))
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(_teardown)


def _teardown() -> None:
    if initialised():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if world_size() > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64, so counts and loss sums stay exact enough)."""
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. Ctrl-C reached only some processes)."""
    return bool(all_sum([float(flag)])[0] > 0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (picklable objects)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(batch: list[int], world: int, rank: int) -> list[int]:
    """This rank's part of a global batch: the interleaved slice, as DistributedSampler would assign."""
    return batch[rank::world]


# ------------------------------------------------------------------------------------- augmentation


class SeededItems(Dataset):
    """``dataset[i]`` drawn with the global torch RNG seeded from ``(seed, i)`` (and restored after), so a
    sample's augmentation depends on neither the rank nor the worker that loads it, nor on what was
    drawn before. lasnn's augmentation (torchvision transforms) draws from the global torch RNG."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_000_007 + int(index)) % 2**63)
            return self.dataset[index]


# ------------------------------------------------------------------------------------------ batch norm


class GlooSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch over all ranks, on any device
    (torch's ``SyncBatchNorm`` is CUDA-only). Written by hand: two differentiable all-reduces
    (``torch.distributed.nn.functional.all_reduce``), one for the sum and count, one for the centred
    sum of squares (two passes, as numerically safe as the single-process kernel); the backward pass of
    each all-reduce sums the ranks' gradients. Same parameters and buffers as ``BatchNorm{1,2,3}d``, so
    its state dict is interchangeable with theirs. Without a process group (or in eval mode) it is
    plain batch norm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_tensor([input.numel() / input.shape[1]])
        stats = dist_fn.all_reduce(torch.cat([input.sum(dims), count]))
        total = stats[-1].detach()
        mean = stats[:-1] / total
        centred = input - mean.view(shape)
        var = dist_fn.all_reduce(centred.pow(2).sum(dims)) / total
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (total / (total - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Swap every batch norm of ``module`` (in place, parameters and buffers kept) for its synchronised
    form: torch's ``SyncBatchNorm`` on CUDA, ``GlooSyncBatchNorm`` elsewhere."""
    if isinstance(module, _BatchNorm):
        raise LasnnError(
            f"The model is a bare {type(module).__name__}; expected a network containing batch norm layers."
        )
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm | GlooSyncBatchNorm):
            new = GlooSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module


# ------------------------------------------------------------------------------------------------- DDP


class _Method(nn.Module):
    """Lets DDP wrap a method other than ``forward`` (DDP synchronises gradients only of calls made
    through its own forward), e.g. a student's ``run``."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, self.method)(*args, **kwargs)


def data_parallel(
    module: nn.Module,
    device: str,
    local: Callable,
    method: str = "forward",
    compile: bool = False,
    find_unused_parameters: bool = False,
) -> Callable:
    """The callable a training loss should use for ``module.<method>``: ``local`` in a single process;
    under torchrun (world > 1) the module with synchronised batch norm, on this rank's device, wrapped in
    ``DistributedDataParallel`` (which broadcasts rank 0's weights now and averages gradients in every
    backward pass), compiled when ``compile``. Evaluation should keep calling the plain module."""
    device = local_device(device)
    setup(device)
    if world_size() == 1:
        return local
    convert_sync_batchnorm(module, device)
    module.to(device)
    wrapped = module if method == "forward" else _Method(module, method)
    ddp = DistributedDataParallel(
        wrapped,
        device_ids=[torch.device(device).index or 0] if device.startswith("cuda") else None,
        find_unused_parameters=find_unused_parameters,
    )
    return torch.compile(ddp, dynamic=False) if compile else ddp
