"""The ``lasnn`` command line: one verb per stage, each registered by the stage that implements it.

Each stage package has a ``commands`` module with ``register(subparsers)`` that adds its verbs and sets
``func=`` to a function ``(args) -> int``. Errors of type ``LasnnError`` print one sentence and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lasnn import __version__
from lasnn.errors import LasnnError

# (module, verbs it registers) in pipeline order; a module that is missing or fails to import is an error.
STAGE_COMMANDS = (
    "lasnn.distill.commands",  # teach, distill, convert
    "lasnn.export.commands",  # export
    "lasnn.sims.commands",  # simulate
    "lasnn.reports.commands",  # report
    "lasnn.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
