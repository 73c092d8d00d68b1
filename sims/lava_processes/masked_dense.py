"""``MaskedDelayDense``: Lava's ``DelayDense`` whose delivery is cleared at the start of every sample.

Why: lasnn feeds many samples through one long Lava run and resets neuron state between them with
``LIFReset``. Feed-forward synapses then never mix samples, but a synapse whose spikes arrive later
than the pipeline alignment needs (a recurrent connection, which carries the previous step, or a path
through a graph ``Delay``) would deliver, at a layer's first steps of a sample, spikes emitted during the
previous sample. The float graph (and the emulator) has zero there. This process clears the buffer
entry about to be sent during the first ``mask_length`` steps of each ``mask_interval``-step period
(phase counted from ``mask_offset``), and otherwise runs Lava's own bit-accurate ``DelayDense`` model
unchanged (``PyDelayDenseModelBitAcc``; ``delays = 0`` behaves like ``Dense``). Written by hand because
Lava has no resettable connection process.

This module imports only Lava (Lava's compiler imports every module in this package while searching for
process models, so it must be free of side effects).
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.dense.models import AbstractPyDelayDenseModel, PyDelayDenseModelBitAcc
from lava.proc.dense.process import DelayDense


class MaskedDelayDense(DelayDense):
    """``DelayDense`` that delivers zeros at steps ``s`` with ``(s - mask_offset) % mask_interval <
    mask_length`` (Lava ``time_step`` counts from 1)."""

    def __init__(
        self,
        *,
        weights: np.ndarray,
        delays: ty.Union[np.ndarray, int],  # noqa: UP007 - Lava's own signature style
        mask_interval: int,
        mask_offset: int,
        mask_length: int,
        **kwargs: ty.Any,
    ) -> None:
        if mask_interval < 1 or mask_length < 0:
            raise ValueError(
                f"mask_interval must be >= 1 and mask_length >= 0, got {mask_interval}, {mask_length}"
            )
        super().__init__(weights=weights, delays=delays, **kwargs)
        self.proc_params["mask_interval"] = int(mask_interval)
        self.proc_params["mask_offset"] = int(mask_offset)
        self.proc_params["mask_length"] = int(mask_length)


@implements(proc=MaskedDelayDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyMaskedDelayDenseModelBitAcc(AbstractPyDelayDenseModel):
    """Lava's bit-accurate ``DelayDense`` model plus the start-of-sample clearing.

    Lava forbids subclassing a model that already implements a process, so the port and variable types
    are those of ``PyDelayDenseModelBitAcc`` and its ``run_spk`` is called unchanged."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=16)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    weights: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    delays: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=6)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, int, precision=5)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.weights_set = False

    def run_spk(self) -> None:
        params = self.proc_params
        phase = (self.time_step - params["mask_offset"]) % params["mask_interval"]
        if phase < params["mask_length"]:
            # The entry sent this step (column 0) holds spikes of the previous sample; Lava's model
            # discards it right after sending, so clearing it changes nothing else.
            self.a_buff[:, 0] = 0
        PyDelayDenseModelBitAcc.run_spk(self)
