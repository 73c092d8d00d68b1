"""The float reference backend: executes a lasnn graph with exactly the semantics of ``export/graph.py``.

It is the yardstick the fixed-point emulator and Lava are compared against, and it checks the export
itself (student -> graph -> NIR -> graph gives the student's spikes). Written by hand because no library
runs lasnn's discrete-time graph; the arithmetic of convolutions and pooling is torch's
(``torch.nn.functional``), in float64 (default) or float32 on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lasnn.errors import LasnnError
from lasnn.export.graph import (
    Affine,
    Conv2d,
    Delay,
    Flatten,
    Graph,
    Input,
    LeakyIntegrator,
    Neuron,
    Output,
    Scale,
    SumPool2d,
)
from lasnn.export.validate import infer_shapes
from lasnn.sims.backend import BackendResult


class _Compiled:
    """A graph's parameters as torch tensors and its schedule, built once per ``run``."""

    def __init__(self, graph: Graph, dtype: torch.dtype) -> None:
        self.graph = graph
        self.shapes = infer_shapes(graph, "graph")
        self.order, self.recurrent = graph.schedule()
        self.sources = {n: graph.sources(n) for n in graph.nodes}
        self.input = graph.inputs()[0]
        self.output = graph.outputs()[0]
        t = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
        self.params: dict[str, dict[str, torch.Tensor | None]] = {}
        for name, node in graph.nodes.items():
            if isinstance(node, Affine | Conv2d):
                self.params[name] = {"weight": t(node.weight), "bias": t(node.bias)}
            elif isinstance(node, Scale):
                self.params[name] = {"scale": t(node.scale)}
            elif isinstance(node, Neuron | LeakyIntegrator):
                p = {
                    "keep_v": t(1.0 - np.asarray(node.alpha_v)),
                    "leak": t(np.asarray(node.alpha_v) * np.asarray(node.v_leak)),
                    "gain": t(node.gain),
                    "v_leak": t(node.v_leak),
                    "keep_i": None if node.alpha_i is None else t(1.0 - np.asarray(node.alpha_i)),
                }
                if isinstance(node, Neuron):
                    p["v_threshold"], p["v_reset"] = t(node.v_threshold), t(node.v_reset)
                self.params[name] = p


class FloatBackend:
    """Float reference: ``FloatBackend(dtype=np.float64).run(graph, stream)`` -> ``BackendResult``.

    ``batch_size`` bounds memory: samples are processed in chunks of that many (states are per sample, so
    chunking does not change results).
    """

    name = "float"

    def __init__(self, dtype: type = np.float64, batch_size: int = 256, progress: bool = True) -> None:
        if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise LasnnError(f"the float backend computes in float32 or float64, not {np.dtype(dtype)}.")
        self.dtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
        self.batch_size = int(batch_size)
        self.progress = progress

    def run(self, graph: Graph, stream: np.ndarray) -> BackendResult:
        compiled = _Compiled(graph, self.dtype)
        in_shape = tuple(graph.nodes[compiled.input].shape)
        stream = np.asarray(stream)
        if stream.ndim != 2 + len(in_shape) or tuple(stream.shape[2:]) != in_shape:
            raise LasnnError(
                f"the input stream has shape {stream.shape}; this graph expects [T, B, "
                f"{', '.join(map(str, in_shape))}]."
            )
        batch = stream.shape[1]
        chunks = range(0, batch, self.batch_size)
        results = [
            self._run_chunk(compiled, stream[:, b : b + self.batch_size])
            for b in tqdm(
                chunks, desc="float backend", unit="batch", disable=not self.progress or len(chunks) < 2
            )
        ]
        outputs = np.concatenate([r[0] for r in results], axis=1)
        spikes = {name: np.concatenate([r[1][name] for r in results], axis=1) for name in results[0][1]}
        return BackendResult(outputs=outputs, spikes=spikes)

    @torch.no_grad()
    def _run_chunk(self, c: _Compiled, stream: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        graph = c.graph
        steps, batch = stream.shape[:2]
        x_in = torch.as_tensor(stream, dtype=self.dtype)
        state: dict[str, dict[str, torch.Tensor]] = {}
        for name, node in graph.nodes.items():
            if isinstance(node, Neuron | LeakyIntegrator):
                p = c.params[name]
                state[name] = {
                    "v": p["v_leak"].expand(batch, *node.shape).clone(),
                    "i": torch.zeros((batch, *node.shape), dtype=self.dtype),
                }
            elif isinstance(node, Delay):
                state[name] = {"history": []}  # type: ignore[dict-item]
        previous: dict[str, torch.Tensor] = {}
        outputs, spikes = [], {n: [] for n, node in graph.nodes.items() if isinstance(node, Neuron)}
        for t in range(steps):
            current: dict[str, torch.Tensor] = {}
            for name in c.order:
                node = graph.nodes[name]
                if isinstance(node, Input):
                    current[name] = x_in[t]
                    continue
                total = None
                for src in c.sources[name]:
                    if (src, name) in c.recurrent:
                        value = previous.get(src)
                        if value is None:  # zero at t = 0
                            value = torch.zeros((batch, *c.shapes[src][1]), dtype=self.dtype)
                    else:
                        value = current[src]
                    total = value if total is None else total + value.reshape(total.shape)
                current[name] = self._step(c, name, node, total, state.get(name), batch)
                if isinstance(node, Neuron):
                    spikes[name].append(current[name] > 0)
                if isinstance(node, Output):
                    outputs.append(current[name])
            previous = current
        out = torch.stack(outputs).numpy()
        return out, {n: torch.stack(s).numpy() for n, s in spikes.items()}

    def _step(
        self, c: _Compiled, name: str, node: object, x: torch.Tensor, st: dict | None, batch: int
    ) -> torch.Tensor:
        p = c.params.get(name, {})
        if isinstance(node, Output):
            return x.reshape(batch, *node.shape)
        if isinstance(node, Affine):
            return F.linear(x.reshape(batch, -1), p["weight"], p["bias"])
        if isinstance(node, Conv2d):
            return F.conv2d(
                x.reshape(batch, *node.input_shape),
                p["weight"],
                p["bias"],
                stride=node.stride,
                padding=node.padding,
                dilation=node.dilation,
                groups=node.groups,
            )
        if isinstance(node, SumPool2d):
            return F.avg_pool2d(
                x.reshape(batch, *node.input_shape),
                node.kernel_size,
                node.stride,
                node.padding,
                count_include_pad=True,
                divisor_override=1,
            )
        if isinstance(node, Flatten):
            return x.reshape(batch, -1)
        if isinstance(node, Scale):
            return x * p["scale"]
        if isinstance(node, Delay):
            history: list[torch.Tensor] = st["history"]
            history.append(x)
            steps = torch.as_tensor(node.steps)
            out = torch.zeros_like(x)
            for d in torch.unique(steps).tolist():
                if d < len(history):
                    out = torch.where(steps == d, history[-1 - d], out)
            return out
        if isinstance(node, Neuron | LeakyIntegrator):
            x = x.reshape(batch, *node.shape)
            i = x if p["keep_i"] is None else st["i"] * p["keep_i"] + x
            v = st["v"] * p["keep_v"] + p["leak"] + p["gain"] * i
            st["i"] = i
            if isinstance(node, LeakyIntegrator):
                st["v"] = v
                return v
            spike = v > p["v_threshold"]
            st["v"] = torch.where(spike, p["v_reset"], v)
            return spike.to(self.dtype)
        raise LasnnError(
            f"node '{name}' has the type {type(node).__name__}, which the float backend cannot run."
        )
