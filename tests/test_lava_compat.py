"""Lava on Python 3.11+: the source patch of var_model.py, and a real Dense -> LIF run on Lava's
fixed-point simulator checked spike for spike against an independent numpy model of Loihi's equations."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from lasnn.sims import lava_compat

SAMPLE = """from __future__ import annotations

import typing as ty
from dataclasses import dataclass, InitVar


@dataclass
class ByteEncoder:
    base: int = 0
    len: int = 0


@dataclass
class CoreEncoder:
    x: ByteEncoder = ByteEncoder()
    y: ByteEncoder = ByteEncoder()


@dataclass
class AxonEncoder:
    hi: ByteEncoder = ByteEncoder()
    lo: ByteEncoder = ByteEncoder()
    note: str = "ByteEncoder() in a string stays"
"""


def _exec(source: str) -> dict:
    """Execute ``source`` as a module (dataclasses look their module up in ``sys.modules``)."""
    module = types.ModuleType("lasnn_test_sample_var_model")
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "sample_var_model.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def test_patch_turns_mutable_defaults_into_factories() -> None:
    patched = lava_compat.patch_var_model_source(SAMPLE)
    assert patched.count("field(default_factory=ByteEncoder)") == 4
    assert "= ByteEncoder()\n" not in patched
    assert "from dataclasses import field" in patched
    assert 'note: str = "ByteEncoder() in a string stays"' in patched
    namespace = _exec(patched)  # the dataclasses build (Python 3.11+ rejects the unpatched ones)
    first, second = namespace["CoreEncoder"](), namespace["CoreEncoder"]()
    assert first.x == namespace["ByteEncoder"]() and first.x is not second.x
    if sys.version_info >= (3, 11):
        with pytest.raises(ValueError, match="mutable default"):
            _exec(SAMPLE)


def test_patch_is_idempotent_and_leaves_other_sources_alone() -> None:
    patched = lava_compat.patch_var_model_source(SAMPLE)
    assert lava_compat.patch_var_model_source(patched) == patched
    clean = "from dataclasses import dataclass\n\n@dataclass\nclass A:\n    x: int = 0\n"
    assert lava_compat.patch_var_model_source(clean) == clean
    # An existing ``field`` import is reused rather than imported twice.
    with_field = SAMPLE.replace("import dataclass, InitVar", "import dataclass, field")
    assert lava_compat.patch_var_model_source(with_field).count("import field") == 0


def test_installed_lava_imports_through_the_hook() -> None:
    from lava.magma.compiler import var_model

    import lasnn.sims  # noqa: F401  (installs the hook)

    assert var_model.CoreEncoder().x is not var_model.CoreEncoder().x
    if sys.version_info >= (3, 11):
        assert any(isinstance(f, lava_compat._VarModelFinder) for f in sys.meta_path)


_IMPORT_AFTER_START_METHOD = """
import multiprocessing, sys
multiprocessing.set_start_method(sys.argv[1])  # as tqdm or a DataLoader would fix it before Lava loads
import lasnn.sims
try:
    from lava.proc.lif.process import LIF
except RuntimeError as error:
    print("refused:", error)
else:
    print("imported", LIF.__name__)
"""


def test_lava_imports_after_the_start_method_was_fixed() -> None:
    """Lava's runtime calls set_start_method('fork') at import; the hook tolerates 'fork' already being
    chosen and still refuses a start method Lava cannot run with."""
    runs = {
        method: subprocess.Popen(
            [sys.executable, "-c", _IMPORT_AFTER_START_METHOD, method], stdout=subprocess.PIPE, text=True
        )
        for method in ("fork", "spawn")
    }
    outputs = {method: process.communicate(timeout=120)[0].strip() for method, process in runs.items()}
    assert outputs["fork"] == "imported LIF"
    assert outputs["spawn"].startswith("refused: context has already been set")


# ------------------------------------------------------------------ a real run on Loihi2SimCfg(fixed_pt)


def reference_dense_lif(
    spikes: np.ndarray, weights: np.ndarray, du: int, dv: int, vth: int, bias_mant: np.ndarray, bias_exp: int
) -> np.ndarray:
    """Loihi fixed-point Dense -> LIF as lava-nc 0.10.0 specifies it, written independently in numpy.

    Dense: 8-bit weights, mixed-sign matrices lose their least significant bit (Lava's weight
    truncation for mixed sign), and its output reaches the neurons one time step later. LIF: 24-bit u and
    v; u decays by (4096 - (du + 1)) / 4096 and v by (4096 - dv) / 4096 with truncation toward zero;
    synaptic input and threshold are shifted left by 6 bits; bias = mant << exp; u wraps on overflow, v
    saturates; a neuron spikes when v > vth << 6 and v resets to 0.
    """
    if weights.min() < 0 < weights.max():
        weights = (weights >> 1) << 1
    limit = 1 << 23
    n_out, steps = weights.shape[0], spikes.shape[1]
    u = np.zeros(n_out, np.int64)
    v = np.zeros(n_out, np.int64)
    pending = np.zeros(n_out, np.int64)  # Dense's one-step delay
    bias = bias_mant.astype(np.int64) << bias_exp
    out = np.zeros((n_out, steps), dtype=bool)

    def decay(x: np.ndarray, factor: int) -> np.ndarray:
        product = x * factor
        return np.sign(product) * (np.abs(product) >> 12)

    for t in range(steps):
        a_in, pending = pending, weights.astype(np.int64) @ spikes[:, t].astype(np.int64)
        u = decay(u, 4096 - (du + 1)) + (a_in << 6)
        u = np.where(u > limit, u - 2 * limit, u)
        u = np.where(u <= -limit, u + 2 * limit, u)
        v = np.clip(decay(v, 4096 - dv) + u + bias, -limit + 1, limit - 1)
        out[:, t] = v > (vth << 6)
        v[out[:, t]] = 0
    return out


@pytest.mark.lava
def test_lava_dense_lif_fixed_point_matches_numpy() -> None:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF

    import lasnn.sims  # noqa: F401  (the 3.11+ import hook)

    rng = np.random.default_rng(7)
    n_in, n_out, steps = 20, 30, 40
    spikes = (rng.random((n_in, steps)) < 0.3).astype(np.int32)
    weights = rng.integers(-128, 128, (n_out, n_in)).astype(np.int32)
    weights[0, :] = np.abs(weights[0, :]) // 2 + 1  # one strongly excitatory neuron, odd weights included
    params = {"du": 1200, "dv": 400, "vth": 150, "bias_exp": 2}
    bias_mant = rng.integers(0, 40, n_out)

    source = Source(data=spikes)
    dense = Dense(weights=weights)
    lif = LIF(shape=(n_out,), bias_mant=bias_mant, **params)
    sink = Sink(shape=(n_out,), buffer=steps)
    source.s_out.connect(dense.s_in)
    dense.a_out.connect(lif.a_in)
    lif.s_out.connect(sink.a_in)
    try:
        lif.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        lava_spikes = sink.data.get().astype(bool)
    finally:
        lif.stop()

    expected = reference_dense_lif(spikes, weights, bias_mant=bias_mant, **params)
    assert 0.05 < expected.mean() < 0.7, f"spike rate {expected.mean():.2f}: the test would not discriminate"
    assert expected.any(axis=1).sum() >= 3  # several neurons spike, not only one
    np.testing.assert_array_equal(lava_spikes, expected)
    # The comparison is sensitive to Dense's delay: without it the raster differs.
    undelayed = reference_dense_lif(np.roll(spikes, -1, axis=1), weights, bias_mant=bias_mant, **params)
    assert not np.array_equal(undelayed, expected)
