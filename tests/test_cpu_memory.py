"""The glibc malloc settings of lasnn.cpu_memory: applied once, harmless where they do not apply."""

from __future__ import annotations

import sys

import torch

from lasnn.cpu_memory import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc_and_tensors_still_work() -> None:
    applied = keep_freed_memory()
    assert keep_freed_memory() is applied  # idempotent
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert applied
    # large tensors allocated, freed and allocated again keep their values (the allocator still works)
    for _ in range(3):
        block = torch.arange(10_000_000, dtype=torch.float32)
        assert float(block[-1]) == 9_999_999.0
        del block
