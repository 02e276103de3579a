"""Shared fixtures: tiny seeded models built here (no downloads), float64 where exact."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from invcalc import FeatureSpec, InvariantPotential

# Tiny tensors run fastest on one thread, and on a busy 2-core machine OpenMP's
# spinning threads make them up to ~75x slower. Test harness only: invcalc itself never
# changes torch's global settings.
torch.set_num_threads(1)

ELEMENTS = ("H", "C", "N", "O")

#: The benchmark scripts and their helper modules (not a package).
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_modules(*names: str):
    """The named modules of ``benchmarks/``, imported from the checkout; the folder stays
    on ``sys.path`` until the block ends (their functions import siblings lazily)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(BENCHMARKS))


#: A small AEV (fast tests) with the default smooth (C-infinity) cutoff.
SMALL_FEATURES = FeatureSpec(
    radial_cutoff=4.6,
    radial_shifts=tuple(0.9 + 0.45 * i for i in range(8)),
    angular_cutoff=3.1,
    angular_shifts=(0.9, 1.7, 2.5),
    angular_sections=tuple(np.pi * (2 * i + 1) / 8 for i in range(4)),
)


def make_potential(
    ensemble_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64
) -> InvariantPotential:
    """A random smooth model with chemically plausible self-energies (eV)."""
    pot = InvariantPotential.build(
        ELEMENTS,
        features=SMALL_FEATURES,
        hidden=(16, 16),
        ensemble_size=ensemble_size,
        self_energies=[-13.6, -1029.8, -1484.2, -2041.3],
        seed=seed,
    )
    return pot.to(dtype).eval()


@pytest.fixture
def potential64() -> InvariantPotential:
    return make_potential(dtype=torch.float64)


@pytest.fixture
def ensemble64() -> InvariantPotential:
    return make_potential(ensemble_size=3, dtype=torch.float64)


@pytest.fixture
def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


def water_box(n_side: int = 2, spacing: float = 3.1, seed: int = 0) -> Atoms:
    """n_side^3 randomly oriented waters on a cubic lattice, periodic (Å)."""
    rng = np.random.default_rng(seed)
    w = molecule("H2O")
    positions, symbols = [], []
    for i in range(n_side):
        for j in range(n_side):
            for k in range(n_side):
                q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                pos = (w.positions - w.positions.mean(0)) @ q.T
                positions.append(pos + spacing * np.array([i, j, k]) + rng.normal(0, 0.1, 3))
                symbols += w.get_chemical_symbols()
    L = n_side * spacing
    return Atoms(symbols, positions=np.concatenate(positions), cell=[L, L, L], pbc=True)


@pytest.fixture
def water8() -> Atoms:
    return water_box(2)


def random_rotation(seed: int) -> np.ndarray:
    """A proper rotation matrix (det = +1), seeded."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q



def morse_potential(dtype: torch.dtype = torch.float64) -> InvariantPotential:
    """An invariant potential whose energy is a sum of Morse pair terms, set up exactly.

    Networks without hidden layers are linear in the radial AEV, and a radial AEV entry
    is a Gaussian of a pair distance: linear least squares on a distance grid gives the
    weights for E = sum_pairs D (1 - exp(-a (r - r0)))^2 f_c(r) (r0 from covalent radii;
    H-H is kept shallow and long so hydrogens do not pile up).
    A physical-looking model with real minima, built in milliseconds, for driver tests.
    """
    from ase.data import covalent_radii

    features = FeatureSpec(
        radial_cutoff=5.0, radial_eta=6.0,
        radial_shifts=tuple(0.3 + 0.25 * i for i in range(19)),
        angular_cutoff=3.0, angular_shifts=(1.0,), angular_sections=(0.0,),
    )
    pot = InvariantPotential.build(ELEMENTS, features=features, hidden=(), seed=0).to(dtype)
    radial = pot.aev_computer.radial
    r = torch.linspace(0.45, 5.0, 400, dtype=torch.float64)
    basis = radial.double()(r).detach()  # (grid, shifts), includes the cutoff function
    radial.to(dtype)
    fc = radial.cutoff_fn(r, radial.cutoff).detach()
    numbers = [1, 6, 7, 8]
    n_shift = len(features.radial_shifts)
    with torch.no_grad():
        for layer in pot.networks.members[0].atomics.values():
            layer.final_layer.weight.zero_()
            layer.final_layer.bias.zero_()
        for a, za in enumerate(numbers):
            for b, zb in enumerate(numbers):
                r0, depth = covalent_radii[za] + covalent_radii[zb], 1.0
                if za == zb == 1:  # keep hydrogens apart: a shallow, long-range H-H well
                    r0, depth = 1.8, 0.2
                target = depth * ((1 - torch.exp(-1.8 * (r - r0))) ** 2 - 1) * fc
                coef = torch.linalg.lstsq(basis, target.unsqueeze(1)).solution[:, 0]
                net = pot.networks.members[0].atomics[ELEMENTS[a]]
                # each pair is seen from both atoms: half the pair energy on each side
                net.final_layer.weight[0, b * n_shift:(b + 1) * n_shift] = (0.5 * coef).to(dtype)
    return pot.eval()


@pytest.fixture(scope="module")
def one_omp_thread():
    """Run tblite single-threaded in this process (two OpenMP threads on a busy 2-core
    machine are many times slower), restoring the previous setting after."""
    import ctypes
    import os

    pytest.importorskip("tblite.ase")
    try:
        gomp = ctypes.CDLL("libgomp.so.1", mode=getattr(os, "RTLD_NOLOAD", 0))
    except OSError:
        yield
        return
    before = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(1)
    yield
    gomp.omp_set_num_threads(before)
