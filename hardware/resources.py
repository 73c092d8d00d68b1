"""Loihi 2 resource estimate of a quantised network: neurons, synapses and cores per layer, chips in all.

Written by hand from the published core limits in ``loihi_limits`` (Intel's Loihi 2 brief, Orchard et al.
2021; the per-core synaptic memory is an estimate, see there). A population is placed on the destination
cores of its input synapses, as on Loihi (synapses live in the core of the neuron they feed):

- ``neuron_cores = ceil(neurons / NEURONS_PER_CORE)``;
- stored weights: a Dense synapse stores every nonzero weight once; a Conv synapse stores its kernel once in
  every core the layer spans (weight sharing, ESTIMATE: Loihi 2's convolutional connectivity compression;
  ``cores_unshared`` gives the count if every connection were stored), and so does a convolution on a
  cropped input (``pool_conv``: a Dense synapse only because Lava's Conv process cannot crop);
- ``memory_cores = ceil(stored weights * SYNAPSE_BITS / synaptic memory bits per core)``;
- a layer needs ``max(neuron_cores, memory_cores)`` cores; chips ``= ceil(cores / CORES_PER_CHIP)``.

Host-computed input synapses (analog input) are not on the chip; their MACs per step are reported apart.
The always-on source neuron of constant currents (kind ``"source"``) is counted as a neuron; it takes a
free neuron slot of a core that a layer it feeds already uses (0 cores) and a core of its own only if
those cores are full. Its synapses are stored in the cores of the layers they feed, as any synapse.
"""

from __future__ import annotations

import math

import numpy as np

from lasnn.hardware import loihi_limits as lim
from lasnn.hardware.loihi_graph import ConvGeometry, LoihiGraph


def _conv_connections(kernel_shape: tuple[int, ...], g: ConvGeometry) -> int:
    """Structural connections of a convolution: (output, kernel tap) pairs that land inside the (cropped)
    input."""
    c_out, c_in, kh, kw = kernel_shape
    _, h, w = g.input_shape
    h, w = g.crop if g.crop is not None else (h, w)
    _, ho, wo = g.output_shape

    def valid(k: int, size_in: int, size_out: int, stride: int, pad: int) -> int:
        o = np.arange(size_out)[:, None] * stride - pad + np.arange(k)[None, :]
        return int(((o >= 0) & (o < size_in)).sum())

    return (
        c_out
        * c_in
        * valid(kh, h, ho, g.stride[0], g.padding[0])
        * valid(kw, w, wo, g.stride[1], g.padding[1])
    )


def estimate_resources(lg: LoihiGraph) -> dict:
    """Per-layer neurons, synapses, stored weights and cores, and the totals (see the module docstring)."""
    memory_weights = lim.SYNAPTIC_MEMORY_BYTES_PER_CORE * 8 // lim.SYNAPSE_BITS
    layers = []
    for name, layer in lg.layers.items():
        neurons = layer.size
        neuron_cores = math.ceil(neurons / lim.NEURONS_PER_CORE)
        connections = shared = unshared = 0
        for syn in lg.synapses_into(name):
            if syn.geometry is not None:
                n = _conv_connections(syn.weight.shape, syn.geometry)
                connections += n
                unshared += n
                # a convolution on a cropped input (pool_conv) shares its kernel like a Conv: the dropped
                # rows' neurons only send it nothing; Lava's simulator runs it as Sparse (no crop in Conv)
                conv_like = syn.kind == "conv" or (syn.geometry.crop is not None and syn.delay == 0)
                shared += int(np.count_nonzero(syn.weight)) * neuron_cores if conv_like else n
            else:
                n = int(np.count_nonzero(syn.weight))
                connections += n
                unshared += n
                shared += n
        cores = max(neuron_cores, math.ceil(shared / memory_weights), 1)
        cores_unshared = max(neuron_cores, math.ceil(unshared / memory_weights), 1)
        if layer.kind == "source":
            fed = {s.dst for s in lg.synapses if s.src == name}
            spare = any(lg.layers[d].size % lim.NEURONS_PER_CORE for d in fed)
            cores = cores_unshared = 0 if spare else neuron_cores
        layers.append(
            {
                "name": name,
                "kind": layer.kind,
                "neurons": neurons,
                "synapses": connections,
                "stored_weights": shared,
                "cores": cores,
                "cores_unshared": cores_unshared,
            }
        )
    host_macs = 0
    for hs in lg.input.host:
        if hs.geometry is not None:
            host_macs += _conv_connections(hs.weight.shape, hs.geometry)
        else:
            host_macs += int(np.count_nonzero(hs.weight))
    cores = sum(entry["cores"] for entry in layers)
    return {
        "layers": layers,
        "neurons": sum(entry["neurons"] for entry in layers),
        "synapses": sum(entry["synapses"] for entry in layers),
        "cores": cores,
        "cores_unshared": sum(entry["cores_unshared"] for entry in layers),
        "chips": math.ceil(cores / lim.CORES_PER_CHIP),
        "host_macs_per_step": host_macs,
        "limits": {
            "neurons_per_core": lim.NEURONS_PER_CORE,
            "weights_per_core": memory_weights,
            "cores_per_chip": lim.CORES_PER_CHIP,
        },
    }
