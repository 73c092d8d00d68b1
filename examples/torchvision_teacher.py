"""Example 2: a torchvision model as the teacher (``resnet18`` with a CIFAR-style stem and your own state
dict, trained briefly here since no weights can be downloaded), distilled into a lasnn spiking student in a
plain loop, exported to NIR and scored on the bit-exact Loihi emulator; digits, under a minute on 2 cores.

    python examples/torchvision_teacher.py --out runs/examples/torchvision

The teacher's activations are computed once and passed to the loss as ``{layer: tensor}`` (paired with the
student's stage ends by spatial size); the student's spikes are recorded by hooks. Writes ``results.json``,
the teacher's state dict and ``student.nir``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

import lasnn


def resnet18_cifar_stem(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first conv and no max pooling."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def train_teacher(model: nn.Module, data: lasnn.Data, epochs: int) -> None:
    """A short SGD run: enough for a teacher worth distilling from."""
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = -(-len(data.labels) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * batches)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.labels), generator=generator).split(32):
            loss = nn.functional.cross_entropy(model(data.images[idx]), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def accuracy(model: nn.Module, data: lasnn.Data) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data.images).argmax(1) == data.labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/torchvision")
    parser.add_argument("--teacher-epochs", type=int, default=1, help="teacher training epochs")
    parser.add_argument("--epochs", type=int, default=8, help="distillation epochs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(1)  # nets this small run as fast on one thread, and never fight other processes
    torch.manual_seed(0)
    train_set, test_set = lasnn.load_data("digits", "train"), lasnn.load_data("digits", "test")
    channels, num_classes = train_set.input_shape[0], train_set.num_classes

    # the user's own teacher and state dict
    model = resnet18_cifar_stem(channels, num_classes)
    train_teacher(model, train_set, epochs=args.teacher_epochs)
    torch.save(model.state_dict(), out / "resnet18_digits.pt")
    teacher = resnet18_cifar_stem(channels, num_classes)
    teacher.load_state_dict(torch.load(out / "resnet18_digits.pt", weights_only=True))
    teacher_accuracy = accuracy(teacher, test_set)

    # the teacher's logits and stage outputs on the training set, once (the teacher is frozen)
    teacher_layers = lasnn.find_stage_ends(teacher, train_set.images[:2])
    with lasnn.ActivationRecorder(teacher, teacher_layers) as recorder, torch.no_grad():
        parts = [(teacher(x), recorder.activations) for x in train_set.images.split(256)]
    t_logits = torch.cat([logits for logits, _ in parts])
    t_acts = {name: torch.cat([acts[name] for _, acts in parts]) for name in teacher_layers}

    # a lasnn student, its stage ends hooked; the LaSNN loss in a plain loop
    student = lasnn.make_student(train_set.input_shape, num_classes, widths="32,64", timesteps=4)
    spikes = lasnn.ActivationRecorder(student, lasnn.find_stage_ends(student), time_dim=0)
    loss_fn = lasnn.LaSNNLoss(beta=10.0, time_dim=0)
    opt = torch.optim.Adam(student.parameters(), lr=5e-3)
    batches = -(-len(train_set.labels) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=args.epochs * batches)
    generator = torch.Generator().manual_seed(0)
    for _ in range(args.epochs):
        student.train()
        for idx in torch.randperm(len(train_set.labels), generator=generator).split(64):
            logits = student(train_set.images[idx])
            terms = loss_fn(
                logits,
                train_set.labels[idx],
                t_logits[idx],
                {n: a[idx] for n, a in t_acts.items()},
                spikes.activations,
            )
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
            sched.step()
    spikes.remove()
    student_accuracy = accuracy(student, test_set)

    # to NIR (checked spike for spike against the student) and onto the Loihi emulator
    exported = lasnn.export_nir(student, out / "student.nir", dataset="digits")
    run = lasnn.simulate(exported, backend="emulator")
    results = {
        "teacher": "torchvision.models.resnet18 (CIFAR stem)",
        "teacher_layers": teacher_layers,
        "pairs": [list(p) for p in terms.pairs],
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "emulator_accuracy": run["accuracy"],
        "emulator_samples": run["samples"],
        "nir": {
            "path": exported.path,
            "summary": exported.summary(),
            "verified_spikes": exported.verified_spikes,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
