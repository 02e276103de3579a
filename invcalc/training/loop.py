"""``fit``: read data, fit self-energies, train the ensemble, write model and reports.

Each epoch shuffles the training split with a private seeded generator, takes one
AdamW step per batch on the sum of the members' losses (see
``invcalc.training.objective``), evaluates the monitored loss (validation split, or the
training split when ``val_fraction`` is 0), steps the learning-rate schedule, keeps the
best weights and writes a checkpoint.  Nothing here touches torch's global RNG, default
dtype or thread settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import typing as tp
from pathlib import Path

import torch
from torch import Tensor

from invcalc._version import __version__
from invcalc.modelfile import save_model
from invcalc.potential import InvariantPotential
from invcalc.training.baseline import SelfEnergyFit, fit_self_energies
from invcalc.training.batches import PairCache, batches
from invcalc.training.checkpoint import Checkpoint, CheckpointError, Progress
from invcalc.training.checkpoint import load_checkpoint, save_checkpoint
from invcalc.training.config import TrainConfig
from invcalc.training.dataset import LabelledData, read_labelled, split_indices
from invcalc.training.dataset import within_max_force
from invcalc.training.objective import loss_terms, member_outputs
from invcalc.training.report import Predictions, metrics, parity_plot, predict

log = logging.getLogger("invcalc.train")

#: Training stops once the learning rate has fallen below this fraction of ``lr``.
MIN_LR_FRACTION = 1e-3


@dataclasses.dataclass
class TrainResult:
    """What ``fit`` produced.  ``potential`` holds the kept weights (``TrainConfig.keep``:
    the best or the last epoch's), in eval mode."""

    potential: InvariantPotential
    model_path: Path
    metrics_path: Path
    plot_path: Path | None
    checkpoint_path: Path
    #: The metrics JSON as a dict ("validation", "train", "history", ...).
    report: dict[str, tp.Any]
    epochs_run: int
    best_epoch: int
    stopped_early: bool

    @property
    def history(self) -> list[dict[str, float]]:
        """One record per epoch: lr, train_loss, monitored loss, MAEs, seconds."""
        return self.report["history"]


def fit(
    config: TrainConfig, *, callback: tp.Callable[[dict[str, float]], None] | None = None
) -> TrainResult:
    """Train an ensemble on ``config.data`` and write ``config.out`` and its reports.

    ``callback`` receives each epoch's history record after that epoch's checkpoint is
    on disk (an exception raised there interrupts training resumably).
    """
    device = _device(config.device)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    data = read_labelled(
        config.data, energy_key=config.energy_key, forces_key=config.forces_key,
        group_key=config.group_key,
    )
    dropped = 0
    if config.max_force is not None:
        data, dropped = within_max_force(data, config.max_force)
        if dropped:
            log.info("left out %d of %d structures with a force above %g eV/Å",
                     dropped, len(data) + dropped, config.max_force)
    elements = config.elements or data.elements
    data.check_elements(elements)
    fingerprint = data.fingerprint()
    train_idx, val_idx = split_indices(data, config.val_fraction, config.seed)
    unseen = set(elements) - set(data.subset(train_idx).elements)
    if unseen:
        raise ValueError(
            f"{config.data}: element(s) {', '.join(sorted(unseen))} occur only in the "
            "validation split; add data, change the seed or lower val_fraction"
        )
    baseline = fit_self_energies(
        data.subset(train_idx).element_counts(elements), data.energies[train_idx], elements
    )
    data = _to_device(data, device)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    if config.init is not None:
        potential = _initial_model(config, elements)
    else:
        potential = InvariantPotential.build(
            elements, features=config.features, hidden=config.hidden,
            activation=config.activation, ensemble_size=config.ensemble_size,
            self_energies=baseline.self_energies.tolist(), seed=config.seed,
        )
    potential = potential.to(device=device, dtype=dtype)
    cache = PairCache.build(data, potential.element_indices, potential.cutoff, dtype)
    optimizer = torch.optim.AdamW(
        potential.networks.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = _scheduler(optimizer, config)
    shuffle = torch.Generator().manual_seed(config.seed)
    progress = Progress()
    best = _copy_state(potential)
    ckpt_path = config.checkpoint_path
    if config.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(config, ckpt, fingerprint, ckpt_path)
        potential.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
        shuffle.set_state(ckpt.shuffle_rng)
        progress, best = ckpt.progress, ckpt.best_model
        log.info("resuming %s after epoch %d", ckpt_path, progress.epoch)
    elif config.resume:
        log.info("no checkpoint at %s: starting afresh", ckpt_path)
    monitored_idx = val_idx if len(val_idx) else train_idx
    bar = _bar(config, progress.epoch)
    try:
        while progress.epoch < config.epochs and not progress.stopped:
            start = time.perf_counter()
            potential.train()
            train_loss = _train_epoch(
                potential, optimizer, data, cache, train_idx, config, shuffle, bar
            )
            potential.eval()
            pred = predict(
                potential, data, cache, monitored_idx,
                batch_size=config.batch_size, force_weight=config.force_weight,
            )
            lr = optimizer.param_groups[0]["lr"]
            _step(scheduler, pred.member_loss)
            progress.epoch += 1
            if pred.member_loss < progress.best_loss:
                progress.best_loss, progress.best_epoch, progress.bad_epochs = (
                    pred.member_loss, progress.epoch, 0,
                )
                best = _copy_state(potential)
            else:
                progress.bad_epochs += 1
            new_lr = optimizer.param_groups[0]["lr"]
            progress.stopped = (
                progress.bad_epochs >= config.patience or new_lr < MIN_LR_FRACTION * config.lr
            )
            stats = metrics(pred)
            record = {
                "epoch": progress.epoch,
                "lr": lr,
                "train_loss": train_loss,
                "monitored_loss": pred.member_loss,
                "energy_mae_per_atom_eV": stats["energy_mae_per_atom_eV"],
                "force_mae_eV_per_A": stats["force_mae_eV_per_A"],
                "seconds": time.perf_counter() - start,
            }
            progress.history.append(record)
            save_checkpoint(ckpt_path, Checkpoint(
                config.to_json(), fingerprint, progress, potential.state_dict(), best,
                optimizer.state_dict(), scheduler.state_dict(), shuffle.get_state(),
            ))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{pred.member_loss:.3g}",
                    E=f"{1000 * record['energy_mae_per_atom_eV']:.3g} meV/at",
                    F=f"{record['force_mae_eV_per_A']:.3g} eV/Å",
                    lr=f"{lr:.2g}",
                )
            else:  # no bar (e.g. a log file): one line per epoch
                log.info(
                    "epoch %d/%d: train loss %.4g, monitored loss %.4g, E MAE %.3g meV/atom, "
                    "F MAE %.3g eV/Å, lr %.2g, %.0f s", progress.epoch, config.epochs,
                    train_loss, pred.member_loss, 1000 * record["energy_mae_per_atom_eV"],
                    record["force_mae_eV_per_A"], lr, record["seconds"],
                )
            if callback is not None:
                callback(dict(record))
    finally:
        if bar is not None:
            bar.close()
    if config.keep == "best":
        potential.load_state_dict(best)
    potential.eval()
    return _finish(
        config, potential, data, cache, train_idx, val_idx, baseline, fingerprint, progress,
        dropped,
    )


def _train_epoch(
    potential: InvariantPotential,
    optimizer: torch.optim.Optimizer,
    data: LabelledData,
    cache: PairCache,
    index: Tensor,
    config: TrainConfig,
    shuffle: torch.Generator,
    bar: tp.Any,
) -> float:
    """One pass over ``index``; returns the structure-weighted mean member loss."""
    total, count = 0.0, 0
    inner = None
    if bar is not None:
        from tqdm import tqdm

        inner = tqdm(total=-(-len(index) // config.batch_size), leave=False, desc="batches")
    forces = config.force_weight > 0
    for batch in batches(data, cache, index, config.batch_size, potential.dtype, shuffle):
        out = member_outputs(potential, batch, forces=forces, create_graph=forces)
        per_member = loss_terms(out, batch).total(config.force_weight)
        if not bool(torch.isfinite(per_member).all()):
            raise FloatingPointError(
                f"training diverged: the loss is {per_member.tolist()} (per member); lower "
                "lr or check the data. The last checkpoint holds the previous epoch."
            )
        optimizer.zero_grad(set_to_none=True)
        per_member.sum().backward()  # members independent: see objective.py
        optimizer.step()
        n = len(batch.energies)
        total += float(per_member.detach().mean()) * n
        count += n
        if inner is not None:
            inner.update(1)
    if inner is not None:
        inner.close()
    return total / max(count, 1)


def _finish(
    config: TrainConfig,
    potential: InvariantPotential,
    data: LabelledData,
    cache: PairCache,
    train_idx: Tensor,
    val_idx: Tensor,
    baseline: SelfEnergyFit,
    fingerprint: str,
    progress: Progress,
    dropped: int,
) -> TrainResult:
    """Metrics, plot and model file for the kept weights (``dropped``: structures left
    out by ``max_force``)."""
    kw = dict(batch_size=config.batch_size, force_weight=config.force_weight)
    train_pred = predict(potential, data, cache, train_idx, **kw)
    val_pred: Predictions | None = None
    if len(val_idx):
        val_pred = predict(potential, data, cache, val_idx, **kw)
    elements = potential.elements
    report: dict[str, tp.Any] = {
        "validation": metrics(val_pred) if val_pred is not None else None,
        "train": metrics(train_pred),
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "kept_epoch": progress.best_epoch if config.keep == "best" else progress.epoch,
        "stopped_early": progress.stopped,
        "reference_method": data.reference_method,
        "data": {
            "path": os.fspath(config.data),
            "num_structures": len(data),
            "num_train": int(len(train_idx)),
            "num_validation": int(len(val_idx)),
            "num_atoms": int(data.num_atoms.sum()),
            "num_left_out_max_force": dropped,
            "elements": list(elements),
            "sha256": fingerprint,
        },
        "self_energies_eV": dict(zip(elements, potential.self_energies.tolist())),
        "self_energy_fit": {"rank": baseline.rank, "rmse_per_atom_eV": baseline.rmse_per_atom,
                            "used": config.init is None},
        "command": config.command(),
        "config": config.to_json(),
        "invcalc_version": __version__,
        "history": progress.history,
    }
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    training = {k: v for k, v in report.items() if k not in ("reference_method",)}
    save_model(
        potential, out, reference_method=data.reference_method,
        validation_metrics=report["validation"], training=training,
    )
    _write_json(config.metrics_path, report)
    plot_path = None
    if config.plot:
        plot_path = config.plot_path
        main, label = (val_pred, "validation") if val_pred is not None else (train_pred, "train")
        title = f"{out.name}: {data.reference_method or 'reference'}, {len(data)} structures"
        parity_plot(plot_path, main, label, train_pred if val_pred is not None else None, title)
    return TrainResult(
        potential, out, config.metrics_path, plot_path, config.checkpoint_path, report,
        progress.epoch, progress.best_epoch, progress.stopped,
    )


def _write_json(path: Path, content: dict[str, tp.Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    return device


def _to_device(data: LabelledData, device: torch.device) -> LabelledData:
    moved = {
        f.name: getattr(data, f.name).to(device)
        for f in dataclasses.fields(data)
        if isinstance(getattr(data, f.name), Tensor)
    }
    return dataclasses.replace(data, **moved)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> tp.Any:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.lr / 100
        )
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, config.patience // 4)
    )


def _step(scheduler: tp.Any, monitored: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(monitored)
    else:
        scheduler.step()


def _initial_model(config: TrainConfig, elements: tp.Sequence[str]) -> InvariantPotential:
    """The ``config.init`` model, trainable, after checking the config agrees with it.

    Its self-energies are kept (the networks learned relative to them).
    """
    from invcalc.modelfile import load_model
    from invcalc.training.config import architecture_of

    arch = architecture_of(config.init)
    given = {"elements": tuple(config.elements or elements), "features": config.features,
             "hidden": config.hidden, "activation": config.activation,
             "ensemble_size": config.ensemble_size}
    if config.features is None:
        given.pop("features")
    if config.elements is None:  # elements from the data: need only be covered
        missing = set(elements) - set(arch["elements"])
        if missing:
            raise ValueError(f"{config.init}: the data hold {', '.join(sorted(missing))}, "
                             f"which the model to fine-tune lacks ({', '.join(arch['elements'])})")
        given.pop("elements")
    wrong = [f"{k} {v!r} (the model has {arch[k]!r})" for k, v in given.items() if v != arch[k]]
    if wrong:
        raise ValueError(f"init={config.init}: the architecture is the model's; these differ: "
                         + "; ".join(wrong))
    potential = load_model(config.init)
    potential.requires_grad_(True)
    potential.metadata = {}
    return potential


def _copy_state(potential: InvariantPotential) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in potential.state_dict().items()}


def _check_resumable(config: TrainConfig, ckpt: Checkpoint, fingerprint: str, path: Path) -> None:
    problems = config.resume_mismatches(ckpt.config)
    if ckpt.data_fingerprint != fingerprint:
        problems.append("data: the training data differ from those the checkpoint was trained on")
    if problems:
        raise CheckpointError(
            f"{path}: cannot resume a different run ({'; '.join(problems)}); use another "
            "checkpoint_dir or resume=False to start afresh"
        )


def _bar(config: TrainConfig, done: int) -> tp.Any:
    if not config.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError as err:
        raise ImportError(
            "progress bars need tqdm (pip install 'invcalc[train]'), or set progress=False"
        ) from err
    return tqdm(total=config.epochs, initial=done, desc="epochs", unit="epoch")
