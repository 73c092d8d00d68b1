"""lasnn's public Python API: the LaSNN objective for your own training loop, and the toolchain's stages
(export to NIR, compile for Loihi, simulate, energy report) as functions that return plain data.

Everything listed in ``lasnn.__all__`` is stable and documented; every other module and name is internal
and may change. The CLI verbs call these functions (see the README's verbs table), so a script and the
command line take one code path and raise the same one-sentence ``LasnnError``.

Two ways to use the loss:

- pass activations yourself: ``LaSNNLoss()(student_logits, labels, teacher_logits, teacher_acts,
  student_acts)``, with the activations as ``{layer_name: tensor}`` (paired automatically by spatial
  size) or as lists (paired by position);
- let it hook the layers by name on any ``nn.Module`` teacher and any spiking student (norse, snnTorch,
  hand-written): ``LaSNNLoss().attach(teacher, student, student_layers=[...])``; then every call takes
  the activations the last forward passes recorded.

The student's time axis is given once (``time_dim``): an int for modules that return all steps at once
(norse ``LIF`` on ``[T, B, ...]``: 0; ``[B, T, ...]``: 1), ``"steps"`` for modules called once per time
step (norse ``LIFCell``, snnTorch ``Leaky`` in a Python loop; the calls since the last loss are stacked),
``None`` for activations already aggregated over time. The aggregate is the mean over time of what the
module emits (spikes: the firing rate).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lasnn.distill.commands import distill as _distill
from lasnn.distill.commands import teach as _teach
from lasnn.distill.conversion_commands import convert_teacher as _convert_teacher
from lasnn.errors import LasnnError

TimeDim = int | Literal["steps"] | None

# -------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    """One split of a data set as tensors: normalised float images ``[N, C, H, W]`` and int labels
    ``[N]``, with what later stages need to know about it (the same split and normalisation as the CLI)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


def load_data(name: str = "digits", split: str = "train", data_root: str | os.PathLike | None = None) -> Data:
    """Load a data set split (``digits`` is embedded; the others read ``data_root``) without augmentation,
    so a script trains and scores on exactly what ``lasnn simulate --dataset`` scores."""
    from lasnn.data import SPLITS, first_samples, load_dataset

    if split not in SPLITS:
        raise LasnnError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
    dataset, info = load_dataset(name, split, data_root, augment=False)
    images, labels = first_samples(dataset, None)
    return Data(
        name=name,
        split=split,
        images=images,
        labels=labels,
        num_classes=info.num_classes,
        input_shape=tuple(info.input_shape),
        mean=tuple(info.mean),
        std=tuple(info.std),
        class_names=tuple(info.class_names),
    )


# --------------------------------------------------------------------------------- attention and pairing


