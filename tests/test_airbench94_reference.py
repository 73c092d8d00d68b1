"""bench/airbench94_reference.py's patching of the upstream script and its reading of the printed table.

The upstream script is not in this repository (nor fetchable in CI), so a stand-in holds each line the
patch looks for: each is replaced, a missing one stops the run naming it, and the table parses.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "airbench94_reference", ROOT / "bench" / "airbench94_reference.py"
)
reference = importlib.util.module_from_spec(_spec)
sys.modules["airbench94_reference"] = reference
_spec.loader.exec_module(reference)

HEADER = "#############################################\n#                DataLoader"


def _stand_in() -> str:
    body = "\n".join(old for old, _new in reference.REPLACEMENTS)
    return f"hyp = {{'opt': {{'train_epochs': 9.9,}}}}\n{HEADER}\n{body}\ntorch.cuda.synchronize()\n"


def test_every_replacement_is_made_and_the_copy_compiles() -> None:
    copy = reference.cpu_copy(_stand_in(), epochs=0.5)
    for old, new in reference.REPLACEMENTS:
        assert old not in copy and new in copy
    assert "'train_epochs': 0.5," in copy and "torch.cuda" not in copy
    compile(copy, "airbench94_cpu.py", "exec")
    assert copy.index("class _CpuTimer") < copy.index("_CpuTimer()")  # defined before its first use
    namespace: dict = {}
    exec(reference.CPU_TIMER, namespace)
    start, end = namespace["_CpuTimer"](), namespace["_CpuTimer"]()
    start.record()
    end.record()
    assert start.elapsed_time(end) >= 0.0


def test_a_changed_upstream_line_stops_the_run_naming_it() -> None:
    old = reference.REPLACEMENTS[2][0]
    with pytest.raises(SystemExit, match="net.half"):
        reference.cpu_copy(_stand_in().replace(old, "net = net.bfloat16().cuda()"), epochs=None)


def test_the_printed_table_parses_per_epoch_and_with_tta() -> None:
    log = "\n".join(
        [
            "|  run  |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_s  |",
            "|    0  |      0  |      1.5180  |     0.6523  |   0.6293  |               |     475.7373  |",
            "|       |   eval  |      0.9845  |     0.9531  |   0.8974  |       0.9063  |    2896.4951  |",
        ]
    )
    first, last = reference.parse(log)
    assert first["epoch"] == 1 and first["test_accuracy"] == 0.6293 and first["test_accuracy_tta"] is None
    assert last["epoch"] == "eval" and last["test_accuracy_tta"] == 0.9063 and last["seconds"] == 2896.4951
