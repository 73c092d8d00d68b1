"""``lasnn teach`` and ``lasnn distill``: the CLI verbs and the Python functions behind them.

Every option has a per-data-set default (``DEFAULTS``), so ``lasnn teach --dataset digits --out DIR``
followed by ``lasnn distill --teacher DIR/teacher.pt --out DIR2`` trains a teacher and a LaSNN student in
a few minutes on a laptop CPU. ``teach(...)`` and ``distill(...)`` return the metrics dict they also
write to ``metrics.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from lasnn.artifacts import write_json
from lasnn.data import DATASETS, ImageArrayDataset, first_samples, load_dataset
from lasnn.distill import airbench_recipe
from lasnn.distill.airbench_recipe import RECIPES
from lasnn.distill.attention import AGGREGATES, AttentionProbe, set_membrane_recording
from lasnn.distill.checkpoints import (
    data_metadata,
    init_student_weights,
    load_teacher,
    save_student,
    save_teacher,
    teacher_path_of,
)
from lasnn.distill.conversion_commands import student_from_converted
from lasnn.distill.distributed import data_parallel, is_main_process
from lasnn.distill.energy_loss import build_energy_term
from lasnn.distill.losses import LOSSES, SCHEDULES, LossConfig, kd_term, objective
from lasnn.distill.qcfs import QCFS
from lasnn.distill.spiking_layers import NeuronConfig
from lasnn.distill.students import SpikingStudent, airbench_student, resnet_student, vgg_student
from lasnn.distill.teacher_init import calibrate_qcfs, copy_weights, freeze_whitening, load_source_teacher
from lasnn.distill.teachers import ACTIVATIONS, ARCHS, build_teacher, user_teacher, whiten_first_conv
from lasnn.distill.training import TrainSettings, fit, resolve_device
from lasnn.encoding import ENCODINGS
from lasnn.errors import LasnnError

STUDENTS = ("vgg", "resnet", "airbench")
NEURONS = ("lifbox", "cubalif")

# Per-data-set defaults. digits: chosen to finish in about a minute each on a 2-core CPU (measured, see
# bench/results/distill_digits.md). CIFAR: the airbench recipe and network (distill/airbench_recipe.py;
# 10 epochs of the full-width teacher ~30 min on a 2-core CPU), the student its half-width spiking twin.
# The rest follow the LaSNN family's recipes (SGD, batch 128, lr 0.1 cosine).
_CIFAR_DEFAULTS: dict[str, Any] = dict(
    arch="airbench",
    teach_epochs=10,
    student="airbench",
    widths="32,128,128",
    blocks=1,
    distill_epochs=10,
    batch_size=512,
    teach_batch_size=1024,  # airbench94's batch; the spiking student keeps 512 (T copies of each image)
    timesteps=4,
    recipe="airbench",
    # attention weight chosen on held-out training images (40-step probes at batch 256, airbench
    # recipe, 2,000 validation images): beta 10 (digits' value) never left chance, 1 reached 28.1 %,
    # 0.3 reached 31.9 %; the attention gradient does not shrink with the loss (normalised maps)
    beta=0.3,
)
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(
        arch="small_cnn",
        teach_epochs=10,
        student="vgg",
        widths="32,64",
        blocks=1,
        distill_epochs=10,
        batch_size=32,
        timesteps=4,
        recipe="sgd",
    ),
    "cifar10": _CIFAR_DEFAULTS,
    "cifar100": _CIFAR_DEFAULTS,
    "tinyimagenet": dict(
        arch="resnet18",
        teach_epochs=100,
        student="resnet",
        widths="64,128,256,512",
        blocks=2,
        distill_epochs=100,
        batch_size=128,
        timesteps=4,
        recipe="sgd",
    ),
    "imagefolder": dict(
        arch="vgg11",
        teach_epochs=50,
        student="vgg",
        widths="64,128,256",
        blocks=1,
        distill_epochs=50,
        batch_size=64,
        timesteps=4,
        recipe="sgd",
    ),
}
DEFAULT_BETA = 10.0
CALIBRATION_IMAGES = 512  # training images that set QCFS lambdas in teach --init-from (one batch's worth)


def default_lr(batch_size: int, recipe: str = "sgd") -> float:
    """sgd: lr 0.1 with cosine decay, halved for batches of 64 or fewer (the literature's recipe);
    airbench: its rate per 1,024 examples (11.5)."""
    if recipe == "airbench":
        return airbench_recipe.HYPER.lr_per_1024
    return 0.05 if batch_size <= 64 else 0.1


def _defaults(dataset: str) -> dict[str, Any]:
    if dataset not in DEFAULTS:
        raise LasnnError(f"Unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}.")
    return DEFAULTS[dataset]


def _out_dir(out: str | os.PathLike) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise LasnnError(f"--out {path} exists and is not a directory; choose a directory path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LasnnError(f"Cannot create the output directory {path}: {error.strerror or error}.") from error
    if not os.access(path, os.W_OK):
        raise LasnnError(f"The output directory {path} is not writable; choose another --out.")
    return path


def _settings(
    epochs: int,
    batch_size: int,
    lr: float | None,
    seed: int,
    device: str,
    deterministic: bool | None,
    recipe: str = "sgd",
) -> TrainSettings:
    device = resolve_device(device)
    return TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=default_lr(batch_size, recipe) if lr is None else lr,
        seed=seed,
        device=device,
        deterministic=deterministic,
        num_workers=default_workers(device),
        recipe=recipe,
    )


def label_smoothing(recipe: str) -> float:
    """The cross-entropy's label smoothing: airbench's 0.2 with its recipe, none otherwise."""
    return airbench_recipe.HYPER.label_smoothing if recipe == "airbench" else 0.0


def whiten_stem(model: torch.nn.Module, train_set: ImageArrayDataset, seed: int, samples: int = 5000) -> None:
    """Freeze a 2x2 whitening first conv at the patch whitening of ``samples`` training images drawn with
    ``seed`` (airbench uses 5,000); a model without such a conv is left as it is."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))
    whiten_first_conv(model, train_set.normalised(order[:samples]))


def default_workers(device: str) -> int:
    """DataLoader worker processes: none on CPU (the cores train), up to 8 on a GPU, where decoding and
    augmenting in the main process would starve it (measured on an H100: ~1,200-1,600 images/s with
    none). ``LASNN_WORKERS`` overrides. Augmentation is seeded per sample, so results do not depend on it."""
    override = os.environ.get("LASNN_WORKERS")
    if override is not None:
        if not override.isdigit():
            raise LasnnError(f"LASNN_WORKERS is {override!r}; expected a non-negative integer.")
        return int(override)
    if not device.startswith("cuda"):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- teach


def teach(
    dataset: str = "digits",
    out: str | os.PathLike = "runs/teacher",
    data_root: str | None = None,
    arch: str | None = None,
    width: float = 1.0,
    init_state: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    download: bool = False,
    deterministic: bool | None = None,
    compile: bool = False,
    recipe: str | None = None,
    activation: str | None = None,
    levels: int = 4,
    qcfs_threshold: float | None = None,
    init_from: str | os.PathLike | None = None,
    kd_from: str | os.PathLike | None = None,
    kd_alpha: float = 1.0,
    kd_tau: float = 4.0,
) -> dict[str, Any]:
    """Train an ANN teacher; writes ``out/teacher.pt`` and ``out/metrics.json``, returns the metrics.

    ``activation`` (lasnn's teachers; default ReLU, airbench GELU): ``qcfs`` trains the QCFS teacher
    (``levels`` quantisation levels) that ``lasnn convert`` turns into IF neurons; airbench then pools
    by averaging. ``qcfs_threshold`` replaces the initial lambda of every QCFS layer (default: the
    paper's 8.0, made for batch norms with a learnable scale; airbench's have none, so its pre-activations
    stay near unit variance and lambda = 8 leaves most of them on the lowest two of the L + 1 levels).
    ``init_from`` (a trained teacher of the same arch and width, e.g. the GELU airbench one) starts the
    run from its weights; each QCFS lambda is then calibrated on training images (``teacher_init``)
    unless ``qcfs_threshold`` is given, and the run is a fine-tune of ``epochs`` epochs.
    ``kd_from`` (any trained teacher of the same data set) adds ``kd_alpha * kd_tau^2 * KL`` between its
    softened logits and this model's to the loss (Hinton et al. 2015): the QCFS teacher, which bounds every
    converted student, can then learn from the stronger GELU one while keeping its own from-scratch
    training, whose conversion tolerates few steps better than a net started from GELU weights."""
    d = _defaults(dataset)
    recipe = recipe or d["recipe"]
    if not (width > 0 and math.isfinite(width)):
        raise LasnnError(f"--width is {width!r}; expected a positive channel width multiplier like 1 or 0.5.")
    arch = arch or d["arch"]
    settings = _settings(
        d["teach_epochs"] if epochs is None else epochs,
        d.get("teach_batch_size", d["batch_size"]) if batch_size is None else batch_size,
        lr,
        seed,
        device,
        deterministic,
        recipe,
    )
    train_set, info = load_dataset(dataset, "train", data_root, download=download)
    test_set, _ = load_dataset(dataset, "test", data_root, augment=False)
    torch.manual_seed(seed)  # initial weights
    if arch in ARCHS:
        config = dict(arch=arch, in_shape=list(info.input_shape), num_classes=info.num_classes, width=width)
        config.update(_activation_config(arch, activation, levels))
        model = build_teacher(config)
    elif ":" in arch:
        if activation is not None:
            raise LasnnError(f"--activation applies to lasnn's own teachers, not to --arch {arch}.")
        model = user_teacher(arch, info.input_shape, info.num_classes)
    else:
        raise LasnnError(
            f"--arch {arch!r} is unknown; expected one of {', '.join(ARCHS)} or 'module:function'."
        )
    _set_qcfs_threshold(model, activation, qcfs_threshold)  # refused for user modules too (no QCFS there)
    kd_source = _kd_source(kd_from, kd_alpha, kd_tau, dataset, info) if kd_from else None
    calibrated: list[float] = []
    if init_state and init_from:
        raise LasnnError("--init-state and --init-from both start the weights; pass one of them.")
    if init_state:
        _load_init_state(model, init_state)
    elif init_from:
        if ":" in arch:
            raise LasnnError(f"--init-from starts lasnn's own teachers, not --arch {arch}; use --init-state.")
        copy_weights(load_source_teacher(init_from, model.config), model)
        freeze_whitening(model)
        # also on --resume (the checkpoint then replaces lambda; deterministic, so the metrics list the same)
        if activation == "qcfs" and qcfs_threshold is None:
            order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))
            calibrated = calibrate_qcfs(model, train_set.normalised(order[:CALIBRATION_IMAGES]))
    else:
        whiten_stem(model, train_set, seed)
    if recipe == "airbench":
        model.to(memory_format=torch.channels_last)
    smoothing = label_smoothing(recipe)
    out = _out_dir(out)  # only once every input is known to be good: a refused run leaves no folder
    forward = torch.compile(model, dynamic=False) if compile else model
    train_forward = data_parallel(model, settings.device, forward, compile=compile)  # DDP under torchrun

    if kd_source is not None:
        kd_source.to(settings.device)
        if recipe == "airbench":
            kd_source.to(memory_format=torch.channels_last)

    def loss_fn(images: torch.Tensor, labels: torch.Tensor, _progress: float):
        logits = train_forward(images)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        if kd_source is None:
            return ce, logits, {"ce": float(ce.detach())}
        with torch.no_grad():
            source_logits = kd_source(images)
        kd = kd_term(logits, source_logits, kd_tau)
        return ce + kd_alpha * kd, logits, {"ce": float(ce.detach()), "kd": float(kd.detach())}

    run_config = {"verb": "teach", "dataset": dataset, "model": model.config}
    source = str(teacher_path_of(init_from)) if init_from else None
    if source:
        run_config["init_from"] = source
    kd_file = str(teacher_path_of(kd_from)) if kd_from else None
    if kd_file:  # a resumed run must keep the same source and weights
        run_config["kd"] = {"from": kd_file, "alpha": kd_alpha, "tau": kd_tau}
    metrics = fit(
        model, loss_fn, forward, train_set, test_set, settings, out, run_config, resume, desc=f"teach {arch}"
    )
    metadata = dict(
        **data_metadata(dataset, data_root, info, seed),
        test_accuracy=metrics["test_accuracy"],
        epochs=settings.epochs,
        recipe=recipe,
    )
    metrics = {**metrics, "dataset": dataset, "arch": arch, "recipe": recipe, "parameters": _count(model)}
    if kd_file:
        metrics["kd"] = run_config["kd"]
    if source:
        metrics["init_from"] = source
        if calibrated:
            metrics["calibrated_qcfs_thresholds"] = [round(v, 4) for v in calibrated]
    if is_main_process():  # under torchrun, rank 0 writes
        save_teacher(out / "teacher.pt", model.cpu(), model.config, metadata)
        write_json(out / "metrics.json", metrics)
    return metrics


