"""Reference-data pipeline: molecules, conformers, sampling and GFN2-xTB labels.

Submodules (import them directly; nothing heavy is imported here):

- :mod:`invcalc.data.molecules` -- the curated SMILES list (``molecules.smi``), its
  validation and the deterministic train/test split.
- :mod:`invcalc.data.conformers` -- SMILES -> 3D :class:`ase.Atoms` with RDKit.
- :mod:`invcalc.data.sampling` -- xTB relaxation, Langevin MD, normal-mode and random
  displacements, molecular clusters.
- :mod:`invcalc.data.labels` -- task planning, parallel resumable labelling with tblite,
  extxyz output.

RDKit and tblite are optional dependencies (the ``data`` extra); they are imported
lazily inside the functions that need them, so importing this package is cheap and
never touches OpenMP settings.
"""

__all__ = ["molecules", "conformers", "sampling", "labels"]
