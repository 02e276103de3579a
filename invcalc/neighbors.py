"""Neighbor pairs: found without gradients by torchani, measured with gradients here.

torchani's neighbor lists (all-pairs, or the linear-scaling cell list) pick the pairs
within the cutoff.  The picking is not differentiable and needs no gradient; the pair
vectors ``r_j - r_i + n @ cell`` are then recomputed from the original tensors so that
forces, stress (through ``cell``) and Hessians are exact, whatever wrapping torchani
applied internally.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor
from torchani.neighbors import Neighbors, all_pairs, cell_list, reconstruct_shifts, setup_grid

NeighborMethod = tp.Literal["auto", "all_pairs", "cell_list"]

#: Atom counts from which the cell list beats all-pairs on CPU (torchani's own
#: adaptive thresholds, with and without periodic boundaries).
CELL_LIST_MIN_ATOMS_PBC = 190
CELL_LIST_MIN_ATOMS_FREE = 1770


class PairList(tp.NamedTuple):
    """Pairs within a cutoff.

    ``indices``: (2, P) long, into the flattened atoms of the batch (B * N).
    ``cell_shifts``: (P, 3) integer lattice translations (as floats) of the second atom,
    or None without periodic boundaries.
    """

    indices: Tensor
    cell_shifts: Tensor | None


def _cell_list_fits(cell: Tensor, cutoff: float) -> bool:
    """Whether every cell height holds at least one cutoff-sized bucket."""
    return bool((setup_grid(cell, cutoff) > 0).all())


def choose_method(
    method: NeighborMethod, num_molecules: int, num_atoms: int, cell: Tensor | None,
    cutoff: float,
) -> str:
    """Resolve ``"auto"``: the cell list for large single systems, else all-pairs."""
    if method != "auto":
        return method
    if num_molecules != 1:
        return "all_pairs"
    threshold = CELL_LIST_MIN_ATOMS_FREE if cell is None else CELL_LIST_MIN_ATOMS_PBC
    if num_atoms < threshold:
        return "all_pairs"
    if cell is not None and not _cell_list_fits(cell, cutoff):
        return "all_pairs"
    return "cell_list"


@torch.no_grad()
def find_pairs(
    cutoff: float,
    elem_idxs: Tensor,
    coords: Tensor,
    cell: Tensor | None = None,
    method: NeighborMethod = "auto",
) -> PairList:
    """Pairs of atoms closer than ``cutoff`` (Å).

    Args:
        elem_idxs: (B, N) element indices, -1 for padding atoms.
        coords: (B, N, 3) positions in Å.
        cell: (3, 3) lattice vectors as rows for a fully periodic system, else None.
        method: "all_pairs" (O(N^2), batches), "cell_list" (O(N), one system) or "auto".
    """
    coords = coords.detach()
    pbc = None
    if cell is not None:
        cell = cell.detach()
        pbc = torch.ones(3, dtype=torch.bool, device=coords.device)
    chosen = choose_method(method, coords.shape[0], coords.shape[1], cell, cutoff)
    if chosen == "cell_list":
        if cell is not None and not _cell_list_fits(cell, cutoff):
            raise ValueError("the cell is thinner than the cutoff: use all_pairs")
        found = cell_list(cutoff, elem_idxs, coords, cell, pbc)
    elif chosen == "all_pairs":
        found = all_pairs(cutoff, elem_idxs, coords, cell, pbc)
    else:
        raise ValueError(f"unknown neighbor method {method!r}")
    if cell is None:
        return PairList(found.indices, None)
    cartesian = reconstruct_shifts(coords, found)  # (P, 3) Å, includes any wrapping
    return PairList(found.indices, torch.round(cartesian @ torch.linalg.inv(cell)))


def pair_geometry(pairs: PairList, coords: Tensor, cell: Tensor | None) -> Neighbors:
    """Differentiable pair vectors (P, 3) and distances (P,) from ``coords`` and ``cell``.

    The vector of pair (i, j) is ``r_i - r_j + n_ij @ cell``, torchani's convention.
    """
    flat = coords.reshape(-1, 3)
    diff = flat.index_select(0, pairs.indices[0]) - flat.index_select(0, pairs.indices[1])
    if pairs.cell_shifts is not None:
        assert cell is not None
        diff = diff + pairs.cell_shifts.to(cell.dtype) @ cell
    return Neighbors(pairs.indices, diff.norm(2, -1), diff)
