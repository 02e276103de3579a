"""Labelling tasks: what to sample for each molecule or cluster, and running one task.

A task is one molecule (conformers -> xTB relaxation -> MD at each temperature ->
normal-mode and random displacements) or one cluster (packed -> partly relaxed -> MD).
It is plain, picklable data (:class:`LabelTask`), run by the top-level function
:func:`run_task` with one tblite calculator, and identified by a deterministic id
that includes a digest of everything that determines its output (SMILES, split,
settings, seed, pipeline version). Its random numbers come from a seed derived from
the global seed and its own key only, so a task gives the same structures whatever
other tasks are planned, in whatever order or process they run.

Cluster tasks are planned per split with independent seeds. Their monomers (water,
methanol) are training molecules, so test clusters are new configurations of known
molecules rather than new chemistry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from invcalc.data.explore import ExploreTask
from invcalc.data.molecules import MoleculeEntry, select, validate_entries

#: Bump when sampling changes so that old task ids (and their outputs) are not reused.
PIPELINE_VERSION = 1

#: Cluster compositions and their monomer SMILES.
CLUSTER_MONOMERS: dict[str, tuple[str, ...]] = {
    "water": ("O",),
    "methanol": ("CO",),
    "mixed": ("O", "CO"),
}


@dataclass(frozen=True)
class SamplingConfig:
    """How many structures of each kind to make per molecule / cluster.

    Per molecule: ``n_conformers`` RDKit conformers, each xTB-relaxed with
    ``relax_frames`` frames taken along the optimisation path (the last one relaxed);
    for each temperature in ``md_temperatures_K`` one Langevin run (starting from the
    relaxed conformers in turn) giving ``md_frames`` frames; ``normal_mode_frames``
    normal-mode displacements of the first relaxed conformer at the temperatures in
    ``normal_mode_temperatures_K`` (cycled); ``rattle_frames`` random displacements with
    a per-frame sigma drawn uniformly from ``rattle_sigma_A`` (per Cartesian component;
    0.1 Å already gives forces up to ~50 eV/Å on stiff bonds, far beyond 1000 K MD).

    Per cluster: the packed geometry, ``cluster_relax_frames`` frames of a short
    (``cluster_relax_steps``) relaxation and ``cluster_md_frames`` MD frames at
    ``cluster_temperature_K``.

    Units: K, fs, Å.
    """

    n_conformers: int = 2
    relax_frames: int = 2
    relax_steps: int = 200
    md_temperatures_K: tuple[float, ...] = (300.0, 600.0, 1000.0)
    md_frames: int = 3
    md_interval: int = 20
    md_equilibration: int = 40
    md_timestep_fs: float = 0.5
    normal_mode_frames: int = 3
    normal_mode_temperatures_K: tuple[float, ...] = (300.0, 600.0)
    rattle_frames: int = 2
    rattle_sigma_A: tuple[float, float] = (0.01, 0.05)
    cluster_size_range: tuple[int, int] = (2, 16)
    cluster_min_distance_A: float = 2.0
    cluster_relax_frames: int = 1
    cluster_relax_steps: int = 30
    cluster_md_frames: int = 3
    cluster_temperature_K: float = 300.0

    def __post_init__(self) -> None:
        for name in ("n_conformers", "md_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        lo, hi = self.cluster_size_range
        if not 1 <= lo <= hi:
            raise ValueError(f"cluster_size_range must satisfy 1 <= lo <= hi, got {(lo, hi)}")
        if any(t <= 0 for t in self.md_temperatures_K + self.normal_mode_temperatures_K):
            raise ValueError("temperatures must be positive")


@dataclass(frozen=True)
class LabelTask:
    """One unit of labelling work (plain data; safe to pickle to any executor)."""

    task_id: str
    kind: Literal["molecule", "cluster"]
    name: str
    smiles: str
    category: str
    split: str
    seed: int
    config: SamplingConfig
    composition: str = ""
    cluster_size: int = 0


@dataclass
class TaskResult:
    """Output of :func:`run_task`: labelled records and what went wrong."""

    task_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    n_planned: int = 0
    n_label_failures: int = 0
    n_shortfall: int = 0
    n_sampling_failures: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def stats(self) -> dict[str, Any]:
        """JSON-able counts for the journal."""
        return {
            "planned": self.n_planned,
            "label_failures": self.n_label_failures,
            "shortfall": self.n_shortfall,
            "sampling_failures": self.n_sampling_failures,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


def derive_seed(seed: int, key: str) -> int:
    """A 63-bit seed from a global seed and a task key (stable across runs/platforms)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def plan_tasks(
    entries: Sequence[MoleculeEntry],
    config: SamplingConfig = SamplingConfig(),
    *,
    split: Literal["train", "test", "all"] = "all",
    seed: int = 0,
    n_clusters: int = 0,
) -> list[LabelTask]:
    """Tasks for the molecules of one split plus ``n_clusters`` clusters per split.

    Args:
        entries: the molecule list (validated here: see
            :func:`invcalc.data.molecules.validate_entries`).
        config: sampling settings (shared by all tasks).
        split: ``"train"``, ``"test"`` or ``"all"``. Test molecules only ever appear in
            test tasks.
        seed: global seed.
        n_clusters: cluster tasks for each split generated (compositions cycle
            water, methanol, mixed; sizes drawn from ``config.cluster_size_range``).

    Returns:
        Molecule tasks in list order, then cluster tasks.
    """
    validate_entries(entries)
    tasks = []
    for e in select(entries, split):
        digest = _digest("molecule", PIPELINE_VERSION, e.smiles, e.split, dataclasses.asdict(config), seed)
        task_id = f"mol-{e.name}-{digest}"
        tasks.append(
            LabelTask(task_id, "molecule", e.name, e.smiles, e.category, e.split,
                      derive_seed(seed, task_id), config)
        )
    for sp in (["train", "test"] if split == "all" else [split]):
        for i in range(n_clusters):
            composition = ("water", "methanol", "mixed")[i % 3]
            rng = np.random.default_rng(derive_seed(seed, f"cluster-size:{sp}:{i}"))
            lo, hi = config.cluster_size_range
            size = int(rng.integers(max(lo, 2 if composition == "mixed" else 1), hi + 1))
            name = f"cluster_{composition}_{sp}_{i:04d}"
            digest = _digest("cluster", PIPELINE_VERSION, name, size, dataclasses.asdict(config), seed)
            task_id = f"{name}-{digest}"
            tasks.append(
                LabelTask(task_id, "cluster", name, "", "cluster", sp,
                          derive_seed(seed, task_id), config, composition, size)
            )
    return tasks


