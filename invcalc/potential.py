"""The invariant neural potential: torchani AEVs -> per-element networks -> energies.

    E = sum_i [ e0(Z_i) + (1/M) sum_m NN^m_{Z_i}(G_i) ]

``G_i`` is atom i's AEV (Behler-Parrinello / ANI symmetry functions), invariant to
translation, rotation and permutation of identical atoms by construction; the sum over
atoms makes E invariant to relabelling.  ``M`` ensemble members share the AEVs.

Precision policy: AEVs and networks run in the module's dtype (float32 by default); the
self-energies ``e0`` (float64 always) and all sums over atoms and members are float64.
The module computes energies only; ``invcalc.derivatives`` adds forces, stress and
Hessians by autograd.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor
from torchani.aev import AEVComputer
from torchani.nn import ANINetworks, Ensemble

from invcalc.elements import PADDING, UnsupportedElementError, index_table, symbol_of
from invcalc.elements import symbols_to_numbers
from invcalc.fused import FusedCache, FusedEnsemble
from invcalc.neighbors import NeighborMethod, PairList, find_pairs, pair_geometry
from invcalc.spec import FeatureSpec, ModelSpec, NetworkSpec, aev_length
from invcalc.spec import build_aev_computer, build_networks, spec_from_modules


class Energies(tp.NamedTuple):
    """Output of ``InvariantPotential``; all float64, in the potential's energy unit.

    ``total``: (B,) energies; ``atomic``: (B, N) per-atom energies summing to ``total``
    (0 for padding); ``members``: (M, B) total energy of each ensemble member.
    """

    total: Tensor
    atomic: Tensor
    members: Tensor


class InvariantPotential(torch.nn.Module):
    """Ensemble of per-element networks over torchani AEVs, with float64 self-energies.

    Build a new one with ``InvariantPotential.build(...)``, wrap a torchani ANI model with
    ``InvariantPotential.from_torchani(model)``, or load one with ``invcalc.load_model``.
    Inputs are atomic numbers (B, N) (-1 = padding), positions (B, N, 3) in Å and an
    optional (3, 3) cell (rows = lattice vectors) for fully periodic systems.
    """

    self_energies: Tensor
    _index_of_z: Tensor

    def __init__(
        self,
        spec: ModelSpec,
        aev_computer: AEVComputer,
        networks: Ensemble,
        self_energies: tp.Sequence[float] | Tensor,
    ) -> None:
        super().__init__()
        if len(self_energies) != len(spec.elements):
            raise ValueError("need one self-energy per element")
        self.spec = spec
        self.aev_computer = aev_computer
        self.networks = networks
        self.register_buffer(
            "self_energies", torch.as_tensor(self_energies, dtype=torch.float64).clone()
        )
        numbers = symbols_to_numbers(spec.elements)
        self.register_buffer("_index_of_z", index_table(numbers), persistent=False)
        #: Neighbor-list algorithm: "auto", "all_pairs" or "cell_list".
        self.neighbor_method: NeighborMethod = "auto"
        #: Free-form metadata (reference method, training info) read from a model file.
        self.metadata: dict[str, tp.Any] = {}
        self._fused = FusedCache()

    # ---- construction -------------------------------------------------------------

    @classmethod
    def build(
        cls,
        elements: tp.Sequence[str],
        *,
        features: FeatureSpec | None = None,
        hidden: tp.Sequence[int] | dict[str, tp.Sequence[int]] = (128, 128),
        activation: tp.Literal["gelu", "silu", "celu"] = "gelu",
        ensemble_size: int = 1,
        self_energies: tp.Sequence[float] | None = None,
        energy_unit: str = "eV",
        seed: int | None = None,
    ) -> "InvariantPotential":
        """A new, randomly initialised potential (float32; call ``.double()`` for float64).

        ``hidden``: hidden-layer widths, shared or per element symbol.  Defaults give a
        C-infinity model: smooth cutoff and GELU activations.  ``seed`` makes the
        initial weights reproducible without touching torch's global generator.
        """
        elements = tuple(elements)
        features = features or FeatureSpec()
        n_in = aev_length(features, len(elements))
        per_elem = hidden if isinstance(hidden, dict) else {s: hidden for s in elements}
        layers = {s: (n_in, *map(int, per_elem[s]), 1) for s in elements}
        spec = ModelSpec(
            elements=elements,
            features=features,
            networks=NetworkSpec(layers, activation=activation, ensemble_size=ensemble_size),
            energy_unit=energy_unit,
        )
        if seed is None:
            return cls.from_spec(spec, self_energies)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls.from_spec(spec, self_energies)

    @classmethod
    def from_spec(
        cls, spec: ModelSpec, self_energies: tp.Sequence[float] | Tensor | None = None
    ) -> "InvariantPotential":
        """Modules for ``spec`` with fresh weights (self-energies default to zero)."""
        if self_energies is None:
            self_energies = [0.0] * len(spec.elements)
        return cls(
            spec,
            build_aev_computer(spec.features, len(spec.elements)),
            build_networks(spec.elements, spec.networks),
            self_energies,
        )

    @classmethod
    def from_torchani(cls, model: torch.nn.Module) -> "InvariantPotential":
        """Wrap a torchani ANI model (e.g. ``torchani.models.ANI2x()``), sharing weights.

        The result outputs Hartree, like torchani; the calculator converts to eV.
        """
        from torchani.arch import ANI

        if not isinstance(model, ANI):
            raise TypeError(f"expected a torchani ANI model, got {type(model).__name__}")
        if model._has_extra_potentials:
            raise ValueError(
                "torchani models with extra potentials (repulsion, dispersion) are not "
                "supported; use one of the pure neural-network models (ANI-1x, ANI-2x)"
            )
        nets = model.neural_networks
        if isinstance(nets, Ensemble):
            members = list(nets.members)
        elif isinstance(nets, ANINetworks):
            members = [nets]
        else:
            raise ValueError(f"unsupported torchani network container {type(nets).__name__}")
        elements = tuple(model.symbols)
        spec = spec_from_modules(elements, model.aev_computer, members, "Hartree")
        e0 = model.energy_shifter.self_energies.detach().to(torch.float64)
        if not model.energy_shifter._enabled:
            e0 = torch.zeros_like(e0)
        return cls(spec, model.aev_computer, Ensemble(members), e0)

    # ---- properties -----------------------------------------------------------------

    @property
    def elements(self) -> tuple[str, ...]:
        """Supported chemical symbols, in element-index order."""
        return self.spec.elements

    @property
    def energy_unit(self) -> str:
        """Unit of the energies this module outputs ("eV" or "Hartree")."""
        return self.spec.energy_unit

    @property
    def cutoff(self) -> float:
        """Interaction cutoff in Å (the radial AEV cutoff)."""
        return float(self.aev_computer.radial.cutoff)

    @property
    def ensemble_size(self) -> int:
        """Number of ensemble members M."""
        return len(self.networks.members)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the networks (float32 or float64)."""
        return next(self.networks.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device holding the module's tensors."""
        return self.self_energies.device

    def _apply(self, fn: tp.Callable[[Tensor], Tensor], recurse: bool = True):  # type: ignore[override]
        # .to(dtype)/.float()/.half() must never round the float64 self-energies: keep
        # them float64 and follow only the device of the other tensors.
        exact = self.self_energies
        out = super()._apply(fn, recurse)
        self.self_energies = exact.to(device=self.self_energies.device)
        self._fused.clear()
        return out

    def fused_networks(self) -> FusedEnsemble:
        """The networks with ensemble members stacked for inference (``invcalc.fused``).

        Derived from the current weights and rebuilt when they change; gradients reach
        the inputs, not the parameters.
        """
        return self._fused.get(self.networks, self.elements)

    # ---- evaluation -----------------------------------------------------------------

    def element_indices(self, numbers: Tensor) -> Tensor:
        """Element indices (B, N) of atomic numbers (B, N); -1 stays -1 (padding).

        Raises ``UnsupportedElementError`` naming every unsupported element.
        """
        z = numbers.to(torch.long)
        table = self._index_of_z
        inside = (z >= 0) & (z < table.shape[0] - 1)
        idx = torch.where(inside, table[z.clamp(0, table.shape[0] - 1)], PADDING)
        bad = (idx == PADDING) & (z != PADDING)
        if bool(bad.any()):
            unsupported = sorted({int(x) for x in z[bad].tolist()})
            raise UnsupportedElementError([symbol_of(x) for x in unsupported], self.elements)
        return idx

    def find_pairs(self, elem_idxs: Tensor, positions: Tensor, cell: Tensor | None) -> PairList:
        """Neighbor pairs within the cutoff (no gradient), see ``invcalc.neighbors``."""
        return find_pairs(self.cutoff, elem_idxs, positions, cell, self.neighbor_method)

    def forward(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor | None = None,
        pairs: PairList | None = None,
    ) -> Energies:
        """Energies of a batch of structures.

        Args:
            numbers: (B, N) atomic numbers, -1 for padding.
            positions: (B, N, 3) Å, in the module's dtype.
            cell: (3, 3) Å lattice vectors (rows) for a fully periodic system (B = 1).
            pairs: neighbor pairs from ``find_pairs``, recomputed when None.
        """
        elem = self.element_indices(numbers)
        if pairs is None:
            pairs = self.find_pairs(elem, positions, cell)
        neighbors = pair_geometry(pairs, positions, cell)
        aevs = self.aev_computer.compute_from_neighbors(elem, positions, neighbors)
        # (M, B, N) network atomic energies, padding atoms 0
        nn = self.networks(elem, aevs, atomic=True, ensemble_values=True)
        e0 = self.self_energies[elem.clamp(min=0)].masked_fill(elem == PADDING, 0.0)
        member_atomic = nn.to(torch.float64) + e0
        atomic = member_atomic.mean(0)
        return Energies(atomic.sum(-1), atomic, member_atomic.sum(-1))
