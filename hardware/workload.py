"""NeuroBench's activity metrics per inference, from the per-layer counts of ``lasnn.hardware.activity``.

Named as NeuroBench (PyPI ``neurobench``, ``neurobench.metrics.workload``) names them, counted on the synapses
the chip runs (a pooling followed by a convolution is one composed synapse, as ``activity`` counts it):

- ``SynapticOperations``: ``Effective_MACs`` (multiply-accumulates of graded input: a direct-encoded first
  layer, computed once per inference when the input is the same at every step, as the host does),
  ``Effective_ACs`` (accumulates, one per spike per outgoing synapse) and ``Dense`` (the operations if every
  source were nonzero at every step);
- ``ActivationSparsity``: zero outputs / all outputs of the spiking layers over all steps;
- ``MembraneUpdates``: neuron updates, every neuron at every step (what a time-stepped chip does). NeuroBench
  counts only updates that change the potential, and only for snnTorch neurons (it reads ``layer.mem``), so
  on norse students it has no figure of its own to compare with;
- ``spikes_per_synapse``: ``Effective_ACs / synapses`` (spiking synapses), the quantity whose break-even
  against an ANN Dampfhoffer et al. 2023 put at 0.15-1.38 for IF SNNs.

``tests/test_workload.py`` checks ``Effective_ACs``, ``Effective_MACs``, ``Dense`` and ``ActivationSparsity``
against NeuroBench's own metrics run on a student's composed synapses and spikes. Written by hand because
NeuroBench's hooks see torch modules, not the composed synapses of a NIR graph on a chip.
"""

from __future__ import annotations

from typing import Any


def neurobench_metrics(layers: list[dict], timesteps: int, constant_input: bool = False) -> dict[str, Any]:
    """NeuroBench-named metrics per inference from run.json ``layers`` (see the module docstring)."""
    macs = acs = dense = spiking_synapses = 0.0
    spikes = outputs = updates = 0.0
    for layer in layers:
        layer_macs = float(layer.get("macs", 0.0))
        inputs = float(layer.get("input_connections", 0.0))
        connections = float(layer.get("connections", 0.0))
        layer_dense = float(layer.get("dense_ops", 0.0))
        if constant_input and timesteps:  # the host computes the first layer once, not T times
            layer_macs /= timesteps
            layer_dense -= inputs * (timesteps - 1)
        macs += layer_macs
        acs += float(layer["synaptic_ops"]) - float(layer.get("macs", 0.0))
        dense += layer_dense
        spiking_synapses += connections - inputs
        updates += float(layer["neuron_updates"])
        if layer.get("kind", "neuron") == "neuron":
            spikes += float(layer["spikes"])
            outputs += float(layer["neuron_updates"])
    return {
        "SynapticOperations": {"Effective_MACs": macs, "Effective_ACs": acs, "Dense": dense},
        "ActivationSparsity": 1.0 - spikes / outputs if outputs else 0.0,
        "MembraneUpdates": updates,
        "spikes_per_synapse": acs / spiking_synapses if spiking_synapses else 0.0,
    }
