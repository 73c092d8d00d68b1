"""What Loihi represents exactly is mapped, not refused (issue 15), and what it cannot represent is refused
in one sentence.

Mapped features, all in one recurrent CUBA graph so that one Lava run checks them together: a bias into a
current-based (CUBA) neuron (Loihi's own bias enters v, not the current u), a bias on a recurrent edge (the
float graph has it from step 1 on), a ``Delay`` of a bias (from step 2 on), a ``Delay`` with per-element
steps, a reset potential other than the rest potential, and a CUBA leaky-integrator readout with a bias.
Each is compiled, run on Lava's ``Loihi2SimCfg`` (fixed_pt) and on the emulator (spike for spike equal in
every layer), and compared with the float reference. A CUBA student (the digits VGG student with synaptic
currents and biases, analog input) is the second network. The always-on source's synaptic operations are
checked in the activity, energy, NeuroBench and resource counts.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import lasnn.sims  # noqa: F401 - installs the Lava import hook before any lava import
from lasnn.errors import LasnnError
from lasnn.export.graph import Affine, Delay, Graph, Input, LeakyIntegrator, Neuron, Output
from lasnn.hardware import loihi_limits as lim
from lasnn.hardware.activity import layer_activity
from lasnn.hardware.compiled_model import compile_graph, load_compiled
from lasnn.hardware.energy import latency, load_model, snn_energy
from lasnn.hardware.quantise import quantise
from lasnn.hardware.resources import estimate_resources
from lasnn.hardware.workload import neurobench_metrics
from lasnn.sims.emulator import EmulatorBackend
from lasnn.sims.float_backend import FloatBackend

T = 6


def _full(n: int, value: float) -> np.ndarray:
    return np.full((n,), float(value))


def _neuron(n: int, alpha_v: float, gain: float, vth: float, alpha_i=None, reset=0.0, leak=0.0) -> Neuron:  # noqa: ANN001
    return Neuron(
        shape=(n,),
        alpha_v=_full(n, alpha_v),
        gain=_full(n, gain),
        v_threshold=_full(n, vth),
        v_reset=_full(n, reset),
        v_leak=_full(n, leak),
        alpha_i=None if alpha_i is None else _full(n, alpha_i),
    )


BIASED = ("fc1", "rec", "fc3", "fc5")  # the Affine nodes with a bias


def features_graph(rng: np.random.Generator) -> Graph:
    """Spike input (10) -> fc1 (bias) -> CUBA LIF h1 (16), recurrent through rec (bias); h1 -> fc3 (bias) ->
    Delay 2 -> CUBA LIF h2 (12); h1 -> per-element Delay (0 or 1) -> fc4 -> LIF h3 (8) resting at 0.1 and
    resetting to -0.2; h2 -> fc5 (bias) and h3 -> fc6 -> CUBA leaky integrator li (4), the readout."""
    nodes = {
        "input": Input((10,)),
        "fc1": Affine(rng.normal(0.25, 0.5, (16, 10)), rng.normal(0.1, 0.3, 16)),
        "h1": _neuron(16, 0.25, 0.5, 0.8, alpha_i=0.5),
        "rec": Affine(rng.normal(0.0, 0.3, (16, 16)), rng.normal(-0.1, 0.2, 16)),
        "fc3": Affine(rng.normal(0.1, 0.4, (12, 16)), rng.normal(0.2, 0.2, 12)),
        "late": Delay(np.full(12, 2)),
        "h2": _neuron(12, 0.25, 0.5, 0.8, alpha_i=0.5),
        "spread": Delay(np.arange(16) % 2),
        "fc4": Affine(rng.normal(0.15, 0.5, (8, 16)), None),
        "h3": _neuron(8, 0.25, 1.0, 0.8, reset=-0.2, leak=0.1),
        "fc5": Affine(rng.normal(0.0, 0.5, (4, 12)), rng.normal(0.0, 0.3, 4)),
        "fc6": Affine(rng.normal(0.0, 0.5, (4, 8)), None),
        "li": LeakyIntegrator((4,), _full(4, 0.2), _full(4, 0.5), _full(4, 0.0), _full(4, 0.5)),
        "output": Output((4,)),
    }
    edges = [
        ("input", "fc1"),
        ("fc1", "h1"),
        ("h1", "rec"),
        ("rec", "h1"),
        ("h1", "fc3"),
        ("fc3", "late"),
        ("late", "h2"),
        ("h1", "spread"),
        ("spread", "fc4"),
        ("fc4", "h3"),
        ("h2", "fc5"),
        ("fc5", "li"),
        ("h3", "fc6"),
        ("fc6", "li"),
        ("li", "output"),
    ]
    return Graph(nodes, edges, {"timesteps": T, "encoding": "poisson", "dt": 1e-3})


def _spikes(rng: np.random.Generator, samples: int) -> np.ndarray:
    return (rng.random((T, samples, 10)) < 0.3).astype(np.float64)


@pytest.fixture(scope="module")
def features() -> dict:
    """The graph, its compiled model (calibrated on other samples, saved and read back) and 300 samples."""
    rng = np.random.default_rng(0)
    graph = features_graph(rng)
    calibration = np.moveaxis(_spikes(rng, 64), 1, 0)  # (N, T, 10)
    model = compile_graph(graph, calibration=calibration, input_mode="spikes")
    return {"graph": graph, "model": model, "stream": _spikes(rng, 300)}


def test_features_are_mapped_as_the_contract_says(features: dict, tmp_path: Path) -> None:
    """Where each feature went: constant currents from the always-on source with the delay that makes them
    start at the float graph's step, one synapse per distinct delay, a reset synapse; and they survive a
    save and load of the compiled model."""
    path = tmp_path / "features.lcm"
    features["model"].save(path)
    lg = load_compiled(path).loihi
    depth = {name: layer.depth for name, layer in lg.layers.items()}
    assert depth == {"bias_source": 0, "h1": 1, "h3": 2, "h2": 2, "li": 3}
    source = lg.layers["bias_source"]
    assert source.kind == "source" and source.size == 1 and source.bias()[0] > source.vth << 6
    by_name = {s.name: s for s in lg.synapses}
    # (destination, first float step of the constant) -> synaptic delay = start - 1 + depth(destination)
    bias = {(s.dst, int(s.name.partition("@")[2] or 0)): s for s in lg.synapses if s.role == "bias"}
    assert {k: s.delay for k, s in bias.items()} == {("h1", 0): 0, ("h1", 1): 1, ("h2", 2): 3, ("li", 0): 2}
    assert all(s.src == "bias_source" and s.weight.shape == (lg.layers[s.dst].size, 1) for s in bias.values())
    # the constant currents are the graph's biases within one weight step: a_in / (gain * scale)
    expected = {
        ("h1", 0): features["graph"].nodes["fc1"].bias,
        ("h1", 1): features["graph"].nodes["rec"].bias,
        ("h2", 2): features["graph"].nodes["fc3"].bias,
        ("li", 0): features["graph"].nodes["fc5"].bias,
    }
    for key, syn in bias.items():
        layer = lg.layers[key[0]]
        current = syn.weight[:, 0] * 2.0**syn.weight_exp / (0.5 * layer.scale)
        assert np.abs(current - expected[key]).max() <= 2.0**syn.weight_exp / (0.5 * layer.scale.min()), key
    assert {s.delay for n, s in by_name.items() if n.startswith("spread+fc4@")} == {0, 1}
    reset = by_name["h3->h3@reset"]
    assert reset.role == "reset" and reset.recurrent and reset.delay == 0
    scale = lg.layers["h3"].scale
    offset = np.diag(reset.weight) * 2.0**reset.weight_exp / scale  # (v_reset - v_leak) * (1 - alpha_v)
    assert np.abs(offset - (-0.3 * 0.75)).max() <= 2.0**reset.weight_exp / scale.min()
    assert features["model"].report["bias_source"]["synaptic_ops_per_step"] == 16 + 16 + 12 + 4


@pytest.mark.slow
@pytest.mark.lava
def test_features_lava_equals_emulator_spike_for_spike(features: dict) -> None:
    from lasnn.sims.lava_backend import LavaBackend

    lg, stream = features["model"].loihi, features["stream"][:, :30]
    emulated = EmulatorBackend(progress=False).run_loihi(lg, stream)
    simulated = LavaBackend().run_loihi(lg, stream)
    assert set(simulated.spikes) == set(emulated.spikes) == {"h1", "h2", "h3"}  # the source is no result
    for name, spikes in emulated.spikes.items():
        assert 0 < spikes.mean() < 1, f"{name} is silent or saturated; the comparison would be weak"
        mismatched = int((simulated.spikes[name] != spikes).sum())
        assert mismatched == 0, f"{name}: {mismatched} of {spikes.size} spike values differ"
    np.testing.assert_array_equal(simulated.outputs, emulated.outputs)


def _without_mapped_features(graph: Graph) -> Graph:
    """The graph minus what used to be refused or lost: no biases, reset at rest."""
    plain = copy.deepcopy(graph)
    for name in BIASED:
        plain.nodes[name].bias = None
    plain.nodes["h3"].v_reset = plain.nodes["h3"].v_leak.copy()
    return plain


def test_features_track_the_float_reference(features: dict) -> None:
    """Integer spikes differ from the float graph's in under 3 % of values per layer (quantisation), while
    the same graph without its biases and reset offset differs in over 15 %: the mapped constants and
    reset are what the float graph computes. The readout's outputs agree within the quantisation."""
    graph, stream = features["graph"], features["stream"]
    fixed = EmulatorBackend(progress=False).run_loihi(features["model"].loihi, stream)
    ref = FloatBackend(progress=False).run(graph, stream)
    plain = FloatBackend(progress=False).run(_without_mapped_features(graph), stream)
    for name in ("h1", "h2", "h3"):
        assert 0.05 < ref.spikes[name].mean() < 0.95
        assert (fixed.spikes[name] != ref.spikes[name]).mean() < 0.03, name
        assert (plain.spikes[name] != ref.spikes[name]).mean() > 0.15, name
    agree = (fixed.outputs.mean(0).argmax(-1) == ref.outputs.mean(0).argmax(-1)).mean()
    assert agree > 0.9
    assert np.abs(fixed.outputs.mean(0) - ref.outputs.mean(0)).mean() < 0.1 * np.abs(ref.outputs).mean()


