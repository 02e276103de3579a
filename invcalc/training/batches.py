"""Padded batches with cached neighbor pairs.

Positions of a data set never change, so each structure's pairs within the cutoff are
found once (``PairCache``) and every batch, however the epoch shuffles it, is assembled
from them by offsetting atom indices.  The pair *vectors* are still recomputed from the
batch positions by the potential, so forces flow through them exactly.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor

from invcalc.neighbors import PairList, find_pairs
from invcalc.training.dataset import LabelledData

#: Structures per neighbor search while filling the cache.
_CHUNK = 256


class Batch(tp.NamedTuple):
    """B structures padded to n atoms, on the training device.

    ``numbers``: (B, n) long, -1 padding; ``positions``: (B, n, 3) Å in the model
    dtype; ``energies``: (B,) eV float64; ``forces``: (B, n, 3) eV/Å float64;
    ``num_atoms``: (B,) float64; ``pairs``: pairs into the flattened (B * n) atoms.
    """

    numbers: Tensor
    positions: Tensor
    energies: Tensor
    forces: Tensor
    num_atoms: Tensor
    pairs: PairList


class PairCache:
    """Every structure's neighbor pairs within ``cutoff`` (Å), in local atom indices.

    ``local``: (2, P) int32 atom indices within their structure; ``start``: (S + 1,)
    long offsets, structure s owning ``local[:, start[s]:start[s + 1]]``.
    """

    def __init__(self, local: Tensor, start: Tensor) -> None:
        self.local = local
        self.start = start

    @classmethod
    def build(
        cls, data: LabelledData, element_index: tp.Callable[[Tensor], Tensor], cutoff: float,
        dtype: torch.dtype,
    ) -> "PairCache":
        """Find the pairs of all structures of ``data`` (no gradient).

        ``element_index`` maps atomic numbers to element indices (the potential's
        ``element_indices``); positions are cast to ``dtype`` first, as in training.
        """
        pieces, counts = [], []
        for lo in range(0, len(data), _CHUNK):
            idx = torch.arange(lo, min(lo + _CHUNK, len(data)), device=data.numbers.device)
            part = data.subset(idx)
            n = part.numbers.shape[1]
            found = find_pairs(
                cutoff, element_index(part.numbers), part.positions.to(dtype), None, "all_pairs"
            )
            owner = found.indices[0] // n
            order = torch.argsort(owner, stable=True)
            pieces.append((found.indices[:, order] % n).to(torch.int32))
            counts.append(torch.bincount(owner, minlength=len(idx)))
        count = torch.cat(counts)
        start = torch.zeros(len(data) + 1, dtype=torch.long, device=count.device)
        start[1:] = torch.cumsum(count, 0)
        return cls(torch.cat(pieces, 1), start)

    def pairs_of(self, index: Tensor, width: int) -> PairList:
        """Pairs of the structures ``index`` (B,) placed in a batch padded to ``width``."""
        first, last = self.start[index], self.start[index + 1]
        count = last - first
        owner = torch.repeat_interleave(torch.arange(len(index), device=index.device), count)
        owner_start = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        within = torch.arange(int(count.sum()), device=index.device) - owner_start
        local = self.local[:, first[owner] + within].to(torch.long)
        return PairList(local + owner * width, None)


def make_batch(
    data: LabelledData, cache: PairCache, index: Tensor, dtype: torch.dtype
) -> Batch:
    """The structures ``index`` of ``data`` as a ``Batch`` (positions cast to ``dtype``)."""
    part = data.subset(index)
    width = part.numbers.shape[1]
    return Batch(
        numbers=part.numbers,
        positions=part.positions.to(dtype),
        energies=part.energies,
        forces=part.forces,
        num_atoms=part.num_atoms.to(torch.float64),
        pairs=cache.pairs_of(index, width),
    )


def batches(
    data: LabelledData,
    cache: PairCache,
    index: Tensor,
    batch_size: int,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> tp.Iterator[Batch]:
    """Batches over ``index`` (1-D long): shuffled with ``generator``, else in order.

    The shuffle runs on the CPU so that a seeded generator gives the same order on
    every device.
    """
    if generator is not None:
        index = index[torch.randperm(len(index), generator=generator).to(index.device)]
    for lo in range(0, len(index), batch_size):
        yield make_batch(data, cache, index[lo : lo + batch_size], dtype)
