"""``TrainConfig``: everything a training run needs, as one small, JSON-able dataclass.

Paths default from ``out`` (``model.pt`` gives ``model.metrics.json``,
``model.parity.png`` and the checkpoint folder ``model.checkpoints/``).  ``to_json``
and ``resume_mismatches`` let a checkpoint remember the run that wrote it, so that a
resumed run refuses to continue with different data, architecture or optimiser.
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp
from pathlib import Path

from invcalc.spec import FeatureSpec

Schedule = tp.Literal["plateau", "cosine"]
DTypeName = tp.Literal["float32", "float64"]

#: Fields that may change between an interrupted run and its resumption.
_FREE_ON_RESUME = frozenset(
    {"data", "out", "checkpoint_dir", "device", "resume", "progress", "plot", "epochs", "patience",
     "keep"}
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run.  Energies in eV, forces in eV/Å, lengths in Å.

    The loss of ensemble member m on a batch of B structures with N_b atoms each is::

        L_m = mean_b ((E_m,b - E_b) / N_b)^2  +  force_weight * mean_(b,i,k) (F_m,bik - F_bik)^2

    (eV^2/atom^2 and eV^2/Å^2; NequIP's default per-atom-MSE + force-MSE pairing), with
    F_m = -dE_m/dr the member's own forces, so members never see each other's errors.
    """

    #: Training data: any file ``ase.io.read`` understands (extxyz, ...) or an ASE ``.db``.
    data: str
    #: Where the model file goes (``invcalc.save_model`` format).
    out: str
    #: Chemical symbols of the model; None takes those present in the data (by Z).
    elements: tuple[str, ...] | None = None
    #: AEV hyper-parameters; None uses ``FeatureSpec()`` (ANI-2x-like).
    features: FeatureSpec | None = None
    #: Hidden-layer widths of every element's network.
    hidden: tuple[int, ...] = (128, 128)
    activation: tp.Literal["gelu", "silu", "celu"] = "gelu"
    #: Number of independently trained ensemble members M.
    ensemble_size: int = 4
    #: Maximum number of epochs (passes over the training split).
    epochs: int = 100
    batch_size: int = 32
    #: Initial AdamW learning rate and decoupled weight decay.
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: Weight of the force MSE relative to the per-atom energy MSE; 0 trains on energies.
    force_weight: float = 1.0
    #: Fraction of structures held out for validation (seeded); 0 monitors training loss.
    val_fraction: float = 0.1
    #: Keep structures sharing ``atoms.info[group_key]`` (e.g. "smiles") in one split.
    group_key: str | None = None
    #: Leave out (of training and validation alike) every structure with an atom whose
    #: reference force is larger than this (eV/Å): extreme, far-from-equilibrium
    #: geometries that dominate a squared loss.  None keeps every structure.
    max_force: float | None = None
    #: Early stopping: epochs without validation improvement before stopping.
    patience: int = 20
    #: "plateau" halves the rate after ``max(1, patience // 4)`` bad epochs; "cosine"
    #: anneals it to lr/100 over ``epochs``.  Training stops once it is below lr/1000.
    schedule: Schedule = "plateau"
    #: Which weights the model file gets: "best" (lowest monitored loss) or "last" (those
    #: of the final epoch, e.g. after a cosine schedule has annealed the rate).
    keep: tp.Literal["best", "last"] = "best"
    seed: int = 0
    #: torch device ("cpu", "cuda", "cuda:1"); None picks CUDA when available.
    device: str | None = None
    dtype: DTypeName = "float32"
    #: Folder of the per-epoch checkpoint; None means ``<out without suffix>.checkpoints``.
    checkpoint_dir: str | None = None
    #: Continue from the checkpoint in ``checkpoint_dir`` if there is one.
    resume: bool = False
    #: Read energies from ``atoms.info[energy_key]`` / forces from
    #: ``atoms.arrays[forces_key]`` instead of the attached (single-point) calculator.
    energy_key: str | None = None
    forces_key: str | None = None
    #: Fine-tuning: start from this model file's weights and self-energies (e.g. to add
    #: active-learning data) instead of fresh ones.  Its elements, features and networks
    #: are the architecture: ``hidden``/``activation``/``ensemble_size`` must agree with
    #: it, and so must ``elements``/``features`` unless None (``architecture_of`` reads
    #: them all; the command line defaults them to the model's).
    init: str | None = None
    #: Show tqdm progress bars; write the parity plot (needs matplotlib).
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {what}")

        need(bool(self.data), "data path is empty")
        need(bool(self.out), "out path is empty")
        need(self.ensemble_size >= 1, "ensemble_size must be at least 1")
        need(self.epochs >= 1, "epochs must be at least 1")
        need(self.batch_size >= 1, "batch_size must be at least 1")
        need(self.lr > 0, "lr must be positive")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.force_weight >= 0, "force_weight must be >= 0")
        need(0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)")
        need(self.patience >= 1, "patience must be at least 1")
        need(self.max_force is None or self.max_force > 0, "max_force must be positive")
        need(len(self.hidden) >= 1 and min(self.hidden) >= 1, "hidden needs positive widths")
        need(self.schedule in ("plateau", "cosine"), "schedule must be 'plateau' or 'cosine'")
        need(self.keep in ("best", "last"), "keep must be 'best' or 'last'")
        need(self.dtype in ("float32", "float64"), "dtype must be 'float32' or 'float64'")
        if self.elements is not None:
            need(len(self.elements) >= 1, "elements must not be empty")
            need(len(set(self.elements)) == len(self.elements), "elements repeat a symbol")
        # frozen: normalise sequences given as lists
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.elements is not None:
            object.__setattr__(self, "elements", tuple(self.elements))

    # ---- derived paths ----------------------------------------------------------------

    def _stem(self) -> Path:
        out = Path(self.out)
        return out.with_suffix("") if out.suffix else out

    @property
    def metrics_path(self) -> Path:
        """``<out stem>.metrics.json``."""
        return self._stem().with_name(self._stem().name + ".metrics.json")

    @property
    def plot_path(self) -> Path:
        """``<out stem>.parity.png``."""
        return self._stem().with_name(self._stem().name + ".parity.png")

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint file, rewritten (atomically) after every epoch."""
        folder = (
            Path(self.checkpoint_dir)
            if self.checkpoint_dir is not None
            else self._stem().with_name(self._stem().name + ".checkpoints")
        )
        return folder / "last.pt"

    # ---- JSON -------------------------------------------------------------------------

    def to_json(self) -> dict[str, tp.Any]:
        """A JSON-able dict (``features`` a dict or None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, tp.Any]) -> "TrainConfig":
        """Inverse of ``to_json``."""
        fields = dict(data)
        if fields.get("features") is not None:
            features = fields["features"]
            fields["features"] = FeatureSpec(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in features.items()}
            )
        for key in ("elements", "hidden"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return cls(**fields)

    def resume_mismatches(self, saved: dict[str, tp.Any]) -> list[str]:
        """Differences from a checkpoint's config that forbid resuming (empty when fine).

        Paths (the data are compared by content instead), device, display, ``epochs``,
        ``patience`` and ``keep`` may change, except that a cosine schedule depends on ``epochs``.
        """
        mine = self.to_json()
        free = set(_FREE_ON_RESUME)
        if self.schedule == "cosine":
            free.discard("epochs")
        out = []
        for key in sorted(set(mine) | set(saved)):
            if key in free:
                continue
            old, new = _jsonish(saved.get(key)), _jsonish(mine.get(key))
            if old != new:
                text = f"{key}: checkpoint has {old!r}, this run {new!r}"
                out.append(text if len(text) <= 160 else f"{key} differs")
        return out

    def command(self) -> str:
        """An ``invcalc train`` command line equivalent to this config (``resume`` left
        out: it says how a run was started, not what it trains)."""
        import json
        import shlex

        default = TrainConfig(data=self.data, out=self.out)
        words = ["invcalc", "train", os.fspath(self.data), "--out", os.fspath(self.out)]
        for field in dataclasses.fields(self):
            name = field.name
            value, base = getattr(self, name), getattr(default, name)
            if name in ("data", "out", "resume") or value == base:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else "--no-" + name.replace("_", "-"))
            elif isinstance(value, FeatureSpec):
                words += [flag, json.dumps(dataclasses.asdict(value))]
            elif isinstance(value, tuple):
                words += [flag, *map(str, value)]
            else:
                words += [flag, str(value)]
        return shlex.join(words)


