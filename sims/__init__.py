"""Backends that execute a graph: Lava's Loihi simulator, a bit-exact batched emulator, a float reference.

Importing this package installs the Lava compatibility hook (see ``lava_compat``) so that ``import lava``
works on Python 3.11+.
"""

from lasnn.sims import lava_compat as _lava_compat

_lava_compat.install()
