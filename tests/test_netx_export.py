"""``lasnn export-netx``: a compiled model in lava-dl's netx HDF5 format, loaded by Intel's own loader.

The digits student (compiled from its data set's training split, as tests/test_compiled_model.py does,
analog input: the host computes its first synapse stage) and the same student on Poisson spikes (input
spikes through netx's input port) are written as netx files; ``lava.lib.dl.netx.hdf5.Network`` builds them
in Lava's ``Loihi2SimCfg`` (fixed_pt), and every layer's spike train and the readout equal lasnn's
bit-exact emulator on the same inputs over all T steps. The file's values round-trip to the very same
``LoihiGraph``; the rule that decides which dense weights netx reproduces is checked against netx's and
Lava's own weight functions; what netx cannot express is refused in one sentence naming the layer.
The netx tests skip only where lava-dl is not installed (``make netx``, which CI runs, installs it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from lasnn.cli import main
from lasnn.errors import LasnnError
from lasnn.hardware.compiled_model import compile_graph, encode_samples, load_compiled
from lasnn.hardware.netx import netx_dense_problem, read_netx, write_netx
from lasnn.sims.emulator import EmulatorBackend
from lasnn.sims.netx_backend import netx_version

needs_netx = pytest.mark.skipif(
    netx_version() is None, reason="lava-dl (netx) is not installed; 'make netx' installs it"
)
SAMPLES = 3


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The digits student compiled for analog input (current mode) and for Poisson spikes, its netx files
    and a few test images encoded for each."""
    from test_simulate_cli import _student_nir

    from lasnn.data import first_samples, load_dataset

    root = tmp_path_factory.mktemp("netx")
    test, _ = load_dataset("digits", "test", None, augment=False)
    images, _ = first_samples(test, SAMPLES)
    out = {}
    for encoding in ("direct", "poisson"):
        model = compile_graph(_student_nir(root / f"{encoding}.nir", encoding), calibration_samples=64)
        model.save(root / f"{encoding}.lcm")
        plan = write_netx(model, root / f"{encoding}.h5")
        stream = encode_samples(images, model.timesteps, encoding, 7, 0)
        out[encoding] = {
            "model": model,
            "plan": plan,
            "h5": root / f"{encoding}.h5",
            "lcm": root / f"{encoding}.lcm",
            "stream": stream,
        }
    # the spiking student with per-neuron biases on both LIF layers (multiples of 64, encoded by lasnn with
    # bias_exp 6 and 5): exercises netx's bias (and its W, H, C order for conv blocks)
    rng = np.random.default_rng(5)
    biased = copy.deepcopy(out["poisson"]["model"].loihi)
    for layer, exp in zip(list(biased.layers.values())[:2], (6, 5), strict=True):
        step = 1 << (6 - exp)
        layer.bias_mant = (rng.integers(-40, 41, layer.shape) * step).astype(np.int32)
        layer.bias_exp = np.full(layer.shape, exp, dtype=np.int32)
    plan = write_netx(biased, root / "biased.h5")
    out["biased"] = {**out["poisson"], "model": None, "loihi": biased, "plan": plan, "h5": root / "biased.h5"}
    for case in out.values():
        case.setdefault("loihi", case["model"].loihi if case["model"] is not None else None)
    return out


