"""The ``invcalc`` command line.

Each subcommand is one ``_add_<name>_parser(subparsers)`` function that declares its
options and sets ``func`` (called with the parsed namespace, returning an exit code);
:func:`build_parser` registers them from :data:`_SUBCOMMANDS`. Keep this file thin: the
work happens in library modules (``invcalc.data`` for ``label``, ``invcalc.train``
for ``train``).

    invcalc label --split test -o data/test.extxyz --workers 4
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable, Sequence

_SMILES_HELP = (
    "SMILES list file, or a shipped list by name: curated (the default, "
    "invcalc/data/molecules.smi) or substituted (one-substituent derivatives of its "
    "training molecules, invcalc/data/substituted.smi)"
)


def _add_pool_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--workers", type=int, default=1,
                   help="worker processes, one OpenMP thread each by default; 0 runs in this process "
                        "with the OpenMP threads its environment gives (default: 1)")
    p.add_argument("--threads-per-worker", type=int, default=1,
                   help="OpenMP (and torch) threads of each worker process (default: 1)")


def _add_label_parser(subparsers: argparse._SubParsersAction) -> None:
    from invcalc.data.tasks import SamplingConfig

    d = SamplingConfig()
    p = subparsers.add_parser(
        "label",
        help="make GFN2-xTB reference data (tblite) for a SMILES list",
        description=(
            "Sample geometries (xTB relaxation, Langevin MD, normal-mode and random "
            "displacements, water/methanol clusters) and label them with GFN2-xTB. Output "
            "is extxyz (energy eV, forces eV/Å) plus a journal OUTPUT.done; rerunning the "
            "same command resumes, skipping finished tasks. Needs the data extra: "
            "pip install 'invcalc[data]'."
        ),
    )
    p.add_argument("--smiles", default=None, help=_SMILES_HELP)
    p.add_argument("--split", choices=("train", "test", "all"), default="train",
                   help="molecules to label (default: train; test molecules are held out)")
    p.add_argument("-o", "--output", default=None, help="extxyz output (default: gfn2xtb_<split>.extxyz)")
    _add_pool_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="only the first N molecules of the split")
    p.add_argument("--seed", type=int, default=0, help="global seed (default: 0)")
    g = p.add_argument_group("per-molecule sampling")
    g.add_argument("--conformers", type=int, default=d.n_conformers, help="RDKit conformers")
    g.add_argument("--relax-frames", type=int, default=d.relax_frames,
                   help="frames along each conformer's xTB relaxation (last = relaxed)")
    g.add_argument("--temperatures", type=float, nargs="+", default=list(d.md_temperatures_K),
                   metavar="K", help="MD temperatures, one trajectory each")
    g.add_argument("--md-frames", type=int, default=d.md_frames, help="frames per MD trajectory")
    g.add_argument("--md-interval", type=int, default=d.md_interval, help="MD steps between frames")
    g.add_argument("--normal-modes", type=int, default=d.normal_mode_frames, help="normal-mode displacements")
    g.add_argument("--rattles", type=int, default=d.rattle_frames, help="random Cartesian displacements")
    g = p.add_argument_group("clusters")
    g.add_argument("--clusters", type=int, default=0,
                   help="water/methanol/mixed clusters per split (default: 0); a 16-molecule "
                        "cluster costs about as much as 20 molecules")
    g.add_argument("--cluster-sizes", type=int, nargs=2, default=list(d.cluster_size_range),
                   metavar=("MIN", "MAX"), help="molecules per cluster")
    g.add_argument("--cluster-frames", type=int, default=d.cluster_md_frames, help="MD frames per cluster")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_label)


def _run_label(args: argparse.Namespace) -> int:
    from invcalc.data.molecules import read_smiles_file, select
    from invcalc.data.tasks import SamplingConfig, plan_tasks

    config = SamplingConfig(
        n_conformers=args.conformers,
        relax_frames=args.relax_frames,
        md_temperatures_K=tuple(args.temperatures),
        md_frames=args.md_frames,
        md_interval=args.md_interval,
        normal_mode_frames=args.normal_modes,
        rattle_frames=args.rattles,
        cluster_size_range=tuple(args.cluster_sizes),
        cluster_md_frames=args.cluster_frames,
    )
    entries = read_smiles_file(args.smiles)
    if args.limit is not None:
        entries = select(entries, args.split)[: args.limit]
    tasks = plan_tasks(entries, config, split=args.split, seed=args.seed, n_clusters=args.clusters)
    return _label_tasks(tasks, args.output or f"gfn2xtb_{args.split}.extxyz", args)


def _label_tasks(tasks: list, output: str, args: argparse.Namespace) -> int:
    """Run labelling tasks with a progress bar and print what happened (label, explore)."""
    from invcalc.data.labels import label_dataset, make_process_pool

    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), unit="task", desc="label", disable=args.no_progress)
    counts = {"structures": 0, "failed": 0}

    def on_result(result) -> None:
        counts["structures"] += len(result.records)
        counts["failed"] += result.n_label_failures
        bar.set_postfix(counts, refresh=False)
        bar.update(1)

    executor = make_process_pool(args.workers, args.threads_per_worker) if args.workers > 0 else None
    try:
        summary = label_dataset(tasks, output, executor=executor, on_result=on_result)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        bar.close()

    print(
        f"{output}: {summary.n_run} tasks run, {summary.n_skipped} already done, "
        f"{summary.n_structures} structures written in {summary.wall_seconds:.1f} s "
        f"({summary.structures_per_second:.2f}/s); {summary.n_label_failures} xTB failures skipped, "
        f"{summary.n_shortfall} planned structures not sampled, "
        f"{summary.n_sampling_failures} relax/Hessian failures"
    )
    if summary.n_foreign:
        print(f"note: {output} also holds {summary.n_foreign} tasks not in this plan", file=sys.stderr)
    for task_id, message in summary.errors:
        print(f"error: task {task_id}: {message}", file=sys.stderr)
    return 1 if summary.errors else 0


def _add_explore_parser(subparsers: argparse._SubParsersAction) -> None:
    from invcalc.data.explore import ExploreConfig

    d = ExploreConfig()
    p = subparsers.add_parser(
        "explore",
        help="active learning: label with GFN2-xTB what a model's own MD visits",
        description=(
            "Run Langevin MD with MODEL on the training molecules (and on periodic "
            "water/methanol boxes, carving clusters around the closest contacts), keep the "
            "frames where the ensemble disagrees most, and label them with GFN2-xTB. Output "
            "and resuming as for invcalc label; add the file to the training data."
        ),
    )
    p.add_argument("model", help="model file whose MD explores")
    p.add_argument("-o", "--output", required=True, help="extxyz output")
    _add_pool_arguments(p)
    p.add_argument("--smiles", default=None, help=_SMILES_HELP)
    p.add_argument("--limit", type=int, default=None, help="only the first N training molecules")
    p.add_argument("--seed", type=int, default=0, help="global seed (default: 0)")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(d.temperatures_K), metavar="K",
                   help="MD temperatures, one trajectory per molecule each")
    p.add_argument("--steps", type=int, default=d.steps, help="MD steps per trajectory (0.5 fs)")
    p.add_argument("--frames", type=int, default=d.frames,
                   help="highest-spread frames kept per trajectory (plus a broken one)")
    p.add_argument("--boxes", type=int, default=0, help="periodic boxes (water, methanol, mixed in turn)")
    p.add_argument("--box-steps", type=int, default=d.box_steps, help="MD steps per box")
    p.add_argument("--box-frames", type=int, default=d.box_frames, help="carved clusters kept per box")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_explore)


def _run_explore(args: argparse.Namespace) -> int:
    from invcalc.data.explore import ExploreConfig, plan_explore_tasks
    from invcalc.data.molecules import read_smiles_file, select

    config = ExploreConfig(
        temperatures_K=tuple(args.temperatures), steps=args.steps, frames=args.frames,
        box_steps=args.box_steps, box_frames=args.box_frames,
    )
    entries = read_smiles_file(args.smiles)
    if args.limit is not None:
        entries = select(entries, "train")[: args.limit]
    tasks = plan_explore_tasks(entries, args.model, config, seed=args.seed, n_boxes=args.boxes)
    return _label_tasks(tasks, args.output, args)


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from invcalc.train import add_train_arguments, run_train

    p = subparsers.add_parser(
        "train",
        help="train an invariant potential on energies and forces",
        description=(
            "Fit self-energies, then an ensemble of AEV networks on energies and forces "
            "from any ASE-readable file or ASE database. Writes MODEL, MODEL.metrics.json, "
            "MODEL.parity.png and per-epoch checkpoints; rerunning resumes."
        ),
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_label_parser,
    _add_explore_parser,
    _add_train_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``invcalc`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="invcalc", description="invariant neural potentials for ASE")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``invcalc`` script; returns the exit code."""
    # torchani warns at import that its optional CUDA extensions are missing; the pure
    # PyTorch paths invcalc uses need none of them, so the command line stays quiet.
    warnings.filterwarnings("ignore", message="The extensions.*are not installed")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, ImportError, OSError, FloatingPointError) as err:
        print(f"invcalc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
