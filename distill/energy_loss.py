"""A differentiable estimate of a student's modelled chip energy per inference, as a distillation loss term.

The estimate is the activity energy model of ``lasnn.hardware.energy`` written on the training graph's
spike tensors, so that its gradient reaches every layer through the surrogate spikes:

    E = sum_sources e_synop * sum(spikes_src * fanout_src) + e_host_mac * sum((x != 0) * fanout_in)
        + sum_layers [ e_active * spikes_l + e_inactive * (N_l * T - spikes_l) + e_spike * spikes_l ]
        + e_inactive * N_readout * T                                     (per inference: / batch)

``fanout_src`` is every source neuron's number of structural synapses into the next neuron layers (or the
readout), through the composed synapse chain the chip runs (pooling -> conv is one synapse; both paths of
a residual block count). It is found once per student by pushing all-ones copies of each chain backwards
(the gradient of ``sum(chain_ones(x))`` is each input element's fan-out, the chains' entries being 0/1).
A direct-encoded first layer is charged as host MACs once per inference, as ``first_layer="host"`` does
in the report, so for spikes recorded from the same run the estimate equals the counted energy exactly
(``tests/test_energy_loss.py``).

Why the costs come in as plain numbers (``EnergyCosts``): training knows nothing of the chip (stages import
only earlier stages), so the verb reads the named model's per-event costs through ``lasnn.cost_models``
(the shared reader of ``hardware/energy_models/*.json``) and hands this module five floats.

The loss terms follow the field's anchors: sinabs' synops loss penalises ``relu(synops - target)^2``
(Sorbaro et al. 2020), lava-dl's ``SparsityEnforcer`` penalises firing rates above a target. Here
``--energy-target E`` penalises ``weight * (relu(E_est - E) / E)^2`` (zero once the student is cheap
enough) and ``--energy-weight W`` alone adds ``W * E_est`` in microjoules.

Written by hand: no library estimates chip energy differentiably from a norse student's spikes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lasnn.distill.spiking_layers import ResidualBlock, SeqFlatten, SeqPool, SeqSynapse, SpikingNeurons
from lasnn.errors import LasnnError

MICROJOULE = 1e-6
INPUT = "input"
READOUT = "readout"


@dataclass(frozen=True)
class EnergyCosts:
    """Joules per event of one named energy model (its ``per_event`` SNN and host charges)."""

    model: str
    synop: float
    neuron_active: float
    neuron_inactive: float
    spike: float
    host_mac: float

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> EnergyCosts:
        if "snn" not in model.get("per_event", {}):
            raise LasnnError(
                f"Energy model {model.get('name')!r} does not price an SNN, so it cannot steer distillation; "
                "use loihi, compute_fp32, compute_int8 or memory."
            )
        e = model["per_event"]["snn"]
        return cls(
            model["name"],
            e["synop"],
            e["neuron_active"],
            e["neuron_inactive"],
            e["spike"],
            model["per_event"]["host"]["mac"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _edges(student: nn.Module) -> list[tuple[str, list[nn.Module], str]]:
    """(source, chain of synapse modules, destination) for every path between neuron layers of a
    ``SpikingStudent`` (sources: ``input`` and the SpikingNeurons by module name; last destination the
    readout)."""
    names = {id(m): n for n, m in student.named_modules()}
    edges: list[tuple[str, list[nn.Module], str]] = []

    def walk(modules: list[nn.Module], src: str, chain: list[nn.Module]) -> tuple[str, list[nn.Module]]:
        for m in modules:
            if isinstance(m, SeqSynapse | SeqPool | SeqFlatten):
                chain = [*chain, m]
            elif isinstance(m, SpikingNeurons):
                edges.append((src, chain, names[id(m)]))
                src, chain = names[id(m)], []
            elif isinstance(m, ResidualBlock):
                b_src, b_chain = walk(list(m.branch.children()), src, chain)
                skip = chain if m.shortcut is None else [*chain, m.shortcut]
                edges.append((b_src, b_chain, names[id(m.neurons)]))
                edges.append((src, skip, names[id(m.neurons)]))
                src, chain = names[id(m.neurons)], []
            elif isinstance(m, nn.Sequential):
                src, chain = walk(list(m.children()), src, chain)
            else:
                raise LasnnError(
                    f"The energy term cannot follow a {type(m).__name__} in the student; it supports the "
                    "layers lasnn exports (SeqSynapse, SpikingNeurons, SeqPool, SeqFlatten, ResidualBlock)."
                )
        return src, chain

    src, chain = walk(list(student.features.children()), INPUT, [])
    edges.append((src, [*chain, SeqFlatten(), student.head], READOUT))
    return edges


def _ones_chain(chain: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The chain with every weight 1 and no bias or norm (structure only); sum pooling; ``x`` is [1, ...]."""
    for m in chain:
        if isinstance(m, SeqPool):
            x = F.avg_pool2d(x, m.kernel_size, m.stride) * (m.kernel_size * m.kernel_size)
        elif isinstance(m, SeqFlatten):
            x = x.flatten(1)
        elif isinstance(m.layer, nn.Conv2d):
            c = m.layer
            ones = torch.ones_like(c.weight, dtype=x.dtype)
            x = F.conv2d(x, ones, None, c.stride, c.padding, c.dilation, c.groups)
        else:
            x = x.flatten(1) @ torch.ones_like(m.layer.weight, dtype=x.dtype).t()
    return x


