"""One interface for every backend that executes a lasnn graph (float reference, emulator, Lava).

A backend takes a graph and an encoded input stream ``[T, B, *input_shape]`` and returns, time-aligned
(step t of every layer corresponds to input step t, whatever delays the backend has internally):

- ``outputs``: the Output node's values ``[T, B, *shape]`` (for a lasnn student: readout currents, or
  readout values scaled back to float units; logits are their mean over T),
- ``spikes``: for every Neuron node, by node name, its spike trains ``[T, B, *shape]`` (bool/uint8).

``run.json`` (written by ``lasnn simulate``) has ``backend``, ``samples``, ``timesteps``, ``accuracy``,
``layers`` (list of ``{name, kind, neurons, spikes, synaptic_ops, neuron_updates}``, all *per inference*
i.e. averaged over samples) and ``quantisation`` (per-layer report, or null for the float backend),
plus ``graph`` (path), ``dataset``, ``encoding``, ``wall_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lasnn.export.graph import Graph


@dataclass
class BackendResult:
    outputs: np.ndarray  # [T, B, *output_shape]
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # neuron node name -> [T, B, *shape]


class Backend(Protocol):
    name: str

    def run(self, graph: Graph, stream: np.ndarray) -> BackendResult:
        """Execute ``graph`` on the encoded ``stream`` ``[T, B, *input_shape]``; states start at rest for
        every sample."""
        ...
