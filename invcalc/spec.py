"""Architecture of an invariant potential as small, JSON-able dataclasses.

A ``ModelSpec`` says everything needed to rebuild a potential's modules before its
tensors are loaded: the element list, the AEV (feature) hyper-parameters, the network
shapes and the energy unit.  ``build_*`` turn a spec into torchani modules and
``spec_from_modules`` reads one back from existing torchani modules (e.g. ANI-1x).
"""

from __future__ import annotations

import dataclasses
import typing as tp

import torch
from torchani.aev import AEVComputer
from torchani.aev._terms import ANIAngular, ANIRadial
from torchani.cutoffs import CutoffCosine, CutoffSmooth
from torchani.nn import ANINetworks, AtomicNetwork, Ensemble
from torchani.nn._core import TightCELU

Activation = tp.Literal["gelu", "silu", "celu"]
CutoffName = tp.Literal["smooth", "cosine"]

#: Activations by name. GELU and SiLU are C-infinity; "celu" (alpha = 0.1, as in
#: ANI-1x) is only C1 and is kept to run published models.
_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
    "celu": TightCELU,
}


def _linspace(start: float, stop: float, num: int) -> tuple[float, ...]:
    """``num`` points from ``start`` to ``stop`` (excluded), as ANI places its shifts."""
    return tuple(start + (stop - start) * i / num for i in range(num))


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """ANI atomic environment vector (AEV) hyper-parameters. Lengths in Å.

    Radial terms: ``0.25 exp(-eta (r - shift)^2) f_c(r)`` for each shift; angular terms
    for each (shift, section) pair, as in torchani's ``ANIRadial``/``ANIAngular``.
    """

    radial_cutoff: float = 5.2
    radial_eta: float = 16.0
    radial_shifts: tuple[float, ...] = _linspace(0.9, 5.2, 16)
    angular_cutoff: float = 3.5
    angular_eta: float = 8.0
    angular_zeta: float = 32.0
    angular_shifts: tuple[float, ...] = _linspace(0.9, 3.5, 4)
    angular_sections: tuple[float, ...] = tuple(
        3.141592653589793 * (2 * i + 1) / 16 for i in range(8)
    )
    #: "smooth" (C-infinity, torchani's CutoffSmooth) or "cosine" (C1, as ANI-1x).
    cutoff_fn: CutoffName = "smooth"

    def __post_init__(self) -> None:
        if not 0 < self.angular_cutoff <= self.radial_cutoff:
            raise ValueError("need 0 < angular_cutoff <= radial_cutoff")
        if self.cutoff_fn not in ("smooth", "cosine"):
            raise ValueError(f"cutoff_fn must be 'smooth' or 'cosine', not {self.cutoff_fn!r}")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """Per-element multilayer perceptrons, ``ensemble_size`` members sharing the AEVs.

    ``layers[symbol]`` lists every layer width from the AEV length to the scalar output.
    """

    layers: dict[str, tuple[int, ...]]
    activation: Activation = "gelu"
    bias: bool = True
    ensemble_size: int = 1

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, not {self.activation!r}"
            )
        if self.ensemble_size < 1:
            raise ValueError("ensemble_size must be at least 1")
        for symbol, dims in self.layers.items():
            if len(dims) < 2 or dims[-1] != 1 or min(dims) < 1:
                raise ValueError(f"layers[{symbol!r}] must run from the AEV length to 1")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a potential's modules (not its weights)."""

    elements: tuple[str, ...]
    features: FeatureSpec
    networks: NetworkSpec
    #: Unit of the energies the potential outputs: "eV" or "Hartree" (torchani models).
    energy_unit: str = "eV"

    def to_json(self) -> dict[str, tp.Any]:
        """A JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, tp.Any]) -> "ModelSpec":
        """Inverse of ``to_json``; ``ValueError``/``TypeError`` on malformed input."""
        features = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data["features"].items()
        }
        nets = dict(data["networks"])
        nets["layers"] = {s: tuple(int(d) for d in v) for s, v in nets["layers"].items()}
        return cls(
            elements=tuple(data["elements"]),
            features=FeatureSpec(**features),
            networks=NetworkSpec(**nets),
            energy_unit=str(data.get("energy_unit", "eV")),
        )


def aev_length(features: FeatureSpec, num_elements: int) -> int:
    """Length of one atom's AEV for ``num_elements`` elements."""
    radial = len(features.radial_shifts) * num_elements
    pairs = num_elements * (num_elements + 1) // 2
    return radial + len(features.angular_shifts) * len(features.angular_sections) * pairs