def test_source_synapses_are_charged(features: dict) -> None:
    """The always-on source spikes at each of the T steps and every spike costs one operation per nonzero
    weight; the reset synapse costs one per spike of h3 (the last step's never arrive). Both are added to
    their stages, the source is a stage of its own (T spikes, T updates), and energy, NeuroBench's counts,
    latency and resources include them."""
    lg, stream = features["model"].loihi, features["stream"][:, :50]
    result = EmulatorBackend(progress=False).run_loihi(lg, stream)
    graph = features["graph"]
    plain = {row["name"]: row for row in layer_activity(graph, result.spikes, stream)}
    rows = layer_activity(graph, result.spikes, stream, lg)
    chip = {row["name"]: row for row in rows}
    assert rows[-1]["name"] == "bias_source" and rows[-1]["kind"] == "source"
    assert rows[-1]["spikes"] == T and rows[-1]["neuron_updates"] == T and rows[-1]["synaptic_ops"] == 0
    h3_resets = result.spikes["h3"][: T - 1].sum() / stream.shape[1]  # one op per spike, 8 one-to-one weights
    expected = {"h1": (16 + 16) * T, "h2": 12 * T, "h3": h3_resets, "li": 4 * T}
    for name, extra in expected.items():
        assert chip[name]["synaptic_ops"] - plain[name]["synaptic_ops"] == pytest.approx(extra, rel=1e-12)
        assert chip[name]["chip_ops"] == pytest.approx(extra, rel=1e-12)
        assert "bias_source" in chip[name]["sources"] or name == "h3"
    model = load_model("loihi")
    e_chip, e_plain = snn_energy(rows, model, T), snn_energy(list(plain.values()), model, T)
    e = model["per_event"]["snn"]
    synops = sum(expected.values())
    source = T * (e["neuron_active"] + e["spike"])  # one neuron firing at every step
    assert e_chip["total"]["energy"] - e_plain["total"]["energy"] == pytest.approx(
        synops * e["synop"] + source, rel=1e-9
    )
    nb_chip, nb_plain = neurobench_metrics(rows, T), neurobench_metrics(list(plain.values()), T)
    acs = nb_chip["SynapticOperations"]["Effective_ACs"] - nb_plain["SynapticOperations"]["Effective_ACs"]
    assert acs == pytest.approx(synops, rel=1e-12)
    assert nb_chip["ActivationSparsity"] == nb_plain["ActivationSparsity"]  # the source is not an activation
    lat_chip, lat_plain = latency(rows, T, model), latency(list(plain.values()), T, model)
    assert lat_chip["steps"] == lat_plain["steps"] == T + 4  # the source is no pipeline stage
    assert lat_chip["cores"] == lat_plain["cores"]  # nor a core of its own
    res = estimate_resources(lg)
    src = next(r for r in res["layers"] if r["name"] == "bias_source")
    assert src["neurons"] == 1 and src["cores"] == 0  # a free slot in a core of h1, h2 or li
    assert res["neurons"] == 1 + 16 + 12 + 8 + 4
    fed = next(r for r in res["layers"] if r["name"] == "h1")
    graph_synapses = sum(np.count_nonzero(s.weight) for s in lg.synapses_into("h1") if s.role == "graph")
    assert fed["synapses"] == graph_synapses + 2 * 16  # fc1 and rec, and the two bias synapses


