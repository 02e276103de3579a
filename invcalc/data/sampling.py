"""Geometry sampling for reference data: what MD runs and optimisers visit.

Every sampler returns *unlabelled* geometries (plain :class:`ase.Atoms`, positions in Å);
labelling is :mod:`invcalc.data.labels`' job. Samplers that need energies or forces
(relaxation, MD, Hessian) take an ASE calculator (in practice one tblite ``TBLite``
reused for a whole task), and every random choice comes from an explicit
:class:`numpy.random.Generator`.

- :func:`relax` -- xTB-relaxed geometry plus frames along the optimisation path.
- :func:`langevin_md` -- Langevin MD frames at one temperature.
- :func:`hessian`, :func:`normal_mode_displacements` -- harmonic (classical Boltzmann)
  displacements along normal modes at a temperature.
- :func:`rattle` -- random Gaussian Cartesian displacements.
- :func:`pack_cluster` -- molecules packed at random without overlaps.

Geometries whose bond graph broke (a bond stretched past ``stretch`` times the sum of
covalent radii, or two unbonded atoms closer than the sum) are dropped, see
:func:`topology_intact`; a dissociated molecule is not what the potential is for.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, CalculationFailed
from ase.data import covalent_radii

#: Default Langevin friction in 1/fs.
FRICTION_PER_FS = 0.02


def _geometry(atoms: Atoms) -> Atoms:
    """A bare copy (numbers, positions, mol_id) without calculator or velocities."""
    out = Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy())
    if "mol_id" in atoms.arrays:
        out.arrays["mol_id"] = atoms.arrays["mol_id"].copy()
    return out


def _distances(positions: np.ndarray) -> np.ndarray:
    """(N, N) distance matrix in Å."""
    d = positions[:, None, :] - positions[None, :, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", d, d))


def bond_pairs(atoms: Atoms, scale: float = 1.2) -> np.ndarray:
    """Covalent bonds ``(n_bonds, 2)`` (i < j): distance < scale * (r_cov,i + r_cov,j)."""
    r = covalent_radii[atoms.numbers]
    dist = _distances(atoms.positions)
    i, j = np.nonzero(np.triu(dist < scale * (r[:, None] + r[None, :]), k=1))
    return np.stack([i, j], axis=1)


def topology_intact(
    atoms: Atoms, bonds: np.ndarray, *, stretch: float = 1.6, contact: float = 1.0
) -> bool:
    """Whether the reference bond graph ``bonds`` still describes ``atoms``.

    Args:
        atoms: the geometry to check.
        bonds: ``(n_bonds, 2)`` reference bonds (e.g. :func:`bond_pairs` of the start).
        stretch: a bond is broken beyond ``stretch * (r_i + r_j)``.
        contact: unbonded atoms closer than ``contact * (r_i + r_j)`` count as a new bond.
    """
    r = covalent_radii[atoms.numbers]
    rsum = r[:, None] + r[None, :]
    dist = _distances(atoms.positions)
    if not np.all(np.isfinite(dist)):
        return False
    bonded = np.zeros(dist.shape, dtype=bool)
    if len(bonds):
        bonded[bonds[:, 0], bonds[:, 1]] = bonded[bonds[:, 1], bonds[:, 0]] = True
        if np.any(dist[bonded] > stretch * rsum[bonded]):
            return False
    np.fill_diagonal(bonded, True)
    return not np.any(dist[~bonded] < contact * rsum[~bonded])


def relax(
    atoms: Atoms,
    calc: Calculator,
    *,
    fmax: float = 0.05,
    steps: int = 200,
    n_frames: int = 2,
) -> tuple[Atoms, list[Atoms], bool]:
    """Relax with BFGS and pick frames along the optimisation path.

    Args:
        atoms: start geometry (not modified).
        calc: ASE calculator giving forces in eV/Å.
        fmax: convergence threshold on the largest force, eV/Å.
        steps: maximum optimiser steps.
        n_frames: frames returned, evenly spaced along the path from the start to the
            final geometry (the final one always included when n_frames >= 1).

    Returns:
        ``(final, frames, converged)``.

    Raises:
        ase.calculators.calculator.CalculationFailed: the calculator failed.
    """
    from ase.optimize import BFGS

    work = _geometry(atoms)
    work.calc = calc
    path = [work.positions.copy()]
    opt = BFGS(work, logfile=None, maxstep=0.2)
    opt.attach(lambda: path.append(work.positions.copy()), interval=1)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    work.calc = None
    final = _geometry(work)
    # the observer may also see the start and the last step twice: drop repeats
    path = [x for k, x in enumerate(path) if k == 0 or not np.array_equal(x, path[k - 1])]
    frames = []
    for k in sorted({int(round(v)) for v in np.linspace(len(path) - 1, 0, max(n_frames, 0))}):
        frame = _geometry(work)
        frame.positions = path[k]
        frames.append(frame)
    return final, frames, converged


def langevin_md(
    atoms: Atoms,
    calc: Calculator,
    temperature_K: float,
    n_frames: int,
    rng: np.random.Generator,
    *,
    interval: int = 20,
    equilibration: int = 40,
    timestep_fs: float = 0.5,
    friction_per_fs: float = FRICTION_PER_FS,
    bonds: np.ndarray | None = None,
) -> list[Atoms]:
    """Langevin MD (ASE, centre of mass fixed by ``FixCom``) and frames every ``interval`` steps.

    Velocities start from a Maxwell-Boltzmann distribution at ``temperature_K``. The
    run stops early (returning fewer frames) when the calculator fails or the bond
    graph breaks (:func:`topology_intact` against ``bonds``, default: bonds of the
    start geometry).

    Args:
        atoms: start geometry (not modified).
        calc: ASE calculator (energy in eV, forces in eV/Å).
        temperature_K: thermostat temperature in K.
        n_frames: frames wanted.
        rng: random source for the initial velocities and the thermostat noise.
        interval: MD steps between frames.
        equilibration: MD steps before the first interval.
        timestep_fs: time step in fs.
        friction_per_fs: Langevin friction in 1/fs.
        bonds: reference bond graph ``(n_bonds, 2)``.

    Returns:
        Up to ``n_frames`` geometries.
    """
    work = _geometry(atoms)
    bonds = bond_pairs(work) if bonds is None else bonds
    work.calc = calc
    dyn = thermalized_langevin(work, temperature_K, rng, timestep_fs=timestep_fs,
                               friction_per_fs=friction_per_fs)
    frames: list[Atoms] = []
    try:
        if equilibration:
            dyn.run(equilibration)
        while len(frames) < n_frames:
            dyn.run(interval)
            if not topology_intact(work, bonds):
                break
            frames.append(_geometry(work))
    except CalculationFailed:
        pass
    work.calc = None
    return frames


def thermalized_langevin(atoms: Atoms, temperature_K: float, rng: np.random.Generator, *,
                         timestep_fs: float = 0.5, friction_per_fs: float = FRICTION_PER_FS):
    """An ASE ``Langevin`` driver for ``atoms`` (calculator attached), modified in place:
    Maxwell-Boltzmann momenta at ``temperature_K`` without net momentum, and the centre
    of mass fixed by ``FixCom`` (ASE's recommended replacement for ``fixcm=True``)."""
    from ase.constraints import FixCom
    from ase.md import velocitydistribution as vd
    from ase.md.langevin import Langevin

    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)
    atoms.set_constraint(FixCom())
    return Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                    friction=friction_per_fs / units.fs, fixcm=False, rng=rng, logfile=None)


