"""invcalc: symmetry-exact (invariant) neural potentials as ASE calculators.

>>> from invcalc import InvCalc
>>> atoms.calc = InvCalc()          # doctest: +SKIP
"""

from invcalc._version import __version__
from invcalc.builtin import ModelNotAvailableError
from invcalc.calculator import InvCalc
from invcalc.elements import UnsupportedElementError
from invcalc.modelfile import ModelFileError, load_model, save_model
from invcalc.potential import InvariantPotential
from invcalc.spec import FeatureSpec

__all__ = [
    "InvCalc",
    "InvariantPotential",
    "FeatureSpec",
    "load_model",
    "save_model",
    "UnsupportedElementError",
    "ModelFileError",
    "ModelNotAvailableError",
    "__version__",
]
