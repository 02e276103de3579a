"""torchani ANI models run through invcalc unchanged: same numbers as torchani's own."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torchani.aev import AEVComputer
from torchani.arch import ANI
from torchani.nn import ANINetworks, Ensemble
from torchani.sae import SelfEnergy

from invcalc import InvCalc, InvariantPotential, load_model, save_model
from conftest import water_box

SYMBOLS = ("H", "C", "N", "O")


def ani1x_like(seed: int = 0, members: int = 8) -> ANI:
    """The ANI-1x architecture (cosine cutoff, CELU, 8 members) with random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = Ensemble([ANINetworks.like_1x(SYMBOLS) for _ in range(members)])
    model = ANI(
        SYMBOLS, AEVComputer.like_1x(), nets, SelfEnergy.with_gsaes(SYMBOLS, "wb97x", "631gd")
    )
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_energies_and_forces_as_torchani_calculator(ethanol, dtype):
    # torchani in float64 is the reference; torchani's own float32 total energy is
    # rounded to float32 (~5e-4 eV at -4000 eV), invcalc's float64 sum is not.
    model = ani1x_like().double()
    reference = ethanol.copy()
    reference.calc = model.ase()
    ethanol.calc = InvCalc(model, dtype=dtype, device="cpu")
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    assert abs(ethanol.get_potential_energy() - reference.get_potential_energy()) < tol
    np.testing.assert_allclose(ethanol.get_forces(), reference.get_forces(), atol=tol)


def test_same_periodic_energy_and_stress_as_torchani():
    model = ani1x_like(members=2).double()
    box = water_box(2, spacing=3.0)
    reference = box.copy()
    reference.calc = model.ase()
    box.calc = InvCalc(model, dtype=torch.float64, device="cpu")
    assert abs(box.get_potential_energy() - reference.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(box.get_forces(), reference.get_forces(), atol=1e-8)
    np.testing.assert_allclose(box.get_stress(), reference.get_stress(), atol=1e-8)


def test_wrapping_reads_the_architecture():
    pot = InvariantPotential.from_torchani(ani1x_like())
    assert pot.elements == SYMBOLS
    assert pot.energy_unit == "Hartree"
    assert pot.ensemble_size == 8
    assert pot.spec.networks.activation == "celu"
    assert pot.spec.features.cutoff_fn == "cosine"
    assert pot.spec.networks.layers["H"] == (384, 160, 128, 96, 1)


def test_wrapped_model_survives_a_file_round_trip(tmp_path, ethanol):
    model = ani1x_like(members=2)
    save_model(InvariantPotential.from_torchani(model), tmp_path / "ani.pt")
    loaded = load_model(tmp_path / "ani.pt")
    ethanol.calc = InvCalc(loaded, device="cpu")
    reference = ethanol.copy()
    reference.calc = copy.deepcopy(model).double().ase()
    assert abs(ethanol.get_potential_energy() - reference.get_potential_energy()) < 2e-4


def test_single_network_model_is_accepted(ethanol):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        nets = ANINetworks.like_1x(SYMBOLS)
    model = ANI(SYMBOLS, AEVComputer.like_1x(), nets, SelfEnergy(SYMBOLS, [0.0] * 4)).eval()
    ethanol.calc = InvCalc(model, device="cpu")
    reference = ethanol.copy()
    reference.calc = copy.deepcopy(model).double().ase()
    assert abs(ethanol.get_potential_energy() - reference.get_potential_energy()) < 2e-4


def test_other_modules_are_refused():
    with pytest.raises(TypeError, match="torchani ANI model"):
        InvCalc(torch.nn.Linear(3, 1))