def hessian(atoms: Atoms, calc: Calculator, delta: float = 0.005) -> np.ndarray:
    """Cartesian Hessian by central differences of forces.

    Args:
        atoms: geometry (not modified), ideally a minimum.
        calc: ASE calculator with forces in eV/Å.
        delta: displacement in Å.

    Returns:
        ``(3N, 3N)`` symmetric Hessian in eV/Å².

    Raises:
        ase.calculators.calculator.CalculationFailed: the calculator failed.
    """
    work = _geometry(atoms)
    work.calc = calc
    n = len(work)
    h = np.empty((3 * n, 3 * n))
    x0 = work.positions.copy()
    for k in range(3 * n):
        a, c = divmod(k, 3)
        fs = []
        for sign in (1.0, -1.0):
            x = x0.copy()
            x[a, c] += sign * delta
            work.positions = x
            fs.append(work.get_forces().ravel())
        h[k] = -(fs[0] - fs[1]) / (2 * delta)
    work.calc = None
    return 0.5 * (h + h.T)


def normal_mode_displacements(
    atoms: Atoms,
    hess: np.ndarray,
    temperature_K: float,
    n_frames: int,
    rng: np.random.Generator,
    *,
    min_wavenumber: float = 100.0,
    bonds: np.ndarray | None = None,
    max_tries: int = 5,
) -> list[Atoms]:
    """Classical harmonic displacements along normal modes at a temperature.

    The mass-weighted Hessian is diagonalised; the 6 (5 if linear) modes of smallest
    |eigenvalue| are dropped as translations/rotations. Each normal coordinate is
    drawn from N(0, kT / omega^2) (the Boltzmann distribution of a classical harmonic
    oscillator), with omega floored at ``min_wavenumber`` so soft or imaginary modes do
    not give huge amplitudes. Draws that break the bond graph are redrawn up to
    ``max_tries`` times, then skipped.

    Args:
        atoms: reference geometry (ideally relaxed), positions in Å.
        hess: ``(3N, 3N)`` Hessian in eV/Å² (see :func:`hessian`).
        temperature_K: temperature in K.
        n_frames: frames wanted.
        rng: random source.
        min_wavenumber: floor on the mode frequency in cm^-1.
        bonds: reference bond graph, default :func:`bond_pairs` of ``atoms``.
        max_tries: draws per frame before giving up on it.

    Returns:
        Up to ``n_frames`` displaced geometries.
    """
    n = len(atoms)
    bonds = bond_pairs(atoms) if bonds is None else bonds
    masses = np.repeat(atoms.get_masses(), 3)
    inv_sqrt_m = 1.0 / np.sqrt(masses)
    hmw = hess * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    eigval, eigvec = np.linalg.eigh(hmw)
    if n == 1:
        return [_geometry(atoms) for _ in range(n_frames)]
    inertia = np.linalg.eigvalsh(atoms.get_moments_of_inertia() * np.eye(3))
    n_rigid = 5 if n == 2 or inertia[0] < 1e-3 * inertia[-1] else 6
    keep = np.argsort(np.abs(eigval))[n_rigid:]
    # omega^2 in eV / (Å^2 amu); hbar in eV * (ASE time unit)
    hbar = units._hbar * units.J * units.second
    omega_min = min_wavenumber * units.invcm / hbar
    omega2 = np.maximum(np.abs(eigval[keep]), omega_min**2)
    sigma = np.sqrt(units.kB * temperature_K / omega2)
    modes = eigvec[:, keep]
    frames: list[Atoms] = []
    for _ in range(n_frames):
        for _try in range(max_tries):
            q = rng.standard_normal(len(keep)) * sigma
            dx = (modes @ q) * inv_sqrt_m
            frame = _geometry(atoms)
            frame.positions = atoms.positions + dx.reshape(n, 3)
            if topology_intact(frame, bonds):
                frames.append(frame)
                break
    return frames


