"""Structures reused between calls: element layout, pair list (Verlet skin), AEV plan.

``StructureCache`` turns ``ase.Atoms`` into the inputs of ``invcalc.engine.run`` and
keeps everything that depends only on the atomic numbers, the cell and the pair list:

* the element layout (atoms sorted by element) while numbers, cell and pbc are equal;
* the pair list, found with cutoff + ``skin``, while no atom has moved more than
  ``skin / 2`` since it was found (then every pair now within the cutoff was within
  cutoff + skin then) -- the classic Verlet list.  Pairs beyond the cutoff are masked
  out exactly in ``invcalc.features``; pair *vectors* are always recomputed from the
  current positions, so results equal a fresh search up to float round-off.

Positions follow the precision contract of ``invcalc.systems``: centred in float64,
wrapped into the cell by lattice translations fixed when the list was built (so the
stored lattice shifts of the pairs stay valid while atoms cross the cell faces), and
cast to the model dtype last.  ``skin=0`` searches afresh on every change of positions.
"""

from __future__ import annotations

import typing as tp

import numpy as np
import torch
from ase import Atoms
from torch import Tensor

from invcalc import engine
from invcalc.neighbors import find_pairs
from invcalc.potential import InvariantPotential
from invcalc.systems import padded_cell

#: Default Verlet skin in Å.
DEFAULT_SKIN = 0.5


class Step(tp.NamedTuple):
    """What ``StructureCache.update`` returns for one call.

    ``positions``: (1, N, 3) Å, model dtype, atoms in their input order; ``cell``:
    (3, 3) Å (padded when partly periodic) or None; ``rebuilt``: whether pairs were
    searched for this call.
    """

    prepared: engine.Prepared
    positions: Tensor
    cell: Tensor | None
    rebuilt: bool


class StructureCache:
    """Layout and Verlet pair list of the last structure seen (one structure)."""

    def __init__(self, skin: float = DEFAULT_SKIN) -> None:
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, not {skin}")
        self.skin = float(skin)
        self.builds = 0  #: how many pair searches were made (diagnostics)
        self._key: tuple[tp.Any, ...] | None = None
        self._layout: engine.Layout | None = None
        self._prepared: engine.Prepared | None = None
        self._ref: np.ndarray | None = None  # centred positions at the last search
        self._cell: np.ndarray | None = None  # (possibly padded) cell of the last search
        self._wrap: np.ndarray | None = None  # (N, 3) lattice translations subtracted
        self._cell_t: Tensor | None = None

    def clear(self) -> None:
        """Forget everything (the next call searches afresh)."""
        self._key = self._layout = self._prepared = None

    def update(
        self, atoms: Atoms, potential: InvariantPotential, dtype: torch.dtype,
        device: torch.device,
    ) -> Step:
        """Inputs for ``engine.run`` at the positions of ``atoms`` (validated first)."""
        pbc = atoms.get_pbc()
        key = (
            potential.cutoff, dtype, device, atoms.numbers.tobytes(), pbc.tobytes(),
            atoms.cell.array.tobytes() if pbc.any() else None,
        )
        centred = atoms.get_positions().astype(np.float64)
        centred = centred - centred.mean(axis=0)
        if key != self._key:
            self.clear()
            elem = potential.element_indices(torch.as_tensor(atoms.numbers, device=device))
            where = torch.as_tensor(centred, device=device)
            self._layout = engine.make_layout(
                elem, None, len(potential.elements), where, potential.cutoff
            )
            self._key = key
        assert self._layout is not None
        rebuilt = self._prepared is None or self._moved_too_far(centred)
        if rebuilt:
            self._wrap_into_cell(atoms, centred, potential.cutoff + self.skin)
        positions = centred if self._wrap is None else centred - self._wrap
        tensor = torch.tensor(positions, dtype=dtype, device=device).unsqueeze(0)
        if rebuilt:
            cell = None
            if self._cell is not None:
                cell = torch.tensor(self._cell, dtype=dtype, device=device)
            self._cell_t = cell
            self._prepared = self._search(potential, tensor[0], cell)
        assert self._prepared is not None
        return Step(self._prepared, tensor, self._cell_t, rebuilt)

    def _moved_too_far(self, centred: np.ndarray) -> bool:
        if self.skin == 0 or self._ref is None or self._ref.shape != centred.shape:
            return True
        shift = centred - self._ref
        return bool(np.einsum("ij,ij->i", shift, shift).max() > (0.5 * self.skin) ** 2)

    def _wrap_into_cell(self, atoms: Atoms, centred: np.ndarray, reach: float) -> None:
        """Fix the cell (padded when partly periodic) and the lattice translations
        that wrap ``centred`` into it, until the next search."""
        pbc = atoms.get_pbc()
        self._ref = centred.copy()
        self._cell, self._wrap = None, None
        if pbc.any():
            cell = atoms.cell.array.astype(np.float64)
            if not pbc.all():
                cell = padded_cell(centred, cell, pbc, reach)
            frac = np.linalg.solve(cell.T, centred.T).T
            self._cell, self._wrap = cell, np.floor(frac) @ cell

    def _search(
        self, potential: InvariantPotential, positions: Tensor, cell: Tensor | None
    ) -> engine.Prepared:
        """Pairs within cutoff + skin of ``positions`` (N, 3), and their plan."""
        self.builds += 1
        assert self._layout is not None
        positions = positions.index_select(0, self._layout.order)
        found = find_pairs(
            potential.cutoff + self.skin, self._layout.elem.unsqueeze(0),
            positions.unsqueeze(0), cell, potential.neighbor_method,
        )
        shifts = None
        if cell is not None:
            assert found.cell_shifts is not None
            shifts = found.cell_shifts.to(cell.dtype) @ cell
        return engine.prepare(
            potential, self._layout, found.indices, shifts, positions, self.skin
        )