def _activation_config(arch: str, activation: str | None, levels: int) -> dict[str, Any]:
    """Teacher config keys for ``--activation``/``--levels`` (none when not given: the arch's default)."""
    if activation is None:
        return {}
    if activation not in ACTIVATIONS:
        raise LasnnError(f"--activation {activation!r} is unknown; expected one of {', '.join(ACTIVATIONS)}.")
    if not isinstance(levels, int) or levels < 1:
        raise LasnnError(f"--levels is {levels!r}; expected a positive integer (QCFS quantisation levels).")
    if arch.startswith("resnet") and activation != "relu":
        raise LasnnError(
            f"--activation {activation} is not offered for {arch}; use small_cnn, vgg or airbench."
        )
    config: dict[str, Any] = dict(activation=activation, levels=levels)
    if arch == "airbench" and activation == "qcfs":
        config["pool"] = "avg"  # convertible: spiking layers cannot max-pool
    return config


def _check_loss_weights(weights: tuple[tuple[str, float], ...], temperature: tuple[str, float]) -> None:
    """Distillation weights must be finite and non-negative, the temperature finite and positive."""
    for flag, value in weights:
        if not (math.isfinite(value) and value >= 0):
            raise LasnnError(f"{flag} is {value!r}; expected a non-negative weight.")
    flag, tau = temperature
    if not (math.isfinite(tau) and tau > 0):
        raise LasnnError(f"{flag} is {tau!r}; expected a positive temperature.")


