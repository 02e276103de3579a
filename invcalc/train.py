"""Train an invariant potential on energies and forces: ``fit(TrainConfig(...))``.

>>> from invcalc.train import TrainConfig, fit
>>> result = fit(TrainConfig(data="train.extxyz", out="model.pt"))     # doctest: +SKIP
>>> result.report["validation"]["force_mae_eV_per_A"]                  # doctest: +SKIP

Writes ``model.pt`` (``invcalc.load_model``), ``model.metrics.json``,
``model.parity.png`` and ``model.checkpoints/last.pt``; see ``TrainConfig`` for the
loss and every option.  The pieces live in ``invcalc.training``: ``dataset`` (reading
and splitting), ``baseline`` (self-energies), ``batches`` (padding, cached pairs),
``objective`` (per-member forces and loss), ``checkpoint``, ``report`` (metrics,
parity plot) and ``loop``.

``add_train_arguments``/``run_train`` provide the ``invcalc train DATA --out MODEL``
command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from invcalc.spec import FeatureSpec
from invcalc.training.baseline import SelfEnergyFit, fit_self_energies
from invcalc.training.checkpoint import CheckpointError
from invcalc.training.config import TrainConfig, architecture_of
from invcalc.training.dataset import LabelledData, read_labelled
from invcalc.training.loop import TrainResult, fit

__all__ = [
    "TrainConfig",
    "TrainResult",
    "fit",
    "read_labelled",
    "LabelledData",
    "fit_self_energies",
    "SelfEnergyFit",
    "CheckpointError",
    "add_train_arguments",
    "run_train",
]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``invcalc train`` arguments to ``parser`` (a subcommand parser)."""
    d = TrainConfig(data="-", out="-")
    add = parser.add_argument
    add("data", help="training data: extxyz or any ASE-readable file, or an ASE .db")
    add("--out", required=True, help="model file to write (e.g. model.pt)")
    add("--elements", nargs="+", metavar="SYMBOL",
        help="model elements (default: those in the data)")
    add("--features", metavar="JSON",
        help="AEV hyper-parameters overriding the defaults: JSON text or a .json file, "
             "e.g. '{\"radial_cutoff\": 5.0}'")
    add("--hidden", nargs="+", type=int, metavar="WIDTH",
        help=f"hidden-layer widths (default: {' '.join(map(str, d.hidden))})")
    add("--activation", choices=["gelu", "silu", "celu"], help=f"(default: {d.activation})")
    add("--ensemble-size", type=int,
        help=f"independently trained members (default: {d.ensemble_size})")
    add("--init", metavar="MODEL",
        help="fine-tune: start from this model file's weights and self-energies; its "
             "architecture is kept (architecture options default to it)")
    add("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default: {d.epochs})")
    add("--batch-size", type=int, default=d.batch_size, help=f"(default: {d.batch_size})")
    add("--lr", type=float, default=d.lr, help=f"initial AdamW learning rate (default: {d.lr})")
    add("--weight-decay", type=float, default=d.weight_decay, help=f"(default: {d.weight_decay})")
    add("--force-weight", type=float, default=d.force_weight,
        help=f"weight of the force MSE vs the per-atom energy MSE (default: {d.force_weight})")
    add("--val-fraction", type=float, default=d.val_fraction,
        help=f"fraction held out for validation (default: {d.val_fraction})")
    add("--group-key", metavar="KEY",
        help="keep structures with the same atoms.info[KEY] (e.g. smiles) in one split")
    add("--max-force", type=float, metavar="EV_PER_A",
        help="leave out structures with any reference force above this (eV/Å); "
             "default: keep all")
    add("--patience", type=int, default=d.patience,
        help=f"early-stopping patience in epochs (default: {d.patience})")
    add("--schedule", choices=["plateau", "cosine"], default=d.schedule)
    add("--keep", choices=["best", "last"], default=d.keep,
        help="weights written to the model file: the best validation epoch's or the last "
             f"epoch's, e.g. after a cosine schedule (default: {d.keep}); may change on resume")
    add("--seed", type=int, default=d.seed)
    add("--device", help="torch device (default: cuda if available, else cpu)")
    add("--dtype", choices=["float32", "float64"], default=d.dtype)
    add("--checkpoint-dir", metavar="DIR",
        help="checkpoint folder (default: MODEL stem + .checkpoints)")
    add("--resume", action=argparse.BooleanOptionalAction, default=True,
        help="continue from the checkpoint if there is one, so that rerunning an "
             "interrupted command finishes it (default); --no-resume starts afresh")
    add("--energy-key", metavar="KEY", help="read energies from atoms.info[KEY]")
    add("--forces-key", metavar="KEY", help="read forces from atoms.arrays[KEY]")
    add("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    add("--plot", action=argparse.BooleanOptionalAction, default=True,
        help="write the parity plot")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``invcalc train`` arguments."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if "features" in values:
        values["features"] = _features(values["features"])
    for key in ("elements", "hidden"):
        if key in values:
            values[key] = tuple(values[key])
    if values.get("init") is not None:  # fine-tuning: the model's architecture by default
        for key, value in architecture_of(values["init"]).items():
            values.setdefault(key, value)
    return TrainConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    """Run ``invcalc train``: fit, print a summary, return the exit status (0)."""
    config = config_from_args(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = fit(config)
    val = result.report["validation"] or result.report["train"]
    split = "validation" if result.report["validation"] else "train"
    print(
        f"wrote {result.model_path} (weights of epoch {result.report['kept_epoch']} of "
        f"{result.epochs_run}, --keep {config.keep}; lowest monitored loss at epoch "
        f"{result.best_epoch}"
        f"{', stopped early' if result.stopped_early else ''})\n"
        f"{split}: energy MAE {1000 * val['energy_mae_per_atom_eV']:.3g} meV/atom "
        f"({val['energy_mae_per_molecule_kcal_mol']:.3g} kcal/mol per molecule), "
        f"force MAE {val['force_mae_eV_per_A']:.3g} eV/Å\n"
        f"metrics: {result.metrics_path}"
        + (f"\nparity plot: {result.plot_path}" if result.plot_path else ""),
        file=sys.stdout,
    )
    return 0


def _features(text: str) -> FeatureSpec:
    """A ``FeatureSpec`` from JSON text or a JSON file of overrides."""
    source = text
    if os.path.isfile(text):
        with open(text) as handle:
            source = handle.read()
    try:
        overrides = json.loads(source)
    except json.JSONDecodeError as err:
        raise ValueError(f"--features: not JSON text or a JSON file ({err})") from None
    if not isinstance(overrides, dict):
        raise ValueError("--features: expected a JSON object of FeatureSpec fields")
    known = {f.name for f in dataclasses.fields(FeatureSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"--features: unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return FeatureSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
