"""The fast paths are exact: fused ensemble, reused pairs and triples, chunks, compact AEVs.

Every check compares the fast path with the reference path (torchani modules and
autograd through ``InvariantPotential.forward``) in float64.  Correctness only: no
timing here (see benchmarks/speed.py).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet

from invcalc import InvCalc, InvariantPotential, aev_terms, engine, features
from invcalc.derivatives import evaluate
from invcalc.systems import to_system
from conftest import ELEMENTS, SMALL_FEATURES, make_potential, water_box
from test_torchani_compat import ani1x_like


def _potential(kind: str, members: int = 3) -> InvariantPotential:
    if kind == "ani1x":  # cosine cutoff, CELU: torchani's own architecture
        return InvariantPotential.from_torchani(ani1x_like(members=members)).double()
    hidden = () if kind == "linear" else (16, 12)
    pot = InvariantPotential.build(
        ELEMENTS, features=SMALL_FEATURES, hidden=hidden, ensemble_size=members,
        activation="gelu" if kind == "linear" else kind, seed=5,
    )
    return pot.double().eval()


@pytest.mark.parametrize("kind", ["ani1x", "gelu", "silu", "linear"])
def test_fused_ensemble_equals_torchani_ensemble(kind):
    pot = _potential(kind)
    counts = (4, 3, 1, 2)
    elem = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    g = (0.5 * torch.randn(len(elem), pot.aev_computer.out_dim, dtype=torch.float64))
    g.requires_grad_(True)
    ref = pot.networks(elem[None], g[None], atomic=True, ensemble_values=True)[:, 0]
    fused = pot.fused_networks()
    energies, grad = fused.energies_and_grad(g.detach(), counts, "mean")
    torch.testing.assert_close(energies, ref, rtol=0, atol=1e-12)
    (expected,) = torch.autograd.grad(ref.mean(0).sum(), g, retain_graph=True)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-13)
    _, per_member = fused.energies_and_grad(g.detach(), counts, "members")
    for m in range(ref.shape[0]):
        (gm,) = torch.autograd.grad(ref[m].sum(), g, retain_graph=True)
        torch.testing.assert_close(per_member[m], gm, rtol=0, atol=1e-13)


def test_fused_weights_follow_every_change_of_the_model():
    pot = _potential("gelu")
    keys = list(pot.state_dict())
    counts = (3, 2, 2, 1)
    elem = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    g = torch.rand(len(elem), pot.aev_computer.out_dim, dtype=torch.float64)

    def check() -> None:
        ref = pot.networks(elem[None], g[None], atomic=True, ensemble_values=True)[:, 0]
        torch.testing.assert_close(pot.fused_networks().energies(g, counts), ref)

    check()
    first = pot.fused_networks()
    assert pot.fused_networks() is first  # reused while nothing changed
    weight = pot.networks.members[1].atomics["C"].layers[0].weight
    with torch.no_grad():
        weight.mul_(1.5)  # in place, as an optimizer step
    check()
    state = {k: v + 0.01 for k, v in pot.state_dict().items()}
    pot.load_state_dict(state)
    check()
    weight.data = weight.data * 2  # re-pointed storage, same Parameter
    check()
    pot.networks.set_active_members([0, 2])
    ref = pot.networks(elem[None], g[None], atomic=True, ensemble_values=True)[:, 0]
    torch.testing.assert_close(pot.fused_networks().energies(g, counts), ref)
    pot.networks.set_active_members([0, 1, 2])
    pot.float()
    assert pot.fused_networks().elements[0].weights[0].dtype == torch.float32
    pot.double()
    check()
    assert copy.deepcopy(pot)._fused._fused is None  # copies start afresh
    assert list(pot.state_dict()) == keys  # the stored layout never changes


@pytest.mark.parametrize("kind", ["ani1x", "gelu"])
def test_fast_path_equals_autograd_reference(kind, ethanol):
    pot = _potential(kind, members=2)
    calc = InvCalc(pot, dtype=torch.float64, device="cpu")
    box = water_box(2, spacing=3.0)
    slab = box.copy()
    slab.pbc = (True, True, False)
    for atoms in (ethanol, box, slab):
        step = calc._cache.update(atoms, pot, torch.float64, torch.device("cpu"))
        fast = evaluate(
            pot, None, step.positions, step.cell, stress=atoms.pbc.all(),
            member_forces=True, prepared=step.prepared,
        )
        system = to_system(atoms, pot.cutoff, torch.float64, "cpu")
        ref = evaluate(
            pot, system.numbers, system.positions, system.cell, stress=atoms.pbc.all(),
            member_forces=True,
        )
        torch.testing.assert_close(fast.energies.total, ref.energies.total, rtol=0, atol=1e-9)
        torch.testing.assert_close(fast.energies.members, ref.energies.members, rtol=0, atol=1e-9)
        torch.testing.assert_close(fast.forces, ref.forces, rtol=0, atol=1e-10)
        torch.testing.assert_close(fast.member_forces, ref.member_forces, rtol=0, atol=1e-10)
        if atoms.pbc.all():
            torch.testing.assert_close(fast.stress, ref.stress, rtol=0, atol=1e-12)


def _md_compare(atoms, pot, skin: float, steps: int, check_stress: bool) -> InvCalc:
    cached = InvCalc(pot, dtype=torch.float64, device="cpu", skin=skin)
    fresh = InvCalc(pot, dtype=torch.float64, device="cpu", skin=0.0)
    atoms.calc = cached
    rng = np.random.default_rng(0)  # ~1500 K of random velocities
    kt = 1500 * units.kB
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(kt * atoms.get_masses())[:, None])
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    for _ in range(steps):
        dyn.run(1)
        ref = atoms.copy()
        ref.calc = fresh
        assert abs(atoms.get_potential_energy() - ref.get_potential_energy()) < 1e-9
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-10)
        if check_stress:
            np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=0, atol=1e-12)
    return cached


def test_cached_pairs_equal_fresh_pairs_over_periodic_md():
    # cosine cutoff: pairs in the skin would count if they were not masked
    pot = _potential("ani1x", members=2)
    atoms = water_box(2, spacing=3.0)
    calc = _md_compare(atoms, pot, skin=1.0, steps=40, check_stress=True)
    frac = atoms.get_scaled_positions(wrap=False)
    assert ((frac < 0) | (frac >= 1)).any()  # atoms crossed the cell faces meanwhile
    assert 1 < calc._cache.builds < 40  # pairs were reused, and rebuilt when needed


def test_cached_pairs_equal_fresh_pairs_over_molecular_md(ethanol):
    calc = _md_compare(ethanol, _potential("gelu"), skin=0.3, steps=30, check_stress=False)
    assert calc._cache.builds < 30


def test_chunks_equal_one_pass():
    pot = _potential("ani1x", members=2)
    calc = InvCalc(pot, dtype=torch.float64, device="cpu")
    box = water_box(2, spacing=2.9)
    step = calc._cache.update(box, pot, torch.float64, torch.device("cpu"))
    pos = step.positions[0].index_select(0, step.prepared.layout.order)
    whole = engine.run(pot, step.prepared, pos, virial=True, member_forces=True)
    pieces = engine.run(pot, step.prepared, pos, virial=True, member_forces=True, chunk=37)
    for a, b in zip(whole, pieces):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    energy_only = engine.run(pot, step.prepared, pos, forces=False, chunk=37)
    assert energy_only.forces is None
    torch.testing.assert_close(energy_only.energy, whole.energy, rtol=0, atol=1e-11)


def test_compact_features_are_the_nonzero_columns_of_torchani_aevs():
    pot = _potential("ani1x")
    atoms = water_box(2, spacing=3.0)  # H and O only: C and N blocks are zero
    calc = InvCalc(pot, dtype=torch.float64, device="cpu", skin=0.0)
    step = calc._cache.update(atoms, pot, torch.float64, torch.device("cpu"))
    prep = step.prepared
    pos = step.positions[0].index_select(0, prep.layout.order)
    compact, _ = features.aevs(pot.aev_computer, prep.plan, engine.pair_vectors(prep, pos))
    system = to_system(atoms, pot.cutoff, torch.float64, "cpu")
    elem = pot.element_indices(system.numbers)
    from invcalc.neighbors import pair_geometry

    pairs = pot.find_pairs(elem, system.positions, system.cell)
    full = pot.aev_computer.compute_from_neighbors(
        elem, system.positions, pair_geometry(pairs, system.positions, system.cell)
    )[0].index_select(0, prep.layout.order)
    assert prep.plan.present == (0, 3)
    torch.testing.assert_close(full[:, prep.plan.columns], compact, rtol=0, atol=1e-12)
    rest = torch.ones(full.shape[1], dtype=torch.bool)
    rest[prep.plan.columns] = False
    assert torch.all(full[:, rest] == 0)


def test_triples_are_rebuilt_only_when_the_angular_set_changes(potential64, ethanol):
    calc = InvCalc(potential64, dtype=torch.float64, device="cpu", skin=1.0)
    ethanol.calc = calc
    ethanol.get_forces()
    plan = calc._cache._prepared.plan
    first = plan._triples
    ethanol.positions[0, 0] += 0.01
    ethanol.get_forces()
    assert calc._cache._prepared.plan is plan and plan._triples is first
    inside = first.inside.clone()
    assert plan.triples(inside) is first
    inside[int(inside.nonzero()[0])] = False  # one pair leaves the angular cutoff
    fewer = plan.triples(inside)
    assert fewer is not first and fewer.tri.shape[1] < first.tri.shape[1]
    kept = fewer.pairs[fewer.tri]  # (2, T) pair-list indices of both sides
    assert bool(inside[torch.searchsorted(plan.candidates, kept)].all())
    assert plan.triples(first.inside).tri.shape == first.tri.shape


def test_neighbor_methods_agree(ensemble64):
    box = water_box(2, spacing=3.0).repeat((2, 2, 2))
    results = []
    for method in ("all_pairs", "cell_list"):
        pot = copy.deepcopy(ensemble64)
        pot.neighbor_method = method
        box.calc = InvCalc(pot, dtype=torch.float64, device="cpu")
        results.append((box.get_potential_energy(), box.get_forces(), box.get_stress()))
    assert abs(results[0][0] - results[1][0]) < 1e-8
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-10)
    np.testing.assert_allclose(results[0][2], results[1][2], atol=1e-12)


def test_fast_path_needs_no_autograd(ensemble64, ethanol):
    ethanol.calc = InvCalc(ensemble64, dtype=torch.float64, device="cpu")
    reference = ethanol.get_forces()
    ethanol.calc.reset()
    with torch.inference_mode():
        np.testing.assert_allclose(ethanol.get_forces(), reference, rtol=0, atol=1e-12)


def test_float32_flushes_only_subnormal_scale_values():
    x = torch.tensor([-1000.0, -50.0, -10.0, 0.0]).repeat(2000)  # large: flushed
    flushed = aev_terms.exp_flushed(x.clone(), aev_terms.flush_floor(torch.float32)).view(-1, 4)
    assert torch.all(flushed[:, :2] == 0)  # exp(-50) ~ 2e-22 < 1e-18
    torch.testing.assert_close(flushed[:, 2:], torch.exp(x.view(-1, 4)[:, 2:]))
    exact = aev_terms.exp_flushed(x.double(), aev_terms.flush_floor(torch.float64)).view(-1, 4)
    assert torch.all(exact[:, 1] == torch.exp(torch.tensor(-50.0, dtype=torch.float64)))


def test_neighbor_triples_are_torchanis_triples():
    from torchani.neighbors import Neighbors, neighbors_to_triples

    def canonical(central, side, signs):  # a triple's two sides, in either order
        a = side[0] * 2 + (signs[0] > 0).long()
        b = side[1] * 2 + (signs[1] > 0).long()
        key = (central * 10**7 + torch.minimum(a, b)) * 10**7 + torch.maximum(a, b)
        return key.sort().values

    gen = torch.Generator().manual_seed(0)
    for atoms, pairs in [(5, 7), (60, 500), (400, 20000)]:
        idx = torch.randint(0, atoms, (2, pairs), generator=gen)
        idx = idx[:, idx[0] != idx[1]]
        zeros = torch.zeros(idx.shape[1])
        ref = neighbors_to_triples(Neighbors(idx, zeros, torch.zeros(idx.shape[1], 3)))
        central, side, signs = features.neighbor_triples(idx)
        expected = canonical(ref.central_idxs, ref.side_idxs, ref.diff_signs.long())
        assert torch.equal(canonical(central, side, signs), expected)
    empty = features.neighbor_triples(torch.zeros(2, 0, dtype=torch.long))
    assert empty[1].shape == (2, 0)


def test_structures_without_pairs_or_triples(ensemble64):
    from ase import Atoms

    cases = [
        Atoms("H", positions=[[0, 0, 0]]),
        Atoms("H2", positions=[[0, 0, 0], [20, 0, 0]]),  # beyond the cutoff
        Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]]),  # one pair, no triple
        Atoms("H", positions=[[0, 0, 0]], cell=[3.0, 3.0, 3.0], pbc=True),  # own images
    ]
    calc = InvCalc(ensemble64, dtype=torch.float64, device="cpu")
    batch = calc.calculate_batch(cases)
    for atoms, got in zip(cases, batch):
        system = to_system(atoms, ensemble64.cutoff, torch.float64, "cpu")
        ref = evaluate(ensemble64, system.numbers, system.positions, system.cell)
        atoms.calc = InvCalc(ensemble64, dtype=torch.float64, device="cpu")
        assert abs(atoms.get_potential_energy() - float(ref.energies.total[0])) < 1e-9
        np.testing.assert_allclose(atoms.get_forces(), ref.forces[0].numpy(), atol=1e-12)
        assert abs(got["energy"] - atoms.get_potential_energy()) < 1e-9
