"""``lasnn compile GRAPH.nir -o MODEL``: quantise a NIR graph to Loihi 2 fixed point once and write the
compiled model (``lasnn.hardware.compiled_model``), which ``lasnn simulate`` runs on Lava and the emulator;
``lasnn export-netx MODEL -o NET.h5``: write a compiled model in lava-dl's netx format (``hardware.netx``).
"""

from __future__ import annotations

import argparse
import json

from lasnn.export.nir_io import WRITERS
from lasnn.hardware.compiled_model import CALIBRATION_SAMPLES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compile",
        help="quantise a NIR graph to Loihi 2 fixed point and write the compiled model",
        description="Compile a NIR graph into a Loihi 2 fixed-point model (integers, schedule, delays, input "
        "mode, quantisation report and provenance). Scales are calibrated on --calibration X.npy if given, "
        "else on the training split of the graph's data set, else bounded statically; never on the "
        "samples that are later scored.",
    )
    p.add_argument("graph", help="the .nir graph (from lasnn export, or another framework's)")
    p.add_argument("-o", "--output", required=True, help="compiled model to write")
    p.add_argument(
        "--calibration",
        help="pre-encoded calibration inputs .npy of shape (N, T, *input_shape) (default: the graph's "
        "data set, training split)",
    )
    p.add_argument("--dataset", help="data set for calibration (default: the one recorded in the graph)")
    p.add_argument("--data-root", help="folder holding the data set (default: $LASNN_DATA_ROOT or ./data)")
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=CALIBRATION_SAMPLES,
        help=f"calibration samples used (default: {CALIBRATION_SAMPLES})",
    )
    p.add_argument(
        "--input-mode",
        choices=("spikes", "currents"),
        help="spikes: binary input spike trains through on-chip synapses; currents: analog input whose "
        "first synapse stage the host computes in integers (default: from the graph's encoding; spikes "
        "when it records none)",
    )
    p.add_argument("--timesteps", type=int, help="time steps T per sample (default: the graph's)")
    p.add_argument("--dt", type=float, help="time step in seconds for a foreign NIR file (default: its own)")
    p.add_argument(
        "--from",
        dest="written_by",
        choices=tuple(WRITERS),
        help="the framework whose own exporter wrote a foreign .nir, for its dt and "
        "discretisation (see lasnn export --help)",
    )
    p.add_argument("--margin", type=float, default=2.0, help="u/v headroom factor over calibration (2)")
    p.add_argument(
        "--bias-grid",
        type=int,
        metavar="N",
        help="put every neuron bias on multiples of N (a power of two, 1..128) of Loihi's v, rounded to "
        "nearest, the error in the report; 64 is what lava-dl netx holds (export-netx needs it for "
        "biased layers, e.g. batch norm) (default: a free exponent per neuron)",
    )
    p.set_defaults(func=run)

    n = subparsers.add_parser(
        "export-netx",
        help="write a compiled model in lava-dl's netx HDF5 format",
        description="Write a compiled Loihi model (from lasnn compile) as a lava-dl netx HDF5 file that "
        "lava.lib.dl.netx.hdf5.Network loads, integer for integer. What netx cannot express is refused in "
        "one sentence naming the layer; exact workarounds are printed as notes.",
    )
    n.add_argument("model", help="the compiled model (lasnn compile GRAPH.nir -o MODEL)")
    n.add_argument("-o", "--output", required=True, help="netx .h5 file to write")
    n.set_defaults(func=run_export_netx)


def run_export_netx(args: argparse.Namespace) -> int:
    from lasnn.api import export_netx

    summary = export_netx(args.model, args.output)
    print(json.dumps({k: v for k, v in summary.items() if k != "notes"}))
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.output}")
    return 0


def run(args: argparse.Namespace) -> int:
    from lasnn.api import compile_loihi  # the verb is a thin caller of the Python API

    model = compile_loihi(
        args.graph,
        args.calibration,
        dataset=args.dataset,
        data_root=args.data_root,
        timesteps=args.timesteps,
        input_mode=args.input_mode,
        calibration_samples=args.calibration_samples,
        margin=args.margin,
        dt=args.dt,
        written_by=args.written_by,
        out=args.output,
        bias_grid=args.bias_grid,
    )
    prov = model.provenance
    summary = {
        "layers": len(model.loihi.layers),
        "synapses": len(model.loihi.synapses),
        "timesteps": model.timesteps,
        "input_mode": model.input_mode,
        "calibration": prov["calibration"]["source"],
        "calibration_samples": prov["calibration"]["samples"],
        "graph_sha256": prov["graph_sha256"][:16],
    }
    if args.bias_grid is not None:  # what the grid cost: biases moved, the worst error / threshold
        summary["bias_grid"] = args.bias_grid
        summary["biases_rounded"] = model.report["biases_rounded"]
        summary["bias_error_threshold_max"] = model.report["bias_error_threshold_max"]
    print(json.dumps(summary))
    print(f"wrote {args.output}")
    return 0
