"""Loihi 2 limits: fixed-point bit widths (as Lava's bit-accurate process models define them) and published
per-core / per-chip resource figures. Each constant cites its source; estimates are marked as such.

Lava paths are inside lava-nc 0.10.0 (``site-packages/lava``).
"""

from __future__ import annotations

from lasnn.hardware.loihi_graph import ACT_SHIFT, DECAY_SHIFT, UV_BITS, VTH_MAX, VTH_SHIFT

# --- neuron state (lava/proc/lif/models.py, AbstractPyLifModelFixed and PyLifModelBitAcc) ---------------
UV_MAX = 2 ** (UV_BITS - 1)  # u, v are 24-bit signed: max_uv_val = 2**23 (uv_bitwidth = 24)
V_LIMIT = UV_MAX - 1  # v is clipped to [-(2**23 - 1), 2**23 - 1] (neg/pos_voltage_limit)
DECAY_UNITY = 2**DECAY_SHIFT  # du, dv are unsigned 12-bit; decay_unity = 4096, decays shift right by 12
DU_MAX = DECAY_UNITY - 1  # 12-bit unsigned du (precision=12); ds_offset = 1 makes du = 4095 a full decay
DV_MAX = DECAY_UNITY - 1  # 12-bit unsigned dv (precision=12); dm_offset = 0: dv = 4095 keeps 1/4096 of v
BIAS_MANT_MIN, BIAS_MANT_MAX = -(2**12), 2**12 - 1  # bias_mant: signed 13-bit (precision=13)
BIAS_EXP_MIN, BIAS_EXP_MAX = 0, 7  # bias_exp: unsigned 3-bit ("0 to 7", PyLifModelBitAcc docstring)
VTH_BITS = 17  # vth: unsigned 17-bit (precision=17), compared as vth << 6 (vth_shift = 6)
A_IN_BITS = 16  # a_in: PyInPort int16, precision=16 (Lava's Python simulator itself does not clip it)
A_IN_MAX = 2 ** (A_IN_BITS - 1) - 1
assert VTH_MAX == 2**VTH_BITS - 1 and ACT_SHIFT == 6 and VTH_SHIFT == 6

# --- synapses -----------------------------------------------------------------------------------------
WEIGHT_BITS = 8  # Dense/Sparse weights: clip_weights(num_bits=8) in lava/proc/dense/models.py (BitAcc)
DENSE_MIXED = (-256, 254)  # mixed signs: clip to [-256, 255] then truncate_weights drops the LSB (even only),
#                            lava/utils/weightutils.py clip_weights / truncate_weights with num_weight_bits=8
DENSE_EXCITATORY = (0, 255)  # weightutils.clip_weights, SignMode.EXCITATORY
DENSE_INHIBITORY = (-255, 0)  # weightutils.clip_weights, SignMode.INHIBITORY (negated, clipped, negated)
CONV_WEIGHT = (-128, 127)  # Loihi's 8-bit weights; Lava's PyConvModelFixed (precision=8) does not clip them,
#                            so lasnn never exceeds int8 for Conv
WEIGHT_EXP_MIN, WEIGHT_EXP_MAX = -8, 7  # Loihi's shared weight exponent range (Davies et al. 2018, IEEE
#                            Micro 38(1), "Loihi: a neuromorphic manycore processor", synaptic weight scaling
#                            2**(6 + wgtExp), wgtExp in -8..7); Lava's Python Dense accepts any integer
CONV_ABUF_BITS = 24  # Conv a_buf wraps modulo 2**24: lava/proc/conv/models.py clamp_precision(bits=24)
MAX_DELAY = 63  # DelayDense: "Loihi 2 has a maximum of 6 bits for delays" (lava/proc/dense/models.py)

# --- resources (Loihi 2) ------------------------------------------------------------------------------
CORES_PER_CHIP = 128  # neuro cores per Loihi 2 chip: Intel Labs, "Taking Neuromorphic Computing to the Next
#                       Level with Loihi 2", technology brief (2021); Orchard et al. 2021, "Efficient
#                       neuromorphic signal processing with Loihi 2", IEEE SiPS, Table I
NEURONS_PER_CHIP = 1_048_576  # "up to 1 million neurons" per chip (same brief and Table I)
NEURONS_PER_CORE = NEURONS_PER_CHIP // CORES_PER_CHIP  # 8192: up to 8192 neurons per core (same sources)
SYNAPSES_PER_CHIP = 120_000_000  # "up to 120 million synapses" per chip (brief; Orchard et al. Table I)
SYNAPTIC_MEMORY_BYTES_PER_CORE = 128 * 1024  # ESTIMATE: Loihi 1 has 128 KB synaptic memory per core
#                       (Davies et al. 2018); Loihi 2's brief gives no per-core split of its flexible memory,
#                       so we keep Loihi 1's figure as a conservative budget
SYNAPSE_BITS = WEIGHT_BITS  # ESTIMATE: one 8-bit weight per stored synapse, indices/compression ignored
SYNAPSES_PER_CORE = SYNAPTIC_MEMORY_BYTES_PER_CORE * 8 // SYNAPSE_BITS  # 131072 stored weights per core
MAX_FAN_IN = SYNAPSES_PER_CORE  # a neuron's input synapses must fit one core's synaptic memory (estimate)