def _kd_source(path: str | os.PathLike, alpha: float, tau: float, dataset: str, info: Any) -> torch.nn.Module:
    """The frozen teacher whose logits ``teach --kd-from`` distils, checked to fit this data set."""
    _check_loss_weights((("--kd-alpha", alpha),), ("--kd-tau", tau))
    file = teacher_path_of(path)
    if not file.is_file():
        raise LasnnError(f"--kd-from {path} has no teacher.pt; pass a folder or file written by lasnn teach.")
    source, blob = load_teacher(file)
    meta = blob["metadata"]
    if (
        meta.get("dataset") != dataset
        or meta.get("num_classes") != info.num_classes
        or list(meta.get("input_shape", ())) != list(info.input_shape)
    ):
        raise LasnnError(
            f"--kd-from {file} was trained on {meta.get('dataset')} ({meta.get('num_classes')} classes of "
            f"shape {tuple(meta.get('input_shape', ()))}), not on {dataset}; pass a teacher of this data set."
        )
    for parameter in source.parameters():
        parameter.requires_grad_(False)
    return source.eval()


def _set_qcfs_threshold(model: torch.nn.Module, activation: str | None, threshold: float | None) -> None:
    """Start every QCFS layer's lambda at ``threshold`` (None: the activation's own initial value)."""
    if threshold is None:
        return
    if activation != "qcfs":
        raise LasnnError("--qcfs-threshold applies to QCFS teachers only; add --activation qcfs or drop it.")
    if not (threshold > 0 and math.isfinite(threshold)):
        raise LasnnError(f"--qcfs-threshold is {threshold!r}; expected a positive initial lambda like 3.")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, QCFS):
                module.threshold.fill_(threshold)


