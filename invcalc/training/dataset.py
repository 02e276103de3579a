"""Labelled structures: read with ASE, checked, centred and padded into tensors.

``read_labelled`` turns any file ``ase.io.read`` understands (extxyz, ...) or an ASE
database (``.db``) into a ``LabelledData`` of padded float64 tensors; every problem is
reported with the file and the structure's index.  ``split_indices`` makes the seeded
train/validation split.  Batching lives in ``invcalc.training.batches``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import typing as tp

import numpy as np
import torch
from torch import Tensor

from invcalc.elements import PADDING, UnsupportedElementError, symbol_of, symbols_to_numbers
from invcalc.systems import validate

if tp.TYPE_CHECKING:
    from ase import Atoms

#: ``atoms.info`` keys searched, in order, for the reference method of the labels
#: (``invcalc.data`` writes ``ref_method``).
METHOD_KEYS = ("ref_method", "reference_method", "method", "level_of_theory")
#: ``atoms.info[SPLIT_KEY] == "test"`` marks a held-out molecule (``invcalc.data``).
SPLIT_KEY = "split"


@dataclasses.dataclass(frozen=True)
class LabelledData:
    """S structures padded to N atoms.  Positions centred on their mean (float64).

    ``numbers``: (S, N) long, -1 for padding; ``positions``: (S, N, 3) Å float64;
    ``energies``: (S,) eV float64; ``forces``: (S, N, 3) eV/Å float64, 0 on padding;
    ``num_atoms``: (S,) long; ``groups``: (S,) long group label per structure (all
    distinct unless grouped by an ``atoms.info`` key).
    """

    numbers: Tensor
    positions: Tensor
    energies: Tensor
    forces: Tensor
    num_atoms: Tensor
    groups: Tensor
    #: Reference method found in ``atoms.info`` (see ``METHOD_KEYS``), else None.
    reference_method: str | None
    #: Where the data came from (a path).
    source: str

    def __len__(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def elements(self) -> tuple[str, ...]:
        """Chemical symbols present, by increasing atomic number."""
        zs = torch.unique(self.numbers[self.numbers != PADDING]).tolist()
        return tuple(symbol_of(int(z)) for z in sorted(zs))

    def element_counts(self, elements: tp.Sequence[str]) -> Tensor:
        """(S, E) float64 count of each element of ``elements`` in each structure."""
        zs = symbols_to_numbers(elements)
        return torch.stack([(self.numbers == z).sum(1) for z in zs], 1).to(torch.float64)

    def max_force(self) -> Tensor:
        """(S,) largest atomic force magnitude of each structure (eV/Å, float64)."""
        if self.forces.shape[1] == 0:
            return self.forces.new_zeros(len(self))
        return self.forces.norm(dim=-1).amax(dim=1)

    def subset(self, index: Tensor) -> "LabelledData":
        """The structures at ``index`` (1-D long), padding trimmed to the largest."""
        n = int(self.num_atoms[index].max()) if len(index) else 0
        return dataclasses.replace(
            self,
            numbers=self.numbers[index, :n],
            positions=self.positions[index, :n],
            energies=self.energies[index],
            forces=self.forces[index, :n],
            num_atoms=self.num_atoms[index],
            groups=self.groups[index],
        )

    def fingerprint(self) -> str:
        """SHA-256 of the numbers, positions and labels (to recognise the same data)."""
        digest = hashlib.sha256()
        for t in (self.numbers, self.positions, self.energies, self.forces):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def check_elements(self, elements: tp.Sequence[str]) -> None:
        """Raise when the data holds elements outside ``elements``, or lacks some of them.

        An element without data would get an undetermined self-energy and an untrained
        network: a model that answers for it with made-up numbers.
        """
        present = set(self.elements)
        extra = [s for s in self.elements if s not in elements]
        if extra:
            raise UnsupportedElementError(extra, elements)
        absent = [s for s in elements if s not in present]
        if absent:
            raise ValueError(
                f"{self.source}: no training structure contains {', '.join(absent)}; "
                "remove them from the model's elements or add data for them"
            )


def read_labelled(
    path: str | os.PathLike,
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    group_key: str | None = None,
) -> LabelledData:
    """Read structures with energies (eV) and forces (eV/Å) from an ASE-readable file.

    By default the labels come from the attached calculator (extxyz and ``.db`` files
    store them in a ``SinglePointCalculator``); ``energy_key``/``forces_key`` read
    ``atoms.info[energy_key]`` and ``atoms.arrays[forces_key]`` instead.  Structures
    must be finite, neutral and non-periodic (molecules and clusters), and none may be
    marked ``atoms.info["split"] == "test"``: held-out molecules are never trained on.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    and structure index for missing, malformed or non-finite labels.
    """
    import ase.io

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"no such training data file: {name}")
    try:
        images = ase.io.read(name, index=":")
    except Exception as err:  # ASE raises many types for unreadable files
        raise ValueError(f"{name}: ASE could not read it ({type(err).__name__}: {err})") from err
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise ValueError(f"{name}: the file holds no structures")
    energies, forces, groups, methods = [], [], [], set()
    for i, atoms in enumerate(images):
        where = f"{name}, structure {i}"
        _check_structure(atoms, where)
        if atoms.info.get(SPLIT_KEY) == "test":
            raise ValueError(
                f"{where}: marked info['split'] = 'test', a held-out molecule that must not "
                "be trained on; label the training split only (invcalc label --split train)"
            )
        energies.append(_energy(atoms, energy_key, where))
        forces.append(_forces(atoms, forces_key, where))
        groups.append(_group(atoms, group_key, i, where))
        method = next((atoms.info[k] for k in METHOD_KEYS if k in atoms.info), None)
        if method is not None:
            methods.add(str(method))
    if len(methods) > 1:
        raise ValueError(
            f"{name}: the labels mix reference methods {sorted(methods)}; train on one "
            "method at a time"
        )
    return _pad(images, energies, forces, groups, methods.pop() if methods else None, name)


def _check_structure(atoms: "Atoms", where: str) -> None:
    try:
        validate(atoms, neutral_only=True)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if atoms.get_pbc().any():
        raise ValueError(
            f"{where}: periodic structures are not supported for training yet "
            "(molecules and clusters without pbc only)"
        )
    if (atoms.numbers <= 0).any():
        raise ValueError(f"{where}: holds dummy atoms (atomic number 0)")


def _energy(atoms: "Atoms", key: str | None, where: str) -> float:
    if key is not None:
        if key not in atoms.info:
            raise ValueError(f"{where}: no energy under atoms.info[{key!r}]")
        value = atoms.info[key]
    else:
        try:
            value = atoms.get_potential_energy()
        except Exception as err:  # no calculator, or one without an energy
            raise ValueError(
                f"{where}: no energy label ({type(err).__name__}: {err}); training needs "
                "energies and forces, e.g. an extxyz written with a calculator attached, "
                "or name the keys with energy_key/forces_key"
            ) from None
    try:
        energy = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: energy {value!r} is not a number") from None
    if not np.isfinite(energy):
        raise ValueError(f"{where}: energy is {energy}")
    return energy


def _forces(atoms: "Atoms", key: str | None, where: str) -> np.ndarray:
    if key is not None:
        if key not in atoms.arrays:
            raise ValueError(f"{where}: no forces under atoms.arrays[{key!r}]")
        value = atoms.arrays[key]
    else:
        try:
            value = atoms.get_forces()
        except Exception as err:
            raise ValueError(
                f"{where}: no force labels ({type(err).__name__}: {err}); training needs "
                "energies and forces (set forces_key if they are stored under another name)"
            ) from None
    forces = np.asarray(value, dtype=np.float64)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    if not np.all(np.isfinite(forces)):
        raise ValueError(f"{where}: forces contain NaN or infinity")
    return forces


def _group(atoms: "Atoms", key: str | None, index: int, where: str) -> tp.Hashable:
    if key is None:
        return index
    if key not in atoms.info:
        raise ValueError(f"{where}: no atoms.info[{key!r}] to group by")
    return str(atoms.info[key])


def _pad(
    images: list["Atoms"],
    energies: list[float],
    forces: list[np.ndarray],
    groups: list[tp.Hashable],
    method: str | None,
    source: str,
) -> LabelledData:
    sizes = [len(a) for a in images]
    s, n = len(images), max(sizes)
    numbers = np.full((s, n), PADDING, dtype=np.int64)
    positions = np.zeros((s, n, 3))
    padded_forces = np.zeros((s, n, 3))
    for i, (atoms, f) in enumerate(zip(images, forces)):
        pos = atoms.get_positions().astype(np.float64)
        numbers[i, : len(atoms)] = atoms.numbers
        positions[i, : len(atoms)] = pos - pos.mean(0)  # centred before any cast
        padded_forces[i, : len(atoms)] = f
    labels = {g: k for k, g in enumerate(dict.fromkeys(groups))}
    return LabelledData(
        numbers=torch.from_numpy(numbers),
        positions=torch.from_numpy(positions),
        energies=torch.tensor(energies, dtype=torch.float64),
        forces=torch.from_numpy(padded_forces),
        num_atoms=torch.tensor(sizes, dtype=torch.long),
        groups=torch.tensor([labels[g] for g in groups], dtype=torch.long),
        reference_method=method,
        source=source,
    )


def within_max_force(data: LabelledData, max_force: float) -> tuple[LabelledData, int]:
    """The structures of ``data`` whose atomic forces are all at most ``max_force`` (eV/Å),
    and how many were left out.  Raises ``ValueError`` when none is left."""
    keep = torch.nonzero(data.max_force() <= max_force).flatten()
    if not len(keep):
        raise ValueError(
            f"{data.source}: every structure has a force above max_force = {max_force} eV/Å"
        )
    dropped = len(data) - len(keep)
    return (data.subset(keep) if dropped else data), dropped


def split_indices(data: LabelledData, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (train, validation) index tensors; whole groups go to one side.

    Groups are shuffled with a private generator and assigned to validation until it
    holds ``round(val_fraction * S)`` structures (at least one group when
    ``val_fraction > 0``); the training side is never empty.
    """
    s = len(data)
    if val_fraction <= 0:
        return torch.arange(s), torch.arange(0)
    num_groups = int(data.groups.max()) + 1
    if num_groups < 2:
        raise ValueError(
            "cannot split one structure (or one group) into training and validation; "
            "add data or set val_fraction to 0"
        )
    order = torch.randperm(num_groups, generator=torch.Generator().manual_seed(seed))
    sizes = torch.bincount(data.groups, minlength=num_groups)
    target = max(1, round(val_fraction * s))
    taken = torch.cumsum(sizes[order], 0)
    k = int(torch.searchsorted(taken, torch.tensor(target), right=False)) + 1
    k = min(max(k, 1), num_groups - 1)
    in_val = torch.zeros(num_groups, dtype=torch.bool)
    in_val[order[:k]] = True
    mask = in_val[data.groups]
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