def attention_map(
    activation: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """The spatial attention map of a ``[B, C, H, W]`` activation: ``normalize_L2(flatten(sum_c
    |a_c|^p))`` as ``[B, h*w]`` (pooled to ``size`` when given), comparable across layer widths and
    between an ANN layer and a spiking layer's time aggregate."""
    from lasnn.distill.attention import attention_map as _attention_map

    if not torch.is_tensor(activation) or activation.dim() != 4:
        shape = tuple(activation.shape) if torch.is_tensor(activation) else type(activation).__name__
        raise LasnnError(
            f"attention_map takes a [B, C, H, W] activation, got {shape}; aggregate a spiking layer "
            "over time first."
        )
    if not (p > 0 and math.isfinite(p)):
        raise LasnnError(f"The attention exponent p is {p!r}; expected a positive number such as 2.")
    return _attention_map(activation, p, size)


def _spatial(shape: Any, name: str) -> tuple[int, int]:
    dims = tuple(shape.shape) if torch.is_tensor(shape) else tuple(int(s) for s in shape)
    if len(dims) < 2:
        raise LasnnError(
            f"Layer {name!r} has shape {dims}; pairing needs activations with spatial (H, W) axes."
        )
    return dims[-2], dims[-1]


def pair_layers(
    student: Mapping[str, Any],
    teacher: Mapping[str, Any],
    pairs: str | Sequence[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Pair student and teacher layers for the attention term, by spatial resolution (each student layer
    larger than 1x1 with the teacher layer of the same, else the nearest, size), the rule ``lasnn
    distill`` uses. ``student``/``teacher`` map layer names to shapes or tensors (the last two axes are
    H, W); ``pairs`` (``"s1:t1,s2:t2"`` or ``[(s, t), ...]``) overrides the automatic choice, checked."""
    from lasnn.distill.attention import pair_layers as _pair_layers

    student_sizes = {name: _spatial(v, name) for name, v in student.items()}
    teacher_sizes = {name: _spatial(v, name) for name, v in teacher.items()}
    if pairs is not None and not isinstance(pairs, str):
        pairs = ",".join(f"{s}:{t}" for s, t in pairs)
    return _pair_layers(student_sizes, teacher_sizes, pairs or None)


def find_stage_ends(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Names of the stage-end layers of a model, for hooks and pairing. A lasnn student (``make_student``)
    knows its own (the spiking layers before each change of resolution). Any other convolutional
    ``nn.Module`` is probed on ``example`` (a batch of images): per run of equal spatial resolution
    (larger than 1x1) in its forward pass, the last ReLU, else the last layer, the rule lasnn applies to
    ``--arch module:function`` teachers. A module called several times (torchvision's shared ``relu`` in
    a block) is recorded by a hook at its last call."""
    from lasnn.distill.students import SpikingStudent
    from lasnn.distill.teachers import UserTeacher

    if isinstance(model, SpikingStudent):
        return [f"features.{name}" for name in model.stage_ends]
    if not torch.is_tensor(example) or example.dim() != 4:
        raise LasnnError("find_stage_ends needs an example batch of images [B, C, H, W] for this model.")
    finder = UserTeacher(model, {"in_shape": list(example.shape[1:]), "factory": type(model).__name__})
    with torch.no_grad():
        was = model.training
        model.eval()
        _, calls = finder._calls(example[:2])
        model.train(was)
    last = {}
    for name, k, _ in calls:
        last[name] = k
    names = []
    for name, k in finder._ends:
        if last.get(name) != k:
            raise LasnnError(
                f"The stage end '{name}' (call {k + 1}) is not that module's last call in the forward pass, "
                "so a hook cannot record it; name the teacher layers yourself with teacher_layers."
            )
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------- hooks


def _first_tensor(output: Any, name: str) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if isinstance(output, tuple | list) and output and torch.is_tensor(output[0]):
        return output[0]  # norse modules return (spikes, state)
    raise LasnnError(
        f"Layer {name!r} returned a {type(output).__name__}; record a module whose output is a tensor "
        "or a tuple starting with one (e.g. norse's (spikes, state))."
    )


class ActivationRecorder:
    """Forward hooks that record the outputs of named submodules of any ``nn.Module``.

    ``time_dim="steps"``: the module is called once per time step; calls are stacked on a new axis 0
    (only while the module is in training mode, so evaluation loops do not pile up memory) until
    ``clear``. Otherwise each forward replaces the last output. Use as a context manager or call
    ``remove`` to take the hooks off.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], time_dim: TimeDim = None) -> None:
        if isinstance(layers, str):
            layers = [layers]
        modules = dict(model.named_modules())
        for name in layers:
            if name not in modules or not name:
                known = [n for n in modules if n][:12]
                raise LasnnError(
                    f"{type(model).__name__} has no submodule named {name!r}; choose from "
                    f"{', '.join(known)}{', ...' if len(modules) > 13 else ''}."
                )
        _check_time_dim(time_dim)
        self.layers = list(layers)
        self.time_dim = time_dim
        self._last: dict[str, torch.Tensor] = {}
        self._steps: dict[str, list[torch.Tensor]] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):  # noqa: ANN202 - a forward hook
        def record(module: nn.Module, _inputs: tuple, output: Any) -> None:
            tensor = _first_tensor(output, name)
            if self.time_dim == "steps":
                if module.training:
                    self._steps.setdefault(name, []).append(tensor)
            else:
                self._last[name] = tensor

        return record

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """The recorded outputs by layer name, in the order given (``"steps"``: stacked, time on axis 0)."""
        if self.time_dim == "steps":
            return {n: torch.stack(self._steps[n]) for n in self.layers if self._steps.get(n)}
        return {n: self._last[n] for n in self.layers if n in self._last}

    def clear(self) -> None:
        """Forget what was recorded."""
        self._last.clear()
        self._steps.clear()

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> ActivationRecorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()


def _check_time_dim(time_dim: Any) -> None:
    if not (time_dim is None or time_dim == "steps" or (isinstance(time_dim, int) and time_dim >= 0)):
        raise LasnnError(
            f"time_dim is {time_dim!r}; expected the index of the time axis (0 for [T, B, ...], 1 for "
            "[B, T, ...]), 'steps' for one call per time step, or None for aggregated activations."
        )


# ---------------------------------------------------------------------------------------------- loss


@dataclass
class LossTerms:
    """The value of the objective (``loss``, differentiable) and its weighted terms as floats: ``ce``,
    ``kd`` (``alpha * tau^2 * KL``), ``attention`` (``beta * sum of map distances``), with the layer
    ``pairs`` (student, teacher) the attention term compared."""

    loss: torch.Tensor
    ce: float
    kd: float
    attention: float
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        """The terms and the total as plain floats (for a log line or JSON)."""
        return {"loss": float(self.loss.detach()), "ce": self.ce, "kd": self.kd, "attention": self.attention}


class LaSNNLoss(nn.Module):
    """The LaSNN objective ``CE + alpha * tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau)) + beta * sum_l
    mean_batch ||A_t(l) - A_s(l)||_2``, the code ``lasnn distill`` trains with (``kind="kd"``: CE + KD,
    ``"ce"``: CE only). ``A`` is ``attention_map`` of a teacher layer and of the student layer's mean over
    time; maps of different size are pooled to the smaller. See the module docstring for the two ways
    to give it activations and for ``time_dim``.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        tau: float = 4.0,
        beta: float = 10.0,
        p: float = 2.0,
        kind: str = "lasnn",
        time_dim: TimeDim = 0,
        pairs: str | Sequence[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__()
        from lasnn.distill.losses import LOSSES, LossConfig

        if kind not in LOSSES:
            raise LasnnError(f"The loss kind {kind!r} is unknown; expected one of {', '.join(LOSSES)}.")
        for label, value, low in (("alpha", alpha, 0.0), ("beta", beta, 0.0), ("tau", tau, None)):
            if (
                not isinstance(value, int | float)
                or not math.isfinite(value)
                or (value < low if low is not None else value <= 0)
            ):
                expected = "a non-negative weight" if low is not None else "a positive temperature"
                raise LasnnError(f"{label} is {value!r}; expected {expected}.")
        if not (isinstance(p, int | float) and p > 0 and math.isfinite(p)):
            raise LasnnError(f"The attention exponent p is {p!r}; expected a positive number such as 2.")
        _check_time_dim(time_dim)
        self.config = LossConfig(kind=kind, alpha=float(alpha), tau=float(tau), beta=float(beta), p=float(p))
        self.time_dim = time_dim
        self.pairs = pairs
        self._teacher: ActivationRecorder | None = None
        self._student: ActivationRecorder | None = None

    def extra_repr(self) -> str:
        """The weights and the time convention, for ``print(loss)``."""
        c = self.config
        return (
            f"kind={c.kind}, alpha={c.alpha}, tau={c.tau}, beta={c.beta}, p={c.p}, time_dim={self.time_dim!r}"
        )

    # hooks ------------------------------------------------------------------------------------------
    def attach(
        self,
        teacher: nn.Module,
        student: nn.Module,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        example: torch.Tensor | None = None,
    ) -> LaSNNLoss:
        """Hook ``student_layers`` (the modules whose outputs are the spikes to align; default for a lasnn
        student: its stage ends) and ``teacher_layers`` (default: ``find_stage_ends(teacher, example)``);
        later calls without activations use what the last forward passes recorded. Returns ``self``."""
        self.remove_hooks()
        if student_layers is None:
            from lasnn.distill.students import SpikingStudent

            if not isinstance(student, SpikingStudent):
                raise LasnnError(
                    f"Name the spiking modules of the {type(student).__name__} student to align with "
                    "student_layers=[...] (only lasnn students have known stage ends)."
                )
            student_layers = find_stage_ends(student)
        if teacher_layers is None:
            if example is None:
                raise LasnnError(
                    "Pass teacher_layers=[...] or an example batch (example=images) to find the teacher's "
                    "stage ends."
                )
            teacher_layers = find_stage_ends(teacher, example)
        self._teacher = ActivationRecorder(teacher, teacher_layers)
        self._student = ActivationRecorder(student, student_layers, self.time_dim)
        return self

    def remove_hooks(self) -> None:
        """Take the hooks of ``attach`` off both models."""
        for recorder in (self._teacher, self._student):
            if recorder is not None:
                recorder.remove()
        self._teacher = self._student = None

    @property
    def layers(self) -> tuple[list[str], list[str]]:
        """(student layers, teacher layers) hooked by ``attach`` (empty lists when not attached)."""
        if self._student is None or self._teacher is None:
            return [], []
        return list(self._student.layers), list(self._teacher.layers)

    # the objective ----------------------------------------------------------------------------------
    def _aggregate(self, name: str, activation: torch.Tensor) -> torch.Tensor:
        if self.time_dim is None:
            aggregated = activation
        else:
            axis = 0 if self.time_dim == "steps" else int(self.time_dim)
            if activation.dim() <= axis:
                raise LasnnError(
                    f"Student layer {name!r} has shape {tuple(activation.shape)}, which has no time axis "
                    f"{axis}; set time_dim to where T is."
                )
            aggregated = activation.float().mean(axis)
        if aggregated.dim() != 4:
            raise LasnnError(
                f"Student layer {name!r} gives a {tuple(aggregated.shape)} activation after aggregating "
                f"over time (time_dim={self.time_dim!r}); the attention term needs [B, C, H, W] maps."
            )
        return aggregated

    def _maps(
        self,
        teacher_acts: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
        student_acts: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
        batch: int,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[str, str]]]:
        if isinstance(teacher_acts, Mapping) != isinstance(student_acts, Mapping):
            raise LasnnError(
                "Pass teacher and student activations both as {name: tensor} dicts or both as lists."
            )
        if isinstance(student_acts, Mapping):
            student = {n: self._aggregate(n, a) for n, a in student_acts.items()}
            teacher = dict(teacher_acts)
            pairs = pair_layers(student, teacher, self.pairs)
        else:
            if self.pairs is not None:
                raise LasnnError("pairs= names layers; pass the activations as {name: tensor} dicts.")
            if len(student_acts) != len(teacher_acts):
                raise LasnnError(
                    f"{len(student_acts)} student and {len(teacher_acts)} teacher activations were given; "
                    "lists are paired by position, so give as many of each."
                )
            student = {
                f"student[{i}]": self._aggregate(f"student[{i}]", a) for i, a in enumerate(student_acts)
            }
            teacher = {f"teacher[{i}]": a for i, a in enumerate(teacher_acts)}
            pairs = list(zip(student, teacher, strict=True))
        if not pairs:
            raise LasnnError(
                "No student layer could be paired with a teacher layer (all are 1x1 or none were "
                "recorded); pass pairs= or use kind='kd'."
            )
        t_maps, s_maps = [], []
        for s, t in pairs:
            a_s, a_t = student[s], teacher[t]
            if a_t.dim() != 4:
                raise LasnnError(
                    f"Teacher layer {t!r} has shape {tuple(a_t.shape)}; the attention term needs "
                    "[B, C, H, W] maps."
                )
            if a_s.shape[0] != batch or a_t.shape[0] != batch:
                raise LasnnError(
                    f"Layers {s!r} and {t!r} hold batches of {a_s.shape[0]} and {a_t.shape[0]} samples, "
                    f"but the logits hold {batch}; record them on the same batch."
                )
            size = (min(a_s.shape[-2], a_t.shape[-2]), min(a_s.shape[-1], a_t.shape[-1]))
            s_maps.append(attention_map(a_s, self.config.p, size))
            t_maps.append(attention_map(a_t.detach(), self.config.p, size))
        return t_maps, s_maps, pairs

    def forward(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        teacher_activations: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None,
        student_activations: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None,
    ) -> LossTerms:
        """The objective on one batch: ``student_logits`` ``[B, classes]`` (for an SNN, usually the mean
        readout over time), integer ``labels`` ``[B]``, the teacher's logits (``kd``/``lasnn``) and the
        paired activations (``lasnn``; omitted: those recorded by ``attach``, consumed by this call)."""
        from lasnn.distill.losses import objective

        if not torch.is_tensor(student_logits) or student_logits.dim() != 2:
            raise LasnnError(
                "student_logits must be a [B, classes] tensor (for an SNN: the readout's mean over T)."
            )
        batch = student_logits.shape[0]
        if not torch.is_tensor(labels) or tuple(labels.shape) != (batch,):
            raise LasnnError(f"labels must be a tensor of {batch} class indices, one per logit row.")
        config = self.config
        if config.needs_teacher:
            if teacher_logits is None:
                raise LasnnError(f"The {config.kind} loss needs teacher_logits; pass them or use kind='ce'.")
            if tuple(teacher_logits.shape) != tuple(student_logits.shape):
                raise LasnnError(
                    f"teacher_logits have shape {tuple(teacher_logits.shape)} but the student's have "
                    f"{tuple(student_logits.shape)}; both must be [B, classes] for the same classes."
                )
            teacher_logits = teacher_logits.detach()
        t_maps = s_maps = None
        pairs: list[tuple[str, str]] = []
        if config.needs_attention:
            if teacher_activations is None and student_activations is None and self._student is not None:
                teacher_activations = self._teacher.activations
                student_activations = self._student.activations
                self._teacher.clear()
                self._student.clear()
                if not teacher_activations or not student_activations:
                    raise LasnnError(
                        "The hooked layers recorded nothing since the last loss; run the teacher and the "
                        "student (in training mode) on the batch before calling the loss."
                    )
            if teacher_activations is None or student_activations is None:
                raise LasnnError(
                    "The lasnn loss needs teacher and student activations; pass both, call attach(...) "
                    "first, or use kind='kd'."
                )
            t_maps, s_maps, pairs = self._maps(teacher_activations, student_activations, batch)
        total, terms = objective(config, student_logits, labels, teacher_logits, t_maps, s_maps)
        return LossTerms(loss=total, ce=terms["ce"], kd=terms["kd"], attention=terms["att"], pairs=pairs)


# ------------------------------------------------------------------------------------------ students


def make_student(
    input_shape: Sequence[int],
    num_classes: int,
    arch: str = "vgg",
    widths: str | Sequence[int] = "32,64",
    blocks: int = 1,
    timesteps: int = 4,
    encoding: str = "direct",
    neuron: str = "lifbox",
) -> nn.Module:
    """A lasnn spiking student (norse LIF neurons Loihi runs; ``arch`` ``vgg`` or ``resnet``), the one
    ``lasnn distill --student/--widths/--blocks/--timesteps/--encoding/--neuron`` builds. ``forward(images)``
    encodes, runs T steps and returns logits; ``export_nir`` lowers it. Its stage ends are known to
    ``LaSNNLoss.attach``."""
    from lasnn.distill.commands import build_distill_student

    if not isinstance(widths, str):
        widths = ",".join(str(int(w)) for w in widths)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise LasnnError(f"input_shape is {shape}; expected (C, H, W).")
    return build_distill_student(arch, shape, int(num_classes), widths, blocks, timesteps, encoding, neuron)


# ---------------------------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What ``export_nir`` produced: the NIR graph (``nir.NIRGraph``), the file if one was written, and a
    summary (nodes, spiking layers, neurons, T, encoding, dt, data set; spikes checked equal)."""

    nir_graph: Any
    path: str | None
    nodes: int
    spiking_layers: int
    neurons: int
    timesteps: int | None
    encoding: str | None
    dt: float | None
    dataset: str | None
    verified_spikes: int | None
    profile: str | None = None

    def summary(self) -> str:
        """One line, as ``lasnn export`` prints it."""
        return (
            f"{self.nodes} nodes, {self.spiking_layers} spiking layers ({self.neurons} neurons), "
            f"T={self.timesteps if self.timesteps is not None else '?'}, "
            f"encoding={self.encoding or '?'}, dt={self.dt}, profile={self.profile or 'lasnn'}"
        )


def _export_result(graph: Any, path: str | None, profile: str | None) -> ExportResult:
    from lasnn.export.graph import Neuron
    from lasnn.export.nir_io import graph_to_nir

    neurons = [n for n in graph.nodes.values() if isinstance(n, Neuron)]
    meta = graph.metadata
    return ExportResult(
        nir_graph=graph_to_nir(graph),
        path=path,
        nodes=len(graph.nodes),
        spiking_layers=len(neurons),
        neurons=sum(int(np.prod(n.shape)) for n in neurons),
        timesteps=meta.get("timesteps"),
        encoding=meta.get("encoding"),
        dt=meta.get("dt"),
        dataset=meta.get("dataset"),
        verified_spikes=meta.get("verified_spikes"),
        profile=meta.get("export_profile") or profile,
    )


def _is_nir_file(path: Path) -> bool:
    import h5py

    return path.is_file() and (path.suffix == ".nir" or h5py.is_hdf5(path))


def export_nir(
    source: nn.Module | str | os.PathLike | Any,
    path: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    dt: float | None = None,
    verify: bool = True,
    profile: str | None = None,
    written_by: str | None = None,
) -> ExportResult:
    """Export to NIR: a lasnn student (in memory, from ``make_student``/your loop, or a ``student.pt``
    checkpoint) is lowered (batch norm folded), and, with ``verify``, re-run on the float reference and
    checked spike for spike against the student; a ``.nir`` file from another framework, or an in-memory
    ``nir.NIRGraph`` (e.g. from ``norse.torch.to_nir``, whose graphs ``nir.write`` cannot always store),
    is read, validated and normalised (``dt``: its time step if it records none; ``written_by``:
    ``"snntorch"``, ``"norse"`` or ``"sinabs"``, the framework whose exporter wrote it, for its dt and
    discretisation, ``lasnn export --from``). ``profile``: rewrite the graph
    for one reader (``export_profiles()``; default ``None``: lasnn's own layout, what ``lasnn export
    --for lasnn`` writes), checked to compute the same spikes. Writes ``path`` only when given.
    ``dataset``: the data set an in-memory student was trained on (recorded so ``simulate`` can score
    on it)."""
    import nir

    from lasnn.export.commands import _checkpoint_path, export_student, normalise_nir, write_normalised
    from lasnn.export.nir_io import nir_to_graph, read_nir

    _check_profile(profile)
    if isinstance(source, nir.NIRGraph):
        if dataset is not None:
            raise LasnnError("dataset= is for in-memory students; a NIR graph keeps its own metadata.")
        graph = nir_to_graph(source, dt=dt, where="the NIR graph", written_by=written_by)
        if path is not None:
            graph = write_normalised(graph, path, profile)
        else:
            graph = _in_memory(graph, None, True, profile)
        return _export_result(graph, None if path is None else str(path), profile)
    if written_by is not None and not (isinstance(source, str | os.PathLike) and _is_nir_file(Path(source))):
        raise LasnnError("written_by= (--from) is for foreign NIR graphs, not lasnn students or checkpoints.")
    if isinstance(source, nn.Module):
        from lasnn.distill.students import SpikingStudent

        if not isinstance(source, SpikingStudent):
            raise LasnnError(
                f"export_nir lowers lasnn students (make_student, distill_student or a checkpoint), not a "
                f"{type(source).__name__}; write it to NIR with its own framework and pass that file."
            )
        if dt is not None:
            raise LasnnError(
                "dt= is for foreign NIR files; a lasnn student exports with its neurons' own dt."
            )
        was_training = source.training
        source.eval()
        try:
            graph = _export_in_memory(source, _student_metadata(source, dataset), path, verify, profile)
        finally:
            source.train(was_training)
        return _export_result(graph, None if path is None else str(path), profile)
    src = Path(source)
    if dataset is not None:
        raise LasnnError(
            "dataset= is for in-memory students; a checkpoint or NIR file keeps its own metadata."
        )
    if _is_nir_file(src):
        if path is not None:  # the code of ``lasnn export foreign.nir -o PATH``
            graph = normalise_nir(src, path, dt, profile, written_by)
        else:
            graph = _in_memory(read_nir(src, dt=dt, written_by=written_by), None, True, profile)
        return _export_result(graph, None if path is None else str(path), profile)
    if dt is not None:
        raise LasnnError("dt= is for foreign NIR files; a lasnn checkpoint exports with its neurons' own dt.")
    from lasnn.artifacts import load_checkpoint
    from lasnn.distill.checkpoints import load_student

    ckpt = _checkpoint_path(src)
    kind = load_checkpoint(ckpt, ("student", "converted", "teacher")).get("kind")
    if kind == "teacher":
        raise LasnnError(
            f"{ckpt} is a teacher; teachers export to ONNX, use export_onnx (lasnn export --onnx)."
        )
    if path is not None:  # the code of ``lasnn export student.pt -o PATH``
        return _export_result(export_student(ckpt, path, verify=verify, profile=profile), str(path), profile)
    student, blob = load_student(ckpt)
    metadata = {**blob.get("metadata", {}), "checkpoint": str(ckpt), "checkpoint_kind": str(blob.get("kind"))}
    return _export_result(_export_in_memory(student, metadata, None, verify, profile), None, profile)


def _export_in_memory(
    student: nn.Module,
    metadata: dict[str, Any],
    path: str | os.PathLike | None,
    verify: bool,
    profile: str | None,
) -> Any:
    """Lower an in-memory student and (optionally) write it, with the checks of ``lasnn export``."""
    from lasnn.export.commands import verify_against_student
    from lasnn.export.lowering import lower_student

    graph = lower_student(student, metadata)
    for key in ("checkpoint", "checkpoint_kind"):
        if key in metadata:
            graph.metadata[key] = metadata[key]
    if profile not in (None, "lasnn") and verify:  # the profile is then checked against this graph
        checked = verify_against_student(student, graph)
        written = _in_memory(graph, path, True, profile)
        written.metadata["verified_spikes"] = checked
        return written
    written = _in_memory(graph, path, False, profile)
    if verify:
        try:
            written.metadata["verified_spikes"] = verify_against_student(student, written)
        except LasnnError:  # never leave a graph that failed its check under the name asked for
            if path is not None:
                Path(path).unlink(missing_ok=True)
            raise
    return written


def _in_memory(graph: Any, path: str | os.PathLike | None, check: bool, profile: str | None) -> Any:
    """The graph as a reader gets it: rewritten for ``profile``, written to ``path`` and read back (without
    a path: converted to NIR's node classes and back, the same conversion without the HDF5 file); with
    ``check``, a profile's graph must compute the spikes of the original."""
    from lasnn.export.nir_io import graph_to_nir, nir_to_graph, read_nir, write_nir

    names: dict[str, str] = {}
    target = graph
    if profile not in (None, "lasnn"):
        from lasnn.export.profiles import apply_profile

        target = apply_profile(graph, profile, names)
    if path is not None:
        write_nir(target, path)
        written = read_nir(path)
    else:
        written = nir_to_graph(graph_to_nir(target), dt=target.metadata.get("dt"))
    if check and profile not in (None, "lasnn"):
        from lasnn.export.commands import _same_as

        try:
            _same_as(graph, written, names)
        except LasnnError:
            if path is not None:
                Path(path).unlink(missing_ok=True)
            raise
    return written


def _student_metadata(student: nn.Module, dataset: str | None) -> dict[str, Any]:
    """The metadata a checkpoint would carry, for an in-memory student trained on ``dataset``."""
    meta: dict[str, Any] = {"timesteps": student.timesteps, "encoding": student.encoding}
    if dataset is not None:
        from lasnn.data import dataset_info

        info = dataset_info(dataset)
        config = getattr(student, "config", {})
        if list(info.input_shape) != list(config.get("in_shape", info.input_shape)):
            raise LasnnError(
                f"Data set {dataset} has images of shape {tuple(info.input_shape)} but the student takes "
                f"{tuple(config['in_shape'])}; pass the data set it was trained on."
            )
        meta.update(
            dataset=dataset,
            input_shape=list(info.input_shape),
            num_classes=info.num_classes,
            mean=list(info.mean),
            std=list(info.std),
        )
    return meta


def export_profiles() -> dict[str, str]:
    """The layouts ``export_nir(..., profile=NAME)`` (``lasnn export --for NAME``) can write: name -> the
    reader it is for and its time step; ``lasnn`` is lasnn's own layout."""
    profiles = {"lasnn": "lasnn's own stages (the student's dt, Scale nodes kept)"}
    try:
        from lasnn.export.profiles import PROFILES
    except ImportError:  # a lasnn without reader profiles
        return profiles
    profiles.update({name: f"{p.reader}, dt = {p.dt:g} s" for name, p in PROFILES.items()})
    return profiles


def _check_profile(profile: str | None) -> None:
    if profile is not None and profile not in export_profiles():
        raise LasnnError(
            f"Unknown export profile {profile!r}; expected one of {', '.join(export_profiles())}."
        )


def export_onnx(
    teacher: str | os.PathLike | nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Export a teacher ANN (a ``teacher.pt`` checkpoint, or any ``nn.Module`` with ``input_shape``
    ``(C, H, W)``) to ONNX, checked with ``onnx.checker`` and the ONNX reference evaluator against torch;
    returns the check (opset, max abs difference, samples, tolerance)."""
    if isinstance(teacher, nn.Module):
        from lasnn.export.onnx_export import export_teacher_onnx

        if input_shape is None:
            raise LasnnError("export_onnx of an nn.Module needs input_shape=(C, H, W).")
        was = teacher.training
        try:
            return export_teacher_onnx(teacher.eval(), tuple(int(s) for s in input_shape), path).to_dict()
        finally:
            teacher.train(was)
    from lasnn.export.commands import export_teacher

    return export_teacher(teacher, path)


# --------------------------------------------------------------------------------------------- compile


def compile_loihi(
    graph: ExportResult | str | os.PathLike,
    calibration: np.ndarray | str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    timesteps: int | None = None,
    input_mode: str | None = None,
    calibration_samples: int | None = None,
    margin: float = 2.0,
    dt: float | None = None,
    written_by: str | None = None,
    out: str | os.PathLike | None = None,
    bias_grid: int | None = None,
) -> Any:
    """Compile a NIR graph (a file or an ``ExportResult``) to Loihi 2 fixed point, as ``lasnn compile``:
    scales calibrated on ``calibration`` (``(N, T, *input_shape)``, array or ``.npy``), else on the
    training split of the graph's data set, never on scored samples; ``input_mode`` ``spikes`` or
    ``currents`` (default: from the graph); ``calibration_samples`` (default 256) and ``margin`` (u/v
    headroom over calibration) as the verb's flags; ``dt`` and ``written_by`` (``--dt``, ``--from``) how a
    foreign file is read (``export_nir``); ``bias_grid`` (``--bias-grid``, e.g. 64 for ``export_netx``) puts
    every neuron bias on its multiples. Returns a ``CompiledModel`` (integers, schedule, report,
    provenance); writes it to ``out`` only when given. ``simulate`` runs it on Lava and the emulator."""
    from lasnn.hardware.compiled_model import compile_graph

    source = _graph_source(graph)
    if out is not None:
        from lasnn.artifacts import check_writable

        check_writable(out)
    from lasnn.hardware.compiled_model import CALIBRATION_SAMPLES

    model = compile_graph(
        source,
        calibration=calibration,
        dataset=dataset,
        data_root=data_root,
        timesteps=timesteps,
        input_mode=input_mode,
        calibration_samples=CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples,
        margin=margin,
        dt=dt,
        written_by=written_by,
        bias_grid=bias_grid,
    )
    if out is not None:
        model.save(out)
    return model


def load_compiled(path: str | os.PathLike) -> Any:
    """Read a compiled model written by ``lasnn compile`` or ``compile_loihi(..., out=...)``."""
    from lasnn.hardware.compiled_model import load_compiled as _load_compiled

    return _load_compiled(path)


def export_netx(model: Any, out: str | os.PathLike) -> dict[str, Any]:
    """Write a compiled model (a ``CompiledModel`` or its file) in lava-dl's netx HDF5 format, as ``lasnn
    export-netx``; returns the netx blocks (lasnn layer, netx type), the ``Network`` arguments it needs
    (``input_message_bits``, ``reset_interval`` at least, ``reset_offset``) and the notes on what was
    mapped by an exact workaround. What netx cannot express raises one ``LasnnError`` naming the layer."""
    from lasnn.artifacts import check_writable
    from lasnn.hardware.netx import RESET_OFFSET, write_netx

    if isinstance(model, str | os.PathLike):
        model = load_compiled(model)
    if getattr(model, "loihi", None) is None:
        raise LasnnError(f"export_netx takes a compiled model (compile_loihi), not a {type(model).__name__}.")
    check_writable(out)
    plan = write_netx(model, out)
    return {
        "blocks": [{"layer": b.name, "type": b.kind, "role": b.role} for b in plan.blocks],
        "input_shape": list(plan.input_shape),
        "input_message_bits": plan.input_message_bits,
        "reset_interval_min": max(model.timesteps, plan.reset_interval_min),
        "reset_offset": RESET_OFFSET,
        "notes": plan.notes,
    }


def loihi_resources(model: Any) -> dict[str, Any]:
    """Per-layer neurons, synapses, stored weights and Loihi 2 cores of a compiled model, and the totals
    (cores, chips, host MACs per step), from the published per-core limits."""
    from lasnn.hardware.resources import estimate_resources

    loihi = getattr(model, "loihi", None)
    if loihi is None:
        raise LasnnError(
            f"loihi_resources takes a compiled model (compile_loihi), not a {type(model).__name__}."
        )
    return estimate_resources(loihi)


def _graph_source(graph: Any) -> Any:
    if isinstance(graph, ExportResult):
        if graph.path is None:
            from lasnn.export.nir_io import nir_to_graph

            return nir_to_graph(graph.nir_graph, dt=graph.dt)
        return graph.path
    if isinstance(graph, str | os.PathLike):
        return graph
    raise LasnnError(f"Expected a NIR file path or an ExportResult, got a {type(graph).__name__}.")


# -------------------------------------------------------------------------------------------- simulate


def simulate(
    model: Any,
    backend: str = "emulator",
    *,
    samples: int | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    inputs: np.ndarray | str | os.PathLike | None = None,
    labels: np.ndarray | str | os.PathLike | None = None,
    timesteps: int | None = None,
    calibration: np.ndarray | str | os.PathLike | None = None,
    input_mode: str | None = None,
    dt: float | None = None,
    written_by: str | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    out: str | os.PathLike | None = None,
    save_spikes: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run a model on ``backend`` (``lava``: Lava's fixed-point Loihi 2 simulator; ``emulator``: its
    bit-exact batched twin; ``float``: the unquantised reference) over the first ``samples`` test images
    of its data set, or over pre-encoded ``inputs`` ``(N, T, *input_shape)`` with optional ``labels``.
    ``model``: a compiled model (in memory or its file), a ``.nir`` file or an ``ExportResult`` (compiled
    on the fly by ``compile_loihi``'s rule for the integer backends; ``dt``/``written_by`` read a foreign
    ``.nir`` as ``compile_loihi`` does). Returns the run record (accuracy,
    per-layer neurons, spikes, synaptic ops and neuron updates per inference, quantisation report), the
    input of ``energy_report``; writes ``out`` (run.json) and ``save_spikes`` (.npz) only when given."""
    from lasnn.sims.run_simulation import simulate as _simulate

    return _simulate(
        _model_source(model),
        backend=backend,
        dataset=dataset,
        samples=samples,
        batch_size=batch_size,
        device=device,
        data_root=data_root,
        inputs=inputs,
        labels=labels,
        timesteps=timesteps,
        out=out,
        save_spikes=save_spikes,
        seed=seed,
        progress=progress,
        calibration=calibration,
        input_mode=input_mode,
        dt=dt,
        written_by=written_by,
    )


def _model_source(model: Any) -> Any:
    if hasattr(model, "loihi") and hasattr(model, "provenance"):  # a CompiledModel in memory
        return model
    if isinstance(model, ExportResult) and model.path is None:
        raise LasnnError(
            "simulate needs the exported graph on disk; call export_nir(student, path) with a path."
        )
    return _graph_source(model)


# ---------------------------------------------------------------------------------------------- report


def energy_report(
    runs: Sequence[Mapping[str, Any] | str | os.PathLike] | Mapping[str, Any],
    out: str | os.PathLike | None = None,
    *,
    teacher: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    energy_models: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The energy/latency report of simulated runs (the records ``simulate`` returned, or run.json files),
    as ``lasnn report``: per-layer spikes and synaptic ops, modelled energy under each cost model (every
    constant with its source; default: all built-in models) and modelled Loihi latency, and the teacher
    ANN priced by its MACs (``teacher``: its checkpoint). ``options``: the verb's other options by their
    Python names (e.g. ``first_layer="host"``). Returns the report dict (what ``report.json`` holds, plus
    ``files`` when written); writes the report folder (md, html, json, png) only when ``out`` is given."""
    from lasnn.reports.report import DEFAULT_MODELS, make_report

    if isinstance(runs, Mapping | str | os.PathLike):
        runs = [runs]
    try:
        result = make_report(
            [dict(r) if isinstance(r, Mapping) else r for r in runs],
            out,
            teacher=teacher,
            labels=None if labels is None else list(labels),
            energy_models=list(energy_models) if energy_models else DEFAULT_MODELS,
            **options,
        )
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise LasnnError(f"energy_report: {error}; see lasnn report --help for the options.") from error
    report = result["report"]
    if result["files"]:
        report = {**report, "files": result["files"]}
    return report


# ------------------------------------------------------------------------------------ training verbs
# The functions behind ``lasnn teach``, ``lasnn distill`` and ``lasnn convert``, re-exported as they are
# (one code path; they write their checkpoint and metrics.json into ``out`` and return the metrics).

train_teacher = _teach
distill_student = _distill
convert_teacher = _convert_teacher
