"""The curated molecule list: reading, validation and the held-out split.

``molecules.smi`` (shipped next to this module) has one molecule per line with four
whitespace-separated columns::

    smiles  name  category  split

Lines starting with ``#`` are comments. Every entry is a neutral, closed-shell molecule
of H, C, N, O, F, S, Cl with 1-12 heavy atoms and no formal charges on any atom (so no
ions, zwitterions, nitro groups or N-oxides), see :func:`validate_entry`.

The split is ``"test"`` for about 10 % of the molecules, chosen by a salted SHA-256 hash
of the SMILES string as stored in the file (:func:`split_for`). The stored strings are
RDKit canonical SMILES at curation time (except where a canonical form would not
survive extxyz parsing, e.g. ``[H]F``), and the hash is taken of the stored string so
that the split does not move when a newer RDKit canonicalises differently. The split of
a molecule depends on its own SMILES only, so adding molecules never moves an existing
molecule between train and test. Molecules in the test split must never be used for
training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Literal, Sequence

Split = Literal["train", "test"]

#: Elements allowed in the reference data (GFN2-xTB is fine far beyond these).
ALLOWED_ELEMENTS: frozenset[str] = frozenset({"H", "C", "N", "O", "F", "S", "Cl"})
#: Inclusive bounds on the number of heavy (non-hydrogen) atoms.
MIN_HEAVY_ATOMS = 1
MAX_HEAVY_ATOMS = 12
#: Fraction of molecules held out for testing.
TEST_FRACTION = 0.1
#: Salt of the split hash; changing it reshuffles the split, so don't.
SPLIT_SALT = "invcalc-split-v1"

CATEGORIES: tuple[str, ...] = (
    "small",
    "solvent",
    "hydrocarbon",
    "oxygen",
    "carbonyl",
    "nitrogen",
    "heterocycle",
    "amino_acid",
    "peptide",
    "drug_fragment",
    "halocarbon",
    "sulfur",
)


@dataclass(frozen=True)
class MoleculeEntry:
    """One line of the molecule list.

    Attributes:
        smiles: SMILES as stored in the list (hydrogens implicit).
        name: unique identifier, ``[A-Za-z0-9_-]``, not purely numeric.
        category: one of :data:`CATEGORIES`.
        split: ``"train"`` or ``"test"``.
    """

    smiles: str
    name: str
    category: str
    split: str


#: Lists shipped with invcalc, by name: the curated list and its substituted derivatives
#: (:mod:`invcalc.data.substitution`).
SHIPPED_LISTS: dict[str, str] = {"curated": "molecules.smi", "substituted": "substituted.smi"}


def default_smiles_path(name: str = "curated") -> Path:
    """Path of a shipped list (``"curated"``: ``molecules.smi``; see :data:`SHIPPED_LISTS`)."""
    if name not in SHIPPED_LISTS:
        raise ValueError(f"no shipped molecule list {name!r}; shipped: {sorted(SHIPPED_LISTS)}")
    return Path(str(resources.files("invcalc.data").joinpath(SHIPPED_LISTS[name])))


def read_smiles_file(path: str | Path | None = None) -> list[MoleculeEntry]:
    """Read a molecule list.

    Args:
        path: file to read; ``None`` reads the shipped curated list, and a name of
            :data:`SHIPPED_LISTS` that is not an existing file reads that shipped list.
            Lines have 2-4 columns:
            ``smiles name [category [split]]``; a missing category is ``"unknown"`` and
            a missing split is computed with :func:`split_for`.

    Returns:
        The entries in file order (no validation beyond the column count; see
        :func:`validate_entries`).

    Raises:
        ValueError: a line with fewer than 2 or more than 4 columns.
    """
    if path is None:
        path = default_smiles_path()
    elif str(path) in SHIPPED_LISTS and not Path(path).exists():
        path = default_smiles_path(str(path))
    path = Path(path)
    entries: list[MoleculeEntry] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            cols = line.split()
            if not 2 <= len(cols) <= 4:
                raise ValueError(
                    f"{path}:{lineno}: expected 'smiles name [category [split]]', got {line!r}"
                )
            smiles, name = cols[0], cols[1]
            category = cols[2] if len(cols) > 2 else "unknown"
            split = cols[3] if len(cols) > 3 else split_for(smiles)
            entries.append(MoleculeEntry(smiles, name, category, split))
    return entries


def split_for(smiles: str, test_fraction: float = TEST_FRACTION, salt: str = SPLIT_SALT) -> Split:
    """Deterministic train/test assignment of one molecule.

    Args:
        smiles: the SMILES string as stored in the list.
        test_fraction: probability of ``"test"`` over a large list, in [0, 1].
        salt: hash salt (the "seed" of the split).

    Returns:
        ``"test"`` if ``sha256(salt:smiles)`` read as a number in [0, 1) is below
        ``test_fraction``, else ``"train"``.
    """
    digest = hashlib.sha256(f"{salt}:{smiles}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "test" if u < test_fraction else "train"


def canonical_smiles(smiles: str) -> str:
    """RDKit canonical isomeric SMILES (raises ValueError if RDKit cannot parse it)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    return Chem.MolToSmiles(mol)