def test_simulate_charges_the_source_on_integer_backends_only(tmp_path: Path) -> None:
    """``lasnn simulate`` of a .nir on the emulator compiles it and its run record holds the source's
    stage; the float reference has no chip and no source."""
    from lasnn.export.nir_io import write_nir
    from lasnn.sims.run_simulation import simulate

    rng = np.random.default_rng(0)
    graph = features_graph(rng)
    write_nir(graph, tmp_path / "g.nir")
    np.save(tmp_path / "cal.npy", np.moveaxis(_spikes(rng, 16), 1, 0))
    np.save(tmp_path / "x.npy", np.moveaxis(_spikes(rng, 8), 1, 0))
    kw = dict(inputs=tmp_path / "x.npy", progress=False)
    emu = simulate(tmp_path / "g.nir", "emulator", calibration=tmp_path / "cal.npy", **kw)
    ref = simulate(tmp_path / "g.nir", "float", **kw)
    assert [r["name"] for r in emu["layers"]] == [r["name"] for r in ref["layers"]] + ["bias_source"]
    assert emu["layers"][-1]["spikes"] == T
    h1 = next(r for r in emu["layers"] if r["name"] == "h1")
    assert h1["chip_ops"] == pytest.approx(32 * T)


# ----------------------------------------------------------------------------------------------------
# a CUBA student


