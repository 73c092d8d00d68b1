"""Example 1: your own training loop with the LaSNN loss, a small CNN teacher and a spiking student written
by hand with norse cells, on the embedded digits data (about 30 s on 2 CPU cores).

    python examples/own_loop.py --out runs/examples/own_loop

The loss hooks the layers by name: the teacher's ReLUs, the student's LIF cells. The cells are called once
per time step in the student's own loop, hence ``time_dim="steps"``. Writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import norse.torch as norse
import torch
from torch import nn

import lasnn

T = 4  # time steps of the student


class Teacher(nn.Module):
    """An ANN with two stages (8x8 and 4x4 on digits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm1, self.relu1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.conv2, self.norm2, self.relu2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(64 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.norm1(self.conv1(x))))
        return self.fc(self.pool(self.relu2(self.norm2(self.conv2(x)))).flatten(1))


class Student(nn.Module):
    """The same shape with norse LIF cells; the logits are the readout's mean over T steps."""

    def __init__(self) -> None:
        super().__init__()
        lif = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(500.0))  # leak of 1/2 per 1 ms step
        self.conv1, self.norm1, self.lif1 = (
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            norse.LIFBoxCell(lif),
        )
        self.conv2, self.norm2, self.lif2 = (
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            norse.LIFBoxCell(lif),
        )
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(64 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current1, s1, s2, out = self.norm1(self.conv1(x)), None, None, 0.0  # direct input: same every step
        for _ in range(T):
            z1, s1 = self.lif1(current1, s1)
            z2, s2 = self.lif2(self.norm2(self.conv2(self.pool(z1))), s2)
            out = out + self.fc(self.pool(z2).flatten(1))
        return out / T


def accuracy(model: nn.Module, data: lasnn.Data) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data.images).argmax(1) == data.labels).float().mean())


def train(model, loss_fn, data, epochs, lr, teacher=None):  # noqa: ANN001, ANN201 - the plain loop
    """Shuffle, forward, loss, step; returns the last batch's loss terms (distillation)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(data.labels) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    generator, terms = torch.Generator().manual_seed(0), None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(data.labels), generator=generator).split(64):
            x, y = data.images[idx], data.labels[idx]
            if teacher is None:
                loss = loss_fn(model(x), y)
            else:
                with torch.no_grad():
                    t_logits = teacher(x)  # the hooks record the teacher's stage outputs
                terms = loss_fn(model(x), y, t_logits)  # ...and the student's spikes at every step
                loss = terms.loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/own_loop")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)  # nets this small run as fast on one thread, and never fight other processes
    torch.manual_seed(0)
    train_set, test_set = lasnn.load_data("digits", "train"), lasnn.load_data("digits", "test")

    teacher = Teacher()
    train(teacher, nn.functional.cross_entropy, train_set, epochs=8, lr=1e-2)
    teacher.eval()

    student = Student()
    loss_fn = lasnn.LaSNNLoss(beta=10.0, time_dim="steps").attach(
        teacher, student, student_layers=["lif1", "lif2"], teacher_layers=["relu1", "relu2"]
    )
    last = train(student, loss_fn, train_set, epochs=args.epochs, lr=1e-2, teacher=teacher)
    loss_fn.remove_hooks()  # evaluation below runs the models without recording
    results = {
        "teacher_accuracy": accuracy(teacher, test_set),
        "student_accuracy": accuracy(student, test_set),
        "timesteps": T,
        "pairs": [list(p) for p in last.pairs],
        "last_batch_terms": last.as_dict(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