@needs_netx
@pytest.mark.lava
@pytest.mark.parametrize("case_name", ["direct", "poisson", "biased"])
def test_netx_runs_the_student_spike_for_spike(students: dict, case_name: str) -> None:
    from lasnn.sims.netx_backend import run_netx

    case = students[case_name]
    lg, stream = case["loihi"], case["stream"]
    assert lg.input.mode == ("current" if case_name == "direct" else "spikes")
    emulated = EmulatorBackend(device="cpu").run_loihi(lg, stream)
    netx = run_netx(case["h5"], stream)
    lif = [n for n, layer in lg.layers.items() if layer.kind == "lif"]
    assert set(netx.spikes) == set(emulated.spikes) == set(lif) and len(lif) == 2
    for name in lif:
        a, b = emulated.spikes[name], netx.spikes[name]
        assert a.shape == b.shape == (lg.timesteps, SAMPLES, *lg.layers[name].shape)
        np.testing.assert_array_equal(b, a, err_msg=name)
        assert 0 < a.sum() < a.size, name  # a meaningful comparison: active, not saturated
    # the readout (the head's current each step, scaled back to logits) is identical too
    np.testing.assert_array_equal(netx.outputs, emulated.outputs)
    assert np.abs(emulated.outputs).max() > 0
    # the current-mode readout keeps its weight exponent out of netx's 8-bit weights (a documented note)
    shifted = [n for n in case["plan"].notes if "kept out of netx's weights" in n]
    assert len(shifted) == (1 if lg.synapses[-1].weight_exp > 0 else 0)
    if case_name == "biased":  # the biases change the spikes (so netx really applied them)
        plain = EmulatorBackend(device="cpu").run_loihi(students["poisson"]["loihi"], stream)
        assert any(not np.array_equal(plain.spikes[n], emulated.spikes[n]) for n in lif)


@needs_netx
@pytest.mark.lava
@pytest.mark.slow
def test_netx_runs_a_cifar_sized_student(tmp_path: Path) -> None:
    """The bench's CIFAR-sized VGG student (3x32x32 input, 32x32x32 and 64x16x16 LIF layers, a 16384-input
    readout; random weights, as bench/sim_throughput.py) through netx equals the emulator (one sample:
    Lava's Python Conv is slow, ~15 s)."""
    import torch

    from lasnn.distill.students import vgg_student
    from lasnn.encoding import encode
    from lasnn.export.lowering import lower_student
    from lasnn.sims.netx_backend import run_netx

    torch.manual_seed(0)
    student = vgg_student((3, 32, 32), 10, widths=((32,), (64,)), timesteps=4, encoding="direct")
    with torch.no_grad():
        for module in student.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.weight.mul_(4.0)
    graph = lower_student(student.eval(), {"timesteps": 4, "encoding": "direct", "dt": 1e-3})
    generator = torch.Generator().manual_seed(0)
    calibration = encode(torch.randn(16, 3, 32, 32, generator=generator), 4, "direct").numpy()
    model = compile_graph(graph, calibration=np.moveaxis(calibration, 0, 1), input_mode="currents")
    write_netx(model, tmp_path / "cifar.h5")
    stream = encode(torch.randn(1, 3, 32, 32, generator=generator), 4, "direct").numpy()
    emulated = EmulatorBackend(device="cpu").run_loihi(model.loihi, stream)
    netx = run_netx(tmp_path / "cifar.h5", stream)
    assert [tuple(model.loihi.layers[n].shape) for n in netx.spikes] == [(32, 32, 32), (64, 16, 16)]
    for name, spikes in emulated.spikes.items():
        np.testing.assert_array_equal(netx.spikes[name], spikes, err_msg=name)
        assert 0 < spikes.sum() < spikes.size, name
    np.testing.assert_array_equal(netx.outputs, emulated.outputs)


@needs_netx
def test_netx_file_as_netx_reads_it(students: dict) -> None:
    """What netx itself reads from the file: its neuron constants, weights and shapes are lasnn's."""
    from lasnn.sims.netx_backend import import_netx

    hdf5 = import_netx()
    case = students["direct"]
    lg = case["model"].loihi
    net = hdf5.Network(net_config=str(case["h5"]), input_message_bits=16, reset_interval=8, reset_offset=1)
    assert len(net.layers) == len(lg.layers)
    for block, (name, layer) in zip(net.layers, lg.layers.items(), strict=True):
        neuron = block.neuron
        assert int(neuron.du.init) == layer.du and int(neuron.dv.init) == layer.dv, name
        assert int(neuron.vth.init) == layer.vth, name
        assert int(np.prod(block.out.shape)) == layer.size, name
    conv = net.layers[1].synapse  # lasnn's stride-2 (pooling + conv) synapse, in Lava's W, H, C layout
    kernel = next(s for s in lg.synapses if s.kind == "conv").weight
    np.testing.assert_array_equal(conv.weight.init, np.transpose(kernel, (0, 3, 2, 1))[:, ::-1, ::-1, :])