class EnergyEstimate:
    """The differentiable energy per inference of a student (see the module docstring).

    Use: ``estimate = EnergyEstimate(student, costs)``; inside the training step, ``with estimate.record():``
    around the student's forward pass, then ``estimate.energy(images)`` (joules per inference, a tensor
    with gradient through the recorded spikes)."""

    def __init__(self, student: nn.Module, costs: EnergyCosts) -> None:
        self.student = student
        self.costs = costs
        self.timesteps = int(student.timesteps)
        self.direct = student.encoding == "direct"
        self.in_shape = tuple(int(s) for s in student.config["in_shape"])
        self.edges = _edges(student)
        self.neurons = [n for n, m in student.named_modules() if isinstance(m, SpikingNeurons)]
        self.readout = int(student.head.layer.out_features)
        self._spikes: dict[str, torch.Tensor] = {}
        self._fanout: dict[str, torch.Tensor] | None = None

    def fanouts(self) -> dict[str, torch.Tensor]:
        """Per source (``input`` and each neuron layer) its per-element fan-out, summed over its paths."""
        if self._fanout is None:
            shapes = {INPUT: self.in_shape}
            seen: dict[str, tuple[int, ...]] = {}
            hooks = [
                m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, tuple(out.shape[2:])))
                for n, m in self.student.named_modules()
                if isinstance(m, SpikingNeurons)
            ]
            was_training = self.student.training
            self.student.eval()  # a shape probe must not move batch-norm statistics
            try:
                with torch.no_grad():
                    self.student.run(torch.zeros(1, 1, *self.in_shape, device=self._device()))
            finally:
                for h in hooks:
                    h.remove()
                self.student.train(was_training)
            shapes.update(seen)
            fanout: dict[str, torch.Tensor] = {}
            for src, chain, _dst in self.edges:
                x = torch.zeros(1, *shapes[src], dtype=torch.float64, requires_grad=True)
                (grad,) = torch.autograd.grad(_ones_chain(chain, x).sum(), x)
                fanout[src] = fanout.get(src, 0) + grad[0]
            self._fanout = {k: v.to(self._device()) for k, v in fanout.items()}
        return self._fanout

    def _device(self) -> torch.device:
        param = next(self.student.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def record(self) -> _Recording:
        """Context manager: keeps every neuron layer's spikes ``[T, B, ...]`` of the forward passes inside."""
        return _Recording(self)

    def terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Energy per inference by part (J): synaptic, host, neuron, spike, readout; and spikes."""
        fanout = self.fanouts()
        c = self.costs
        batch = images.shape[0]
        if not self._spikes:
            raise LasnnError("No spikes were recorded; run the student inside EnergyEstimate.record().")
        missing = [n for n in self.neurons if n not in self._spikes]
        if missing:
            raise LasnnError(
                f"No spikes were recorded for {', '.join(missing)}; record the whole forward pass."
            )
        synops = images.new_zeros((), dtype=torch.float64)
        spikes = images.new_zeros((), dtype=torch.float64)
        updates = 0.0
        for name in self.neurons:
            s = self._spikes[name].double()
            spikes = spikes + s.sum() / batch
            updates += float(s[0, 0].numel() * s.shape[0])
            if name in fanout:
                synops = synops + (s * fanout[name]).sum() / batch
        host = images.new_zeros((), dtype=torch.float64)
        if INPUT in fanout:
            if self.direct:  # analog input: host MACs once per inference (the same image at every step)
                host = ((images != 0).double() * fanout[INPUT]).sum() / batch
            else:  # spikes from the encoder: accumulates on the chip (expects ``images`` = the stream)
                synops = synops + (images.double() * fanout[INPUT]).sum() / batch
        return {
            "synaptic": synops * c.synop,
            "host": host * c.host_mac,
            "neuron": spikes * c.neuron_active + (updates - spikes) * c.neuron_inactive,
            "spike": spikes * c.spike,
            "readout": images.new_tensor(
                self.readout * self.timesteps * c.neuron_inactive, dtype=torch.float64
            ),
            "spikes": spikes,
        }

    def energy(self, images: torch.Tensor) -> torch.Tensor:
        """Modelled energy per inference (J) of the recorded forward pass; ``images`` as fed to ``encode``
        (direct encoding) or the encoded stream ``[T, B, ...]`` (spiking encodings)."""
        t = self.terms(images)
        return t["synaptic"] + t["host"] + t["neuron"] + t["spike"] + t["readout"]


class _Recording:
    def __init__(self, estimate: EnergyEstimate) -> None:
        self.estimate = estimate
        self.hooks: list[Any] = []

    def __enter__(self) -> EnergyEstimate:
        est = self.estimate
        est._spikes = {}
        for name, m in est.student.named_modules():
            if isinstance(m, SpikingNeurons):
                self.hooks.append(
                    m.register_forward_hook(lambda _m, _i, out, n=name: est._spikes.__setitem__(n, out))
                )
        return est

    def __exit__(self, *exc: Any) -> None:
        for h in self.hooks:
            h.remove()


def energy_penalty(energy: torch.Tensor, weight: float, target: float | None) -> torch.Tensor:
    """The loss term: ``weight * (relu(E - target) / target)^2`` with a target (joules per inference),
    else ``weight * E`` in microjoules."""
    if target is not None:
        return weight * (F.relu(energy - target) / target) ** 2
    return weight * energy / MICROJOULE


class EnergyTerm:
    """The energy term of ``lasnn distill``: the estimate, its weight and target, and the record of both."""

    def __init__(self, student: nn.Module, costs: EnergyCosts, weight: float, target_j: float | None) -> None:
        self.estimate = EnergyEstimate(student, costs)
        self.weight = weight
        self.target_j = target_j

    def record(self) -> _Recording:
        return self.estimate.record()

    def penalty(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss term and, for the log, the estimate in microjoules per inference."""
        energy = self.estimate.energy(images)
        term = energy_penalty(energy, self.weight, self.target_j).float()
        return term, {"energy": float(term.detach()), "energy_uJ": float(energy.detach()) / MICROJOULE}

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "target_uJ": None if self.target_j is None else self.target_j / MICROJOULE,
            "costs": self.estimate.costs.to_dict(),
        }


def build_energy_term(
    student: nn.Module, weight: float | None, target_uj: float | None, model_name: str = "loihi"
) -> EnergyTerm | None:
    """``--energy-weight`` / ``--energy-target`` (µJ per inference under ``--energy-model``) -> the term,
    or None when neither is given. A target alone gets weight 1."""
    if weight is None and target_uj is None:
        return None
    from lasnn.cost_models import load_model  # shared reader of the model files (no hardware import)

    weight = 1.0 if weight is None else float(weight)
    if not (weight >= 0 and torch.isfinite(torch.tensor(weight))):
        raise LasnnError(f"--energy-weight is {weight!r}; expected a non-negative number.")
    if target_uj is not None and not (target_uj > 0 and torch.isfinite(torch.tensor(float(target_uj)))):
        raise LasnnError(f"--energy-target is {target_uj!r}; expected a positive energy in µJ per inference.")
    if weight == 0:
        return None
    costs = EnergyCosts.from_model(load_model(model_name))
    return EnergyTerm(student, costs, weight, None if target_uj is None else float(target_uj) * MICROJOULE)
