"""Forces, stress and Hessians of an energy-only potential, by autograd, in one place.

Conventions (ASE's): forces F = -dE/dr; stress sigma = (1/V) dE/d(epsilon) for a
homogeneous strain r -> r (1 + epsilon), cell -> cell (1 + epsilon), taken at
epsilon = 0.  The strain is symmetrised, (epsilon + epsilon^T)/2, before use, so the
returned stress is symmetric and a pure rotation (the antisymmetric part) does no work.
Everything here is in the potential's own energy unit; the calculator converts.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor

from invcalc.neighbors import PairList
from invcalc.potential import Energies, InvariantPotential

if tp.TYPE_CHECKING:
    from invcalc.engine import Prepared


class Evaluation(tp.NamedTuple):
    """Energies with the derivatives asked for (None where not asked).

    ``forces``: (B, N, 3) mean-ensemble forces; ``member_forces``: (M, B, N, 3);
    ``stress``: (3, 3) for one periodic structure.  Energy unit per Å (per Å^3 for stress).
    """

    energies: Energies
    forces: Tensor | None
    member_forces: Tensor | None
    stress: Tensor | None


def evaluate(
    potential: InvariantPotential,
    numbers: Tensor | None,
    positions: Tensor,
    cell: Tensor | None = None,
    *,
    forces: bool = True,
    stress: bool = False,
    member_forces: bool = False,
    pairs: PairList | None = None,
    prepared: Prepared | None = None,
) -> Evaluation:
    """One forward pass and the backward passes needed for what is asked.

    Plain forces (and stress) take one backward pass; ``member_forces`` takes one per
    ensemble member and derives the mean forces from them at no extra cost.
    Shapes as in ``InvariantPotential.forward``; ``stress`` needs ``cell`` and B = 1.
    ``numbers`` may be None only with ``prepared``.

    ``prepared``: the structures of ``invcalc.engine`` for this one structure (B = 1)
    and its pair list (``invcalc.cache.StructureCache`` keeps them between calls);
    the fast path -- fused ensemble, reused indices -- then gives the same results.
    """
    if stress and (cell is None or positions.shape[0] != 1):
        raise ValueError("stress needs one fully periodic structure (a cell)")
    if prepared is not None:
        return _evaluate_prepared(
            potential, prepared, positions, cell, forces, stress, member_forces
        )
    need_grad = forces or stress or member_forces
    pos = positions.detach().requires_grad_(need_grad)
    inputs = [pos]
    used_pos, used_cell = pos, cell
    if stress:
        assert cell is not None
        strain = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
        deformation = torch.eye(3, dtype=pos.dtype, device=pos.device) + 0.5 * (
            strain + strain.T
        )
        used_pos, used_cell = pos @ deformation, cell @ deformation
        inputs.append(strain)
    if numbers is None:
        raise ValueError("numbers are needed without a prepared structure")
    with torch.enable_grad():
        energies = potential(numbers, used_pos, used_cell, pairs)
        if not need_grad:
            return Evaluation(_detach(energies), None, None, None)
        if member_forces:
            grads = _member_gradients(energies.members, inputs)
            per_member = -grads[0]
            mean = [g.mean(0) for g in grads]
        else:
            per_member = None
            mean = list(torch.autograd.grad(energies.total.sum(), inputs))
    virial = None
    if stress:
        assert cell is not None
        volume = torch.linalg.det(cell.detach().to(torch.float64)).abs()
        virial = mean[1].to(torch.float64) / volume
    return Evaluation(_detach(energies), -mean[0], per_member, virial)


def _evaluate_prepared(
    potential: InvariantPotential, prepared: Prepared, positions: Tensor,
    cell: Tensor | None, forces: bool, stress: bool, member_forces: bool,
) -> Evaluation:
    """``evaluate`` through ``invcalc.engine.run`` for one structure (B = 1)."""
    from invcalc import engine

    if positions.shape[0] != 1:
        raise ValueError("a prepared evaluation takes one structure (B = 1)")
    layout = prepared.layout
    sorted_pos = positions[0].detach().index_select(0, layout.order)
    out = engine.run(
        potential, prepared, sorted_pos, forces=forces, virial=stress,
        member_forces=member_forces,
    )
    inverse = layout.inverse
    energies = Energies(
        out.energy, out.atomic.index_select(0, inverse).unsqueeze(0), out.members
    )
    f = None if out.forces is None else out.forces.index_select(0, inverse).unsqueeze(0)
    per_member = None
    if out.member_forces is not None:
        per_member = out.member_forces.index_select(1, inverse).unsqueeze(1)
    virial = None
    if out.virial is not None:
        assert cell is not None
        volume = torch.linalg.det(cell.detach().to(torch.float64)).abs()
        virial = out.virial[0].to(torch.float64) / volume
    return Evaluation(energies, f, per_member, virial)


def _member_gradients(members: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    """d(members[m].sum())/d(input) for each member m, stacked on a new axis 0."""
    rows = []
    for m in range(members.shape[0]):
        last = m == members.shape[0] - 1
        rows.append(torch.autograd.grad(members[m].sum(), inputs, retain_graph=not last))
    return [torch.stack([r[k] for r in rows]) for k in range(len(inputs))]


def _detach(energies: Energies) -> Energies:
    return Energies(*(t.detach() for t in energies))


def hessian(
    potential: InvariantPotential,
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor | None = None,
    pairs: PairList | None = None,
) -> Tensor:
    """Second derivatives d2E/dr_a dr_b of one structure: (3N, 3N), symmetrised.

    ``positions``: (1, N, 3).  Use a float64 potential for finite-difference-grade values.
    """
    if positions.shape[0] != 1:
        raise ValueError("hessian takes one structure at a time")
    pos = positions.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = potential(numbers, pos, cell, pairs).total.sum()
        (gradient,) = torch.autograd.grad(energy, pos, create_graph=True)
        flat = gradient.reshape(-1)
        n = flat.shape[0]
        rows = [
            torch.autograd.grad(flat[k], pos, retain_graph=k < n - 1)[0].reshape(-1)
            for k in range(n)
        ]
    h = torch.stack(rows).to(torch.float64)
    return 0.5 * (h + h.T)
