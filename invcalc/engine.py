"""The fast inference path: flat atoms, prepared indices, fused ensemble, one backward.

One or many structures are held as one flat set of N atoms, sorted by element (so each
element's atoms are one contiguous block for the fused networks), with the pairs of
every structure in one list (structures never share a pair).  ``Prepared`` holds what
depends only on the atomic numbers, the cell and the pair list; it is built once and
reused while those do not change (see ``invcalc.cache``).  ``run`` then evaluates

    E_s = sum_{i in s} [ e0(Z_i) + (1/M) sum_m NN^m_{Z_i}(G_i) ]        (float64 sums)

and its derivatives through the pair vectors d_p = r_i - r_j + n_p @ cell:

    g_p = dE/dd_p;   F_i = -sum_{p: i} g_p + sum_{p: j=i} g_p;   W_s = sum_{p in s} d_p^T g_p

with the virial W symmetrised (the stress is W / V, as a symmetric strain of positions
and cell gives).  Networks run in the model dtype with weights fused across members
(``invcalc.fused``); features come from ``invcalc.features``.  Results are exact: the
same numbers as ``InvariantPotential.forward`` with autograd, up to float round-off.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor

from invcalc import features
from invcalc.potential import InvariantPotential


class Layout(tp.NamedTuple):
    """N atoms of S structures, sorted by element.

    ``order``: (N,) long, sorted atom k is input atom ``order[k]``; ``inverse``: (N,)
    its inverse permutation; ``elem``: (N,) sorted element indices; ``counts``: atoms
    per element; ``segment``: (N,) structure of each sorted atom, None when S = 1.
    """

    order: Tensor
    inverse: Tensor
    elem: Tensor
    counts: tuple[int, ...]
    segment: Tensor | None
    num_structures: int


class Prepared(tp.NamedTuple):
    """Everything but the coordinates: layout, AEV plan over the pair list, Cartesian
    lattice shifts (P, 3) of the pairs (model dtype, None without periodicity) and the
    structure of each pair (P,) (None when S = 1)."""

    layout: Layout
    plan: features.AEVPlan
    shifts: Tensor | None
    pair_segment: Tensor | None


class FlatEvaluation(tp.NamedTuple):
    """Output of ``run``, atoms in *sorted* order, energies in the potential's unit.

    ``energy``: (S,) float64; ``atomic``: (N,) float64 (ensemble mean);
    ``members``: (M, S) float64; ``forces``: (N, 3) model dtype or None;
    ``member_forces``: (M, N, 3) or None; ``virial``: (S, 3, 3) symmetric dE/dstrain
    (energy unit) or None.
    """

    energy: Tensor
    atomic: Tensor
    members: Tensor
    forces: Tensor | None
    member_forces: Tensor | None
    virial: Tensor | None


def _morton(positions: Tensor, size: float) -> Tensor:
    """Z-order (Morton) codes (N,) of the cubes of side ``size`` holding ``positions``."""
    cube = ((positions - positions.min(0).values) / size).long().clamp(0, 1023)
    code = torch.zeros_like(cube[:, 0])
    for bit in range(10):
        for axis in range(3):
            code |= ((cube[:, axis] >> bit) & 1) << (3 * bit + axis)
    return code


def make_layout(
    elem: Tensor, segment: Tensor | None, num_elements: int, positions: Tensor | None = None,
    size: float = 5.0,
) -> Layout:
    """Sort atoms with element indices ``elem`` (N,) of structures ``segment`` (N,).

    With ``positions`` (N, 3), atoms of one element are further sorted along a
    Z-order curve of ``size``-Å cubes: neighbors get nearby indices, so the gathers
    and scatters over pairs and triples of large systems stay in cache.
    """
    key = elem
    if positions is not None and elem.shape[0] > 1:
        key = elem * (1 << 30) + _morton(positions.detach(), size)
    order = torch.argsort(key, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    counts = torch.bincount(elem, minlength=num_elements).tolist()
    num = 1 if segment is None else int(segment.max()) + 1 if segment.numel() else 1
    seg = None if segment is None or num == 1 else segment[order]
    return Layout(order, inverse, elem[order], tuple(counts), seg, num)


def prepare(
    potential: InvariantPotential,
    layout: Layout,
    pairs: Tensor,
    shifts: Tensor | None,
    positions: Tensor,
    skin: float,
) -> Prepared:
    """``Prepared`` for ``pairs`` (2, P) into the sorted atoms.

    ``shifts``: (P, 3) Cartesian lattice translations of the second atom (Å, model
    dtype) or None; ``positions``: (N, 3) sorted positions when the pairs were found
    (for the angular candidate set); ``skin``: how far beyond the cutoff pairs may be.
    """
    if pairs.shape[1] > 1:  # pairs in atom order: neighboring pairs share atoms
        rank = torch.argsort(pairs[0] * layout.order.shape[0] + pairs[1])
        pairs = pairs[:, rank]
        shifts = None if shifts is None else shifts[rank]
    i, j = pairs[0], pairs[1]
    with torch.no_grad():
        diff = positions.index_select(0, i) - positions.index_select(0, j)
        if shifts is not None:
            diff = diff + shifts
        plan = features.build_plan(
            potential.aev_computer, layout.elem, i, j, diff.norm(2, -1), skin
        )
    pair_segment = None if layout.segment is None else layout.segment[i]
    return Prepared(layout, plan, shifts, pair_segment)


def pair_vectors(prepared: Prepared, positions: Tensor) -> Tensor:
    """(P, 3) pair vectors r_i - r_j + shift of sorted ``positions`` (N, 3)."""
    plan = prepared.plan
    diff = positions.index_select(0, plan.i) - positions.index_select(0, plan.j)
    if prepared.shifts is not None:
        diff = diff + prepared.shifts
    return diff


def run(
    potential: InvariantPotential,
    prepared: Prepared,
    positions: Tensor,
    *,
    forces: bool = True,
    virial: bool = False,
    member_forces: bool = False,
    chunk: int = features.CHUNK,
) -> FlatEvaluation:
    """Energies and the derivatives asked for, of sorted ``positions`` (N, 3) Å.

    No autograd graph is built: the networks and the features give their gradients in
    closed form (one backward sweep each; ``member_forces`` sweeps the features once
    per member).  Systems with more than ``chunk`` pairs or triples recompute their
    terms chunk by chunk in the backward sweep instead of storing them.
    """
    layout, plan = prepared.layout, prepared.plan
    aev = potential.aev_computer
    nets = potential.fused_networks()
    need_grad = forces or virial or member_forces
    mode = None if not need_grad else "members" if member_forces else "mean"
    with torch.no_grad():
        diff = pair_vectors(prepared, positions.detach())
        g_all, saved = features.aevs(aev, plan, diff, chunk, keep=need_grad)
        compact = (plan.present, plan.columns)
        nn, grad_g = nets.energies_and_grad(g_all, layout.counts, mode, compact)  # (M, N)
        e0 = potential.self_energies.index_select(0, layout.elem)
        member_atomic = nn.to(torch.float64) + e0
        atomic = member_atomic.mean(0)
        energy = _per_structure(layout, atomic)
        members = _per_structure(layout, member_atomic)
        if grad_g is None:
            return FlatEvaluation(energy, atomic, members, None, None, None)
        per_member = None
        if member_forces:  # grad_g: (M, N, F), each member's own dE_m/dG
            g_members = torch.stack(
                [features.aev_grad(aev, plan, diff, gm, saved, chunk) for gm in grad_g]
            )  # (M, P, 3)
            g = g_members.mean(0)
            per_member = torch.stack([_forces(plan, gm) for gm in g_members])
        else:
            g = features.aev_grad(aev, plan, diff, grad_g, saved, chunk)
        w = _virial(prepared, diff, g) if virial else None
        return FlatEvaluation(energy, atomic, members, _forces(plan, g), per_member, w)


def _per_structure(layout: Layout, atomic: Tensor) -> Tensor:
    """Sum (..., N) over the atoms of each structure -> (..., S)."""
    if layout.segment is None:
        return atomic.sum(-1, keepdim=True)
    out = atomic.new_zeros(*atomic.shape[:-1], layout.num_structures)
    return out.index_add_(-1, layout.segment, atomic)


def _forces(plan: features.AEVPlan, g: Tensor) -> Tensor:
    """(N, 3) forces -dE/dr from pair gradients g (P, 3) = dE/d(r_i - r_j)."""
    f = g.new_zeros(plan.num_atoms, 3)
    f.index_add_(0, plan.i, g, alpha=-1)
    f.index_add_(0, plan.j, g)
    return f


def _virial(prepared: Prepared, diff: Tensor, g: Tensor) -> Tensor:
    """(S, 3, 3) symmetrised sum of d_p^T g_p over each structure's pairs."""
    if prepared.pair_segment is None:
        w = (diff.T @ g).unsqueeze(0)
    else:
        outer = diff.unsqueeze(2) * g.unsqueeze(1)
        w = g.new_zeros(prepared.layout.num_structures, 3, 3)
        w.index_add_(0, prepared.pair_segment, outer)
    return 0.5 * (w + w.transpose(1, 2))
