"""End-to-end check on published weights: ANI-1x through invcalc vs torchani's own ASE
calculator.

torchani's hub download is unreachable here, but the torchani 2.2.4 wheel on the package
index carries the ANI-1x NeuroChem files, which torchani 2.9's NeuroChem reader loads.
This script fetches that wheel with ``pip download`` (network: package index only),
extracts the ANI-1x files to a cache folder, loads them with
``torchani.neurochem.modules_from_info`` and compares energies and forces of a few
molecules (and a periodic water box) between invcalc and torchani, float64 and float32.

    python benchmarks/ani1x_published.py --out benchmarks/results/ani1x_published.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import zipfile

import numpy as np

CACHE = os.path.join(os.path.dirname(__file__), ".cache", "torchani-2.2.4")


def fetch_ani1x(cache: str = CACHE) -> str:
    """Folder holding the ANI-1x NeuroChem files (downloaded once into ``cache``)."""
    target = os.path.join(cache, "torchani", "resources", "ani-1x_8x")
    if os.path.isdir(target):
        return target
    os.makedirs(cache, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         "torchani==2.2.4", "-d", cache],
        check=True,
    )
    (wheel,) = glob.glob(os.path.join(cache, "torchani-2.2.4-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith("torchani/resources/ani-1x_8x/")]
        archive.extractall(cache, members)
    return target


def load_ani1x(folder: str):
    """torchani 2.9 ANI model from the NeuroChem files in ``folder``."""
    from pathlib import Path

    from torchani.arch import ANI
    from torchani.neurochem import NeurochemInfo, modules_from_info

    info = NeurochemInfo(
        sae=Path(folder, "sae_linfit.dat"),
        const=Path(folder, "rHCNO-5.2R_16-3.5A_a4-8.params"),
        ensemble_prefix=Path(folder, "train"),
        ensemble_size=8,
    )
    aev, networks, self_energy, symbols = modules_from_info(info)
    return ANI(symbols, aev, networks, self_energy).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="results JSON")
    args = parser.parse_args(argv)

    import copy

    import torch
    from ase.build import molecule

    from invcalc import InvCalc

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
    from conftest import water_box  # noqa: E402  (the tests' water-box builder)

    model = load_ani1x(fetch_ani1x())
    systems = {name: molecule(name) for name in ("CH3CH2OH", "C6H6", "CH3CONH2", "H2O")}
    systems["water_box_24"] = water_box(2, spacing=3.1)
    rows = {}
    for name, atoms in systems.items():
        atoms.rattle(0.02, seed=0)
        ref = atoms.copy()
        ref.calc = copy.deepcopy(model).double().ase()
        e_ref, f_ref = ref.get_potential_energy(), ref.get_forces()
        row = {"atoms": len(atoms), "torchani_float64_energy_eV": e_ref}
        for label, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            a = atoms.copy()
            a.calc = InvCalc(copy.deepcopy(model), dtype=dtype, device="cpu")
            row[f"invcalc_{label}_abs_energy_diff_eV"] = abs(a.get_potential_energy() - e_ref)
            row[f"invcalc_{label}_max_force_diff_eV_per_A"] = float(np.abs(a.get_forces() - f_ref).max())
            if label == "float64":
                row["energy_uncertainty_eV"] = a.calc.get_property("energy_uncertainty", a)
        rows[name] = row
        print(f"{name:14s} N={len(atoms):3d}  |dE| f64 {row['invcalc_float64_abs_energy_diff_eV']:.1e} eV"
              f"  f32 {row['invcalc_float32_abs_energy_diff_eV']:.1e} eV   max|dF| f64 "
              f"{row['invcalc_float64_max_force_diff_eV_per_A']:.1e}  f32 "
              f"{row['invcalc_float32_max_force_diff_eV_per_A']:.1e} eV/Å")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"model": "ANI-1x (NeuroChem files of torchani 2.2.4)",
                       "reference": "torchani 2.9 ASE calculator, float64", "systems": rows},
                      handle, indent=1)


if __name__ == "__main__":
    main()