def _cuba_student() -> tuple[Graph, np.ndarray, np.ndarray, np.ndarray]:
    """The digits VGG student (random conv weights, direct input, T = 4) with synaptic currents
    (alpha_i = 0.5) and biases in both conv layers; its linear head fitted by least squares on the float
    reference's features of 400 training images, so that accuracy means something. Returns the graph,
    300 test streams and labels, and 64 calibration samples (training images)."""
    from lasnn.data import first_samples, load_dataset
    from lasnn.distill.students import vgg_student
    from lasnn.encoding import encode
    from lasnn.export.lowering import lower_student

    steps = 4
    torch.manual_seed(0)
    student = vgg_student((1, 8, 8), 10, widths=((4,), (8,)), timesteps=steps, encoding="direct")
    with torch.no_grad():  # random weights scaled up so that every layer is active (not trained)
        for module in student.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.weight.mul_(10.0)
    student.eval()
    graph = lower_student(student, {"timesteps": steps, "encoding": "direct", "dt": 1e-3})
    rng = np.random.default_rng(1)
    for name, node in graph.nodes.items():
        if isinstance(node, Neuron):
            node.alpha_i = np.full(node.shape, 0.5)
        elif name in ("features.0", "features.3"):
            node.bias = rng.normal(0.0, 0.4, node.weight.shape[0])
    train, _ = load_dataset("digits", "train", None, augment=False)
    test, _ = load_dataset("digits", "test", None, augment=False)
    x_fit, y_fit = first_samples(train, 464)
    x_test, y_test = first_samples(test, 300)
    fit = encode(x_fit[:400], steps, "direct").numpy()
    spikes = FloatBackend(progress=False).run(graph, fit).spikes["features.4"]  # [T, B, 8, 4, 4]
    pooled = torch.nn.functional.avg_pool2d(torch.as_tensor(spikes.mean(0)), 2, divisor_override=1) * 0.25
    features = np.concatenate([pooled.reshape(400, -1).numpy(), np.ones((400, 1))], axis=1)
    target = np.eye(10)[y_fit[:400].numpy()]
    solution = np.linalg.lstsq(features, target, rcond=None)[0]
    graph.nodes["head"].weight, graph.nodes["head"].bias = solution[:-1].T.copy(), solution[-1].copy()
    calibration = np.moveaxis(encode(x_fit[400:], steps, "direct").numpy(), 1, 0)
    return graph, encode(x_test, steps, "direct").numpy(), y_test.numpy(), calibration


