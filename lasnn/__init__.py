"""lasnn: layer-wise ANN-to-SNN distillation, from an ANN teacher to a spiking student on Loihi's simulator."""

__version__ = "0.1.0"
