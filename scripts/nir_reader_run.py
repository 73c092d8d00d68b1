"""Run a NIR file through another framework's own NIR reader and save what it computes (stand-alone: it
runs inside that framework's side environment, made by scripts/reader_envs.sh, and imports no lasnn).

    python scripts/nir_reader_run.py READER DT GRAPH.nir INPUTS.npy OUT.npz [GRAPH INPUTS OUT ...]

(several graphs per call: the framework is imported once).
INPUTS ``[T, B, *input_shape]``; OUT holds ``output`` ``[T, B, ...]`` (the graph's Output per step) and,
per spiking node the reader built, its spikes ``[T, B, ...]`` under the node's name, plus ``__versions__``.
Samples run one at a time (batch 1): both readers map NIR's batch-less ``Flatten(start_dim=0)`` to a torch
Flatten that would also flatten the batch, and snnTorch keeps its state inside the modules.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def _load(reader: str, path: str, dt: float):  # noqa: ANN202 - the reader's module
    import nir

    graph = nir.read(path)
    if reader == "snntorch":
        from snntorch.import_nir import import_from_nir

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its weight-scaling notes
            return import_from_nir(graph)
    if reader == "norse":
        import norse.torch

        return norse.torch.from_nir(graph, dt=dt)
    raise SystemExit(f"unknown reader {reader!r}")


def _versions(reader: str) -> dict[str, str]:
    import importlib.metadata as md

    names = {"snntorch": "snntorch", "norse": "norse"}[reader]
    return {k: md.version(k) for k in (names, "nir", "nirtorch", "torch")}


def main(argv: list[str]) -> int:
    reader, dt, jobs = argv[0], float(argv[1]), argv[2:]
    for i in range(0, len(jobs), 3):
        try:
            run_one(reader, dt, *jobs[i : i + 3])
        except Exception as error:  # the reader refused or failed on this graph: say so, go on
            text = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            )
            np.savez(jobs[i + 2], __error__=np.frombuffer(text[:300].encode(), dtype=np.uint8))
    return 0


def run_one(reader: str, dt: float, graph_path: str, inputs_path: str, out_path: str) -> None:
    net = _load(reader, graph_path, dt)
    stream = np.load(inputs_path)
    steps, batch = stream.shape[:2]
    recorded: dict[str, list] = {}
    spiking = {}
    for name, module in net.named_modules():
        kind = type(module).__name__
        if kind in ("Leaky", "Synaptic", "LIFBoxCell", "IAFCell", "CubaLIF"):
            spiking[name] = module
    current: dict[str, torch.Tensor] = {}

    def hook(name: str):  # noqa: ANN202
        def record(_module, _inputs, output) -> None:  # noqa: ANN001
            current[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return record

    for name, module in spiking.items():
        module.register_forward_hook(hook(name))
    outputs = []
    for b in range(batch):
        for module in spiking.values():
            if hasattr(module, "reset_mem"):
                module.reset_mem()
        state = None
        per_step = []
        for t in range(steps):
            x = torch.as_tensor(stream[t, b : b + 1], dtype=torch.float32)
            with torch.no_grad():
                result = net(x, state) if reader == "norse" else net(x)
            out, state = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
            if reader == "snntorch":
                state = None
            per_step.append(out.reshape(-1).numpy().copy())
            for name, value in current.items():
                recorded.setdefault(name, [[] for _ in range(batch)])[b].append(value.reshape(-1).numpy() > 0)
        outputs.append(np.stack(per_step))
    arrays = {"output": np.stack(outputs, axis=1)}
    for name, per_sample in recorded.items():
        arrays[name] = np.stack([np.stack(s) for s in per_sample], axis=1)
    arrays["__versions__"] = np.frombuffer(json.dumps(_versions(reader)).encode(), dtype=np.uint8)
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
