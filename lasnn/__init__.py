"""lasnn: layer-wise ANN-to-SNN distillation, from an ANN teacher to a spiking student on Loihi."""

__version__ = "0.1.0"
