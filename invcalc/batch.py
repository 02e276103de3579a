"""Many structures in one pass: one flat system, one pair list, one evaluation.

``prepare_batch`` lays S structures (molecules, periodic or partly periodic cells, any
sizes) out as one flat set of atoms for ``invcalc.engine.run``: positions centred and
wrapped per structure (the precision contract of ``invcalc.systems``), pairs found per
structure and joined (no pair crosses structures).  Small molecules are searched
together, padded, in one all-pairs pass; large or periodic structures one by one with
the linear-scaling cell list where it pays.  The networks then run once for all atoms
of an element across the batch.
"""

from __future__ import annotations

import typing as tp

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from torchani.neighbors import all_pairs

from invcalc import engine
from invcalc.neighbors import find_pairs
from invcalc.potential import InvariantPotential
from invcalc.systems import padded_cell

#: Molecules up to this many atoms are searched together (padded all-pairs).
SMALL_MOLECULE = 200
#: Candidate pairs per padded all-pairs pass (bounds its memory).
_PAIR_BUDGET = 1 << 22


class Batch(tp.NamedTuple):
    """S structures as one flat system (atoms sorted by element).

    ``positions``: (N, 3) sorted positions in the model dtype; ``offsets``: (S + 1,)
    start of each structure among the *input-order* atoms; ``volumes``: (S,) Å^3 of
    3D-periodic structures (NaN for others).
    """

    prepared: engine.Prepared
    positions: Tensor
    offsets: np.ndarray
    volumes: np.ndarray


def _centred(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Centred (and wrapped) float64 positions, the (padded) cell, the volume."""
    positions = atoms.get_positions().astype(np.float64)
    positions = positions - positions.mean(axis=0)
    pbc = atoms.get_pbc()
    if not pbc.any():
        return positions, None, float("nan")
    cell = atoms.cell.array.astype(np.float64)
    if not pbc.all():
        cell = padded_cell(positions, cell, pbc, cutoff)
    frac = np.linalg.solve(cell.T, positions.T).T
    volume = float(abs(np.linalg.det(cell))) if pbc.all() else float("nan")
    return (frac - np.floor(frac)) @ cell, cell, volume


def _molecule_pairs(
    cutoff: float, members: list[int], offsets: np.ndarray, positions: Tensor,
    elem: Tensor,
) -> list[Tensor]:
    """Pairs (2, P) in input-order atom indices of the small molecules ``members``,
    searched in padded groups of similar size."""
    sizes = offsets[1:] - offsets[:-1]
    members = sorted(members, key=lambda s: sizes[s])
    out: list[Tensor] = []
    lo = 0
    while lo < len(members):
        width = int(sizes[members[lo]])
        hi = lo
        while hi < len(members):
            width = max(width, int(sizes[members[hi]]))
            if (hi - lo + 1) * width * width > _PAIR_BUDGET and hi > lo:
                break
            hi += 1
        group = members[lo:hi]
        width = int(max(sizes[s] for s in group))
        index = torch.full((len(group), width), -1, dtype=torch.long)
        for row, s in enumerate(group):
            index[row, : sizes[s]] = torch.arange(int(offsets[s]), int(offsets[s + 1]))
        index = index.to(positions.device)
        real = index >= 0
        species = torch.where(real, elem[index.clamp(min=0)], -1)
        coords = torch.where(real.unsqueeze(-1), positions[index.clamp(min=0)], 0.0)
        found = all_pairs(cutoff, species, coords)
        out.append(index.flatten()[found.indices])
        lo = hi
    return out


@torch.no_grad()
def prepare_batch(
    potential: InvariantPotential, images: tp.Sequence[Atoms], dtype: torch.dtype,
    device: torch.device,
) -> Batch:
    """Flat inputs for ``engine.run`` of validated ``images`` (supported elements)."""
    cutoff = potential.cutoff
    sizes = [len(a) for a in images]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    laid = [_centred(a, cutoff) for a in images]
    flat = torch.tensor(np.concatenate([p for p, _, _ in laid]), dtype=dtype, device=device)
    numbers = torch.as_tensor(np.concatenate([a.numbers for a in images]), device=device)
    elem = potential.element_indices(numbers)
    segment = torch.repeat_interleave(
        torch.arange(len(images), device=device), torch.as_tensor(sizes, device=device)
    )
    layout = engine.make_layout(elem, segment, len(potential.elements))
    pieces: list[Tensor] = []
    shift_pieces: list[Tensor] = []
    periodic = any(cell is not None for _, cell, _ in laid)
    small = [
        s for s, (_, cell, _) in enumerate(laid) if cell is None and sizes[s] <= SMALL_MOLECULE
    ]
    for found in _molecule_pairs(cutoff, small, offsets, flat, elem):
        pieces.append(found)
        if periodic:
            shift_pieces.append(flat.new_zeros(found.shape[1], 3))
    searched = set(small)
    for s, (_, cell, _) in enumerate(laid):
        if s in searched:
            continue
        lo, hi = int(offsets[s]), int(offsets[s + 1])
        cell_t = None if cell is None else torch.tensor(cell, dtype=dtype, device=device)
        found = find_pairs(
            cutoff, elem[lo:hi].unsqueeze(0), flat[lo:hi].unsqueeze(0), cell_t,
            potential.neighbor_method,
        )
        pieces.append(found.indices + lo)
        if periodic:
            shifts = flat.new_zeros(found.indices.shape[1], 3)
            if cell_t is not None:
                assert found.cell_shifts is not None
                shifts = found.cell_shifts.to(dtype) @ cell_t
            shift_pieces.append(shifts)
    pairs = torch.cat(pieces, 1) if pieces else torch.zeros(2, 0, dtype=torch.long, device=device)
    shifts = torch.cat(shift_pieces) if periodic else None
    sorted_pairs = layout.inverse[pairs]
    positions = flat.index_select(0, layout.order)
    prepared = engine.prepare(potential, layout, sorted_pairs, shifts, positions, 0.0)
    volumes = np.array([v for _, _, v in laid])
    return Batch(prepared, positions, offsets, volumes)