def _load_init_state(model: torch.nn.Module, path: str) -> None:
    """Load a user's state dict (a plain ``torch.save(model.state_dict())`` file) into their model."""
    if not Path(path).is_file():
        raise LasnnError(
            f"--init-state {path} does not exist; pass a file written by torch.save(state_dict)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise LasnnError(
            f"--init-state {path} is not a readable torch state dict ({type(error).__name__})."
        ) from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = getattr(model, "model", model)
    try:
        target.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0]
        raise LasnnError(f"--init-state {path} does not fit the model ({first}).") from error


# -------------------------------------------------------------------------------------------- distill


def parse_widths(text: str, student: str) -> tuple:
    """``vgg``: stages separated by ',' and convs within a stage by '-' (``32-32,64-64``);
    ``resnet``: one width per stage (``32,64``)."""
    try:
        stages = [[int(w) for w in stage.split("-")] for stage in text.split(",")]
    except ValueError:
        stages = []
    if (
        not stages
        or any(w < 1 for s in stages for w in s)
        or (student != "vgg" and any(len(s) != 1 for s in stages))
    ):
        form = "'32,64' (one width per stage)" if student != "vgg" else "'32,64' or '32-32,64-64'"
        raise LasnnError(
            f"--widths {text!r} is not a valid {student} width list; expected positive integers like {form}."
        )
    if student != "vgg":
        return tuple(s[0] for s in stages)
    return tuple(tuple(s) for s in stages)