def test_netx_round_trip(students: dict) -> None:
    """The file holds exactly the compiled integers: read back, they are the same LoihiGraph, and the
    emulator gives the same spikes and outputs on it."""
    for case in students.values():
        lg = case["loihi"]
        back = read_netx(case["h5"]).loihi
        assert list(back.layers) == list(lg.layers)
        for name, layer in lg.layers.items():
            other = back.layers[name]
            for key in ("shape", "kind", "du", "dv", "vth", "depth"):
                assert getattr(layer, key) == getattr(other, key), (name, key)
            for key in ("bias_mant", "bias_exp", "scale", "v_offset"):
                np.testing.assert_array_equal(getattr(layer, key), getattr(other, key))
        assert len(back.synapses) == len(lg.synapses)
        for a, b in zip(lg.synapses, back.synapses, strict=True):
            assert (a.name, a.src, a.dst, a.kind, a.weight_exp, a.delay) == (
                b.name,
                b.src,
                b.dst,
                b.kind,
                b.weight_exp,
                b.delay,
            )
            assert (a.matrix() != b.matrix()).nnz == 0
        assert len(back.input.host) == len(lg.input.host)
        for a, b in zip(lg.input.host, back.input.host, strict=True):
            assert (a.dst, a.shift, a.delay, a.geometry) == (b.dst, b.shift, b.delay, b.geometry)
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)
        assert (back.input.mode, back.input.in_scale, back.timesteps) == (
            lg.input.mode,
            lg.input.in_scale,
            lg.timesteps,
        )
        np.testing.assert_array_equal(back.readout.offset, lg.readout.offset)
        first = EmulatorBackend(device="cpu").run_loihi(lg, case["stream"])
        again = EmulatorBackend(device="cpu").run_loihi(back, case["stream"])
        np.testing.assert_array_equal(first.outputs, again.outputs)
        for name in first.spikes:
            np.testing.assert_array_equal(first.spikes[name], again.spikes[name])