@pytest.fixture(scope="module")
def cuba_student() -> dict:
    graph, stream, labels, calibration = _cuba_student()
    model = compile_graph(graph, calibration=calibration)
    return {"graph": graph, "model": model, "stream": stream, "labels": labels}


def test_cuba_student_biases_reach_the_current(cuba_student: dict) -> None:
    """The first layer (analog input, computed on the host) gets its bias from the host stage; the second
    from the always-on source; the emulator's accuracy is the float reference's within 2 points."""
    lg = cuba_student["model"].loihi
    (host,) = lg.input.host
    assert host.dst == "features.1" and np.abs(host.bias).max() > 0
    (bias,) = [s for s in lg.synapses if s.role == "bias"]
    assert bias.dst == "features.4" and bias.delay == 0 and lg.layers["features.4"].depth == 1
    stream, labels = cuba_student["stream"], cuba_student["labels"]
    fixed = EmulatorBackend(progress=False).run_loihi(lg, stream)
    ref = FloatBackend(progress=False).run(cuba_student["graph"], stream)
    for name in ("features.1", "features.4"):
        assert 0.05 < ref.spikes[name].mean() < 0.95
        assert (fixed.spikes[name] != ref.spikes[name]).mean() < 0.02, name
    acc_fixed = (fixed.outputs.mean(0).argmax(-1) == labels).mean()
    acc_ref = (ref.outputs.mean(0).argmax(-1) == labels).mean()
    assert acc_ref > 0.5 and abs(acc_fixed - acc_ref) <= 0.02


@pytest.mark.lava
def test_cuba_student_lava_equals_emulator_spike_for_spike(cuba_student: dict) -> None:
    from lasnn.sims.lava_backend import LavaBackend

    lg, stream = cuba_student["model"].loihi, cuba_student["stream"][:, :20]
    emulated = EmulatorBackend(progress=False).run_loihi(lg, stream)
    simulated = LavaBackend().run_loihi(lg, stream)
    assert set(simulated.spikes) == set(emulated.spikes) == {"features.1", "features.4"}
    for name, spikes in emulated.spikes.items():
        assert 0 < spikes.mean() < 1
        np.testing.assert_array_equal(simulated.spikes[name], spikes, err_msg=name)
    np.testing.assert_array_equal(simulated.outputs, emulated.outputs)


# ----------------------------------------------------------------------------------------------------
# a graph without neurons, and the refusals that remain


@pytest.mark.parametrize("encoding", ["poisson", "direct"])
def test_output_fed_straight_from_the_input_is_a_readout(encoding: str) -> None:
    """An Affine from the Input to the Output (no neuron layer) is a readout population fed by the input
    synapses (spikes) or the host stage (analog input); spike input: the integer outputs are the float
    ones within the report's weight error (every spike meets at most one rounded weight per input)."""
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(0, 1, (3, 6)), rng.normal(0, 1, 3)
    graph = Graph(
        {"input": Input((6,)), "fc": Affine(weight, bias), "output": Output((3,))},
        [("input", "fc"), ("fc", "output")],
        {"timesteps": 5, "encoding": encoding},
    )
    if encoding == "poisson":
        stream = (rng.random((5, 40, 6)) < 0.4).astype(np.float64)
    else:
        stream = np.repeat(rng.normal(0, 1, (1, 40, 6)), 5, axis=0)
    lg, report = quantise(graph, stream)
    fixed = EmulatorBackend(progress=False).run_loihi(lg, stream)
    ref = FloatBackend(progress=False).run(graph, stream)
    error = np.abs(fixed.outputs - ref.outputs).max()
    (syn,) = report["layers"][0]["synapses"]
    if encoding == "poisson":
        assert lg.layers["output"].depth == 1 and syn["kind"] == "dense"
        assert 0 < error <= syn["weight_error_rel_max"] * np.abs(weight).max() * 6
    else:
        assert lg.layers["output"].depth == 0 and syn["kind"] == "host"
        assert error <= 1e-3 * np.abs(ref.outputs).max()