def build_distill_student(
    student: str,
    info_shape: tuple[int, int, int],
    num_classes: int,
    widths: str,
    blocks: int,
    timesteps: int,
    encoding: str,
    neuron: str,
) -> SpikingStudent:
    if student not in STUDENTS:
        raise LasnnError(f"--student {student!r} is unknown; expected one of {', '.join(STUDENTS)}.")
    if neuron not in NEURONS:
        raise LasnnError(f"--neuron {neuron!r} is unknown; expected one of {', '.join(NEURONS)}.")
    if encoding not in ENCODINGS:
        raise LasnnError(f"--encoding {encoding!r} is unknown; expected one of {', '.join(ENCODINGS)}.")
    if not isinstance(timesteps, int) or timesteps < 1:
        raise LasnnError(f"--timesteps is {timesteps!r}; expected a positive integer.")
    neurons = NeuronConfig(kind=neuron)
    parsed = parse_widths(widths, student)
    if student == "vgg":
        if len(parsed) > int(math.log2(min(info_shape[1:]))):
            raise LasnnError(
                f"--widths {widths!r} has {len(parsed)} stages, each halving the {info_shape[1]}x"
                f"{info_shape[2]} input; use at most {int(math.log2(min(info_shape[1:])))}."
            )
        return vgg_student(info_shape, num_classes, parsed, timesteps, encoding, neurons)
    if student == "airbench":
        if len(parsed) > int(math.log2(min(info_shape[1:]) - 1)):
            raise LasnnError(
                f"--widths {widths!r} has {len(parsed)} stages, each halving the {info_shape[1]}x"
                f"{info_shape[2]} input; use at most {int(math.log2(min(info_shape[1:]) - 1))}."
            )
        return airbench_student(info_shape, num_classes, parsed, timesteps, encoding, neurons)
    if blocks < 1:
        raise LasnnError(f"--blocks is {blocks!r}; expected a positive integer.")
    return resnet_student(info_shape, num_classes, parsed, blocks, timesteps, encoding, neurons)


