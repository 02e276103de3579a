"""Active-learning data: structures that a trained model's own MD visits, labelled with xTB.

A model trained on xTB-sampled data can still have holes: regions its MD reaches
that the reference MD never did (a bond that stretches without a rising energy, two
water molecules that sink into each other). This module finds them by running the
model, and labels what it found:

- ``explore_molecule`` tasks run Langevin MD *with the model* on one training molecule
  at each temperature of :class:`ExploreConfig`, look at a frame every
  ``check_interval`` steps, and keep the ``frames`` frames where the ensemble
  disagrees most (largest energy standard deviation), plus the frame where the bond
  graph broke, if it did (the trajectory stops there).
- ``explore_box`` tasks run the model's MD on a periodic box of water, methanol or both
  (the condensed phase that gas-phase clusters only approximate), and at each check
  carve a non-periodic cluster of whole molecules within ``carve_radius_A`` of the
  molecule with the closest intermolecular contact; the ``box_frames`` clusters with
  the largest ensemble spread are labelled. Clusters, not the periodic box, so the
  labels train without periodic boundaries and cost tens of milliseconds each.

Trajectories also stop when two atoms come closer than ``min_distance_A`` or the
kinetic temperature passes ``max_temperature_factor`` times the thermostat's: what
lies beyond is not a place MD should be taught to go. Tasks are plain data (the model
enters as a file path plus its SHA-256 digest, so a changed model gives new task
ids) and run through :func:`invcalc.data.labels.label_dataset` like every other
labelling task, resumably and on any executor.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from ase import Atoms, units

from invcalc.data.molecules import MoleculeEntry, select, validate_entries

#: Bump when exploration changes so that old task ids (and their outputs) are not reused.
EXPLORE_VERSION = 1

#: Box compositions, their monomer SMILES and liquid densities (g/cm^3, 298 K).
BOX_MONOMERS: dict[str, tuple[str, ...]] = {"water": ("O",), "methanol": ("CO",), "mixed": ("O", "CO")}
LIQUID_DENSITY_G_CM3: dict[str, float] = {"O": 0.997, "CO": 0.792}


@dataclass(frozen=True)
class ExploreConfig:
    """What the model's MD explores and how many frames it keeps.  Units: K, fs, Å.

    Molecules: one trajectory of ``steps`` steps per temperature in ``temperatures_K``,
    a candidate every ``check_interval`` steps, the ``frames`` candidates with the
    largest ensemble energy spread kept (plus a broken frame).

    Boxes: ``box_side``³ molecules on a grid with random orientations, at the liquid
    density times a factor drawn uniformly from ``box_density_scale`` (above 1:
    compressed); ``box_steps`` steps at a temperature cycling through
    ``box_temperatures_K``; ``box_frames`` carved clusters kept.
    """

    temperatures_K: tuple[float, ...] = (500.0, 800.0)
    steps: int = 1000
    check_interval: int = 25
    frames: int = 3
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.02
    box_side: int = 3
    box_density_scale: tuple[float, float] = (0.95, 1.15)
    box_temperatures_K: tuple[float, ...] = (300.0, 400.0)
    box_steps: int = 2000
    box_frames: int = 10
    carve_radius_A: float = 4.5
    min_distance_A: float = 0.7
    max_temperature_factor: float = 3.0

    def __post_init__(self) -> None:
        for name in ("steps", "check_interval", "box_side", "box_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if any(t <= 0 for t in self.temperatures_K + self.box_temperatures_K):
            raise ValueError("temperatures must be positive")
        lo, hi = self.box_density_scale
        if not 0 < lo <= hi:
            raise ValueError(f"box_density_scale must satisfy 0 < lo <= hi, got {(lo, hi)}")


@dataclass(frozen=True)
class ExploreTask:
    """One model-driven exploration (plain data; safe to pickle to any executor)."""

    task_id: str
    kind: Literal["explore_molecule", "explore_box"]
    name: str
    smiles: str
    category: str
    split: str
    seed: int
    config: ExploreConfig
    model: str
    model_digest: str
    composition: str = ""
    density_scale: float = 1.0
    temperature_K: float = 0.0


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (first 16 hex digits)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def plan_explore_tasks(
    entries: Sequence[MoleculeEntry],
    model: str | Path,
    config: ExploreConfig = ExploreConfig(),
    *,
    seed: int = 0,
    n_boxes: int = 0,
) -> list[ExploreTask]:
    """Exploration tasks for the *training* molecules plus ``n_boxes`` periodic boxes.

    Args:
        entries: the molecule list; only training-split molecules are explored (held-out
            molecules must stay unseen).
        model: model file whose MD explores (each task loads it on the CPU).
        config: exploration settings.
        seed: global seed.
        n_boxes: boxes, compositions cycling water, methanol, mixed.

    Returns:
        Box tasks first (the condensed phase is where gas-phase training data is
        thinnest), then one task per training molecule in list order.
    """
    from invcalc.data.tasks import _digest, derive_seed

    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"exploration model {str(model)!r} is not a file")
    digest = file_digest(path)
    validate_entries(entries)
    settings = dataclasses.asdict(config)
    tasks = []
    for i in range(n_boxes):
        composition = ("water", "methanol", "mixed")[i % 3]
        rng = np.random.default_rng(derive_seed(seed, f"explore-box:{i}"))
        scale = float(rng.uniform(*config.box_density_scale))
        temp = float(config.box_temperatures_K[i % len(config.box_temperatures_K)])
        name = f"explore_box_{composition}_{i:04d}"
        task_id = f"{name}-{_digest('explore-box', EXPLORE_VERSION, name, settings, seed, digest)}"
        tasks.append(ExploreTask(task_id, "explore_box", name, "", "cluster", "train",
                                 derive_seed(seed, task_id), config, str(path.resolve()), digest,
                                 composition, scale, temp))
    for e in select(entries, "train"):
        task_id = f"explore-{e.name}-{_digest('explore', EXPLORE_VERSION, e.smiles, settings, seed, digest)}"
        tasks.append(ExploreTask(task_id, "explore_molecule", e.name, e.smiles, e.category, e.split,
                                 derive_seed(seed, task_id), config, str(path.resolve()), digest))
    return tasks


def periodic_box(monomers: Sequence[Atoms], side: int, density_g_cm3: float,
                 rng: np.random.Generator, *, min_distance: float = 1.7,
                 max_attempts: int = 100) -> Atoms:
    """``side``³ molecules on a cubic grid, randomly rotated, in a periodic cube.

    Args:
        monomers: ``side**3`` molecules (not modified), one per grid site.
        density_g_cm3: mass density fixing the cube's edge.
        min_distance: smallest intermolecular distance (minimum image, Å); a site's
            rotation is redrawn until it holds.

    Returns:
        Periodic Atoms with ``arrays["mol_id"]``.
    """
    from invcalc.data.sampling import random_rotation

    if len(monomers) != side**3:
        raise ValueError(f"periodic_box needs {side**3} molecules, got {len(monomers)}")
    mass = sum(m.get_masses().sum() for m in monomers)  # amu
    length = (mass / units.kg * 1e3 / density_g_cm3 * 1e24) ** (1 / 3)  # Å
    cell = np.eye(3) * length
    placed: list[np.ndarray] = []
    for site, mol in zip(np.ndindex(side, side, side), monomers):
        centre = (np.array(site) + 0.5) * length / side
        local = mol.positions - mol.get_center_of_mass()
        for _ in range(max_attempts):
            trial = local @ random_rotation(rng).T + centre
            if not placed:
                break
            d = trial[:, None, :] - np.concatenate(placed)[None, :, :]
            d -= length * np.round(d / length)
            if np.sqrt((d**2).sum(-1)).min() >= min_distance:
                break
        placed.append(trial)
    box = Atoms(numbers=np.concatenate([m.numbers for m in monomers]),
                positions=np.concatenate(placed), cell=cell, pbc=True)
    box.arrays["mol_id"] = np.concatenate([np.full(len(m), i) for i, m in enumerate(monomers)])
    return box


def carve_cluster(box: Atoms, radius: float) -> Atoms:
    """Whole molecules within ``radius`` Å of the molecule with the closest contact.

    The centre molecule owns one atom of the shortest minimum-image distance between
    atoms of different molecules (``arrays["mol_id"]``); a molecule joins when its first
    atom lies within ``radius`` of the centre's first atom. Positions are unwrapped
    (minimum image), so the result is a non-periodic cluster with ``mol_id`` and
    ``info["box_molecules"]`` (the box's molecule indices, in cluster order).
    """
    mol_id = box.arrays["mol_id"]
    d = box.get_all_distances(mic=True)
    d[mol_id[:, None] == mol_id[None, :]] = np.inf
    centre_mol = mol_id[np.unravel_index(np.argmin(d), d.shape)[0]]
    first = {int(m): int(np.flatnonzero(mol_id == m)[0]) for m in np.unique(mol_id)}
    origin = first[int(centre_mol)]
    anchors = list(first.values())
    offsets = box.get_distances(origin, anchors, mic=True, vector=True)
    positions, numbers, ids = [], [], []
    for (m, anchor), offset in zip(first.items(), offsets):
        if np.linalg.norm(offset) > radius:
            continue
        members = np.flatnonzero(mol_id == m)
        local = box.get_distances(anchor, members, mic=True, vector=True)
        positions.append(box.positions[origin] + offset + local)
        numbers.append(box.numbers[members])
        ids.append(np.full(len(members), len(ids)))
    cluster = Atoms(numbers=np.concatenate(numbers), positions=np.concatenate(positions))
    cluster.positions -= cluster.positions.mean(axis=0)
    cluster.arrays["mol_id"] = np.concatenate(ids)
    cluster.info["box_molecules"] = [m for m, offset in zip(first, offsets) if np.linalg.norm(offset) <= radius]
    return cluster


def _spread(calc, atoms: Atoms) -> float:
    """The model ensemble's energy standard deviation (eV) at ``atoms``."""
    work = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    work.calc = calc
    work.get_potential_energy()
    return float(calc.results["energy_uncertainty"])


def _model_md(atoms: Atoms, calc, temperature_K: float, steps: int, cfg: ExploreConfig,
              rng: np.random.Generator, check) -> None:
    """Langevin MD with the model; ``check(atoms)`` every ``check_interval`` steps
    returns False to stop. Also stops at atom overlaps or runaway heating."""
    from invcalc.data.sampling import thermalized_langevin

    atoms.calc = calc
    dyn = thermalized_langevin(atoms, temperature_K, rng, timestep_fs=cfg.timestep_fs,
                               friction_per_fs=cfg.friction_per_fs)
    for _ in range(0, steps, cfg.check_interval):
        dyn.run(cfg.check_interval)
        if not np.isfinite(atoms.positions).all():
            return
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        np.fill_diagonal(d, np.inf)
        if d.min() < cfg.min_distance_A:
            return
        if atoms.get_temperature() > cfg.max_temperature_factor * temperature_K:
            return
        if not check(atoms):
            return


def _top(candidates: list[tuple[float, Atoms, dict]], n: int) -> list[tuple[float, Atoms, dict]]:
    return sorted(candidates, key=lambda c: -c[0])[:n]


def sample_explore(task: ExploreTask, result) -> list[tuple[Atoms, dict]]:
    """Frames (unlabelled) and their info for one exploration task."""
    import torch

    from invcalc import InvCalc
    from invcalc.data import sampling
    from invcalc.data.conformers import embed_conformers

    cfg = task.config
    rng = np.random.default_rng(task.seed)
    calc = InvCalc(task.model, device="cpu", dtype=torch.float32)
    base = {"explore_model": Path(task.model).name, "explore_model_sha256": task.model_digest}
    frames: list[tuple[Atoms, dict]] = []
    if task.kind == "explore_molecule":
        start = embed_conformers(task.smiles, 1, seed=int(rng.integers(2**31 - 1)))[0]
        bonds = sampling.bond_pairs(start)
        for temp in cfg.temperatures_K:
            candidates: list[tuple[float, Atoms, dict]] = []
            broken: list[tuple[Atoms, dict]] = []
            meta = {**base, "kind": "explore_md", "temperature_K": float(temp)}

            def check(atoms: Atoms) -> bool:
                geom = Atoms(atoms.numbers, atoms.positions.copy())
                sigma = float(calc.results["energy_uncertainty"])
                if not sampling.topology_intact(geom, bonds):
                    broken.append((geom, {**meta, "explore_sigma_eV": sigma, "explore_broken": 1}))
                    return False
                candidates.append((sigma, geom, {**meta, "explore_sigma_eV": sigma, "explore_broken": 0}))
                return True

            _model_md(Atoms(start.numbers, start.positions), calc, temp, cfg.steps, cfg, rng, check)
            frames += [(g, m) for _, g, m in _top(candidates, cfg.frames)] + broken
            result.n_shortfall += max(0, cfg.frames - len(candidates))
    elif task.kind == "explore_box":
        kinds = BOX_MONOMERS[task.composition]
        confs = {s: embed_conformers(s, 3, seed=int(rng.integers(2**31 - 1))) for s in kinds}
        n = cfg.box_side**3
        chosen = [kinds[j] for j in rng.integers(len(kinds), size=n)]
        monomers = [confs[s][int(rng.integers(len(confs[s])))] for s in chosen]
        density = task.density_scale * float(np.mean([LIQUID_DENSITY_G_CM3[s] for s in chosen]))
        box = periodic_box(monomers, cfg.box_side, density, rng)
        candidates = []
        meta = {**base, "kind": "explore_cluster", "temperature_K": task.temperature_K,
                "box_density_g_cm3": density}

        def check(atoms: Atoms) -> bool:
            cluster = carve_cluster(atoms, cfg.carve_radius_A)
            sigma = _spread(calc, cluster)
            n_mol = len(cluster.info["box_molecules"])
            smiles = ".".join(sorted(chosen[m] for m in cluster.info["box_molecules"]))
            candidates.append((sigma, cluster, {**meta, "explore_sigma_eV": sigma,
                                                "n_molecules": n_mol, "smiles": smiles}))
            return True

        _model_md(box, calc, task.temperature_K, cfg.box_steps, cfg, rng, check)
        frames += [(g, m) for _, g, m in _top(candidates, cfg.box_frames)]
        result.n_shortfall += max(0, cfg.box_frames - len(candidates))
    else:
        raise ValueError(f"unknown exploration kind {task.kind!r}")
    result.n_planned = len(frames) + result.n_shortfall
    return frames
