"""More chemistry from the curated list: one-substituent derivatives of its training molecules.

Per-molecule energy errors of a potential trained on a few hundred molecules shrink with
the number of distinct molecules it has seen. This module widens the list cheaply and
reproducibly: every hydrogen on a carbon of a *training* molecule of the curated list is
replaced, one at a time, by each group in :data:`SUBSTITUENTS` (one position per
symmetry class), the products that satisfy the list's rules and are not in the curated
list are deduplicated, and a seeded random choice of them is written as a second list
(``substituted.smi`` next to this module) in the same four-column format.

Held-out molecules of the curated list are never used as parents, so no derivative is an
analogue made from a held-out molecule; each derivative gets its own train/test split from
:func:`invcalc.data.molecules.split_for`, like any molecule.

Regenerate the shipped list with::

    python -m invcalc.data.substitution --count 1500 --seed 0 -o invcalc/data/substituted.smi
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from invcalc.data.molecules import (
    MoleculeEntry,
    canonical_smiles,
    read_smiles_file,
    select,
    split_for,
    validate_entry,
)

#: Substituent groups: name -> SMILES whose first atom bonds to the parent's carbon.
SUBSTITUENTS: dict[str, str] = {
    "F": "F",
    "Cl": "Cl",
    "Me": "C",
    "Et": "CC",
    "OH": "O",
    "OMe": "OC",
    "NH2": "N",
    "NHMe": "NC",
    "CN": "C#N",
    "CHO": "C=O",
    "COOH": "C(=O)O",
    "CONH2": "C(N)=O",
    "Ac": "C(C)=O",
    "COOMe": "C(=O)OC",
    "SH": "S",
    "SMe": "SC",
    "CF3": "C(F)(F)F",
    "vinyl": "C=C",
    "ethynyl": "C#C",
    "OAc": "OC(C)=O",
    "NHCHO": "NC=O",
}


def derivatives(parent: MoleculeEntry) -> list[tuple[str, str]]:
    """All one-substituent derivatives of one molecule.

    Args:
        parent: a list entry; hydrogens on its carbon atoms are the attachment points,
            one atom per symmetry class (RDKit canonical ranking without tie breaking).

    Returns:
        ``(name, smiles)`` pairs, ``name = f"{parent.name}-{group}{atom_index}"``, SMILES
        RDKit canonical; unvalidated (see :func:`substituted_entries`).
    """
    from rdkit import Chem

    mol = Chem.MolFromSmiles(parent.smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse {parent.name!r} ({parent.smiles})")
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=False))
    sites: dict[int, int] = {}
    for atom in mol.GetAtoms():
        if atom.GetSymbol() == "C" and atom.GetTotalNumHs() > 0:
            sites.setdefault(ranks[atom.GetIdx()], atom.GetIdx())
    out: list[tuple[str, str]] = []
    for idx in sorted(sites.values()):
        for group, group_smiles in SUBSTITUENTS.items():
            fragment = Chem.MolFromSmiles(group_smiles)
            combined = Chem.RWMol(Chem.CombineMols(mol, fragment))
            combined.AddBond(idx, mol.GetNumAtoms(), Chem.BondType.SINGLE)
            site = combined.GetAtomWithIdx(idx)
            if site.GetNumExplicitHs() > 0:  # e.g. [C@@H]: the bond takes one H
                site.SetNumExplicitHs(site.GetNumExplicitHs() - 1)
            try:
                Chem.SanitizeMol(combined)
            except Exception:  # noqa: BLE001 - RDKit raises several types for bad valence
                continue
            out.append((f"{parent.name}-{group}{idx}", Chem.MolToSmiles(combined)))
    return out


def substituted_entries(
    parents: Sequence[MoleculeEntry], *, count: int, seed: int = 0, exclude: Sequence[str] = ()
) -> list[MoleculeEntry]:
    """A seeded random choice of valid, distinct derivatives of ``parents``.

    Args:
        parents: molecules to substitute (pass training molecules only).
        count: how many derivatives to return (fewer if fewer exist).
        seed: seed of the choice; the same arguments always give the same list.
        exclude: SMILES that must not appear (e.g. the whole curated list).

    Returns:
        Entries sorted by name; category is the parent's, split from
        :func:`~invcalc.data.molecules.split_for` of the canonical SMILES.
    """
    excluded = {canonical_smiles(s) for s in exclude}
    candidates: dict[str, MoleculeEntry] = {}
    for parent in parents:
        for name, smiles in derivatives(parent):
            if smiles in excluded or smiles in candidates:
                continue
            entry = MoleculeEntry(smiles, name, parent.category, split_for(smiles))
            try:
                validate_entry(entry)
            except ValueError:
                continue
            candidates[smiles] = entry
    ordered = [candidates[s] for s in sorted(candidates)]
    chosen = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return sorted((ordered[i] for i in chosen), key=lambda e: e.name)


def write_smiles_file(entries: Sequence[MoleculeEntry], path: str | Path, header: str) -> None:
    """Write entries in the four-column list format, ``header`` lines as comments."""
    with open(path, "w", encoding="utf-8") as fh:
        for line in header.splitlines():
            fh.write(f"# {line}".rstrip() + "\n")
        for e in entries:
            fh.write(f"{e.smiles:<40} {e.name:<40} {e.category:<14} {e.split}\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Write the substituted list (see the module docstring for the command)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    curated = read_smiles_file()
    entries = substituted_entries(
        select(curated, "train"), count=args.count, seed=args.seed, exclude=[e.smiles for e in curated]
    )
    header = (
        "invcalc substituted molecules: one-substituent derivatives of the curated list's training molecules\n"
        "(invcalc/data/substitution.py). Same columns and rules as molecules.smi; split from the same hash.\n"
        f"Generated by: python -m invcalc.data.substitution --count {args.count} --seed {args.seed}"
        f" -o {Path(args.output).name}"
    )
    write_smiles_file(entries, args.output, header)
    n_test = sum(e.split == "test" for e in entries)
    print(f"wrote {len(entries)} molecules ({n_test} test) to {args.output}")


if __name__ == "__main__":
    main()
