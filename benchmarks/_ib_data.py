"""Data for the inductive-bias benchmark: sampled conformations, GFN2-xTB labels, transforms.

Conformations come from xTB Langevin MD at a few temperatures plus random displacements
of MD frames.  Every conformation is then *centred and aligned* (Kabsch) onto one
reference orientation with a fixed atom order -- a naive dataset that never shows a model
another orientation, position or atom numbering -- and labelled with one reused tblite
GFN2-xTB calculator.  Results are cached as ``.npz`` files keyed by every setting.

Test-time transforms (``transformed_test_sets``) act on positions and, consistently, on
reference forces: ``r' = P r R^T + t``, ``F' = P F R^T`` (P permutes identical atoms).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import typing as tp
from pathlib import Path

import numpy as np

#: Version of the sampling recipe; bump it when the recipe changes (invalidates caches).
DATA_VERSION = 2
#: ASE names of the benchmark molecules.
MOLECULES = {"water": "H2O", "ethanol": "CH3CH2OH"}
TRANSFORMS = ("identity", "translated", "rotated", "permuted", "combined")


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """How to sample ``n`` conformations of one molecule (all lengths in Å)."""

    molecule: str
    n: int
    seed: int = 0
    temperatures_K: tuple[float, ...] = (300.0, 600.0, 1000.0)
    md_fraction: float = 0.7  # the rest are randomly displaced MD frames
    displacement_sigma: float = 0.05
    timestep_fs: float = 0.5
    stride: int = 10  # MD steps between kept frames
    equilibration_steps: int = 200

    def key(self) -> str:
        blob = json.dumps({**dataclasses.asdict(self), "version": DATA_VERSION}, sort_keys=True)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
        return f"{self.molecule}_n{self.n}_s{self.seed}_{digest}"


@dataclasses.dataclass
class Dataset:
    """Labelled conformations of one molecule: numbers (N,), positions (M, N, 3) Å,
    energy (M,) eV, forces (M, N, 3) eV/Å, all float64; ``source`` (M,) the MD
    temperature in K (negative for displaced frames)."""

    numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return len(self.energy)

    def subset(self, idx: np.ndarray) -> "Dataset":
        return Dataset(self.numbers, self.positions[idx], self.energy[idx],
                       self.forces[idx], self.source[idx])


def _kabsch(mobile: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Rotation R minimising |mobile @ R.T - ref| for centred (N, 3) arrays."""
    h = mobile.T @ ref
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def align(positions: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Centre ``positions`` (N, 3) on their mean and rotate them onto centred ``ref``."""
    p = positions - positions.mean(0)
    return p @ _kabsch(p, ref).T


def _calculator():
    from tblite.ase import TBLite  # optional dependency, imported here only

    return TBLite(method="GFN2-xTB", verbosity=0)


def _reference(molecule: str):
    """xTB-relaxed, centred reference structure of ``molecule``."""
    from ase.build import molecule as build
    from ase.optimize import BFGS

    atoms = build(MOLECULES[molecule])
    atoms.calc = _calculator()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=200)
    atoms.positions -= atoms.positions.mean(0)
    atoms.calc = None
    return atoms


def _md_frames(ref, temperature: float, count: int, spec: SamplingSpec, rng) -> list:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = ref.copy()
    atoms.calc = _calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    # fixcm=False: correct NVT sampling for a small molecule; the drift of the centre
    # of mass does not matter, every frame is centred and aligned afterwards.
    dyn = Langevin(atoms, timestep=spec.timestep_fs * units.fs, temperature_K=temperature,
                   friction=0.01 / units.fs, fixcm=False, rng=rng)
    dyn.run(spec.equilibration_steps)
    frames = []
    for _ in range(count):
        dyn.run(spec.stride)
        frames.append(atoms.get_positions().copy())
    return frames


def generate(spec: SamplingSpec, log: tp.Callable[[str], None] = print) -> Dataset:
    """Sample and label ``spec.n`` conformations (deterministic for a given spec)."""
    rng = np.random.RandomState(spec.seed)
    t0 = time.perf_counter()
    ref = _reference(spec.molecule)
    n_md = int(round(spec.n * spec.md_fraction))
    per_t = np.diff(np.linspace(0, n_md, len(spec.temperatures_K) + 1).round().astype(int))
    frames: list[np.ndarray] = []
    source: list[float] = []
    for temperature, count in zip(spec.temperatures_K, per_t):
        frames += _md_frames(ref, temperature, int(count), spec, rng)
        source += [temperature] * int(count)
    for _ in range(spec.n - n_md):
        base = frames[rng.randint(n_md)]
        frames.append(base + rng.normal(0.0, spec.displacement_sigma, base.shape))
        source.append(-1.0)
    log(f"  sampled {spec.n} {spec.molecule} conformations ({time.perf_counter() - t0:.1f} s)")
    ref_pos = ref.get_positions()
    positions = np.stack([align(p, ref_pos) for p in frames])
    atoms = ref.copy()
    atoms.calc = _calculator()  # one calculator, reused for every label
    energy = np.empty(spec.n)
    forces = np.empty_like(positions)
    for i, p in enumerate(positions):
        atoms.set_positions(p)
        energy[i] = atoms.get_potential_energy()
        forces[i] = atoms.get_forces()
    log(f"  labelled with GFN2-xTB ({time.perf_counter() - t0:.1f} s in all)")
    return Dataset(ref.get_atomic_numbers().astype(np.int64), positions, energy, forces,
                   np.asarray(source))


def load_or_generate(spec: SamplingSpec, cache_dir: Path | None,
                     log: tp.Callable[[str], None] = print) -> Dataset:
    """``generate(spec)``, cached under ``cache_dir`` (no caching when None)."""
    path = None if cache_dir is None else Path(cache_dir) / f"{spec.key()}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            log(f"  {spec.molecule}: {spec.n} conformations from cache {path}")
            return Dataset(**{f.name: z[f.name] for f in dataclasses.fields(Dataset)})
    data = generate(spec, log)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **dataclasses.asdict(data))
        tmp.replace(path)
    return data


# ---- symmetry operations ------------------------------------------------------------


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly (Haar) distributed 3x3 rotation matrix, from a random unit quaternion."""
    w, x, y, z = rng.normal(size=4)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def random_permutation(numbers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of identical atoms (new atom i is old atom perm[i]), not the identity
    when the molecule has any repeated element."""
    for _ in range(100):
        perm = np.arange(len(numbers))
        for z in np.unique(numbers):
            where = np.flatnonzero(numbers == z)
            perm[where] = rng.permutation(where)
        if len(np.unique(numbers)) == len(numbers) or (perm != np.arange(len(numbers))).any():
            return perm
    return perm


def transformed_test_sets(test: Dataset, seed: int, max_shift: float = 3.0
                          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(positions, reference forces) of ``test`` under each of ``TRANSFORMS``.

    One random operation per structure and kind: a translation with components uniform
    in [-max_shift, max_shift] Å, a Haar-random rotation about the centroid, a random
    non-trivial permutation of identical atoms; "combined" applies all three.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {"identity": (test.positions, test.forces)}
    m = len(test)
    for kind in TRANSFORMS[1:]:
        pos = np.empty_like(test.positions)
        frc = np.empty_like(test.forces)
        for i in range(m):
            p, f = test.positions[i], test.forces[i]
            if kind in ("permuted", "combined"):
                perm = random_permutation(test.numbers, rng)
                p, f = p[perm], f[perm]
            if kind in ("rotated", "combined"):
                rot = random_rotation(rng)
                p, f = p @ rot.T, f @ rot.T
            if kind in ("translated", "combined"):
                p = p + rng.uniform(-max_shift, max_shift, 3)
            pos[i], frc[i] = p, f
        out[kind] = (pos, frc)
    return out
