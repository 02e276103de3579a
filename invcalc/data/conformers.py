"""SMILES -> 3D :class:`ase.Atoms` conformers with RDKit (ETKDG + MMFF94).

RDKit is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

#: Heavy-atom RMSD (Å) below which two embedded conformers count as duplicates.
PRUNE_RMS_ANGSTROM = 0.3


def embed_conformers(
    smiles: str,
    n_conformers: int = 1,
    seed: int = 0,
    *,
    optimize: bool = True,
    prune_rms: float = PRUNE_RMS_ANGSTROM,
) -> list[Atoms]:
    """Embed 3D conformers of a molecule.

    Hydrogens are added (``Chem.AddHs``), coordinates come from ETKDGv3 with
    ``randomSeed=seed``, near-duplicates (heavy-atom RMSD below ``prune_rms``) are
    pruned, and each conformer is then optimised with MMFF94 when RDKit has MMFF
    parameters for every atom, else with UFF when it has those, else left as embedded.

    Args:
        smiles: the molecule.
        n_conformers: how many to try to embed (>= 1). Rigid or tiny molecules give fewer
            after pruning (water gives one).
        seed: RDKit random seed, reduced modulo 2**31 - 1.
        optimize: run the force-field optimisation.
        prune_rms: pruning threshold in Å (heavy atoms); a negative value disables it.

    Returns:
        1..n_conformers Atoms (positions in Å, atom order = RDKit's with hydrogens last),
        each with ``info`` keys ``smiles``, ``conformer`` (index) and ``forcefield``
        (``"MMFF94"``, ``"UFF"`` or ``"none"``).

    Raises:
        ValueError: unparsable SMILES or embedding failed even with random coordinates.
    """
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem

    if n_conformers < 1:
        raise ValueError(f"n_conformers must be >= 1, got {n_conformers}")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)

    # BlockLogs silences RDKit's log (e.g. "UFFTYPER: Unrecognized atom type") for this block only
    with rdBase.BlockLogs():
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed) % (2**31 - 1)
        params.pruneRmsThresh = float(prune_rms)
        conf_ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n_conformers, params=params))
        if not conf_ids:
            params.useRandomCoords = True
            conf_ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n_conformers, params=params))
        if not conf_ids:
            raise ValueError(f"RDKit could not embed a 3D structure for {smiles!r}")

        forcefield = "none"
        if optimize:
            if AllChem.MMFFHasAllMoleculeParams(mol):
                AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
                forcefield = "MMFF94"
            elif AllChem.UFFHasAllMoleculeParams(mol):
                AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=2000)
                forcefield = "UFF"

    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    out = []
    for i, cid in enumerate(conf_ids):
        positions = np.array(mol.GetConformer(cid).GetPositions(), dtype=np.float64)
        atoms = Atoms(numbers=numbers, positions=positions - positions.mean(axis=0))
        atoms.info.update(smiles=smiles, conformer=i, forcefield=forcefield)
        out.append(atoms)
    return out
