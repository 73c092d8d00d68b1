"""A pooling of an image whose size it does not divide, followed by a padded convolution, as ONE strided
convolution on the cropped input (the airbench student's stages: 31 -> 15, 15 -> 7, 7 -> 3 pixels).

Why. A ``k x k`` sum pooling of stride ``k`` followed by a ``K x K`` convolution (stride 1, padding ``P``)
is one convolution of stride ``k`` with a ``kK x kK`` kernel (each tap spread over a ``k x k`` block;
an average pooling divides it by ``k**2``) and padding ``kP`` (``quantise._compose`` builds it for any
chain of convolution-like ops). On an ``H x W`` image with ``H % k != 0`` the floor pooling drops the last
``H % k`` rows, and the identity breaks at the far border: the last output row reads the conv's zero
padding where the composed convolution reads the first dropped row, a real row. No shared kernel and no
padding fixes that: the dropped row lies inside the receptive field of an output whose other taps are
needed (a bottom or asymmetric padding only adds zeros after it), and a weight mask differs per output,
which is no convolution. Cropping the input to the rows and columns the pooling reads
(``floor(H / k) * k``) restores the identity exactly: ``ConvGeometry.crop``.

Where it runs. Lava's ``Conv`` (lava-nc 0.10.0, ``lava/proc/conv``) pads symmetrically (one padding per
axis, ``np.pad(x, (p, p))``) and reads its whole input port, and Lava's ports reshape, transpose and
concatenate but select nothing, so a cropped convolution is no Lava ``Conv`` (a ``Conv`` on the whole
input plus a Dense that subtracts the dropped rows' part would be one, but the dropped rows' spikes would
then cost synaptic operations, twice, that the float graph does not have). It becomes a ``dense``
synapse that carries its kernel and geometry (``loihi_graph``): Dense arithmetic (8-bit weights, a
shared exponent), connectivity ``matrix()`` (the cropped convolution's CSR matrix, Lava ``Sparse``); the
emulator convolves the cropped input (the same integers). Each source neuron connects exactly to the
neurons the float graph's pooling and convolution reach (the dropped rows to none), so the synaptic-op
counts of ``activity``, which follow the float graph's structure, are the chip's. The kernel is still one
shared kernel (the dropped rows' neurons merely send the synapse nothing), so ``resources`` stores it as
it stores a Conv's.

Written by hand: no library composes poolings into convolutions for a chip.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lasnn.hardware.loihi_graph import ConvGeometry, crop_input

Form = tuple[np.ndarray, tuple[int, int], tuple[int, int]]  # (kernel [C_out, C_in, kh, kw], stride, padding)


def input_crop(forms: list[Form], height: int, width: int) -> tuple[int, int] | None:
    """The rows and columns (from the top left) that a chain of convolution-like ops reads of an
    ``height x width`` input, through its leading ops without padding (a floor pooling reads
    ``floor(H / k) * k`` rows); None when that is the whole input or the chain starts with padding."""
    used = []
    for axis, size in ((0, height), (1, width)):
        kernels, strides = [], []
        for kernel, stride, padding in forms:
            if padding[axis] != 0:
                break
            kernels.append(int(kernel.shape[2 + axis]))
            strides.append(int(stride[axis]))
        out = size
        for k, s in zip(kernels, strides, strict=True):
            out = (out - k) // s + 1
            if out < 1:
                return None
        extent = out
        for k, s in zip(reversed(kernels), reversed(strides), strict=True):
            extent = (extent - 1) * s + k
        used.append(extent)
    crop = (used[0], used[1])
    return None if crop == (height, width) else crop


def cropped_conv_geometry(
    form: Form,
    forms: list[Form],
    src_shape: tuple[int, int, int],
    dst_shape: tuple[int, int, int],
    chain: Callable[[torch.Tensor], torch.Tensor],
) -> ConvGeometry | None:
    """The geometry under which the composed convolution ``form`` of the per-node ``forms`` equals
    ``chain`` (the sequential ops, float64) on the input cropped to what the chain reads; checked on a
    random probe like the uncropped composition (``quantise.compose_path``). None if no crop makes them
    equal."""
    crop = input_crop(forms, src_shape[1], src_shape[2])
    if crop is None:
        return None
    kernel, stride, padding = form
    geometry = ConvGeometry(
        input_shape=src_shape, output_shape=dst_shape, stride=stride, padding=padding, crop=crop
    )
    probe = torch.as_tensor(np.random.default_rng(1).standard_normal((2, *src_shape)))
    try:
        direct = F.conv2d(
            crop_input(probe, geometry), torch.as_tensor(kernel), stride=stride, padding=padding
        )
    except RuntimeError:  # the cropped input is smaller than the kernel
        return None
    if tuple(direct.shape[1:]) != tuple(dst_shape):
        return None
    tolerance = 1e-9 * float(np.abs(kernel).sum() + 1)
    return geometry if torch.allclose(direct, chain(probe), rtol=1e-9, atol=tolerance) else None