def validate_entry(entry: MoleculeEntry) -> str:
    """Check one entry against the rules of the list.

    Checks: RDKit parses the SMILES; every atom has formal charge 0 and no radical
    electrons; elements are in :data:`ALLOWED_ELEMENTS`; 1-12 heavy atoms; an even
    number of electrons (with hydrogens); split is train/test; name, category and
    SMILES are strings that extxyz reads back unchanged. (The shipped list also uses
    only :data:`CATEGORIES`; a test checks that.)

    Returns:
        The canonical SMILES.

    Raises:
        ValueError: naming the entry and every rule it breaks.
    """
    from rdkit import Chem

    problems: list[str] = []
    mol = Chem.MolFromSmiles(entry.smiles)
    canonical = ""
    if mol is None:
        problems.append("RDKit cannot parse the SMILES")
    else:
        canonical = Chem.MolToSmiles(mol)
        molh = Chem.AddHs(mol)
        symbols = {a.GetSymbol() for a in molh.GetAtoms()}
        if not symbols <= ALLOWED_ELEMENTS:
            problems.append(f"elements {sorted(symbols - ALLOWED_ELEMENTS)} not allowed")
        charged = [a.GetSymbol() for a in molh.GetAtoms() if a.GetFormalCharge() != 0]
        if charged:
            problems.append(f"formal charges on {charged}")
        if any(a.GetNumRadicalElectrons() for a in molh.GetAtoms()):
            problems.append("radical electrons")
        n_heavy = mol.GetNumHeavyAtoms()
        if not MIN_HEAVY_ATOMS <= n_heavy <= MAX_HEAVY_ATOMS:
            problems.append(f"{n_heavy} heavy atoms, not {MIN_HEAVY_ATOMS}-{MAX_HEAVY_ATOMS}")
        n_electrons = sum(a.GetAtomicNum() for a in molh.GetAtoms()) - Chem.GetFormalCharge(molh)
        if n_electrons % 2:
            problems.append(f"odd electron count {n_electrons}")
    if not _is_plain_string_token(entry.category):
        problems.append(f"category {entry.category!r} must be [A-Za-z0-9_-] and not look numeric")
    if mol is not None and not _survives_extxyz(entry.smiles):
        problems.append("extxyz would not read this SMILES back as a string (write HF as [H]F)")
    if entry.split not in ("train", "test"):
        problems.append(f"split {entry.split!r} is not train/test")
    if not _is_plain_string_token(entry.name):
        problems.append(f"name {entry.name!r} must be [A-Za-z0-9_-] and not look numeric")
    if problems:
        raise ValueError(f"molecule {entry.name!r} ({entry.smiles}): " + "; ".join(problems))
    return canonical


def validate_entries(entries: Sequence[MoleculeEntry]) -> list[str]:
    """Validate every entry and check names and canonical SMILES are unique.

    Returns:
        Canonical SMILES, one per entry.

    Raises:
        ValueError: listing all problems found (not just the first).
    """
    problems: list[str] = []
    canon: list[str] = []
    seen_smiles: dict[str, str] = {}
    seen_names: set[str] = set()
    for e in entries:
        try:
            c = validate_entry(e)
        except ValueError as err:
            problems.append(str(err))
            c = ""
        canon.append(c)
        if c and c in seen_smiles:
            problems.append(f"{e.name!r} duplicates {seen_smiles[c]!r} (canonical {c})")
        elif c:
            seen_smiles[c] = e.name
        if e.name in seen_names:
            problems.append(f"duplicate name {e.name!r}")
        seen_names.add(e.name)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in molecule list:\n" + "\n".join(problems))
    return canon


def select(
    entries: Iterable[MoleculeEntry], split: Literal["train", "test", "all"] = "all"
) -> list[MoleculeEntry]:
    """Entries of one split (``"all"`` keeps every entry)."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    return [e for e in entries if split == "all" or e.split == split]


def _is_plain_string_token(s: str) -> bool:
    """True if ``s`` is a safe identifier that extxyz reads back as the same string."""
    if not s or not all(ch.isalnum() or ch in "_-" for ch in s):
        return False
    try:
        float(s)
        return False
    except ValueError:
        pass
    return s.upper() not in {"T", "F", "TRUE", "FALSE"}


def _survives_extxyz(value: str) -> bool:
    """True if an extxyz ``info`` string reads back as itself (backslashes escaped, as
    :mod:`invcalc.data.store` writes them)."""
    from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict

    escaped = value.replace("\\", "\\\\")
    try:
        parsed = key_val_str_to_dict(key_val_dict_to_str({"k": escaped}))["k"]
    except Exception:  # noqa: BLE001 - any parse failure means "no"
        return False
    return isinstance(parsed, str) and parsed == value