def distill(
    teacher: str | os.PathLike,
    out: str | os.PathLike = "runs/student",
    student: str | None = None,
    widths: str | None = None,
    blocks: int | None = None,
    timesteps: int | None = None,
    encoding: str = "direct",
    neuron: str | None = None,
    loss: str = "lasnn",
    schedule: str = "joint",
    aggregate: str = "membrane",
    pairs: str | None = None,
    alpha: float = 1.0,
    tau: float = 4.0,
    beta: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    dataset: str | None = None,
    data_root: str | None = None,
    deterministic: bool | None = None,
    compile: bool = False,
    recipe: str | None = None,
    energy_weight: float | None = None,
    energy_target: float | None = None,
    energy_model: str = "loihi",
    init: str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Distill a spiking student from a teacher; writes ``out/student.pt`` and ``out/metrics.json``.

    ``energy_weight`` / ``energy_target`` (µJ per inference under ``energy_model``) add the differentiable
    chip-energy term of ``distill.energy_loss``; ``init`` starts from a trained student's weights."""
    teacher_file = teacher_path_of(teacher)
    teacher_model, blob = load_teacher(teacher_file)
    meta = blob["metadata"]
    dataset = dataset or meta["dataset"]
    data_root = data_root if data_root is not None else meta.get("data_root")
    d = _defaults(dataset)
    beta = d.get("beta", DEFAULT_BETA) if beta is None else beta
    if loss not in LOSSES:
        raise LasnnError(f"--loss {loss!r} is unknown; expected one of {', '.join(LOSSES)}.")
    _check_loss_weights((("--alpha", alpha), ("--beta", beta)), ("--tau", tau))
    if schedule not in SCHEDULES:
        raise LasnnError(f"--schedule {schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}.")
    if aggregate not in AGGREGATES:
        raise LasnnError(f"--aggregate {aggregate!r} is unknown; expected one of {', '.join(AGGREGATES)}.")
    train_set, info = load_dataset(dataset, "train", data_root)
    test_set, _ = load_dataset(dataset, "test", data_root, augment=False)
    if info.num_classes != meta["num_classes"] or list(info.input_shape) != list(meta["input_shape"]):
        raise LasnnError(
            f"Data set {dataset} has {info.num_classes} classes of shape {tuple(info.input_shape)}, "
            f"but the teacher {teacher_file} was trained on {meta['num_classes']} classes of shape "
            f"{tuple(meta['input_shape'])}; distill on the teacher's data set."
        )
    student_arch = student or d["student"]
    timesteps = d["timesteps"] if timesteps is None else timesteps
    recipe = recipe or d["recipe"]
    settings = _settings(
        d["distill_epochs"] if epochs is None else epochs,
        d["batch_size"] if batch_size is None else batch_size,
        lr,
        seed,
        device,
        deterministic,
        recipe,
    )
    torch.manual_seed(seed)  # initial weights
    if init_from:  # the converted network's architecture and weights (conversion + distillation)
        if student or widths or blocks or init:
            raise LasnnError(
                "--init-from takes the converted network's architecture and weights; drop "
                "--student/--widths/--blocks/--init."
            )
        net = student_from_converted(
            init_from, info.input_shape, info.num_classes, timesteps, encoding, neuron
        )
    else:
        net = build_distill_student(
            student_arch,
            info.input_shape,
            info.num_classes,
            widths or d["widths"],
            d["blocks"] if blocks is None else blocks,
            timesteps,
            encoding,
            neuron or "lifbox",
        )
        whiten_stem(net, train_set, seed)
    if init:
        init_student_weights(net, init)
    energy = build_energy_term(net, energy_weight, energy_target, energy_model)
    config = LossConfig(
        kind=loss, alpha=alpha, tau=tau, beta=beta, schedule=schedule, label_smoothing=label_smoothing(recipe)
    )
    probe = None
    if config.needs_attention:
        probe = AttentionProbe(teacher_model, net, first_samples(test_set, 4)[0], config.p, aggregate, pairs)
        if not probe.pairs:
            raise LasnnError(
                f"No student layer could be paired with a teacher layer of {teacher_file} for the "
                "attention loss; pass --pairs or use --loss kd."
            )
        if aggregate == "membrane":
            set_membrane_recording(net, [s for s, _ in probe.pairs], True)
    out = _out_dir(out)  # only once every input is known to be good: a refused run leaves no folder
    # the frozen teacher runs channels-last (NHWC), the layout oneDNN and cuDNN convolve fastest (CPU:
    # 10.5 -> 8.2 ms per 32 images for bench/train_throughput.py's small teacher); same outputs to rounding
    teacher_model.to(settings.device, memory_format=torch.channels_last).eval()
    run = torch.compile(net.run, dynamic=False) if compile else net.run
    # DDP under torchrun; a progressive schedule's first phases leave the head and later layers unused
    run = data_parallel(net, settings.device, run, "run", compile, config.schedule == "progressive")

    def loss_fn(images: torch.Tensor, labels: torch.Tensor, progress: float):
        stream = net.encode(images)
        with energy.record() if energy else contextlib.nullcontext():
            logits, recorded = run(stream, record=probe is not None, time_mean=True)
        teacher_logits = teacher_maps = student_maps = None
        if config.needs_teacher:
            with torch.inference_mode():
                t_logits, t_ends = teacher_model.forward_features(
                    images.contiguous(memory_format=torch.channels_last)
                )
                t_maps = probe.teacher_maps(t_ends) if probe else []
            teacher_logits, teacher_maps = t_logits.clone(), [m.clone() for m in t_maps]
        if probe is not None:
            student_maps = probe.student_maps(net, recorded)
        total, terms = objective(config, logits, labels, teacher_logits, teacher_maps, student_maps, progress)
        if energy is not None:  # the chip-energy term, in the same loop as the LaSNN terms
            term, energy_terms = energy.penalty(images if net.encoding == "direct" else stream)
            total, terms = total + term, {**terms, **energy_terms}
        return total, logits, terms

    loss_record = {
        **config.to_dict(),
        "aggregate": aggregate,
        "pairs": [list(p) for p in probe.pairs] if probe else [],
        "energy": energy.to_dict() if energy else None,
    }
    run_config = {
        "verb": "distill",
        "dataset": dataset,
        "teacher": str(teacher_file),
        "student": net.config,
        "timesteps": timesteps,
        "encoding": encoding,
        "loss": loss_record,
    }
    desc = f"distill {loss} T={timesteps}"
    metrics = fit(net, loss_fn, net, train_set, test_set, settings, out, run_config, resume, desc=desc)
    if probe is not None:
        set_membrane_recording(net, [s for s, _ in probe.pairs], False)
    metadata = dict(
        **data_metadata(dataset, data_root, info, seed),
        timesteps=timesteps,
        encoding=encoding,
        recipe=recipe,
        dt=net.neuron_layers()[0][1].config.dt,
        loss=loss,
        loss_config=loss_record,
        teacher=str(teacher_file),
        teacher_accuracy=meta.get("test_accuracy"),
        test_accuracy=metrics["test_accuracy"],
    )
    metrics = {
        **metrics,
        "timesteps": timesteps,
        "loss": loss,
        "recipe": recipe,
        "encoding": encoding,
        "schedule": schedule,
        "aggregate": aggregate,
        "pairs": loss_record["pairs"],
        "student": net.config,
        "parameters": _count(net),
        "teacher": str(teacher_file),
        "teacher_accuracy": meta.get("test_accuracy"),
        "dataset": dataset,
    }
    if is_main_process():  # under torchrun, rank 0 writes
        save_student(out / "student.pt", net.cpu(), metadata)
        write_json(out / "metrics.json", metrics)
    return metrics


# ------------------------------------------------------------------------------------------------ CLI


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="training epochs (default: per data set)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: per data set)")
    parser.add_argument("--lr", type=float, help="initial learning rate (default 0.1, 0.05 for batch <= 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and encodings")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic algorithms (default: on for CPU, off for GPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        help="sgd (momentum SGD, cosine lr) or airbench (distill/airbench_recipe.py: batched tensor "
        "augmentation, Nesterov with decoupled decay, triangular lr, label smoothing 0.2, lookahead; "
        "--lr is then per 1,024 examples); default: airbench for CIFAR, sgd otherwise",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``teach`` and ``distill`` verbs (and ``convert`` when the conversion module offers it)."""
    p = subparsers.add_parser(
        "teach",
        help="train an ANN teacher",
        description="Train an ANN teacher and save OUT/teacher.pt and OUT/metrics.json.",
    )
    p.add_argument("--dataset", default="digits", choices=DATASETS, help="data set (default digits)")
    p.add_argument("--data-root", help="folder holding the data set (default $LASNN_DATA_ROOT or ./data)")
    p.add_argument("--download", action="store_true", help="download the data set if missing (torchvision)")
    p.add_argument(
        "--arch", help=f"{', '.join(ARCHS)} or module:function returning an nn.Module (default: per data set)"
    )
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier of lasnn's teachers")
    p.add_argument("--init-state", help="state dict to start a module:function model from")
    p.add_argument(
        "--init-from",
        help="teacher.pt (or its folder) of the same --arch/--width to start from, e.g. the GELU airbench "
        "teacher for a QCFS one (lambdas calibrated on training images unless --qcfs-threshold)",
    )
    p.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        help="teacher nonlinearity (default relu, airbench gelu); qcfs: convertible by lasnn convert",
    )
    p.add_argument("--levels", type=int, default=4, help="QCFS quantisation levels L (default 4)")
    p.add_argument(
        "--kd-from",
        help="teacher.pt (or its folder) of the same data set whose softened logits this teacher also "
        "learns (CE + alpha * tau^2 * KL), e.g. the GELU airbench teacher for a QCFS one",
    )
    p.add_argument("--kd-alpha", type=float, default=1.0, help="weight of --kd-from's KL term (default 1)")
    p.add_argument("--kd-tau", type=float, default=4.0, help="temperature of --kd-from's KL term (default 4)")
    p.add_argument(
        "--qcfs-threshold",
        type=float,
        help="initial lambda of every QCFS layer (default 8, the paper's; ~3 suits airbench's scale-free BN)",
    )
    p.add_argument("--out", required=True, help="output directory")
    _common(p)
    p.set_defaults(func=_teach_cli)

    p = subparsers.add_parser(
        "distill",
        help="distill a spiking student from a teacher (LaSNN)",
        description="Distill a norse spiking student from OUT/teacher.pt with the LaSNN "
        "loss or a baseline; save OUT2/student.pt and OUT2/metrics.json.",
    )
    p.add_argument("--teacher", required=True, help="teacher.pt written by lasnn teach (or its directory)")
    p.add_argument("--student", choices=STUDENTS, help="student architecture (default: per data set)")
    p.add_argument("--widths", help="vgg: '32,64' or '32-32,64-64' (stages, convs); resnet: '32,64'")
    p.add_argument("--blocks", type=int, help="residual blocks per stage (resnet)")
    p.add_argument("--timesteps", "-T", type=int, help="time steps T (default 4)")
    p.add_argument("--encoding", default="direct", choices=ENCODINGS, help="input encoding (default direct)")
    p.add_argument(
        "--neuron",
        choices=(*NEURONS, "if"),
        help="neuron model (default lifbox; with --init-from the converted IF neurons, 'if')",
    )
    p.add_argument(
        "--init-from",
        help="start from lasnn convert's student.pt: its architecture and weights (conversion + distill)",
    )
    p.add_argument("--loss", default="lasnn", choices=LOSSES, help="lasnn, kd (CE+KD) or ce (default lasnn)")
    p.add_argument("--schedule", default="joint", choices=SCHEDULES, help="joint or progressive (layer-wise)")
    p.add_argument(
        "--aggregate",
        default="membrane",
        choices=AGGREGATES,
        help="student activation in attention maps: spike rate or mean membrane potential (default membrane)",
    )
    p.add_argument("--pairs", help="layer pairing student:teacher,... (default: by spatial resolution)")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the KD term (default 1)")
    p.add_argument("--tau", type=float, default=4.0, help="KD temperature (default 4)")
    p.add_argument(
        "--beta",
        type=float,
        help=f"attention weight (default {DEFAULT_BETA:g}; CIFAR {_CIFAR_DEFAULTS['beta']:g})",
    )
    p.add_argument(
        "--energy-weight",
        type=float,
        help="add the differentiable chip-energy term (distill/energy_loss.py): W x modelled energy per "
        "inference in µJ, or with --energy-target W x (relu(E - target) / target)^2",
    )
    p.add_argument(
        "--energy-target", type=float, help="energy per inference to stay under, µJ (weight 1 if not given)"
    )
    p.add_argument(
        "--energy-model",
        default="loihi",
        help="energy model of the term: loihi, compute_fp32, compute_int8, memory (default loihi)",
    )
    p.add_argument(
        "--init", help="start from this student.pt's weights (fine-tuning, e.g. with the energy term)"
    )
    p.add_argument("--dataset", choices=DATASETS, help="data set (default: the teacher's)")
    p.add_argument("--data-root", help="data folder (default: the teacher's)")
    p.add_argument("--out", required=True, help="output directory")
    _common(p)
    p.set_defaults(func=_distill_cli)

    try:
        from lasnn.distill import conversion
    except ModuleNotFoundError as error:
        if error.name != "lasnn.distill.conversion":
            raise
    else:
        if hasattr(conversion, "register"):
            conversion.register(subparsers)


def _teach_cli(args: argparse.Namespace) -> int:
    metrics = teach(
        dataset=args.dataset,
        out=args.out,
        data_root=args.data_root,
        arch=args.arch,
        width=args.width,
        init_state=args.init_state,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        download=args.download,
        deterministic=args.deterministic,
        compile=args.compile,
        recipe=args.recipe,
        activation=args.activation,
        levels=args.levels,
        qcfs_threshold=args.qcfs_threshold,
        init_from=args.init_from,
        kd_from=args.kd_from,
        kd_alpha=args.kd_alpha,
        kd_tau=args.kd_tau,
    )
    if is_main_process():
        print(f"teacher test accuracy {metrics['test_accuracy']:.4f}; wrote {Path(args.out) / 'teacher.pt'}")
    return 0


def _distill_cli(args: argparse.Namespace) -> int:
    metrics = distill(
        teacher=args.teacher,
        out=args.out,
        student=args.student,
        widths=args.widths,
        blocks=args.blocks,
        timesteps=args.timesteps,
        encoding=args.encoding,
        neuron=args.neuron,
        loss=args.loss,
        schedule=args.schedule,
        aggregate=args.aggregate,
        pairs=args.pairs,
        alpha=args.alpha,
        tau=args.tau,
        beta=args.beta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        dataset=args.dataset,
        data_root=args.data_root,
        deterministic=args.deterministic,
        compile=args.compile,
        recipe=args.recipe,
        energy_weight=args.energy_weight,
        energy_target=args.energy_target,
        energy_model=args.energy_model,
        init=args.init,
        init_from=args.init_from,
    )
    if is_main_process():
        print(
            f"student test accuracy {metrics['test_accuracy']:.4f} at T={metrics['timesteps']} "
            f"(teacher {metrics['teacher_accuracy']}); wrote {Path(args.out) / 'student.pt'}"
        )
    return 0
