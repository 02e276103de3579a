"""InvCalc behaviour: results, caching, uncertainty, errors, dtype and device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError

from invcalc import InvCalc, InvariantPotential, UnsupportedElementError
from invcalc import derivatives
from conftest import make_potential, water_box


def test_one_pass_serves_energy_forces_and_per_atom(monkeypatch, ensemble64, ethanol):
    calls = []
    real = derivatives.evaluate
    monkeypatch.setattr(
        "invcalc.calculator.evaluate", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    ethanol.calc = InvCalc(ensemble64, device="cpu")
    ethanol.get_potential_energy()
    ethanol.get_forces()
    ethanol.get_potential_energies()
    ethanol.calc.get_property("energy_uncertainty")
    assert len(calls) == 1
    ethanol.positions[0, 0] += 0.01
    ethanol.get_forces()
    assert len(calls) == 2
    ethanol.info["charge"] = 0
    ethanol.get_forces()
    assert len(calls) == 3  # a change of info["charge"] invalidates the results


def test_uncertainties(ensemble64, potential64, ethanol):
    ethanol.calc = InvCalc(ensemble64, dtype=torch.float64, device="cpu")
    sigma_e = ethanol.calc.get_property("energy_uncertainty", ethanol)
    sigma_f = ethanol.calc.get_property("forces_uncertainty", ethanol)
    assert sigma_e > 0 and sigma_f.shape == (len(ethanol),) and np.all(sigma_f > 0)
    # recompute from the members, one model at a time
    members = [
        InvariantPotential(
            ensemble64.spec, ensemble64.aev_computer,
            type(ensemble64.networks)([m]), ensemble64.self_energies,
        )
        for m in ensemble64.networks.members
    ]
    es, fs = [], []
    for m in members:
        a = ethanol.copy()
        a.calc = InvCalc(m, dtype=torch.float64, device="cpu")
        es.append(a.get_potential_energy())
        fs.append(a.get_forces())
    es, fs = np.array(es), np.array(fs)
    assert abs(np.std(es) - sigma_e) < 1e-9
    expected = np.sqrt(((fs - fs.mean(0)) ** 2).sum(-1).mean(0))
    np.testing.assert_allclose(sigma_f, expected, atol=1e-9)
    np.testing.assert_allclose(ethanol.get_forces(), fs.mean(0), atol=1e-9)
    single = ethanol.copy()
    single.calc = InvCalc(potential64, device="cpu")
    assert single.calc.get_property("energy_uncertainty", single) == 0.0
    assert np.all(single.calc.get_property("forces_uncertainty", single) == 0.0)


def test_stress_only_for_3d_periodic(potential64, ethanol):
    ethanol.calc = InvCalc(potential64, device="cpu")
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        ethanol.get_stress()
    box = water_box(2)
    box.calc = InvCalc(potential64, device="cpu")
    assert box.get_stress().shape == (6,)


def test_unsupported_element(potential64):
    atoms = molecule("CH3Cl")
    atoms.calc = InvCalc(potential64, device="cpu")
    with pytest.raises(UnsupportedElementError, match="Cl.*supports only H, C, N, O"):
        atoms.get_potential_energy()
    with pytest.raises(UnsupportedElementError):
        atoms.calc.get_hessian(atoms)
    # the potential itself checks too, for direct use
    with pytest.raises(UnsupportedElementError, match="Cl"):
        potential64(torch.tensor([[6, 17]]), torch.zeros(1, 2, 3, dtype=torch.float64))
    assert issubclass(UnsupportedElementError, ValueError)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_positions(potential64, ethanol, bad):
    ethanol.positions[3, 1] = bad
    ethanol.calc = InvCalc(potential64, device="cpu")
    with pytest.raises(ValueError, match=r"atom\(s\) \[3\].*NaN or infinite"):
        ethanol.get_potential_energy()


def test_singular_cell(potential64):
    atoms = water_box(1)
    atoms.set_cell([[3, 0, 0], [6, 0, 0], [0, 0, 3]])
    atoms.calc = InvCalc(potential64, device="cpu")
    with pytest.raises(ValueError, match="singular"):
        atoms.get_potential_energy()
    atoms.set_cell([[3, 0, 0], [0, 0, 0], [0, 0, 3]])
    with pytest.raises(ValueError, match="zero-length"):
        atoms.get_potential_energy()


def test_charged_systems_refused(potential64):
    atoms = molecule("H2O")
    atoms.calc = InvCalc(potential64, device="cpu")
    atoms.info["charge"] = 1
    with pytest.raises(ValueError, match="total charge 1 e.*neutral"):
        atoms.get_potential_energy()
    del atoms.info["charge"]
    atoms.set_initial_charges([-1, 0, 0])
    with pytest.raises(ValueError, match="neutral"):
        atoms.get_potential_energy()


def test_no_atoms_at_all(potential64):
    with pytest.raises(ValueError, match="no atoms"):
        InvCalc(potential64, device="cpu").get_property("energy")


def test_empty_structure(potential64):
    with pytest.raises(ValueError, match="no atoms"):
        InvCalc(potential64, device="cpu").get_potential_energy(Atoms())


def test_dtype_choice_never_mutates_the_model(potential64, ethanol):
    calc = InvCalc(potential64, device="cpu")
    assert calc.potential.dtype == torch.float32
    assert potential64.dtype == torch.float64  # the caller's module is untouched
    assert calc.potential.self_energies.dtype == torch.float64
    ethanol.calc = calc
    e32 = ethanol.get_potential_energy()
    ethanol.calc = InvCalc(potential64, dtype=torch.float64, device="cpu")
    assert abs(ethanol.get_potential_energy() - e32) < 1e-3
    with pytest.raises(ValueError, match="dtype"):
        InvCalc(potential64, dtype=torch.float16)


def test_self_energies_stay_exact_under_casts():
    pot = make_potential(dtype=torch.float64)
    exact = pot.self_energies.clone()
    pot.float()
    pot.double()
    assert pot.self_energies.dtype == torch.float64
    assert torch.equal(pot.self_energies, exact)


def test_default_device_is_cpu_without_cuda(potential64):
    calc = InvCalc(potential64)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert calc.device.type == expected


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(ensemble64, ethanol):
    ethanol.calc = InvCalc(ensemble64, dtype=torch.float64, device="cpu")
    e_cpu, f_cpu = ethanol.get_potential_energy(), ethanol.get_forces()
    ethanol.calc = InvCalc(ensemble64, dtype=torch.float64, device="cuda")
    assert abs(ethanol.get_potential_energy() - e_cpu) < 1e-9
    np.testing.assert_allclose(ethanol.get_forces(), f_cpu, atol=1e-9)
    box = water_box(3)
    box.calc = InvCalc(ensemble64, device="cuda")
    assert box.get_stress().shape == (6,)
    assert box.calc.get_hessian(box[:6]).shape == (18, 18)
