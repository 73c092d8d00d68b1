"""The ``lasnn`` command line: one verb per stage, each registered by the stage that implements it.

Each stage package has a ``commands`` module with ``register(subparsers)`` that adds its verbs and sets
``func=`` to a function ``(args) -> int``. Errors of type ``LasnnError`` print one sentence and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import NoReturn

from lasnn import __version__
from lasnn.errors import LasnnError

# norse 1.1.0 calls torch.jit.script at import, which torch >= 2.10 deprecates: a warning users can do
# nothing about, and it would break the one-line error rule on every command.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

# (module, verbs it registers) in pipeline order; a module that is missing or fails to import is an error.
STAGE_COMMANDS = (
    "lasnn.distill.commands",  # teach, distill, convert
    "lasnn.export.commands",  # export
    "lasnn.hardware.commands",  # compile
    "lasnn.sims.commands",  # simulate
    "lasnn.reports.commands",  # report
    "lasnn.demo",  # demo
)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (the rule for every user error), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lasnn",
        description="Layer-wise ANN-to-SNN distillation: teach an ANN, distill a spiking student, export it "
        "to NIR, simulate it on Loihi (Lava), and report energy and latency.",
    )
    parser.add_argument("--version", action="version", version=f"lasnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module_name in STAGE_COMMANDS:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LasnnError as error:
        if args.debug:
            raise
        print(f"lasnn {args.verb}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"lasnn {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
