"""Exact symmetry: energies invariant, forces equivariant, under E(3) and permutations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from invcalc import InvCalc
from conftest import random_rotation, water_box


def _ef(calc: InvCalc, atoms: Atoms) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.fixture
def calc64(ensemble64):
    return InvCalc(ensemble64, dtype=torch.float64, device="cpu")


def test_rotation_reflection_translation(calc64, ethanol):
    e0, f0 = _ef(calc64, ethanol)
    for seed in range(3):
        rot = random_rotation(seed)
        for q in (rot, -rot):  # proper rotation, and rotation-reflection
            moved = ethanol.copy()
            moved.positions = ethanol.positions @ q.T + np.array([3.0, -7.0, 11.0]) * seed
            e, f = _ef(calc64, moved)
            assert abs(e - e0) < 1e-10
            np.testing.assert_allclose(f, f0 @ q.T, atol=1e-10)


def test_permutation_of_atoms(calc64, ethanol):
    e0, f0 = _ef(calc64, ethanol)
    perm = np.random.default_rng(0).permutation(len(ethanol))
    e, f = _ef(calc64, ethanol[perm])
    assert abs(e - e0) < 1e-10
    np.testing.assert_allclose(f, f0[perm], atol=1e-10)


def test_periodic_invariance(calc64):
    atoms = water_box(2, spacing=3.0)
    e0, f0 = _ef(calc64, atoms)
    q = random_rotation(7)
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ q.T)
    moved.positions = atoms.positions @ q.T + [1.3, 40.0, -2.0]
    perm = np.random.default_rng(1).permutation(len(atoms))
    e, f = _ef(calc64, moved[perm])
    assert abs(e - e0) < 1e-9
    np.testing.assert_allclose(f, (f0 @ q.T)[perm], atol=1e-9)


def test_float32_far_from_origin(ensemble64, ethanol):
    calc = InvCalc(ensemble64, device="cpu")  # float32 networks
    e0, f0 = _ef(calc, ethanol)
    far = ethanol.copy()
    far.positions += 1000.0
    e, f = _ef(calc, far)
    assert abs(e - e0) < 1e-4
    np.testing.assert_allclose(f, f0, atol=1e-4)


def test_results_are_float64(ensemble64, ethanol):
    ethanol.calc = InvCalc(ensemble64, device="cpu")
    assert ethanol.get_forces().dtype == np.float64
    assert ethanol.calc.results["energies"].dtype == np.float64
    assert isinstance(ethanol.get_potential_energy(), float)


def test_per_atom_energies_sum_to_energy(calc64, ethanol):
    ethanol.calc = calc64
    e = ethanol.get_potential_energy()
    assert abs(ethanol.get_potential_energies().sum() - e) < 1e-9


def test_supercell_is_extensive(calc64):
    atoms = water_box(2, spacing=3.0)
    e1 = _ef(calc64, atoms)[0]
    big = atoms.repeat((2, 2, 2))  # 192 atoms: the cell list is used
    for method in ("all_pairs", "cell_list"):
        calc64.potential.neighbor_method = method
        e8, f8 = _ef(calc64, big)
        assert abs(e8 - 8 * e1) < 1e-8 * abs(e8)
    calc64.potential.neighbor_method = "auto"


def test_small_cell_sees_its_own_images(calc64):
    # cell shorter than the cutoff: the atom interacts with its periodic images
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], cell=[2.5, 3.0, 3.5], pbc=True)
    e1 = _ef(calc64, atoms)[0]
    e8 = _ef(calc64, atoms.repeat((2, 2, 2)))[0]
    assert abs(e8 - 8 * e1) < 1e-8 * abs(e8)


def test_far_apart_molecules_add_up(calc64):
    a, b = molecule("H2O"), molecule("CH4")
    ea, eb = _ef(calc64, a)[0], _ef(calc64, b)[0]
    b.positions += [30.0, 0.0, 0.0]
    assert abs(_ef(calc64, a + b)[0] - (ea + eb)) < 1e-9


def test_partial_pbc_matches_vacuum(calc64, ethanol):
    # a slab periodic in x, y: equal to a fully periodic cell with a thick vacuum in z,
    # for an oblique periodic lattice too
    slab = water_box(2, spacing=3.0)
    slab.set_cell(slab.cell.array + [[0, 0, 0], [1.0, 0, 0], [0, 0, 0]], scale_atoms=False)
    slab.pbc = (True, True, False)
    vacuum = slab.copy()
    vacuum.pbc = True
    vacuum.cell[2] = [0.0, 0.0, 40.0]
    vacuum.positions += [0, 0, 15.0]
    e_slab, f_slab = _ef(calc64, slab)
    e_vac, f_vac = _ef(calc64, vacuum)
    assert abs(e_slab - e_vac) < 1e-9
    np.testing.assert_allclose(f_slab, f_vac, atol=1e-9)
    # a wire periodic along x only: equal to the same wire in a wide periodic box
    wire = ethanol.copy()
    wire.cell = [4.0, 0.0, 0.0]
    wire.pbc = (True, False, False)
    box = wire.copy()
    box.cell = [4.0, 30.0, 30.0]
    box.pbc = True
    assert abs(_ef(calc64, wire)[0] - _ef(calc64, box)[0]) < 1e-9
