"""Reference-data pipeline: molecules, conformers, sampling and GFN2-xTB labels.

Submodules (import them directly; nothing heavy is imported here):

- :mod:`invcalc.data.molecules` -- the curated SMILES list (``molecules.smi``), its
  validation and the deterministic train/test split.
- :mod:`invcalc.data.substitution` -- the second shipped list (``substituted.smi``):
  one-substituent derivatives of the curated training molecules.
- :mod:`invcalc.data.conformers` -- SMILES -> 3D :class:`ase.Atoms` with RDKit.
- :mod:`invcalc.data.sampling` -- xTB relaxation, Langevin MD, normal-mode and random
  displacements, molecular clusters.
- :mod:`invcalc.data.tasks` -- the task plan (deterministic ids and seeds) and
  ``run_task``, which samples and labels one molecule or cluster.
- :mod:`invcalc.data.labels` -- tblite single points and ``label_dataset``, parallel over
  any ``concurrent.futures.Executor``.
- :mod:`invcalc.data.store` -- the resumable extxyz output and its journal.
- :mod:`invcalc.data.explore` -- active learning: tasks that run a trained model's MD
  and label the frames its ensemble is least sure of (``invcalc explore``).

Typical use (what ``invcalc label`` does)::

    from invcalc.data.molecules import read_smiles_file
    from invcalc.data.tasks import SamplingConfig, plan_tasks
    from invcalc.data.labels import label_dataset, make_process_pool

    tasks = plan_tasks(read_smiles_file(), SamplingConfig(), split="train", seed=0)
    with make_process_pool(4) as pool:
        summary = label_dataset(tasks, "train.extxyz", executor=pool)

RDKit and tblite are optional dependencies (the ``data`` extra); they are imported
lazily inside the functions that need them, so importing this package is cheap and
never touches OpenMP settings.
"""

__all__ = ["molecules", "substitution", "conformers", "sampling", "tasks", "labels", "store", "explore"]
