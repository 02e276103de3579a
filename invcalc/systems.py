"""ase.Atoms -> validated tensors for a potential, following the precision contract.

Positions are moved in float64 before any cast: a molecule is centred on its mean
position and periodic coordinates are wrapped into the cell, so a structure far from
the origin loses no float32 precision.  Partially periodic cells are turned into fully
periodic ones whose non-periodic vectors are replaced by vectors orthogonal to the
periodic ones and long enough that no atom meets an image across them (exact: no pair
within the cutoff is added or lost).
"""

from __future__ import annotations

import typing as tp

import numpy as np
import torch
from ase import Atoms
from torch import Tensor

# Smallest |det(cell)| / (product of lengths) accepted as non-singular.
_MIN_CELL_SINE = 1e-6


class System(tp.NamedTuple):
    """One structure as tensors.

    ``numbers``: (1, N) long; ``positions``: (1, N, 3) Å in the model dtype;
    ``cell``: (3, 3) Å rows (fully periodic after padding) or None;
    ``periodic_3d``: whether the input was periodic in all three directions.
    """

    numbers: Tensor
    positions: Tensor
    cell: Tensor | None
    periodic_3d: bool


def total_charge(atoms: Atoms) -> float:
    """Total charge from ``atoms.info['charge']`` or else the initial charges (e)."""
    if "charge" in atoms.info:
        return float(atoms.info["charge"])
    return float(np.sum(atoms.get_initial_charges()))


def validate(atoms: Atoms, *, neutral_only: bool = True) -> None:
    """Raise ``ValueError`` naming the problem with ``atoms``, if any."""
    if len(atoms) == 0:
        raise ValueError("the structure has no atoms")
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"positions of atom(s) {bad.tolist()} are NaN or infinite")
    if neutral_only:
        charge = total_charge(atoms)
        if abs(charge) > 1e-8:
            raise ValueError(
                f"total charge {charge:g} e: this model supports neutral systems only"
            )
    pbc = atoms.get_pbc()
    if pbc.any():
        cell = atoms.cell.array[pbc]
        lengths = np.linalg.norm(cell, axis=1)
        if not np.all(np.isfinite(cell)) or np.any(lengths == 0):
            raise ValueError("a periodic direction has a zero-length or non-finite cell vector")
        gram = np.linalg.det(cell @ cell.T)
        if gram <= (_MIN_CELL_SINE * np.prod(lengths)) ** 2:
            raise ValueError(f"the cell is singular (degenerate periodic vectors): {cell.tolist()}")


def _complement(periodic: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning the complement of the periodic vectors' span."""
    if len(periodic) == 0:
        return np.eye(3)
    _, _, vt = np.linalg.svd(periodic)
    return vt[len(periodic):]


def padded_cell(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """A fully periodic cell equivalent to a partially periodic one (see module doc)."""
    out = cell.copy()
    directions = _complement(cell[pbc])
    for axis, d in zip(np.nonzero(~pbc)[0], directions):
        extent = float(np.ptp(positions @ d))
        out[axis] = d * (extent + 2.0 * cutoff + 1.0)
    return out


def to_system(
    atoms: Atoms, cutoff: float, dtype: torch.dtype, device: torch.device | str
) -> System:
    """Convert validated ``atoms`` (call ``validate`` first) to a ``System``."""
    positions = atoms.get_positions().astype(np.float64)
    pbc = atoms.get_pbc()
    positions = positions - positions.mean(axis=0)
    cell_t = None
    if pbc.any():
        cell = atoms.cell.array.astype(np.float64)
        if not pbc.all():
            cell = padded_cell(positions, cell, pbc, cutoff)
        # wrap into the (possibly padded) cell: exact lattice translations per atom
        frac = np.linalg.solve(cell.T, positions.T).T
        positions = (frac - np.floor(frac)) @ cell
        cell_t = torch.tensor(cell, dtype=dtype, device=device)
    return System(
        numbers=torch.tensor(atoms.numbers, dtype=torch.long, device=device).unsqueeze(0),
        positions=torch.tensor(positions, dtype=dtype, device=device).unsqueeze(0),
        cell=cell_t,
        periodic_3d=bool(pbc.all()),
    )