def run_task(task: LabelTask | ExploreTask) -> TaskResult:
    """Sample and label one task with one tblite calculator (top-level: picklable).

    Returns:
        A :class:`TaskResult` whose records carry ``info``: ``ref_method``,
        ``ref_code`` (tblite version), ``name``, ``smiles``, ``category``, ``split``,
        ``kind`` (relax, md, normal_mode, rattle, cluster_packed, cluster_relax,
        cluster_md; explore_md, explore_cluster for :mod:`invcalc.data.explore` tasks), ``temperature_K`` (0 for relax, rattle and packed/relaxed clusters),
        ``task_id``, ``frame`` and, where they apply, ``conformer``, ``sigma_A`` and
        ``n_molecules``.
    """
    from invcalc.data.labels import REFERENCE_METHOD, label_structure, make_calculator, tblite_version

    start, cpu_start = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(task.seed)
    calc = make_calculator()
    result = TaskResult(task.task_id)
    if task.kind == "molecule":
        frames = _sample_molecule(task, calc, rng, result)
    elif task.kind == "cluster":
        frames = _sample_cluster(task, calc, rng, result)
    elif isinstance(task, ExploreTask):
        from invcalc.data.explore import sample_explore

        frames = sample_explore(task, result)
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    common = {
        "ref_method": REFERENCE_METHOD,
        "ref_code": f"tblite-{tblite_version()}",
        "name": task.name,
        "smiles": task.smiles,
        "category": task.category,
        "split": task.split,
        "task_id": task.task_id,
    }
    for atoms, meta in frames:
        record = label_structure(atoms, calc)
        if record is None:
            result.n_label_failures += 1
            continue
        record["info"] = {**common, **meta, "frame": len(result.records)}
        result.records.append(record)
    result.seconds = time.perf_counter() - start
    # process CPU time: counts every thread of the process (OpenMP, or a thread pool)
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def _sample_molecule(task: LabelTask, calc, rng: np.random.Generator, result: TaskResult) -> list:
    from ase.calculators.calculator import CalculationFailed

    from invcalc.data.conformers import embed_conformers
    from invcalc.data import sampling

    cfg = task.config
    frames: list = []
    confs = embed_conformers(task.smiles, cfg.n_conformers, seed=int(rng.integers(2**31 - 1)))
    starts = []
    for c, conf in enumerate(confs):
        bonds = sampling.bond_pairs(conf)
        try:
            final, path, _ = sampling.relax(conf, calc, steps=cfg.relax_steps, n_frames=cfg.relax_frames)
        except CalculationFailed:
            result.n_sampling_failures += 1
            final, path = conf, []
        if conf.info["forcefield"] == "none" and path:
            # no force field (e.g. SF6): the embedded start can be badly distorted, so the
            # xTB-relaxed geometry defines the bonds
            bonds = sampling.bond_pairs(final)
        elif not sampling.topology_intact(final, bonds):  # rearranged: keep the start
            final = conf
        path = [f for f in path if sampling.topology_intact(f, bonds)]
        frames += [(f, {"kind": "relax", "temperature_K": 0.0, "conformer": c}) for f in path]
        result.n_shortfall += cfg.relax_frames - len(path)
        starts.append((c, final, bonds))

    for i, temp in enumerate(cfg.md_temperatures_K):
        c, start, bonds = starts[i % len(starts)]
        md = sampling.langevin_md(
            start, calc, temp, cfg.md_frames, rng, interval=cfg.md_interval,
            equilibration=cfg.md_equilibration, timestep_fs=cfg.md_timestep_fs, bonds=bonds,
        )
        frames += [(f, {"kind": "md", "temperature_K": float(temp), "conformer": c}) for f in md]
        result.n_shortfall += cfg.md_frames - len(md)

    if cfg.normal_mode_frames > 0:
        c, start, bonds = starts[0]
        try:
            hess = sampling.hessian(start, calc)
        except CalculationFailed:
            result.n_sampling_failures += 1
            result.n_shortfall += cfg.normal_mode_frames
        else:
            temps = cfg.normal_mode_temperatures_K
            for k in range(cfg.normal_mode_frames):
                temp = float(temps[k % len(temps)])
                nm = sampling.normal_mode_displacements(start, hess, temp, 1, rng, bonds=bonds)
                frames += [(f, {"kind": "normal_mode", "temperature_K": temp, "conformer": c}) for f in nm]
                result.n_shortfall += 1 - len(nm)

    for k in range(cfg.rattle_frames):
        c, start, bonds = starts[k % len(starts)]
        sigma = float(rng.uniform(*cfg.rattle_sigma_A))
        rat = sampling.rattle(start, 1, sigma, rng, bonds=bonds)
        meta = {"kind": "rattle", "temperature_K": 0.0, "conformer": c, "sigma_A": sigma}
        frames += [(f, meta) for f in rat]
        result.n_shortfall += 1 - len(rat)
    result.n_planned = len(frames) + result.n_shortfall
    return frames


