"""Chemical symbols, atomic numbers and a model's element indices.

Vocabulary (as in torchani): an *atomic number* ``Z`` is physics (H = 1); an *element
index* is the position of that element in a model's element list (0 .. E-1), with -1
marking padding atoms in batches.
"""

from __future__ import annotations

import typing as tp

import torch
from ase.data import atomic_numbers as _Z_OF_SYMBOL
from ase.data import chemical_symbols as _SYMBOL_OF_Z

PADDING = -1


class UnsupportedElementError(ValueError):
    """A structure holds elements the model was not trained for."""

    def __init__(self, unsupported: tp.Iterable[str], supported: tp.Iterable[str]):
        self.unsupported = tuple(unsupported)
        self.supported = tuple(supported)
        super().__init__(
            f"unsupported element(s) {', '.join(self.unsupported)}: this model "
            f"supports only {', '.join(self.supported)}"
        )


def symbols_to_numbers(symbols: tp.Sequence[str]) -> list[int]:
    """Atomic numbers of chemical symbols; ``ValueError`` names an unknown symbol."""
    out = []
    for s in symbols:
        if s not in _Z_OF_SYMBOL or s == "X":
            raise ValueError(f"{s!r} is not a chemical symbol")
        out.append(_Z_OF_SYMBOL[s])
    return out


def symbol_of(z: int) -> str:
    """Chemical symbol of atomic number ``z`` (``'Z=200'`` style text when unknown)."""
    return _SYMBOL_OF_Z[z] if 0 < z < len(_SYMBOL_OF_Z) else f"Z={z}"


def index_table(numbers: tp.Sequence[int]) -> torch.Tensor:
    """Lookup table ``t`` with ``t[Z] = element index`` and -1 for other ``Z``.

    Shape ``(max(Z) + 2,)``; the last entry stays -1 so that padding (-1) maps to -1.
    """
    table = torch.full((max(numbers) + 2,), PADDING, dtype=torch.long)
    for i, z in enumerate(numbers):
        table[z] = i
    return table


def check_supported(numbers: tp.Iterable[int], supported: tp.Sequence[str]) -> None:
    """Raise ``UnsupportedElementError`` if any atomic number is not in ``supported``."""
    allowed = set(symbols_to_numbers(supported))
    bad = sorted({int(z) for z in numbers if int(z) != PADDING} - allowed)
    if bad:
        raise UnsupportedElementError([symbol_of(z) for z in bad], supported)
