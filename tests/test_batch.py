"""InvCalc.calculate_batch: one pass over many structures equals one call per structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError

from invcalc import InvCalc, UnsupportedElementError
from invcalc import batch as batch_module
from conftest import make_potential, water_box
from test_torchani_compat import ani1x_like


def _images() -> list[Atoms]:
    slab = water_box(2, spacing=3.0)
    slab.pbc = (True, True, False)
    far = molecule("CH3CH2OH")
    far.positions += 500.0  # centred per structure: no precision lost
    images = [
        molecule("CH3CH2OH"), molecule("H2O"), water_box(2), molecule("CH4"),
        water_box(1, spacing=4.8), slab, far, molecule("CH3CONH2"),
    ]
    for k, atoms in enumerate(images):
        atoms.rattle(0.02, seed=k)
    return images


def _single(model, atoms: Atoms, properties) -> dict:
    atoms = atoms.copy()
    atoms.calc = InvCalc(model, dtype=torch.float64, device="cpu")
    atoms.calc.calculate(atoms, list(properties))
    return atoms.calc.results


@pytest.mark.parametrize("which", ["smooth", "ani1x"])
def test_batch_equals_single(which):
    model = make_potential(ensemble_size=3) if which == "smooth" else ani1x_like(members=2)
    calc = InvCalc(model, dtype=torch.float64, device="cpu")
    props = ("energy", "forces", "forces_uncertainty")
    images = _images()
    results = calc.calculate_batch(images, props)
    assert len(results) == len(images)
    for atoms, got in zip(images, results):
        ref = _single(model, atoms, props)
        assert abs(got["energy"] - ref["energy"]) < 1e-9
        assert got["free_energy"] == got["energy"]
        assert got["forces"].shape == (len(atoms), 3)
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(got["energies"], ref["energies"], rtol=0, atol=1e-9)
        assert abs(got["energy_uncertainty"] - ref["energy_uncertainty"]) < 1e-9
        np.testing.assert_allclose(
            got["forces_uncertainty"], ref["forces_uncertainty"], rtol=0, atol=1e-10
        )
        assert ("stress" in got) == bool(atoms.pbc.all())
        if atoms.pbc.all():
            np.testing.assert_allclose(got["stress"], ref["stress"], rtol=0, atol=1e-12)


def test_batch_in_float32_matches_single(ensemble64):
    calc = InvCalc(ensemble64, device="cpu")
    images = _images()
    for atoms, got in zip(images, calc.calculate_batch(images)):
        atoms.calc = InvCalc(ensemble64, device="cpu")
        assert abs(got["energy"] - atoms.get_potential_energy()) < 1e-3
        np.testing.assert_allclose(got["forces"], atoms.get_forces(), atol=1e-4)
        assert got["forces"].dtype == np.float64


def test_many_small_molecules_in_several_search_groups(monkeypatch, potential64):
    # a tiny pair budget forces several padded all-pairs groups, and a low size
    # threshold sends some molecules through the per-structure search
    monkeypatch.setattr(batch_module, "_PAIR_BUDGET", 200)
    monkeypatch.setattr(batch_module, "SMALL_MOLECULE", 6)
    calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    images = [molecule(name) for name in ("H2O", "CH4", "CH3OH", "C2H6", "HCOOH", "NH3") * 3]
    for k, atoms in enumerate(images):
        atoms.rattle(0.05, seed=k)
    for atoms, got in zip(images, calc.calculate_batch(images)):
        ref = _single(potential64, atoms, ("energy", "forces"))
        assert abs(got["energy"] - ref["energy"]) < 1e-9
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-10)


def test_energy_only_and_single_model(potential64, ethanol):
    calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    (got,) = calc.calculate_batch([ethanol], ("energy",))
    assert "forces" not in got
    assert got["energy_uncertainty"] == 0.0
    assert np.all(got["forces_uncertainty"] == 0.0)
    assert abs(got["energy"] - _single(potential64, ethanol, ("energy",))["energy"]) < 1e-9


def test_batch_leaves_the_calculator_state_alone(potential64, ethanol):
    calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    ethanol.calc = calc
    e = ethanol.get_potential_energy()
    calc.calculate_batch([molecule("H2O"), molecule("CH4")])
    assert calc.results["energy"] == e and len(calc.atoms) == len(ethanol)
    assert calc.calculate_batch([]) == []


def test_batch_errors(potential64):
    calc = InvCalc(potential64, device="cpu")
    with pytest.raises(UnsupportedElementError, match="Cl"):
        calc.calculate_batch([molecule("H2O"), molecule("CH3Cl")])
    with pytest.raises(PropertyNotImplementedError, match="images \\[1\\]"):
        calc.calculate_batch([water_box(1), molecule("H2O")], ("energy", "stress"))
    bad = molecule("H2O")
    bad.positions[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calc.calculate_batch([molecule("H2O"), bad])
