"""Self-energies by linear least squares: E_s ≈ sum_e count_se * e0_e, in float64.

The networks then learn only the residual ``E_s - sum_e count_se e0_e``, which is
small and of similar size for every element.  When compositions are linearly
dependent (e.g. all conformers of one molecule) the split of the energy between
elements is not determined by the data; the minimum-norm solution is used and a
warning says so.
"""

from __future__ import annotations

import typing as tp
import warnings

import torch
from torch import Tensor


class SelfEnergyFit(tp.NamedTuple):
    """``self_energies``: (E,) float64 eV per element; ``rank``: rank of the count
    matrix (E when fully determined); ``rmse_per_atom``: eV/atom of the residual."""

    self_energies: Tensor
    rank: int
    rmse_per_atom: float


def fit_self_energies(
    counts: Tensor, energies: Tensor, elements: tp.Sequence[str] | None = None
) -> SelfEnergyFit:
    """Least-squares self-energies of element ``counts`` (S, E) for ``energies`` (S,) eV.

    Solved with an SVD in float64 after scaling each column to unit norm, so elements
    with very different counts (H vs S) are treated evenly; exact for data that is
    exactly linear in the counts.
    """
    a = counts.detach().to(torch.float64).cpu()
    y = energies.detach().to(torch.float64).cpu()
    if a.ndim != 2 or y.shape != (a.shape[0],):
        raise ValueError(
            f"counts (S, E) and energies (S,) do not match: {tuple(a.shape)}, {tuple(y.shape)}"
        )
    scale = a.norm(dim=0)
    if bool((scale == 0).any()):
        empty = torch.nonzero(scale == 0).flatten().tolist()
        missing = [str(elements[i]) if elements else str(i) for i in empty]
        raise ValueError(f"no structure contains element(s) {', '.join(missing)}")
    solution = torch.linalg.lstsq(a / scale, y.unsqueeze(1), driver="gelsd")
    e0 = solution.solution.squeeze(1) / scale
    rank = int(torch.linalg.matrix_rank(a / scale))
    if rank < a.shape[1]:
        warnings.warn(
            f"the compositions determine only {rank} of {a.shape[1]} self-energies "
            "(linearly dependent element counts); using the minimum-norm solution. "
            "Energies of other compositions will rely on the networks alone.",
            stacklevel=2,
        )
    residual = (y - a @ e0) / a.sum(1)
    return SelfEnergyFit(e0, rank, float(residual.pow(2).mean().sqrt()))