def _graph(nodes: dict, edges: list | None = None, **meta) -> Graph:  # noqa: ANN003
    names = list(nodes)
    edges = edges if edges is not None else list(zip(names, names[1:], strict=False))
    return Graph(nodes, edges, {"timesteps": 3, "encoding": "poisson", **meta})


def _refused_graphs() -> dict[str, tuple[Graph, str]]:
    w = np.full((4, 4), 0.3)
    li = LeakyIntegrator((4,), _full(4, 0.5), _full(4, 1.0), _full(4, 0.0))
    uneven = _neuron(4, 0.5, 1.0, 1.0)
    uneven.alpha_v = np.array([0.5, 0.5, 0.25, 0.5])
    return {
        "cuba reset": (
            _graph(
                {
                    "input": Input((4,)),
                    "fc": Affine(w),
                    "n": _neuron(4, 0.5, 1, 1, 0.5, 0.2),
                    "o": Output((4,)),
                }
            ),
            "layer 'n' is current-based",
        ),
        "threshold": (
            _graph(
                {
                    "input": Input((4,)),
                    "fc": Affine(w),
                    "n": _neuron(4, 0.5, 1, 0.1, leak=0.2),
                    "o": Output((4,)),
                }
            ),
            "layer 'n' has a threshold at or below its rest",
        ),
        "decay": (
            _graph({"input": Input((4,)), "fc": Affine(w), "n": uneven, "o": Output((4,))}),
            "layer 'n' has per-neuron 'alpha_v'",
        ),
        "stateless cycle": (
            _graph(
                {
                    "input": Input((4,)),
                    "a": Affine(w),
                    "b": Affine(w),
                    "n": _neuron(4, 0.5, 1, 1),
                    "o": Output((4,)),
                },
                [("input", "a"), ("a", "b"), ("b", "a"), ("b", "n"), ("n", "o")],
            ),
            "is on a cycle of stateless nodes",
        ),
        "loop over two layers": (
            _graph(
                {
                    "input": Input((4,)),
                    "a": Affine(w),
                    "n1": _neuron(4, 0.5, 1, 1),
                    "b": Affine(w),
                    "n2": _neuron(4, 0.5, 1, 1),
                    "back": Affine(w),
                    "o": Output((4,)),
                },
                [
                    ("input", "a"),
                    ("a", "n1"),
                    ("n1", "b"),
                    ("b", "n2"),
                    ("n2", "back"),
                    ("back", "n1"),
                    ("n2", "o"),
                ],
            ),
            "closes a loop over 2 populations in one step",
        ),
        "long delay": (
            _graph(
                {
                    "input": Input((4,)),
                    "fc": Affine(w),
                    "d": Delay(np.full(4, 70)),
                    "n": _neuron(4, 0.5, 1, 1),
                    "o": Output((4,)),
                }
            ),
            "needs a delay of 70 steps",
        ),
        "hidden LI": (
            _graph(
                {
                    "input": Input((4,)),
                    "fc": Affine(w),
                    "li": li,
                    "fc2": Affine(w),
                    "n": _neuron(4, 0.5, 1, 1),
                    "o": Output((4,)),
                }
            ),
            "the non-spiking layer 'li' feeds 'n'",
        ),
        "LI beside others": (
            _graph(
                {
                    "input": Input((4,)),
                    "fc": Affine(w),
                    "n": _neuron(4, 0.5, 1, 1),
                    "fc2": Affine(w),
                    "li": li,
                    "o": Output((4,)),
                },
                [("input", "fc"), ("fc", "n"), ("n", "fc2"), ("fc2", "li"), ("li", "o"), ("n", "o")],
            ),
            "adds the potential of the non-spiking layer 'li'",
        ),
    }


@pytest.mark.parametrize("case", list(_refused_graphs()))
def test_remaining_refusals_say_why_in_one_sentence(case: str) -> None:
    graph, message = _refused_graphs()[case]
    with pytest.raises(LasnnError, match=message) as caught:
        quantise(graph)
    text = str(caught.value)
    assert text.endswith(".") and ". " not in text and "cannot be" in text, text


def test_fan_in_refusal_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lim, "MAX_FAN_IN", 3)
    graph = _graph(
        {"input": Input((4,)), "fc": Affine(np.ones((4, 4))), "n": _neuron(4, 0.5, 1, 1), "o": Output((4,))}
    )
    with pytest.raises(LasnnError, match="layer 'n' has a fan-in of 4.*cannot be represented"):
        quantise(graph)


