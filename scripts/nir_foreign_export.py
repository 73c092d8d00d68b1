"""Build small networks in another framework, write them with that framework's OWN NIR exporter, and
record what the framework itself computes on fixed inputs (stand-alone: it runs inside the framework's
side environment, made by scripts/reader_envs.sh, and imports no lasnn).

    python scripts/nir_foreign_export.py FRAMEWORK OUTDIR        (FRAMEWORK: snntorch, norse, sinabs)

Per case OUTDIR holds ``CASE.nir`` (the exporter's graph, written by ``nir.write``) and ``CASE.npz``:
``inputs`` ``[T, B, *input_shape]`` (binary spike trains, seeded), ``output`` ``[T, B, ...]`` (the
network's output per step), one ``[T, B, ...]`` spike array per spiking module under its module name
(nirtorch names the NIR nodes after the modules), and ``__versions__``. ``OUTDIR/manifest.json`` lists
the cases: what was built, the node types, the notes on what had to be done for the exporter to give a
file at all, or the exporter's error. The networks are built the way each framework's documentation
builds them, with parameters stored per neuron (every exporter here fails on scalar ones), thresholds
varying per neuron, decays per layer (Loihi has one per population; ``*_per_neuron`` cases vary them),
and with the reset and spike functions NIR can express where the framework offers a choice (cases named
``*_default`` keep the framework's defaults, to show what the file then says).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
T, B = 10, 4  # time steps, samples
IN_MLP, IN_CONV = 12, (1, 8, 8)


def _inputs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((T, B, *shape)) < 0.3).astype(np.float32)


def _scaled(layer: torch.nn.Module, gain: float) -> torch.nn.Module:
    """Scale a synapse's weights so the next layer fires on these sparse inputs (torch's default init
    gives currents of ~0.3 for 12 inputs at rate 0.3; the thresholds are ~1)."""
    with torch.no_grad():
        layer.weight.mul_(gain)
        if getattr(layer, "bias", None) is not None:
            layer.bias.mul_(gain * 0.3)
    return layer


def _spread(n: int | tuple[int, ...], low: float, high: float, seed: int) -> torch.Tensor:
    """A per-neuron parameter (seeded values between low and high)."""
    shape = (n,) if isinstance(n, int) else n
    return torch.from_numpy(np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32))


def _layer(n: int | tuple[int, ...], low: float, high: float, seed: int) -> torch.Tensor:
    """A per-layer parameter, one seeded value between low and high, stored per neuron (the exporters need
    arrays; Loihi has one decay per population, so decays are per layer except where a case says not)."""
    shape = (n,) if isinstance(n, int) else n
    return torch.full(shape, float(np.random.default_rng(seed).uniform(low, high)))


# ------------------------------------------------------------------------------------------------- snnTorch
def _snntorch_cases() -> dict[str, Callable]:
    import snntorch as snn

    def leaky(shape, out=False, reset="zero", seed=0, decay=_layer):  # noqa: ANN001, ANN202
        return snn.Leaky(
            beta=decay(shape, 0.6, 0.95, seed),
            threshold=_spread(shape, 0.8, 1.2, seed + 1),
            init_hidden=True,
            output=out,
            reset_mechanism=reset,
        )

    def mlp(reset: str = "zero", decay: Callable = _layer) -> tuple:
        return torch.nn.Sequential(
            _scaled(torch.nn.Linear(IN_MLP, 16), 4.0),
            leaky(16, reset=reset, decay=decay),
            _scaled(torch.nn.Linear(16, 5), 3.0),
            leaky(5, True, reset, seed=2),
        ), (IN_MLP,)

    def conv() -> tuple:
        return torch.nn.Sequential(
            _scaled(torch.nn.Conv2d(1, 4, 3, padding=1), 4.0),
            leaky((4, 8, 8)),
            torch.nn.AvgPool2d(2),
            torch.nn.Flatten(),
            _scaled(torch.nn.Linear(64, 5), 6.0),
            leaky(5, True, seed=2),
        ), IN_CONV

    def synaptic() -> tuple:
        return torch.nn.Sequential(
            _scaled(torch.nn.Linear(IN_MLP, 16, bias=False), 3.0),
            snn.Synaptic(
                alpha=_layer(16, 0.5, 0.8, 3),
                beta=_layer(16, 0.6, 0.9, 4),
                threshold=torch.ones(16),
                init_hidden=True,
                reset_mechanism="zero",
            ),
            _scaled(torch.nn.Linear(16, 5, bias=False), 3.0),
            leaky(5, True, seed=2),
        ), (IN_MLP,)

    def rleaky() -> tuple:
        return torch.nn.Sequential(
            _scaled(torch.nn.Linear(IN_MLP, 16), 4.0),
            snn.RLeaky(
                beta=_layer(16, 0.6, 0.9, 5),
                linear_features=16,
                threshold=torch.ones(16),
                init_hidden=True,
                reset_mechanism="zero",
            ),
            _scaled(torch.nn.Linear(16, 5), 3.0),
            leaky(5, True, seed=2),
        ), (IN_MLP,)

    return {
        "snntorch_mlp": lambda: mlp(),
        "snntorch_conv": conv,
        "snntorch_synaptic": synaptic,
        "snntorch_rleaky": rleaky,
        "snntorch_mlp_default": lambda: mlp("subtract"),
        "snntorch_mlp_beta_per_neuron": lambda: mlp(decay=_spread),
    }


def _snntorch_export(net: torch.nn.Module, in_shape: tuple[int, ...]) -> tuple:
    from snntorch.export_nir import export_to_nir

    with contextlib.redirect_stdout(io.StringIO()):
        graph = export_to_nir(net, torch.zeros(1, *in_shape), ignore_dims=[0])
    return graph, [
        "export_to_nir(net, sample, ignore_dims=[0]) (without ignore_dims its own type check fails)"
    ]


def _snntorch_run(net: torch.nn.Module, stream: np.ndarray) -> tuple[np.ndarray, dict]:
    import snntorch as snn

    spiking = {n: m for n, m in net.named_modules() if isinstance(m, snn.Leaky | snn.Synaptic | snn.RLeaky)}
    return _step_loop(
        net, stream, spiking, lambda m: m.reset_mem(), lambda out: out[0] if isinstance(out, tuple) else out
    )


# ---------------------------------------------------------------------------------------------------- norse
def _norse_cases() -> dict[str, Callable]:
    import norse.torch as nt

    def lifbox(shape, seed=0, th=1.0):  # noqa: ANN001, ANN202
        shape = (shape,) if isinstance(shape, int) else shape
        return nt.LIFBoxCell(
            nt.LIFBoxParameters(
                tau_mem_inv=_layer(shape, 50.0, 200.0, seed),
                v_th=_spread(shape, 0.8 * th, 1.2 * th, seed + 1),
                v_leak=torch.zeros(shape),
                v_reset=torch.zeros(shape),
            )
        )

    def mlp() -> tuple:
        return nt.SequentialState(
            _scaled(torch.nn.Linear(IN_MLP, 16), 40.0),
            lifbox(16),
            _scaled(torch.nn.Linear(16, 5), 30.0),
            nt.LIBoxCell(nt.LIBoxParameters(tau_mem_inv=_layer(5, 50.0, 200.0, 7), v_leak=torch.zeros(5))),
        ), (IN_MLP,)

    def conv() -> tuple:
        shape = (4, 8, 8)
        return nt.SequentialState(
            _scaled(torch.nn.Conv2d(1, 4, 3, padding=1), 4.0),
            nt.IAFCell(nt.IAFParameters(v_th=_spread(shape, 0.8, 1.2, 8), v_reset=torch.zeros(shape))),
            _scaled(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), 20.0),
            lifbox((4, 4, 4), seed=9, th=0.5),
        ), IN_CONV

    def cuba() -> tuple:
        def lif(n: int, seed: int):  # noqa: ANN202
            return nt.LIFCell(
                nt.LIFParameters(
                    tau_syn_inv=_layer(n, 100.0, 300.0, seed),
                    tau_mem_inv=_layer(n, 50.0, 200.0, seed + 1),
                    v_th=torch.ones(n),
                    v_leak=torch.zeros(n),
                    v_reset=torch.zeros(n),
                )
            )

        return nt.SequentialState(  # biases: constant currents into CUBA neurons (Loihi: a source neuron)
            _scaled(torch.nn.Linear(IN_MLP, 16), 40.0),
            lif(16, 10),
            _scaled(torch.nn.Linear(16, 5), 30.0),
            lif(5, 12),
        ), (IN_MLP,)

    return {"norse_mlp": mlp, "norse_conv": conv, "norse_cuba": cuba}


def _norse_export(net: torch.nn.Module, in_shape: tuple[int, ...]) -> tuple:
    import norse.torch as nt

    return nt.to_nir(net, torch.zeros(1, *in_shape)), ["norse.torch.to_nir(net, sample) (dt 1e-3)"]


def _norse_run(net: torch.nn.Module, stream: np.ndarray) -> tuple[np.ndarray, dict]:
    import norse.torch as nt

    spiking = {n: m for n, m in net.named_modules() if isinstance(m, nt.LIFBoxCell | nt.IAFCell | nt.LIFCell)}
    outputs, recorded = [], {n: [] for n in spiking}
    current: dict = {}
    for name, module in spiking.items():
        module.register_forward_hook(_hook(current, name))
    per_sample = []
    for b in range(stream.shape[1]):
        state, steps, spikes = None, [], {n: [] for n in spiking}
        for t in range(stream.shape[0]):
            with torch.no_grad():
                out, state = net(torch.from_numpy(stream[t, b : b + 1]), state)
            steps.append(out[0].numpy().copy())
            for n in spiking:
                spikes[n].append(current[n][0].numpy().copy())
        per_sample.append(np.stack(steps))
        for n in spiking:
            recorded[n].append(np.stack(spikes[n]))
    outputs = np.stack(per_sample, axis=1)
    return outputs, {n: np.stack(v, axis=1) for n, v in recorded.items()}


# --------------------------------------------------------------------------------------------------- sinabs
def _sinabs_cases() -> dict[str, Callable]:
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike

    single = dict(spike_fn=SingleSpike, reset_fn=MembraneReset())

    def iaf(shape, seed, **kw):  # noqa: ANN001, ANN202
        return sl.IAFSqueeze(batch_size=1, spike_threshold=_spread(shape, 0.8, 1.2, seed), **kw)

    def mlp() -> tuple:
        return torch.nn.Sequential(
            _scaled(torch.nn.Linear(IN_MLP, 16), 16.0),
            sl.LIFSqueeze(
                batch_size=1,
                tau_mem=_layer(16, 4.0, 20.0, 13),
                spike_threshold=_spread(16, 0.8, 1.2, 14),
                norm_input=True,
                **single,
            ),
            _scaled(torch.nn.Linear(16, 5), 6.0),
            iaf((5,), 15, **single),
        ), (IN_MLP,)

    def conv(**kw) -> tuple:  # noqa: ANN003
        kw = kw or single
        return torch.nn.Sequential(
            _scaled(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), 4.0),
            iaf((4, 8, 8), 16, **kw),
            sl.SumPool2d(2),
            torch.nn.Flatten(),
            _scaled(torch.nn.Linear(64, 5), 2.0),
            iaf((5,), 17, **kw),
        ), IN_CONV

    def readout() -> tuple:
        return torch.nn.Sequential(
            _scaled(torch.nn.Linear(IN_MLP, 16), 4.0),
            iaf((16,), 18, **single),
            _scaled(torch.nn.Linear(16, 5), 3.0),
            sl.ExpLeakSqueeze(batch_size=1, tau_mem=_layer(5, 4.0, 20.0, 19), norm_input=True),
        ), (IN_MLP,)

    return {
        "sinabs_mlp": mlp,
        "sinabs_conv": conv,
        "sinabs_li": readout,
        "sinabs_conv_default": lambda: _sinabs_default(conv),
    }


def _sinabs_default(conv: Callable) -> tuple:
    from sinabs.activation import MembraneSubtract, MultiSpike

    return conv(spike_fn=MultiSpike, reset_fn=MembraneSubtract())


def _sinabs_export(net: torch.nn.Module, in_shape: tuple[int, ...]) -> tuple:
    import sinabs

    net(torch.zeros(1, *in_shape))  # sinabs's exporter reads each layer's state shape
    graph = sinabs.to_nir(net, torch.zeros(1, *in_shape))
    notes = ["sinabs.to_nir(net, sample)"]
    if any(
        getattr(n, "input_shape", 0) is None or getattr(n, "input_type", 0) is None
        for n in graph.nodes.values()
    ):
        with contextlib.redirect_stdout(io.StringIO()):
            graph.infer_types()  # nir 1.0.4's write fails on the None shapes to_nir leaves
        notes.append(
            "graph.infer_types() before nir.write (to_nir leaves shapes None, which nir 1.0.4 cannot write)"
        )
    return graph, notes


def _sinabs_run(net: torch.nn.Module, stream: np.ndarray) -> tuple[np.ndarray, dict]:
    import sinabs
    import sinabs.layers as sl

    spiking = {
        n: m
        for n, m in net.named_modules()
        if isinstance(m, sl.IAF | sl.LIF) and not isinstance(m, sl.ExpLeak)
    }
    current: dict = {}
    for name, module in spiking.items():
        module.register_forward_hook(_hook(current, name))
    outputs, recorded = [], {n: [] for n in spiking}
    for b in range(stream.shape[1]):
        sinabs.reset_states(net)
        with torch.no_grad():  # Squeeze layers with batch_size 1: the T steps of one sample as the batch axis
            outputs.append(net(torch.from_numpy(stream[:, b])).numpy().copy())
        for n in spiking:
            recorded[n].append(current[n].numpy().copy())
    return np.stack(outputs, axis=1), {n: np.stack(v, axis=1) for n, v in recorded.items()}


# --------------------------------------------------------------------------------------------------- common
def _hook(store: dict, name: str) -> Callable:
    def record(_module, _inputs, output) -> None:  # noqa: ANN001
        store[name] = (output[0] if isinstance(output, tuple) else output).detach()

    return record


def _step_loop(net, stream, spiking, reset, output_of) -> tuple[np.ndarray, dict]:  # noqa: ANN001
    """Run a stateful-module network (state inside the modules) one step and one sample at a time."""
    current: dict = {}
    for name, module in spiking.items():
        module.register_forward_hook(_hook(current, name))
    outputs, recorded = [], {n: [] for n in spiking}
    for b in range(stream.shape[1]):
        for module in spiking.values():
            reset(module)
        steps, spikes = [], {n: [] for n in spiking}
        for t in range(stream.shape[0]):
            with torch.no_grad():
                out = output_of(net(torch.from_numpy(stream[t, b : b + 1])))
            steps.append(out[0].numpy().copy())
            for n in spiking:
                spikes[n].append(current[n][0].numpy().copy())
        outputs.append(np.stack(steps))
        for n in spiking:
            recorded[n].append(np.stack(spikes[n]))
    return np.stack(outputs, axis=1), {n: np.stack(v, axis=1) for n, v in recorded.items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:240]}"


def node_types(graph) -> list[str]:  # noqa: ANN001 - a nir.NIRGraph
    """Node types of a NIR graph, nested subgraphs (e.g. snnTorch's RLeaky) included."""
    import nir

    kinds: set[str] = set()
    for node in graph.nodes.values():
        if isinstance(node, nir.NIRGraph):
            kinds |= {"NIRGraph", *node_types(node)}
        elif node is not None:
            kinds.add(type(node).__name__)
    return sorted(kinds - {"Input", "Output"})


def build_case(framework: str, index: int) -> tuple:
    """(network, input shape, the exporter's nir.NIRGraph, notes) of case ``index`` (seeded: a rebuild in
    another process gives the same weights)."""
    cases, export, _, _ = FRAMEWORKS[framework]
    build = list(cases().values())[index]
    torch.manual_seed(index)
    net, in_shape = build()
    net.eval()
    graph, notes = export(net, in_shape)
    return net, in_shape, graph, notes


FRAMEWORKS = {
    "snntorch": (_snntorch_cases, _snntorch_export, _snntorch_run, ("snntorch",)),
    "norse": (_norse_cases, _norse_export, _norse_run, ("norse",)),
    "sinabs": (_sinabs_cases, _sinabs_export, _sinabs_run, ("sinabs",)),
}


def main(argv: list[str]) -> int:
    import importlib.metadata as md

    import nir

    framework, out = argv[0], Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cases, _, run, packages = FRAMEWORKS[framework]
    versions = {k: md.version(k) for k in (*packages, "nir", "nirtorch", "torch")}
    manifest = []
    for i, name in enumerate(cases()):
        entry: dict = {"case": name, "framework": framework, "versions": versions}
        try:
            net, in_shape, graph, notes = build_case(framework, i)
            entry["notes"] = notes
            entry["node_types"] = node_types(graph)
            stream = _inputs(in_shape, seed=100 + i)
            outputs, spikes = run(net, stream)
            arrays = {"inputs": stream, "output": outputs, **{f"spikes:{k}": v for k, v in spikes.items()}}
            np.savez(out / f"{name}.npz", **arrays)
            entry["spikes"] = {k: int(v.sum()) for k, v in spikes.items()}
        except Exception as error:  # the exporter fails on this network: record it, go on
            entry["error"] = f"export fails: {_first_line(error)}"
            entry["traceback"] = traceback.format_exc()[-2000:]
            manifest.append(entry)
            continue
        try:
            nir.write(str(out / f"{name}.nir"), graph)
        except Exception as error:  # the exporter's graph cannot be stored as it is
            entry["write_error"] = f"nir.write fails: {_first_line(error)}"
        manifest.append(entry)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
