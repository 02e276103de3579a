"""invcalc: symmetry-exact (invariant) neural potentials as ASE calculators.

>>> from invcalc import InvCalc
>>> atoms.calc = InvCalc()          # doctest: +SKIP

Names are imported on first use, so ``import invcalc`` itself loads neither torch nor
torchani and has no side effects.
"""

from __future__ import annotations

import importlib
import typing as tp

from invcalc._version import __version__

_EXPORTS = {
    "InvCalc": "invcalc.calculator",
    "InvariantPotential": "invcalc.potential",
    "FeatureSpec": "invcalc.spec",
    "load_model": "invcalc.modelfile",
    "save_model": "invcalc.modelfile",
    "ModelFileError": "invcalc.modelfile",
    "UnsupportedElementError": "invcalc.elements",
    "ModelNotAvailableError": "invcalc.builtin",
}

__all__ = [*_EXPORTS, "__version__"]

if tp.TYPE_CHECKING:
    from invcalc.builtin import ModelNotAvailableError
    from invcalc.calculator import InvCalc
    from invcalc.elements import UnsupportedElementError
    from invcalc.modelfile import ModelFileError, load_model, save_model
    from invcalc.potential import InvariantPotential
    from invcalc.spec import FeatureSpec


def __getattr__(name: str) -> tp.Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'invcalc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