def test_constants_deeper_than_63_stages_get_a_deeper_source() -> None:
    """A chain of 70 CUBA layers with biases: a synapse delays at most 63 steps, so the layers beyond depth
    64 take their constants from a second always-on source at depth 64; they match the float reference
    (delivering those constants one step late, as a source at depth 0 would have to, breaks them)."""
    rng = np.random.default_rng(0)
    width, steps = 4, 4
    nodes, edges, previous = {"input": Input((width,))}, [], "input"
    for k in range(70):
        nodes[f"fc{k}"] = Affine(
            np.eye(width) * 0.6 + rng.normal(0, 0.1, (width, width)), rng.normal(0.1, 0.2, width)
        )
        nodes[f"n{k}"] = _neuron(width, 0.5, 1.0, 0.5, alpha_i=0.5)
        edges += [(previous, f"fc{k}"), (f"fc{k}", f"n{k}")]
        previous = f"n{k}"
    nodes["head"], nodes["output"] = Affine(np.ones((2, width))), Output((2,))
    edges += [(previous, "head"), ("head", "output")]
    graph = Graph(nodes, edges, {"timesteps": steps, "encoding": "poisson"})
    stream = (rng.random((steps, 200, width)) < 0.5).astype(np.float64)
    lg, _ = quantise(graph, stream[:, :50])
    assert {n: layer.depth for n, layer in lg.layers.items() if layer.kind == "source"} == {
        "bias_source": 0,
        "bias_source@64": 64,
    }
    assert max(s.delay for s in lg.synapses) == lim.MAX_DELAY
    fixed = EmulatorBackend(progress=False).run_loihi(lg, stream)
    ref = FloatBackend(progress=False).run(graph, stream)
    deep = [f"n{k}" for k in range(64, 70)]
    assert all(0.05 < ref.spikes[n].mean() < 0.95 for n in deep)
    assert np.mean([(fixed.spikes[n] != ref.spikes[n]).mean() for n in ref.spikes]) < 0.01
    assert all((fixed.spikes[n] != ref.spikes[n]).mean() < 0.05 for n in deep)
    for syn in lg.synapses:  # one step late
        syn.delay += syn.src == "bias_source@64"
    late = EmulatorBackend(progress=False).run_loihi(lg, stream)
    assert max((late.spikes[n] != ref.spikes[n]).mean() for n in deep) > 0.1


def test_constant_into_a_layer_fed_only_through_its_own_loop() -> None:
    """A CUBA layer that the input does not reach, driven by the bias of its own recurrent Affine (the
    schedule makes the edge into that Affine the recurrent one, so the bias is there from step 0): it gets
    a pipeline stage of its own (depth 1), so the source synapse delivers the bias at step 0."""
    rng = np.random.default_rng(2)
    nodes = {
        "input": Input((4,)),
        "fc": Affine(rng.normal(0.4, 0.3, (4, 4))),
        "n1": _neuron(4, 0.5, 1.0, 0.5),
        "fc2": Affine(np.ones((2, 4))),
        "rec": Affine(rng.normal(0.0, 0.3, (3, 3)), np.full(3, 0.4)),
        "n2": _neuron(3, 0.5, 1.0, 0.5, alpha_i=0.5),
        "fc3": Affine(np.ones((2, 3))),
        "output": Output((2,)),
    }
    edges = [("input", "fc"), ("fc", "n1"), ("n1", "fc2"), ("fc2", "output")]
    edges += [("rec", "n2"), ("n2", "rec"), ("n2", "fc3"), ("fc3", "output")]
    graph = Graph(nodes, edges, {"timesteps": T, "encoding": "poisson"})
    assert ("n2", "rec") in graph.schedule()[1]
    stream = _spikes(rng, 20)[..., :4]
    lg, _ = quantise(graph, stream)
    (bias,) = [s for s in lg.synapses if s.role == "bias"]
    assert lg.layers["n2"].depth == 1 and bias.dst == "n2" and bias.delay == 0
    fixed = EmulatorBackend(progress=False).run_loihi(lg, stream)
    ref = FloatBackend(progress=False).run(graph, stream)
    assert 0.05 < ref.spikes["n2"].mean() < 0.95
    np.testing.assert_array_equal(fixed.spikes["n2"], ref.spikes["n2"])
