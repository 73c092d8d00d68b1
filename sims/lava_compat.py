"""Make lava-nc 0.10.0 importable on Python 3.11 and 3.12 without editing site-packages.

lava-nc 0.10.0 declares Python < 3.11. Its only incompatibility found with 3.11+ is in
``lava/magma/compiler/var_model.py``: three dataclasses use ``ByteEncoder()`` instances as field
defaults, which Python 3.11 rejects ("mutable default ... use default_factory"). This module installs a
``sys.meta_path`` finder that rewrites exactly those defaults to ``field(default_factory=ByteEncoder)``
while the module's source is compiled. It is written by hand because no maintained package does this.

The hook is active only where needed: Python >= 3.11 and a var_model.py source that still contains the
offending pattern (a fixed Lava release makes it a no-op).

The same finder also guards ``lava.magma.runtime.message_infrastructure.multiprocessing``, which calls
``multiprocessing.set_start_method('fork')`` without ``force`` at import and so raises "context has already
been set" once anything in the process has asked for the start method (tqdm, torch's DataLoader). While
that module loads, a repeated request for the method already in use is made a no-op; any other method
still raises, since Lava's simulator needs 'fork'.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
from types import ModuleType

TARGET_MODULE = "lava.magma.compiler.var_model"
MP_MODULE = "lava.magma.runtime.message_infrastructure.multiprocessing"
_MUTABLE_DEFAULT = re.compile(r"^(\s+\w+\s*:\s*ByteEncoder\s*=\s*)ByteEncoder\(\)\s*$", re.MULTILINE)
_DATACLASS_IMPORT = re.compile(r"^from dataclasses import ([^\n]+)$", re.MULTILINE)


def patch_var_model_source(source: str) -> str:
    """Return var_model.py's source with its mutable dataclass defaults turned into default factories."""
    patched, count = _MUTABLE_DEFAULT.subn(r"\1field(default_factory=ByteEncoder)", source)
    if count == 0:
        return source
    match = _DATACLASS_IMPORT.search(patched)
    names = {n.strip() for n in match.group(1).split(",")} if match else set()
    if "field" not in names:
        # Insert beside the existing dataclasses import (after any ``from __future__`` line).
        if match is None:
            raise ImportError(f"lasnn: cannot patch {TARGET_MODULE}: no 'from dataclasses import' line")
        end = match.end()
        patched = patched[:end] + "\nfrom dataclasses import field" + patched[end:]
    return patched


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader that patches the source before compiling it (no bytecode cache for it)."""

    def get_data(self, path: str) -> bytes:
        data = super().get_data(path)
        if path.endswith(".py"):
            return patch_var_model_source(data.decode("utf-8")).encode("utf-8")
        return data

    def path_stats(self, path: str):  # noqa: ANN201 - signature fixed by importlib
        # Force recompilation from (patched) source rather than reading an unpatched .pyc.
        raise OSError("lasnn: bytecode cache disabled for patched module")


class _ForkTolerantLoader(importlib.machinery.SourceFileLoader):
    """Executes Lava's multiprocessing module with ``set_start_method(current)`` made a no-op."""

    def exec_module(self, module: ModuleType) -> None:
        import multiprocessing

        current = multiprocessing.get_start_method(allow_none=True)
        original = multiprocessing.set_start_method
        if current is None:
            super().exec_module(module)
            return

        def tolerant(method: str, force: bool = False) -> None:
            if method != current or force:
                original(method, force=force)

        multiprocessing.set_start_method = tolerant
        try:
            super().exec_module(module)
        finally:
            multiprocessing.set_start_method = original


class _VarModelFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path, target: ModuleType | None = None):  # noqa: ANN001, ANN201
        if fullname not in (TARGET_MODULE, MP_MODULE):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.origin is None or not spec.origin.endswith(".py"):
            return spec
        if fullname == MP_MODULE:
            return importlib.util.spec_from_file_location(
                fullname, spec.origin, loader=_ForkTolerantLoader(fullname, spec.origin)
            )
        if not hook_needed() or not _needs_patch(spec.origin):
            return spec
        return importlib.util.spec_from_file_location(
            fullname,
            spec.origin,
            loader=_PatchingLoader(fullname, spec.origin),
            submodule_search_locations=spec.submodule_search_locations,
        )


def _needs_patch(origin: str) -> bool:
    with open(origin, encoding="utf-8") as handle:
        return _MUTABLE_DEFAULT.search(handle.read()) is not None


def hook_needed() -> bool:
    """True on Pythons whose dataclasses reject Lava 0.10.0's mutable defaults."""
    return sys.version_info >= (3, 11)


def install() -> bool:
    """Install the import hook once (idempotent). Returns whether it is installed."""
    if any(isinstance(f, _VarModelFinder) for f in sys.meta_path):
        return True
    if TARGET_MODULE in sys.modules and MP_MODULE in sys.modules:  # both already imported: nothing to do
        return False
    sys.meta_path.insert(0, _VarModelFinder())
    return True
