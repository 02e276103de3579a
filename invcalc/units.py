"""Energy units and their conversion to eV, the unit of every public boundary.

Sources: ``ase.units`` (CODATA 2014 as shipped by ASE) for Hartree and kcal/mol, so
invcalc and ASE agree to the last bit.
"""

from __future__ import annotations

import typing as tp

from ase import units as _ase_units

EnergyUnit = tp.Literal["eV", "Hartree", "kcal/mol"]

#: How many eV one of each supported energy unit is.
EV_PER_UNIT: dict[str, float] = {
    "eV": 1.0,
    "Hartree": float(_ase_units.Hartree),
    "kcal/mol": float(_ase_units.kcal / _ase_units.mol),
}


def ev_per(unit: str) -> float:
    """Return how many eV one ``unit`` is; raise ``ValueError`` for unknown units."""
    try:
        return EV_PER_UNIT[unit]
    except KeyError:
        known = ", ".join(sorted(EV_PER_UNIT))
        raise ValueError(f"unknown energy unit {unit!r}; known units: {known}") from None