def test_netx_values_in_the_file(students: dict) -> None:
    """The netx fields themselves, read with h5py: netx's CUBA constants and effective dense weights."""
    import h5py

    case = students["poisson"]
    lg = case["model"].loihi
    with h5py.File(case["h5"], "r") as f:
        types = [f["layer"][str(i)]["type"][0].decode() for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        blocks = [f["layer"][str(i)] for i, t in enumerate(types) if t in ("conv", "dense")]
        for block, layer in zip(blocks, lg.layers.values(), strict=True):
            assert block["neuron/type"][()].decode() == "CUBA"
            assert int(block["neuron/iDecay"][()]) == layer.du + 1  # netx: du = iDecay - 1
            assert (
                int(block["neuron/vDecay"][()]) == layer.dv and int(block["neuron/vThMant"][()]) == layer.vth
            )
            assert list(block["shape"][()]) == list(layer.shape)
        dense = lg.synapses[-1]
        stored = blocks[-1]["weight"][()]
        if read_netx(case["h5"]).v_shift[dense.dst]:
            np.testing.assert_array_equal(stored, dense.weight)
        else:
            np.testing.assert_array_equal(stored, dense.weight.astype(np.int64) << dense.weight_exp)
        np.testing.assert_array_equal(blocks[0]["weight"][()], lg.synapses[0].weight)
        assert list(blocks[0]["stride"][()]) == list(lg.synapses[0].geometry.stride)


@needs_netx
def test_dense_rule_matches_netx_and_lava() -> None:
    """``netx_dense_problem`` says None exactly when netx's weight optimiser followed by Lava's Dense clip
    and truncation (their own functions) gives back ``weight << -weight_exp``, i.e. ``a_out = W @ s``."""
    import warnings

    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    from lasnn.sims.netx_backend import import_netx

    import_netx()
    from lava.lib.dl.netx.utils import optimize_weight_bits

    rng = np.random.default_rng(3)
    cases = [rng.integers(lo, hi + 1, (6, 9)) for lo, hi in ((-256, 254), (0, 255), (-255, 0), (-40, 12))]
    cases += [rng.integers(-9, 10, (6, 9)) * 2**k for k in range(5)]  # trailing zero bits
    cases += [np.array([[0, -128, -3], [-5, 0, 0]]), np.array([[-64, -1]]), np.array([[-100, -7]])]
    cases += [np.array([[300, 2]]), np.array([[-257, 5]]), np.array([[255, -1]]), np.array([[1, 0, 255]])]
    cases += [np.array([[-128, -3]]), np.array([[-255, -254]])]
    verdicts = {True: 0, False: 0}
    for w in cases:
        problem = netx_dense_problem(w)
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.simplefilter("ignore")
            try:
                w_opt, bits, exp, _ = optimize_weight_bits(w.copy())
            except (OverflowError, ValueError):
                assert problem is not None, w
                continue
        mode = determine_sign_mode(w_opt)
        final = truncate_weights(clip_weights(w_opt, mode, num_bits=8), mode, bits)
        exact = exp <= 0 and np.array_equal(final, w.astype(np.int64) << -exp)
        assert exact == (problem is None), (w, problem)
        verdicts[exact] += 1
    assert verdicts[True] >= 8 and verdicts[False] >= 4


def test_netx_refusals_name_the_layer(students: dict, tmp_path: Path) -> None:
    lg = students["poisson"]["loihi"]
    second = list(lg.layers)[1]

    def refused(change, expected: str) -> None:  # noqa: ANN001
        bad = copy.deepcopy(lg)
        change(bad)
        with pytest.raises(LasnnError) as info:
            write_netx(bad, tmp_path / "bad.h5")
        message = str(info.value)
        assert expected in message and message.endswith(".") and "\n" not in message, message
        assert not (tmp_path / "bad.h5").exists()

    def odd_bias(g) -> None:  # noqa: ANN001 - a bias netx's fixed bias_exp = 6 cannot hold
        g.layers[second].bias_mant = np.ones(g.layers[second].shape, dtype=np.int32)

    def skip(g) -> None:  # noqa: ANN001 - a second synapse into the readout (a residual shortcut)
        shortcut = copy.deepcopy(g.synapses[-1])
        shortcut.name, shortcut.src, shortcut.geometry = "skip", list(g.layers)[0], None
        shortcut.weight = np.zeros((shortcut.weight.shape[0], g.layers[shortcut.src].size), dtype=np.int32)
        g.synapses.append(shortcut)

    def floor_exp(g) -> None:  # noqa: ANN001 - a negative exponent over odd weights floors the sums
        g.synapses[-1].weight = np.clip(np.abs(g.synapses[-1].weight) | 1, 0, 255).astype(np.int32)
        g.synapses[-1].weight_exp = -2

    def delayed(g) -> None:  # noqa: ANN001 - a delayed synapse (netx resets one step per layer)
        g.synapses[-1].delay = 2

    refused(odd_bias, f"layer '{second}' has")
    refused(skip, "netx chains layers")
    refused(floor_exp, "floors the sums")
    refused(delayed, "has a delay of 2 steps")


def test_export_netx_cli(students: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.h5"
    assert main(["export-netx", str(students["direct"]["lcm"]), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads(lines[0])
    assert [b["type"] for b in summary["blocks"]] == ["conv", "conv", "dense"]
    assert summary["blocks"][0]["role"] == "host identity" and summary["input_message_bits"] == 16
    assert any(line.startswith("note: layer 'features.1'") for line in lines)
    assert read_netx(out).loihi.timesteps == load_compiled(students["direct"]["lcm"]).timesteps
    # bad input: a missing file, a NIR graph instead of a compiled model, a damaged netx file
    for source, expected in (("missing.lcm", "does not exist"), ("direct.nir", "not a lasnn compiled model")):
        path = tmp_path / source if source == "missing.lcm" else students["direct"]["lcm"].with_suffix(".nir")
        code = main(["export-netx", str(path), "-o", str(tmp_path / "x.h5")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and expected in err and "lasnn compile" in err, err
        assert not (tmp_path / "x.h5").exists()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(LasnnError, match="cannot be read as a lasnn netx file"):
        read_netx(tmp_path / "junk.h5")
