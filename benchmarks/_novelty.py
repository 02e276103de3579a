"""How new each held-out molecule's chemistry is to the training molecules.

An atom's *environment* here is its element, its number of neighbors, whether it is
aromatic, and its neighbors' elements, e.g. ``O2a(N,N)`` for furazan's ring oxygen or
``F1(F)`` for difluorine.  A held-out molecule's novelty is the environment of its atoms
that the fewest training molecules contain, and that count (0: never seen in training).
Used by ``benchmarks/default_model.py --train-list`` to say where the errors come from.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np


def atom_environments(smiles: str) -> set[str]:
    """The environments (see module doc) of the atoms of ``smiles``, hydrogens included."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse {smiles!r}")
    mol = Chem.AddHs(mol)
    return {
        f"{a.GetSymbol()}{a.GetDegree()}{'a' if a.GetIsAromatic() else ''}("
        + ",".join(sorted(n.GetSymbol() for n in a.GetNeighbors())) + ")"
        for a in mol.GetAtoms()
    }


def novelty(held_out: dict[str, str], training: Iterable[str]) -> dict[str, dict]:
    """Rarest environment of each held-out molecule among the training molecules.

    Args:
        held_out: name -> SMILES of the held-out molecules.
        training: SMILES of the training molecules.

    Returns:
        name -> ``{"rarest_environment": str, "training_molecules_with_it": int}``.
    """
    seen: Counter[str] = Counter()
    for smiles in training:
        seen.update(atom_environments(smiles))
    out = {}
    for name, smiles in held_out.items():
        envs = atom_environments(smiles)
        rarest = min(sorted(envs), key=lambda e: seen[e])
        out[name] = {"rarest_environment": rarest, "training_molecules_with_it": seen[rarest]}
    return out


def split_errors(per_molecule: dict[str, dict], novel: dict[str, dict], at_most: int = 0) -> dict:
    """Median per-molecule energy (eV) and force (eV/Å) MAE of the molecules whose rarest
    environment is in at most ``at_most`` training molecules, against the others."""
    names = [n for n in novel if n in per_molecule]
    is_new = np.array([novel[n]["training_molecules_with_it"] <= at_most for n in names])
    energy = np.array([per_molecule[n]["energy_mae_eV"] for n in names])
    force = np.array([per_molecule[n]["force_mae_eV_per_A"] for n in names])

    def median(x: np.ndarray) -> float | None:
        return float(np.median(x)) if len(x) else None

    return {
        "at_most": at_most,
        "novel": sorted(n for n, new in zip(names, is_new) if new),
        "novel_median_energy_mae_eV": median(energy[is_new]),
        "novel_median_force_mae_eV_per_A": median(force[is_new]),
        "others": int((~is_new).sum()),
        "others_median_energy_mae_eV": median(energy[~is_new]),
        "others_median_force_mae_eV_per_A": median(force[~is_new]),
    }
