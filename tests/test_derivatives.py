"""Forces, stress and Hessians against finite differences (float64)."""

from __future__ import annotations

import numpy as np
from ase.calculators.fd import calculate_numerical_forces as numeric_forces
from ase.calculators.fd import calculate_numerical_stress

from invcalc import InvCalc
import torch

from conftest import water_box


def test_forces_match_finite_differences(potential64, ethanol):
    ethanol.calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    analytic = ethanol.get_forces()
    numeric = numeric_forces(ethanol, eps=1e-4)
    err = np.abs(analytic - numeric).max()
    assert err < 1e-6, err


def test_ensemble_forces_match_finite_differences(ensemble64, ethanol):
    ethanol.calc = InvCalc(ensemble64, dtype=torch.float64, device="cpu")
    numeric = numeric_forces(ethanol, eps=1e-4)
    assert np.abs(ethanol.get_forces() - numeric).max() < 1e-6


def test_periodic_forces_match_finite_differences(potential64):
    atoms = water_box(2, spacing=2.9)
    atoms.calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    numeric = numeric_forces(atoms, eps=1e-4)
    assert np.abs(atoms.get_forces() - numeric).max() < 1e-6


def test_stress_matches_finite_differences(potential64):
    atoms = water_box(2, spacing=2.9)
    atoms.set_cell(atoms.cell.array + [[0.0, 0.3, 0.1], [0.2, 0.0, -0.2], [0.1, 0.1, 0.0]],
                   scale_atoms=True)
    atoms.calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    analytic = atoms.get_stress(voigt=False)
    numeric = calculate_numerical_stress(atoms, eps=1e-5, voigt=False)
    err = np.abs(analytic - numeric).max()
    assert err < 1e-7, err
    np.testing.assert_allclose(analytic, analytic.T, atol=1e-12)


def test_hessian_matches_finite_differences_of_forces(potential64, ethanol):
    calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    ethanol.calc = calc
    h = calc.get_hessian(ethanol)
    n = len(ethanol)
    assert h.shape == (3 * n, 3 * n)
    np.testing.assert_allclose(h, h.T, atol=1e-10)
    d = 1e-4
    numeric = np.zeros_like(h)
    for a in range(n):
        for c in range(3):
            plus, minus = ethanol.copy(), ethanol.copy()
            plus.positions[a, c] += d
            minus.positions[a, c] -= d
            plus.calc = minus.calc = calc
            fp, fm = plus.get_forces().ravel(), minus.get_forces().ravel()
            numeric[3 * a + c] = -(fp - fm) / (2 * d)
    err = np.abs(h - numeric).max()
    assert err < 1e-5, err


def test_periodic_hessian_matches_finite_differences(potential64):
    atoms = water_box(1, spacing=4.8)
    calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    h = calc.get_hessian(atoms)
    d = 1e-4
    for a, c in [(0, 0), (1, 2), (2, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, c] += d
        minus.positions[a, c] -= d
        plus.calc = minus.calc = calc
        row = -(plus.get_forces().ravel() - minus.get_forces().ravel()) / (2 * d)
        assert np.abs(h[3 * a + c] - row).max() < 1e-5


def test_hessian_feeds_ase_vibrations(potential64):
    from ase.build import molecule
    from ase.optimize import BFGS
    from ase.vibrations import VibrationsData

    atoms = molecule("H2O")
    atoms.calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    BFGS(atoms, logfile=None).run(fmax=1e-5, steps=500)
    vib = VibrationsData.from_2d(atoms, atoms.calc.get_hessian(atoms))
    energies = vib.get_energies()
    assert energies.shape == (9,)
    # six near-zero translation/rotation modes at a minimum, three real vibrations
    assert np.sum(np.abs(energies) < 2e-3) == 6
    assert np.all(np.abs(energies.imag) < 1e-12) or np.sum(np.abs(energies.real) > 2e-3) == 3
