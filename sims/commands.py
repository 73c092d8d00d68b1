"""``lasnn simulate``: run a NIR graph on Lava's Loihi simulator, the bit-exact emulator or the float
reference, and write ``run.json`` (accuracy and per-layer spikes / synaptic ops / neuron updates per
inference, plus the quantisation report). The work is ``lasnn.sims.run_simulation.simulate``.
"""

from __future__ import annotations

import argparse
import json

from lasnn.export.nir_io import WRITERS
from lasnn.sims.run_simulation import BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="run a NIR graph on Lava (Loihi 2), the emulator or the float reference",
        description="Run a NIR graph on a backend over the first N test samples of a data set (or "
        "pre-encoded inputs for foreign graphs) and write run.json with accuracy and per-layer activity.",
    )
    p.add_argument(
        "graph",
        help="a compiled model (lasnn compile) or a .nir graph (from lasnn export, or another framework's), "
        "which the integer backends compile on the fly by lasnn compile's rule",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="emulator",
        help="lava: Lava's fixed-point Loihi 2 simulator; emulator: the bit-exact batched emulator; "
        "float: the unquantised reference (default: emulator)",
    )
    p.add_argument("--dataset", help="data set name (default: the one recorded in the graph)")
    p.add_argument("--data-root", help="folder holding the data set (default: $LASNN_DATA_ROOT or ./data)")
    p.add_argument("--samples", type=int, help="simulate the first N test samples (default: all)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="samples per backend call (lava: per Lava run; default 100 for lava, 1024 for the emulator, "
        "which splits a call into cache-sized chunks itself, 256 for float)",
    )
    p.add_argument("--device", default="cpu", help="emulator device: cpu or cuda (default: cpu)")
    p.add_argument(
        "--inputs", help="pre-encoded inputs .npy of shape (N, T, *input_shape) instead of a data set"
    )
    p.add_argument("--labels", help="integer labels .npy of shape (N,) for --inputs (to report accuracy)")
    p.add_argument("--timesteps", type=int, help="time steps T (default: the graph's)")
    p.add_argument(
        "--calibration",
        help="for a .nir on lava/emulator: calibration inputs .npy (N, T, *input_shape), as lasnn compile",
    )
    p.add_argument(
        "--input-mode",
        choices=("spikes", "currents"),
        help="for a .nir on lava/emulator: the input mode, as lasnn compile (default: from the graph)",
    )
    p.add_argument("--dt", type=float, help="for a foreign .nir: its time step in seconds (default: its own)")
    p.add_argument(
        "--from",
        dest="written_by",
        choices=tuple(WRITERS),
        help="for a foreign .nir: the framework whose own exporter wrote it, for its dt "
        "and discretisation (see lasnn export --help)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson encoder (default: 0)")
    p.add_argument("-o", "--output", required=True, help="run record to write (run.json)")
    p.add_argument("--save-spikes", help="also write every layer's spike trains to this .npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lasnn.api import simulate  # the verb is a thin caller of the Python API

    record = simulate(
        args.graph,
        args.backend,
        dataset=args.dataset,
        samples=args.samples,
        batch_size=args.batch_size,
        device=args.device,
        data_root=args.data_root,
        inputs=args.inputs,
        labels=args.labels,
        timesteps=args.timesteps,
        out=args.output,
        save_spikes=args.save_spikes,
        seed=args.seed,
        progress=not args.quiet,
        calibration=args.calibration,
        input_mode=args.input_mode,
        dt=args.dt,
        written_by=args.written_by,
    )
    summary = {k: record[k] for k in ("backend", "samples", "timesteps", "accuracy", "wall_seconds")}
    print(json.dumps(summary))
    print(f"wrote {args.output}")
    return 0
