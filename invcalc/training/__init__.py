"""Training internals behind ``invcalc.train`` (import the submodules directly).

- ``config``: ``TrainConfig``, the run's options and derived paths.
- ``dataset``: reading labelled structures with ASE, checks, padding, the seeded split.
- ``baseline``: self-energies by linear least squares (float64).
- ``batches``: padded batches assembled from per-structure cached neighbor pairs.
- ``objective``: per-member energies, forces and losses.
- ``checkpoint``: atomic per-epoch checkpoints for exact resumption.
- ``report``: predictions, metrics and the parity plot.
- ``loop``: ``fit``.

Nothing is imported here, so ``import invcalc.training`` is cheap.
"""