def rattle(
    atoms: Atoms,
    n_frames: int,
    sigma: float,
    rng: np.random.Generator,
    *,
    bonds: np.ndarray | None = None,
    max_tries: int = 5,
) -> list[Atoms]:
    """Random Gaussian Cartesian displacements (std ``sigma`` Å per coordinate).

    Draws that break the bond graph (default: bonds of ``atoms``) are redrawn up to
    ``max_tries`` times, then skipped.
    """
    bonds = bond_pairs(atoms) if bonds is None else bonds
    frames: list[Atoms] = []
    for _ in range(n_frames):
        for _try in range(max_tries):
            frame = _geometry(atoms)
            frame.positions = atoms.positions + rng.normal(0.0, sigma, size=(len(atoms), 3))
            if topology_intact(frame, bonds):
                frames.append(frame)
                break
    return frames


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (from a normalised Gaussian quaternion)."""
    w, x, y, z = (q := rng.standard_normal(4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def pack_cluster(
    monomers: Sequence[Atoms],
    rng: np.random.Generator,
    *,
    min_distance: float = 2.0,
    volume_per_atom: float = 10.0,
    max_attempts: int = 200,
) -> Atoms:
    """Pack molecules into a gas-phase cluster at random without overlaps.

    Molecules are placed one by one, each randomly rotated about its centre of mass
    and centred at a uniformly random point in a sphere whose volume is
    ``volume_per_atom`` Å^3 per atom (about liquid density for water and methanol). A
    placement is accepted when every atom is at least ``min_distance`` Å from every atom
    of the molecules already placed; after ``max_attempts`` rejections the sphere grows
    by 10 %.

    Args:
        monomers: the molecules (not modified).
        rng: random source.
        min_distance: smallest allowed intermolecular atom-atom distance, Å.
        volume_per_atom: packing volume in Å^3 per atom.
        max_attempts: placements tried before growing the sphere.

    Returns:
        Non-periodic Atoms, centred at the origin, with per-atom ``arrays["mol_id"]``
        (index of the molecule each atom belongs to) and ``info["n_molecules"]``.
    """
    if not monomers:
        raise ValueError("pack_cluster needs at least one molecule")
    n_atoms = sum(len(m) for m in monomers)
    radius = (3.0 * volume_per_atom * n_atoms / (4.0 * np.pi)) ** (1.0 / 3.0)
    placed: list[np.ndarray] = []
    for mol in monomers:
        local = mol.positions - mol.get_center_of_mass()
        while True:
            for _ in range(max_attempts):
                direction = rng.standard_normal(3)
                direction /= np.linalg.norm(direction)
                centre = direction * radius * rng.random() ** (1.0 / 3.0)
                trial = local @ random_rotation(rng).T + centre
                if not placed:
                    break
                others = np.concatenate(placed)
                d = np.linalg.norm(trial[:, None, :] - others[None, :, :], axis=-1)
                if d.min() >= min_distance:
                    break
            else:
                radius *= 1.1
                continue
            placed.append(trial)
            break
    cluster = Atoms(
        numbers=np.concatenate([m.numbers for m in monomers]),
        positions=np.concatenate(placed),
    )
    cluster.positions -= cluster.positions.mean(axis=0)
    cluster.arrays["mol_id"] = np.concatenate(
        [np.full(len(m), i, dtype=int) for i, m in enumerate(monomers)]
    )
    cluster.info["n_molecules"] = len(monomers)
    return cluster


def min_intermolecular_distance(cluster: Atoms) -> float:
    """Smallest distance (Å) between atoms of different molecules (``arrays["mol_id"]``)."""
    mol_id = cluster.arrays["mol_id"]
    dist = _distances(cluster.positions)
    other = mol_id[:, None] != mol_id[None, :]
    return float(dist[other].min()) if other.any() else float("inf")
