"""Quickstart: relax ethanol, run a short Langevin MD, print energies and uncertainty.

    python examples/quickstart.py                 # the embedded default model
    python examples/quickstart.py --model my.pt   # any invcalc model file or built-in name
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from ase import units
from ase.build import molecule
from ase.md.langevin import Langevin
from ase.optimize import BFGS

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

# torchani mentions its optional CUDA extensions at import; invcalc needs none of them
warnings.filterwarnings("ignore", message="The extensions.*are not installed")

from invcalc import InvCalc  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file or built-in name (default: embedded)")
    parser.add_argument("--steps", type=int, default=200, help="MD steps of 0.5 fs (default: 200)")
    args = parser.parse_args(argv)

    atoms = molecule("CH3CH2OH")
    atoms.calc = InvCalc(args.model)
    print(f"model: {args.model or 'embedded default'} on {atoms.calc.device}")
    print(f"ethanol, ASE geometry:  E = {atoms.get_potential_energy():.4f} eV, "
          f"max |F| = {np.abs(atoms.get_forces()).max():.3f} eV/Å")

    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=0.01, steps=500)
    print(f"relaxed in {opt.nsteps} BFGS steps: E = {atoms.get_potential_energy():.4f} eV, "
          f"max |F| = {np.abs(atoms.get_forces()).max():.4f} eV/Å")
    sigma = atoms.calc.get_property("energy_uncertainty", atoms)
    print(f"ensemble uncertainty of the energy: {1000 * sigma:.1f} meV")

    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False,
                   rng=np.random.default_rng(1))
    print(f"{'time/fs':>8} {'E_pot/eV':>12} {'E_kin/eV':>9} {'T/K':>6}")

    def report() -> None:
        ekin = atoms.get_kinetic_energy()
        print(f"{dyn.get_time() / units.fs:8.1f} {atoms.get_potential_energy():12.4f} "
              f"{ekin:9.4f} {ekin / (1.5 * units.kB * len(atoms)):6.0f}")

    dyn.attach(report, interval=max(1, args.steps // 5))
    dyn.run(args.steps)


if __name__ == "__main__":
    main()
