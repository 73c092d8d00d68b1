"""``FileSink``: a receiving ring buffer that hands its recording back through a ``.npy`` file.

Why: Lava 0.10.0 reads a variable back (``Var.get``) one element per channel message
(``lava/magma/runtime/runtime.py`` ``get_var``: ``for i in range(num_items): buffer[0, i] =
data_port.recv()[0]``), measured here at ~40 microseconds per element: 7 s to read two small layers'
spike trains of 20 digits samples, minutes for a CIFAR-sized layer. ``FileSink`` records exactly what
Lava's ``lava.proc.io.sink.RingBuffer`` records (its input port, every step) and, on the last step of its
buffer, saves the whole recording with ``numpy.save`` (to a temporary name, then renamed), which the
backend loads after the run. Written by hand because Lava has no bulk read-back.

This module imports only Lava and numpy (Lava's compiler imports every module in this package while
searching for process models, so it must be free of side effects).
"""

from __future__ import annotations

import os
import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class FileSink(AbstractProcess):
    """Records its input ``a_in`` (``shape``) for ``buffer`` steps; writes ``[buffer, *shape]`` to ``path``
    (``.npy``, dtype ``dtype``) when step ``buffer`` has been received."""

    def __init__(self, *, shape: ty.Tuple[int, ...], buffer: int, path: str, dtype: str = "int32") -> None:  # noqa: UP006
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        shape = tuple(int(s) for s in shape)
        # AbstractProcess keeps these keyword arguments as proc_params for the model
        super().__init__(shape=shape, buffer=int(buffer), path=str(path), dtype=str(dtype))
        self.a_in = InPort(shape=shape)


@implements(proc=FileSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileSinkModelFixed(PyLoihiProcessModel):
    """Fixed-point model: receives int32 like ``PyReceiveModelFixed`` (``lava/proc/io/sink.py``)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self._buffer = int(proc_params["buffer"])
        self._data = np.zeros((self._buffer, *proc_params["shape"]), dtype=proc_params["dtype"])

    def run_spk(self) -> None:
        data = self.a_in.recv()
        index = (self.time_step - 1) % self._buffer
        self._data[index] = data
        if index == self._buffer - 1:
            path = self.proc_params["path"]
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            np.save(tmp, self._data)
            os.replace(tmp, path)