def architecture_of(model_path: str | os.PathLike) -> dict[str, tp.Any]:
    """The ``TrainConfig`` architecture fields of a model file (for ``init``).

    Returns ``elements``, ``features``, ``hidden``, ``activation`` and ``ensemble_size``.

    Raises:
        ValueError: the model's element networks differ in width (``hidden`` cannot say
            that) or its energies are not in eV (a wrapped torchani model).
    """
    from invcalc.modelfile import read_metadata
    from invcalc.spec import ModelSpec

    spec = ModelSpec.from_json(read_metadata(model_path)["spec"])
    widths = {tuple(dims[1:-1]) for dims in spec.networks.layers.values()}
    if len(widths) != 1:
        raise ValueError(f"{model_path}: element networks of different widths cannot be fine-tuned")
    if spec.energy_unit != "eV":
        raise ValueError(f"{model_path}: energies in {spec.energy_unit}; fine-tuning needs an eV model")
    return {
        "elements": tuple(spec.elements),
        "features": spec.features,
        "hidden": widths.pop(),
        "activation": spec.networks.activation,
        "ensemble_size": spec.networks.ensemble_size,
    }


def _jsonish(value: tp.Any) -> tp.Any:
    """Tuples as lists, so a config compares equal to its JSON round trip."""
    if isinstance(value, (tuple, list)):
        return [_jsonish(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    return value