def _sample_cluster(task: LabelTask, calc, rng: np.random.Generator, result: TaskResult) -> list:
    from ase.calculators.calculator import CalculationFailed

    from invcalc.data.conformers import embed_conformers
    from invcalc.data import sampling

    cfg = task.config
    kinds = CLUSTER_MONOMERS[task.composition]
    confs = {s: embed_conformers(s, 3, seed=int(rng.integers(2**31 - 1))) for s in kinds}
    if len(kinds) > 1 and task.cluster_size >= len(kinds):  # mixed: one of each, rest random
        chosen = list(kinds) + [kinds[j] for j in rng.integers(len(kinds), size=task.cluster_size - len(kinds))]
    else:
        chosen = [kinds[j] for j in rng.integers(len(kinds), size=task.cluster_size)]
    monomers = [confs[s][int(rng.integers(len(confs[s])))] for s in chosen]
    cluster = sampling.pack_cluster(monomers, rng, min_distance=cfg.cluster_min_distance_A)
    n_mol = len(monomers)
    smiles = ".".join(sorted(chosen))
    base = {"n_molecules": n_mol}
    frames: list = [(cluster, {**base, "kind": "cluster_packed", "temperature_K": 0.0})]
    bonds = sampling.bond_pairs(cluster)
    start = cluster
    try:
        final, path, _ = sampling.relax(
            cluster, calc, steps=cfg.cluster_relax_steps, n_frames=cfg.cluster_relax_frames
        )
    except CalculationFailed:
        result.n_sampling_failures += 1
        path = []
    else:
        if sampling.topology_intact(final, bonds):
            start = final
        path = [f for f in path if sampling.topology_intact(f, bonds)]
    frames += [(f, {**base, "kind": "cluster_relax", "temperature_K": 0.0}) for f in path]
    result.n_shortfall += cfg.cluster_relax_frames - len(path)
    md = sampling.langevin_md(
        start, calc, cfg.cluster_temperature_K, cfg.cluster_md_frames, rng,
        interval=cfg.md_interval, equilibration=cfg.md_equilibration,
        timestep_fs=cfg.md_timestep_fs, bonds=bonds,
    )
    frames += [(f, {**base, "kind": "cluster_md", "temperature_K": float(cfg.cluster_temperature_K)}) for f in md]
    result.n_shortfall += cfg.cluster_md_frames - len(md)
    result.n_planned = len(frames) + result.n_shortfall
    for f, meta in frames:
        meta["smiles"] = smiles
    return frames