def build_aev_computer(features: FeatureSpec, num_elements: int) -> AEVComputer:
    """torchani ``AEVComputer`` for a feature spec (pure PyTorch strategy)."""
    radial = ANIRadial(
        features.radial_eta, list(features.radial_shifts), features.radial_cutoff,
        cutoff_fn=features.cutoff_fn,
    )
    angular = ANIAngular(
        features.angular_eta, features.angular_zeta, list(features.angular_shifts),
        list(features.angular_sections), features.angular_cutoff,
        cutoff_fn=features.cutoff_fn,
    )
    return AEVComputer(radial, angular, num_species=num_elements, strategy="pyaev")


def build_networks(elements: tp.Sequence[str], networks: NetworkSpec) -> Ensemble:
    """A torchani ``Ensemble`` of ``ensemble_size`` ``ANINetworks`` (one net per element)."""
    missing = [s for s in elements if s not in networks.layers]
    if missing:
        raise ValueError(f"no layer sizes given for element(s) {', '.join(missing)}")
    members = [
        ANINetworks(
            {
                s: AtomicNetwork(
                    networks.layers[s],
                    activation=_ACTIVATIONS[networks.activation](),
                    bias=networks.bias,
                )
                for s in elements
            }
        )
        for _ in range(networks.ensemble_size)
    ]
    return Ensemble(members)


def _cutoff_name(fn: torch.nn.Module) -> str:
    if type(fn) is CutoffCosine:
        return "cosine"
    if type(fn) is CutoffSmooth and fn.order == 2 and fn.eps == 1e-10:
        return "smooth"
    raise ValueError(f"unsupported cutoff function {type(fn).__name__}")


def _activation_name(fn: torch.nn.Module) -> str:
    for name, cls in _ACTIVATIONS.items():
        if type(fn) is cls and (name != "gelu" or fn.approximate == "none"):
            return name
    raise ValueError(f"unsupported activation {fn!r}")


def _network_layers(net: AtomicNetwork) -> tuple[int, ...]:
    linears = [*net.layers, net.final_layer]
    return tuple(int(x.in_features) for x in linears) + (int(net.final_layer.out_features),)


def spec_from_modules(
    elements: tp.Sequence[str],
    aev_computer: AEVComputer,
    members: tp.Sequence[ANINetworks],
    energy_unit: str,
) -> ModelSpec:
    """Read the spec of existing torchani modules (ANI-style terms only)."""
    radial, angular = aev_computer.radial, aev_computer.angular
    if type(radial) is not ANIRadial or type(angular) is not ANIAngular:
        raise ValueError("only ANI radial/angular AEV terms are supported")
    cutoff = _cutoff_name(radial.cutoff_fn)
    features = FeatureSpec(
        radial_cutoff=float(radial.cutoff),
        radial_eta=float(radial.eta.item()),
        radial_shifts=tuple(radial.shifts.tolist()),
        angular_cutoff=float(angular.cutoff),
        angular_eta=float(angular.eta.item()),
        angular_zeta=float(angular.zeta.item()),
        angular_shifts=tuple(angular.shifts.tolist()),
        angular_sections=tuple(angular.sections.tolist()),
        cutoff_fn=tp.cast(CutoffName, cutoff),
    )
    first = members[0]
    nets = [first[s] for s in elements]
    layers = {s: _network_layers(first[s]) for s in elements}
    for m in members[1:]:
        if any(_network_layers(m[s]) != layers[s] for s in elements):
            raise ValueError("ensemble members with different layer sizes are not supported")
    biases = {lin.bias is not None for n in nets for lin in [*n.layers, n.final_layer]}
    if len(biases) != 1:
        raise ValueError("networks mixing layers with and without bias are not supported")
    activation = {_activation_name(n.activation) for n in nets}
    if len(activation) != 1:
        raise ValueError("networks with different activations are not supported")
    return ModelSpec(
        elements=tuple(elements),
        features=features,
        networks=NetworkSpec(
            layers=layers,
            activation=tp.cast(Activation, activation.pop()),
            bias=biases.pop(),
            ensemble_size=len(members),
        ),
        energy_unit=energy_unit,
    )
