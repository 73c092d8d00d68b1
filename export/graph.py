"""lasnn's internal graph: the plain, backend-neutral form every simulator and the quantiser read.

Written by hand (small dataclasses, like NIR's own) because NIR's nodes are continuous-time and each
framework discretises them differently; here every neuron carries its *discrete-time* update, so the
float reference, the Loihi quantiser and the emulator all read one unambiguous definition.

Execution semantics (one time step, nodes in topological order of the feed-forward edges):

- a node's input is the sum of the outputs of its sources (edges into it); a *recurrent* edge (one that
  closes a cycle) delivers its source's output of the previous step (zero at t = 0);
- synapse nodes (Affine, Conv2d, SumPool2d, Flatten, Scale, Identity) map input to current, stateless;
- a Neuron node integrates (``cuba``: ``i <- i*(1 - alpha_i) + input``, else ``i = input``)::

      v <- v * (1 - alpha_v) + alpha_v * v_leak + gain * i
      spike = v > v_threshold;  v <- v_reset where spike

- every Neuron starts a sample at rest: ``v = v_leak``, ``i = 0`` (lasnn's IF neurons, which have no leak,
  carry ``v_leak = v_reset``: they start at their reset potential, as the students do);
- ``LeakyIntegrator`` (NIR LI / CubaLI / I) is a Neuron without threshold: it outputs ``v`` after the
  update (same ``v``/``i`` equations, same start at rest);
- ``Delay`` outputs its input of ``steps`` time steps ago (per element; zero before that);
- ``Input`` feeds the encoded stream ``[T, B, *shape]``; ``Output`` collects its input per step.

Stateless nodes that carry an ``input_shape`` (Conv2d, SumPool2d, Flatten), and Output, reshape their input
to their own shape first: a source whose output has the same number of elements but another shape (e.g. a
NIR Conv1d lowered to a Conv2d of height 1) is accepted.

All parameter arrays are per neuron (numpy, float64 or float32), shapes match ``shape``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Input:
    shape: tuple[int, ...]


@dataclass
class Output:
    shape: tuple[int, ...]


@dataclass
class Affine:
    """``y = weight @ x + bias``; ``bias`` may be None (NIR Linear)."""

    weight: np.ndarray  # [out, in]
    bias: np.ndarray | None = None


@dataclass
class Conv2d:
    weight: np.ndarray  # [out_ch, in_ch/groups, kh, kw]
    bias: np.ndarray | None
    input_shape: tuple[int, int, int]  # (C, H, W)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1


@dataclass
class SumPool2d:
    """Sum over windows; AvgPool2d is a SumPool2d followed by a Scale of 1/(kh*kw)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    input_shape: tuple[int, int, int]
    padding: tuple[int, int] = (0, 0)


@dataclass
class Scale:
    scale: np.ndarray  # broadcast against the input


@dataclass
class Flatten:
    input_shape: tuple[int, ...]


@dataclass
class Neuron:
    """Discrete-time LIF / IF / CUBA-LIF neurons (see the module docstring for the update)."""

    shape: tuple[int, ...]
    alpha_v: np.ndarray  # fraction of (v - v_leak) lost per step: dt/tau_mem (0 for IF)
    gain: np.ndarray  # input-to-voltage gain per step (dt*R/tau_mem for LIF, R for IF: export/nir_io.py)
    v_threshold: np.ndarray
    v_reset: np.ndarray
    v_leak: np.ndarray
    alpha_i: np.ndarray | None = None  # dt/tau_syn for current-based neurons, None otherwise

    @property
    def cuba(self) -> bool:
        return self.alpha_i is not None


@dataclass
class LeakyIntegrator:
    """A non-spiking Neuron (NIR LI, CubaLI, I): same update, outputs the membrane potential ``v``."""

    shape: tuple[int, ...]
    alpha_v: np.ndarray
    gain: np.ndarray
    v_leak: np.ndarray
    alpha_i: np.ndarray | None = None

    @property
    def cuba(self) -> bool:
        return self.alpha_i is not None


@dataclass
class Delay:
    """``y[t] = x[t - steps]`` per element (NIR Delay with ``delay = steps * dt``); zero for ``t < steps``."""

    steps: np.ndarray  # non-negative integers, shape of the signal


Node = Input | Output | Affine | Conv2d | SumPool2d | Scale | Flatten | Neuron | LeakyIntegrator | Delay


@dataclass
class Graph:
    """Nodes by name, directed edges, and metadata (dt, timesteps, encoding, dataset, readout, ...)."""

    nodes: dict[str, Node]
    edges: list[tuple[str, str]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def sources(self, name: str) -> list[str]:
        return [s for s, d in self.edges if d == name]

    def targets(self, name: str) -> list[str]:
        return [d for s, d in self.edges if s == name]

    def inputs(self) -> list[str]:
        return [n for n, node in self.nodes.items() if isinstance(node, Input)]

    def outputs(self) -> list[str]:
        return [n for n, node in self.nodes.items() if isinstance(node, Output)]

    def schedule(self) -> tuple[list[str], set[tuple[str, str]]]:
        """Topological order of the nodes and the set of recurrent edges (those closing a cycle).

        Recurrent edges are found by depth-first search from the inputs in edge order, so the result is
        deterministic for a given graph.
        """
        recurrent: set[tuple[str, str]] = set()
        state: dict[str, int] = {}  # 1 = on stack, 2 = done
        order: list[str] = []

        def visit(start: str) -> None:
            stack: list[tuple[str, int]] = [(start, 0)]
            state[start] = 1
            while stack:
                node, i = stack.pop()
                outs = self.targets(node)
                if i < len(outs):
                    stack.append((node, i + 1))
                    nxt = outs[i]
                    if state.get(nxt) == 1:
                        recurrent.add((node, nxt))
                    elif nxt not in state:
                        state[nxt] = 1
                        stack.append((nxt, 0))
                else:
                    state[node] = 2
                    order.append(node)

        for name in self.inputs() + list(self.nodes):
            if name not in state:
                visit(name)
        # `order` is a post-order of the DFS; its reverse is topological for the forward edges.
        order.reverse()
        return order, recurrent
