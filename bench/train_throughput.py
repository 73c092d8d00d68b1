"""Training throughput: images/s of one optimiser step of the ANN teacher, the CE-only student, the LaSNN
student and an ANN with the student's layers, and issue 8's two ratios from the same run.

- LaSNN step / CE step (target <= 1.3): the overhead of distillation (teacher forward under
  ``torch.inference_mode``, attention maps, KD and attention terms);
- student step / (T x ANN-twin step) (target <= 1): the cost of the T-step loop over a network with the
  student's layers where every spiking layer is a ReLU, run once (T = 1).

The steps are the ones ``lasnn teach`` / ``lasnn distill`` take (``lasnn.distill``: SGD with momentum,
bfloat16 autocast on GPU as ``TrainSettings.use_amp``, loss from ``lasnn.distill.losses.objective``, teacher
and attention maps as in ``lasnn.distill.commands.distill``'s loss), on synthetic images of the data set's
shape (throughput does not depend on pixel values: the student's layers are dense), timed after warm-up
steps with the device synchronised; the models alternate over rounds and each keeps its fastest round.
Data loading is not included. Written by hand: no library times these particular steps.

    python bench/train_throughput.py --config small --device cpu
    python bench/train_throughput.py --config resnet19 --device cuda --batch-size 128
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TrainCase:
    """A student, its teacher and the data shape (the student's layers also define the ANN twin)."""

    name: str
    in_shape: tuple[int, int, int]
    student: str  # "vgg" | "resnet"
    widths: tuple
    blocks: int
    teacher: str  # a lasnn.distill.teachers architecture
    timesteps: int = 4
    num_classes: int = 10


CASES = {
    # the digits demo's student and teacher (1x8x8 images)
    "digits": TrainCase("digits", (1, 8, 8), "vgg", ((32,), (64,)), 1, "small_cnn"),
    # a small CIFAR-10 student (what fits a 2-core CPU)
    "small": TrainCase("small", (3, 32, 32), "vgg", ((32,), (64,)), 1, "small_cnn"),
    # issue 8's GPU figure: a ResNet-19-class student (widths 128/256/512, 3 blocks per stage, as ResNet-19's
    # 3/3/2 in Zheng et al. 2021) at T = 4 on CIFAR-10, taught by ResNet-19
    "resnet19": TrainCase("resnet19", (3, 32, 32), "resnet", (128, 256, 512), 3, "resnet19"),
}


class _ReLU(nn.Module):
    """Stands in for a ``SpikingNeurons`` layer in the ANN twin (same input and output shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


def ann_twin(student: nn.Module) -> nn.Module:
    """A copy of ``student`` with every spiking layer replaced by a ReLU: the ANN with the same layers."""
    from lasnn.distill.spiking_layers import SpikingNeurons

    twin = copy.deepcopy(student)
    twin.timesteps = 1
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SpikingNeurons):
                setattr(module, name, _ReLU())
    return twin


def _build(case: TrainCase) -> tuple[nn.Module, nn.Module]:
    from lasnn.distill.students import resnet_student, vgg_student
    from lasnn.distill.teachers import build_teacher

    torch.manual_seed(0)
    if case.student == "vgg":
        student = vgg_student(case.in_shape, case.num_classes, case.widths, case.timesteps, "direct")
    else:
        student = resnet_student(
            case.in_shape, case.num_classes, case.widths, case.blocks, case.timesteps, "direct"
        )
    teacher = build_teacher(
        {"arch": case.teacher, "in_shape": list(case.in_shape), "num_classes": case.num_classes}
    )
    return student, teacher


def _timed(step: Callable[[], None], steps: int, warmup: int, device: str) -> tuple[float, dict[str, int]]:
    """Seconds per step (mean over ``steps`` after ``warmup``) and peak memory: GPU bytes allocated during
    these steps on CUDA; on CPU the process's peak RSS so far (it never decreases)."""
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    memory = {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if cuda:
        memory["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return seconds, memory


def measure(
    case_name: str,
    device: str = "cpu",
    batch_size: int = 32,
    steps: int = 5,
    warmup: int = 2,
    rounds: int = 5,
) -> dict[str, Any]:
    """Time one training step of each model of ``CASES[case_name]``; return images/s, ratios, memory."""
    from lasnn.distill.attention import AttentionProbe, set_membrane_recording
    from lasnn.distill.losses import LossConfig, objective

    case = CASES[case_name]
    student, teacher = _build(case)
    twin = ann_twin(student)
    student, teacher, twin = student.to(device), teacher.to(device), twin.to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, *case.in_shape, generator=generator).to(device)
    labels = torch.randint(0, case.num_classes, (batch_size,), generator=generator).to(device)
    amp = device.startswith("cuda")  # as TrainSettings.use_amp: bfloat16 autocast on GPU only
    teacher.eval()
    ann_teacher = copy.deepcopy(teacher)  # trained on its own; the distilling teacher stays in eval mode
    teacher.to(memory_format=torch.channels_last)  # as lasnn.distill.commands.distill
    # the distill defaults: membrane aggregation (the fused neuron returns the membrane it computes anyway)
    probe = AttentionProbe(teacher, student, images[:4].cpu().to(device), 2.0, "membrane")
    set_membrane_recording(student, [s for s, _ in probe.pairs], True)

    def optimiser_step(model: nn.Module, loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

        def step() -> None:
            model.train()
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                loss = loss_of()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    def teacher_loss() -> torch.Tensor:
        return F.cross_entropy(ann_teacher(images).float(), labels)

    def twin_loss() -> torch.Tensor:
        logits, _ = twin.run(twin.encode(images), time_mean=True)
        return F.cross_entropy(logits.float(), labels)

    def ce_loss() -> torch.Tensor:
        logits, _ = student.run(student.encode(images), time_mean=True)
        return objective(LossConfig(kind="ce"), logits, labels)[0]

    lasnn_config = LossConfig(kind="lasnn")

    def lasnn_loss() -> torch.Tensor:  # as lasnn.distill.commands.distill's loss_fn
        logits, recorded = student.run(student.encode(images), record=True, time_mean=True)
        with torch.inference_mode():
            t_logits, t_ends = teacher.forward_features(images.contiguous(memory_format=torch.channels_last))
            t_maps = probe.teacher_maps(t_ends)
        teacher_logits, teacher_maps = t_logits.clone(), [m.clone() for m in t_maps]
        student_maps = probe.student_maps(student, recorded)
        return objective(lasnn_config, logits, labels, teacher_logits, teacher_maps, student_maps, 0.0)[0]

    runs = {
        "ann_teacher": (ann_teacher, teacher_loss),
        "ann_twin": (twin, twin_loss),
        "ce_student": (student, ce_loss),
        "lasnn_student": (student, lasnn_loss),
    }
    result: dict[str, Any] = {
        "case": case_name,
        "student": f"{case.student} widths={list(case.widths)} blocks={case.blocks} T={case.timesteps}",
        "teacher": case.teacher,
        "attention_pairs": [list(p) for p in probe.pairs],
        "input_shape": list(case.in_shape),
        "device": device,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "amp_bf16": amp,
        "models": {},
    }
    # models alternate over ``rounds`` and each keeps its fastest round: load from other processes only ever
    # adds time, so the minimum is the least disturbed estimate, and alternating spreads busy spells
    step_fns = {name: optimiser_step(model, loss_of) for name, (model, loss_of) in runs.items()}
    previous_threads = torch.get_num_threads()
    if not device.startswith("cuda"):  # as the emulator: only the idle cores (stalled OpenMP barriers)
        from lasnn.cpu_memory import keep_freed_memory
        from lasnn.sims.emulator import cpu_threads

        torch.set_num_threads(cpu_threads())
        keep_freed_memory()  # as lasnn.distill's fit on CPU
    result["torch_threads"] = torch.get_num_threads()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for round_index in range(rounds):
            for name, step in step_fns.items():
                seconds, memory = _timed(step, steps, warmup if round_index == 0 else 0, device)
                timings[name].append(seconds)
                result["models"].setdefault(name, {}).update(memory)
    finally:
        torch.set_num_threads(previous_threads)
    for name, rounds_s in timings.items():
        seconds = float(np.min(rounds_s))
        result["models"][name].update(
            seconds_per_step=seconds, images_per_s=batch_size / seconds, rounds_seconds_per_step=rounds_s
        )
        print(f"  train {case_name} {name}: {batch_size / seconds:.1f} images/s ({device})", flush=True)
    m = result["models"]
    result["ratios"] = {
        "lasnn_over_ce_step": m["lasnn_student"]["seconds_per_step"] / m["ce_student"]["seconds_per_step"],
        "ce_student_over_T_ann_twin_step": m["ce_student"]["seconds_per_step"]
        / (case.timesteps * m["ann_twin"]["seconds_per_step"]),
    }
    result["targets"] = {"lasnn_over_ce_step": 1.3, "ce_student_over_T_ann_twin_step": 1.0}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=sorted(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the fastest is kept")
    args = parser.parse_args(argv)
    result = measure(args.config, args.device, args.batch_size, args.steps, args.warmup, args.rounds)
    print(json.dumps({"models": result["models"], "ratios": result["ratios"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
