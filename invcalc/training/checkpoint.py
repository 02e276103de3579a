"""Training checkpoints: written atomically after every epoch, read back safely.

One file holds everything an interrupted run needs to continue exactly where the last
finished epoch left it: the weights, the best weights so far, the optimiser and
scheduler states, the shuffling generator, the epoch counter and the early-stopping
bookkeeping, with the config and a fingerprint of the data that wrote it.  It is a
plain dict of tensors and primitives, loaded with ``torch.load(weights_only=True)``,
so reading a checkpoint never runs code from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing as tp
from pathlib import Path

import torch
from torch import Tensor

FORMAT = "invcalc-train-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable, foreign, or from an incompatible run."""


@dataclasses.dataclass
class Progress:
    """Bookkeeping that survives an interruption (JSON-able).

    ``epoch``: epochs completed; ``best_loss``/``best_epoch``: best monitored loss
    and the epoch (1-based) that reached it; ``bad_epochs``: epochs since then;
    ``stopped``: early stopping has ended the run; ``history``: one dict per epoch.
    """

    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


class Checkpoint(tp.NamedTuple):
    """What a checkpoint file holds (tensors on the CPU)."""

    config: dict[str, tp.Any]
    data_fingerprint: str
    progress: Progress
    model: dict[str, Tensor]
    best_model: dict[str, Tensor]
    optimizer: dict[str, tp.Any]
    scheduler: dict[str, tp.Any]
    shuffle_rng: Tensor


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(checkpoint.config),
        "data_fingerprint": checkpoint.data_fingerprint,
        "progress": json.dumps(dataclasses.asdict(checkpoint.progress)),
        "model": _cpu(checkpoint.model),
        "best_model": _cpu(checkpoint.best_model),
        "optimizer": _cpu(checkpoint.optimizer),
        "scheduler": checkpoint.scheduler,
        "shuffle_rng": checkpoint.shuffle_rng.cpu(),
    }
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; ``CheckpointError`` if bad."""
    name = os.fspath(path)
    try:
        payload = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, refused pickle, I/O error
        raise CheckpointError(
            f"{name}: unreadable training checkpoint ({type(err).__name__}: {err}); delete "
            "it to start afresh"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not an invcalc training checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{name}: checkpoint version {payload.get('format_version')!r} is not supported"
        )
    try:
        return Checkpoint(
            config=json.loads(payload["config"]),
            data_fingerprint=str(payload["data_fingerprint"]),
            progress=Progress(**json.loads(payload["progress"])),
            model=payload["model"],
            best_model=payload["best_model"],
            optimizer=payload["optimizer"],
            scheduler=payload["scheduler"],
            shuffle_rng=payload["shuffle_rng"],
        )
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{name}: damaged training checkpoint ({err})") from err


def _cpu(tree: tp.Any) -> tp.Any:
    """A copy of nested dicts/lists with every tensor detached and moved to the CPU."""
    if isinstance(tree, Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cpu(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_cpu(v) for v in tree)
    return tree
