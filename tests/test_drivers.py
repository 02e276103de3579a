"""Real ASE drivers on InvCalc: optimizers, MD, constraints, cell filters, NEB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.mep import NEB
from ase.optimize import BFGS, FIRE

from invcalc import InvCalc
from conftest import morse_potential


@pytest.fixture(scope="module")
def calc() -> InvCalc:
    return InvCalc(morse_potential(), dtype=torch.float64, device="cpu")


def _min_distance(atoms) -> float:
    d = atoms.get_all_distances(mic=True)
    return float(d[d > 0].min())


@pytest.mark.parametrize("optimizer", [BFGS, FIRE])
def test_optimizers_converge(calc, optimizer):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=3)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    assert optimizer(atoms, logfile=None).run(fmax=0.01, steps=1000)
    assert np.abs(atoms.get_forces()).max() < 0.01
    assert atoms.get_potential_energy() < e0
    assert _min_distance(atoms) > 0.8


def test_langevin_with_fixed_atoms(calc):
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    fixed = [0, 1]
    atoms.set_constraint(FixAtoms(indices=fixed))
    start = atoms.positions.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.02,
                   rng=np.random.default_rng(1))
    dyn.run(100)
    np.testing.assert_array_equal(atoms.positions[fixed], start[fixed])
    assert np.abs(atoms.positions - start).max() > 0.01
    assert np.isfinite(atoms.get_potential_energy())


def test_nve_conserves_energy(calc):
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(2))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, 0.25 * units.fs)
    totals = []
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dyn.run(400)  # 100 fs
    totals = np.array(totals)
    drift = abs(totals[-1] - totals[0])
    spread = totals.max() - totals.min()
    kinetic = 1.5 * len(atoms) * units.kB * 300
    assert drift < 1e-4 and spread < 1e-3 * kinetic * 10, (drift, spread)


def test_cell_relaxation_with_frechet_filter(calc):
    # a sheared, rattled fcc crystal of Morse-bound carbon relaxes to cubic fcc
    atoms = bulk("C", "fcc", a=2.3, cubic=True)
    atoms.set_cell(atoms.cell.array + [[0, 0.1, 0], [0, 0, 0.1], [0.05, 0, 0]], scale_atoms=True)
    atoms.rattle(0.02, seed=0)
    atoms.calc = calc
    assert np.abs(atoms.get_stress()).max() > 0.1
    assert FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.005, steps=1000)
    assert np.abs(atoms.get_stress()).max() < 0.005 / atoms.get_volume() ** (1 / 3) * 3
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    assert max(a, b, c) - min(a, b, c) < 1e-2 and max(abs(np.array([alpha, beta, gamma]) - 90)) < 0.5


def test_neb_methyl_rotation(calc):
    # A 120-degree methyl rotation maps ethanol onto itself with three hydrogens
    # relabelled: both ends have exactly the same energy (permutation invariance).
    initial = molecule("CH3CH2OH")
    initial.calc = calc
    BFGS(initial, logfile=None).run(fmax=0.005, steps=500)
    methyl_h = [i for i in range(len(initial)) if initial[i].symbol == "H"
                and initial.get_distance(i, 1) < initial.get_distance(i, 0)][:3]
    if len(methyl_h) < 3:  # pick the three hydrogens nearest to carbon 0 or 1
        methyl_h = list(np.argsort(initial.get_distances(1, range(len(initial))))[1:4])
    final = initial.copy()
    final.positions[methyl_h] = initial.positions[np.roll(methyl_h, 1)]
    final.calc = calc
    assert abs(final.get_potential_energy() - initial.get_potential_energy()) < 1e-9
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    for image in images[1:-1]:
        image.calc = calc
    neb = NEB(images, climb=True, allow_shared_calculator=True, method="improvedtangent")
    neb.interpolate("idpp")
    assert FIRE(neb, logfile=None).run(fmax=0.05, steps=1000)
    energies = np.array([im.get_potential_energy() for im in images])
    barrier = energies.max() - energies[0]
    assert barrier > 0 and np.argmax(energies) in (1, 2, 3)
