"""Per-member predictions and the training loss.

Every ensemble member m gets its own energies E_m and its own forces F_m = -dE_m/dr,
and its own loss L_m (see ``TrainConfig``).  Members share the AEVs but no parameters,
so the gradient of sum_m L_m with respect to member m's weights is exactly dL_m/dθ_m:
one backward pass trains M independent models.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor

from invcalc.neighbors import pair_geometry
from invcalc.potential import InvariantPotential
from invcalc.training.batches import Batch


class MemberOutputs(tp.NamedTuple):
    """``energies``: (M, B) eV float64 (self-energies included);
    ``forces``: (M, B, n, 3) eV/Å in the model dtype, or None."""

    energies: Tensor
    forces: Tensor | None


class LossTerms(tp.NamedTuple):
    """Per-member losses, each (M,) float64: energy MSE per atom^2 and force MSE."""

    energy: Tensor
    forces: Tensor

    def total(self, force_weight: float) -> Tensor:
        """(M,) combined loss of each member."""
        return self.energy + force_weight * self.forces


def member_outputs(
    potential: InvariantPotential, batch: Batch, *, forces: bool, create_graph: bool
) -> MemberOutputs:
    """Energies of every member and, if ``forces``, each member's own forces.

    ``create_graph=True`` keeps the graph of the forces so that a force loss can be
    differentiated with respect to the weights (training); False for evaluation.

    The members are evaluated as separate graphs over the shared AEVs G (what
    ``InvariantPotential.forward`` computes, less the coupling of its stacked member
    output): dE_m/dG takes one backward pass through member m's network only, and the
    M products (dE_m/dG)(dG/dr) run as one batched (vmapped) pass through the AEVs.
    Backpropagating one member at a time through the stacked output would also pass
    (zero) gradients through every other member: M^2 network passes instead of M.
    """
    positions = batch.positions.detach().requires_grad_(forces)
    # forces need autograd even under no_grad (evaluation); otherwise keep the caller's mode
    with torch.set_grad_enabled(forces or torch.is_grad_enabled()):
        elem = potential.element_indices(batch.numbers)
        neighbors = pair_geometry(batch.pairs, positions, None)
        aevs = potential.aev_computer.compute_from_neighbors(elem, positions, neighbors)
        e0 = potential.self_energies[elem.clamp(min=0)].masked_fill(elem < 0, 0.0)
        atomic = [
            net(elem, aevs, atomic=True).to(torch.float64) + e0
            for net in potential.networks.members
        ]
        energies = torch.stack([a.sum(-1) for a in atomic])  # (M, B) float64
        if not forces:
            return MemberOutputs(energies, None)
        # (M, B, n, D): each member's dE_m/dG, through its own network only
        dedg = torch.stack([
            torch.autograd.grad(a.sum(), aevs, create_graph=create_graph)[0] for a in atomic
        ])
        if len(atomic) == 1:
            grads = torch.autograd.grad(
                aevs, positions, grad_outputs=dedg[0], create_graph=create_graph
            )[0].unsqueeze(0)
        else:
            (grads,) = torch.autograd.grad(
                aevs, positions, grad_outputs=dedg, is_grads_batched=True,
                create_graph=create_graph,
            )
    if not create_graph:  # evaluation: nothing downstream needs the graph
        return MemberOutputs(energies.detach(), -grads.detach())
    return MemberOutputs(energies, -grads)


def loss_terms(outputs: MemberOutputs, batch: Batch) -> LossTerms:
    """Per-member energy and force losses on ``batch`` (force term 0 without forces).

    Energy: mean over structures of ((E_m - E_ref) / N)^2.  Forces: mean over the
    batch's real atoms and Cartesian components of (F_m - F_ref)^2; padding atoms have
    zero reference and zero predicted force and are excluded from the count.
    """
    de = (outputs.energies - batch.energies) / batch.num_atoms
    energy = de.pow(2).mean(-1)
    if outputs.forces is None:
        return LossTerms(energy, torch.zeros_like(energy))
    real = (batch.numbers >= 0).to(torch.float64).unsqueeze(-1)
    df = (outputs.forces.to(torch.float64) - batch.forces) * real
    forces = df.pow(2).sum((1, 2, 3)) / (3.0 * batch.num_atoms.sum())
    return LossTerms(energy, forces)
