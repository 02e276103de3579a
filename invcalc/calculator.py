"""``InvCalc``: the ASE calculator over an invariant neural potential.

Atoms -> tensors (``invcalc.systems``), one forward and one backward pass
(``invcalc.derivatives``), units converted once -> ``self.results`` in eV, eV/Å and
eV/Å^3 (Voigt).  No model logic lives here.
"""

from __future__ import annotations

import copy
import typing as tp

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.calculators.calculator import equal
from ase.stress import full_3x3_to_voigt_6_stress

from invcalc import engine
from invcalc.builtin import resolve_model
from invcalc.cache import DEFAULT_SKIN, StructureCache
from invcalc.derivatives import evaluate, hessian
from invcalc.elements import check_supported
from invcalc.potential import InvariantPotential
from invcalc.systems import System, to_system, validate
from invcalc.units import ev_per


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class InvCalc(Calculator):
    r"""ASE calculator for invariant neural potentials (invcalc models and torchani ANI).

    Energy :math:`E = \sum_i e_0(Z_i) + \frac{1}{M}\sum_m NN^m_{Z_i}(G_i)` over atoms i
    and ensemble members m, with :math:`G_i` the atom's AEV.  Forces
    :math:`F_i = -\partial E/\partial r_i`; stress
    :math:`\sigma = V^{-1}\,\partial E/\partial\varepsilon` under a symmetric homogeneous
    strain of positions and cell (3D-periodic cells only); both by autograd in the same
    backward pass.

    Results (ASE names where ASE has one): ``energy``/``free_energy`` (eV), ``forces``
    (N, 3) eV/Å, ``stress`` (6,) Voigt eV/Å^3, ``energies`` (N,) eV per atom,
    ``energy_uncertainty`` (eV) and ``forces_uncertainty`` (N,) eV/Å: the ensemble's
    population standard deviation (0 for a single model).  ``get_hessian`` gives
    :math:`\partial^2E/\partial r\partial r` as (3N, 3N) eV/Å^2.

    Args:
        model: None (the embedded default), ``"default"``, ``"ani1x"``, ``"ani2x"``,
            ``"ani1ccx"`` (downloaded by torchani), a model-file path, an
            ``InvariantPotential`` or a torchani ANI model.
        device: torch device; None picks CUDA when available.
        dtype: network precision, ``torch.float32`` (default) or ``torch.float64``.
            A module passed in is copied, never modified, when it must be converted.
        skin: Verlet skin in Å: pairs are searched within cutoff + skin and reused
            until an atom has moved more than skin / 2 (exact: pairs beyond the cutoff
            are masked).  0 searches afresh whenever positions change.

    Speed: between calls the calculator keeps the element layout, the pair list and
    the feature indices (``invcalc.cache``) and evaluates all ensemble members at once
    (``invcalc.fused``).  ``calculate_batch`` evaluates many structures in one pass.
    """

    implemented_properties = (
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energies",
        "energy_uncertainty",
        "forces_uncertainty",
    )

    def __init__(
        self,
        model: tp.Any = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        skin: float = DEFAULT_SKIN,
        **kwargs: tp.Any,
    ) -> None:
        super().__init__(**kwargs)
        potential = resolve_model(model)
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or torch.float32
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, not {self.dtype}")
        if potential.dtype != self.dtype or potential.device != self.device:
            potential = copy.deepcopy(potential).to(device=self.device, dtype=self.dtype)
        self.potential: InvariantPotential = potential
        self._ev = ev_per(potential.energy_unit)
        self._cache = StructureCache(skin)
        self._checked_numbers: bytes | None = None

    # ---- ASE interface --------------------------------------------------------------

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes, plus ``"charge"`` when ``atoms.info['charge']`` changed.

        Same answer as ASE's ``compare_atoms``, which compares every array with
        ``numpy.isclose``; arrays that are bitwise equal are skipped first (cheaper).
        """
        old = self.atoms
        if old is None:
            return super().check_state(atoms, tol)
        changes = []
        for prop in ("cell", "pbc"):
            a, b = np.asarray(getattr(old, prop)), np.asarray(getattr(atoms, prop))
            if not (a.shape == b.shape and np.array_equal(a, b)) and not equal(a, b, atol=tol):
                changes.append(prop)
        checked = set(all_changes) - {"cell", "pbc"} - set(self.ignored_changes)
        changes += sorted(checked & (set(old.arrays) ^ set(atoms.arrays)))
        for prop in checked & set(old.arrays) & set(atoms.arrays):
            a, b = old.arrays[prop], atoms.arrays[prop]
            if not (a.shape == b.shape and np.array_equal(a, b)) and not equal(a, b, atol=tol):
                changes.append(prop)
        if old.info.get("charge") != atoms.info.get("charge"):
            changes.append("charge")
        return changes

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: tp.Sequence[str] = ("energy",),
        system_changes: tp.Sequence[str] = all_changes,
    ) -> None:
        """Fill ``self.results`` with every property one pass yields (see class doc)."""
        super().calculate(atoms, properties, system_changes)
        if self.atoms is None:
            raise ValueError("no atoms: pass atoms or attach this calculator first")
        atoms = self.atoms
        validate(atoms, neutral_only=True)
        if atoms.numbers.tobytes() != self._checked_numbers:
            check_supported(atoms.numbers, self.potential.elements)
            self._checked_numbers = atoms.numbers.tobytes()
        periodic_3d = bool(atoms.pbc.all())
        if "stress" in properties and not periodic_3d:
            raise PropertyNotImplementedError(
                "stress needs a cell that is periodic in all three directions"
            )
        members = self.potential.ensemble_size > 1 and "forces_uncertainty" in properties
        step = self._cache.update(atoms, self.potential, self.dtype, self.device)
        ev = evaluate(
            self.potential, None, step.positions, step.cell,
            forces=True, stress=periodic_3d, member_forces=members, prepared=step.prepared,
        )
        k = self._ev
        energy = float(ev.energies.total[0]) * k
        assert ev.forces is not None
        forces = ev.forces[0].detach().to(torch.float64).cpu().numpy() * k
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces,
            "energies": ev.energies.atomic[0].cpu().numpy() * k,
            "energy_uncertainty": float(ev.energies.members[:, 0].std(unbiased=False)) * k,
        }
        if ev.member_forces is not None:
            spread = ev.member_forces[:, 0].to(torch.float64) - ev.forces[0].to(torch.float64)
            per_atom = spread.pow(2).sum(-1).mean(0).sqrt()
            self.results["forces_uncertainty"] = per_atom.cpu().numpy() * k
        elif self.potential.ensemble_size == 1:
            self.results["forces_uncertainty"] = np.zeros(len(self.atoms))
        if ev.stress is not None:
            stress = ev.stress.detach().cpu().numpy() * k
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

    def calculate_batch(
        self,
        images: tp.Sequence[Atoms],
        properties: tp.Sequence[str] = ("energy", "forces"),
    ) -> list[dict[str, tp.Any]]:
        """Results of many structures, evaluated together in one pass.

        Returns one dict per structure, with the same keys, shapes and units as
        ``self.results`` after ``calculate`` (energies, per-atom energies and
        uncertainties always; forces when ``properties`` asks for forces or stress;
        stress for 3D-periodic structures; forces_uncertainty when asked).  Equal to
        calculating each structure alone up to float round-off, and much faster for
        many small structures: one pair search, one network pass per element.  The
        calculator's own state (``self.atoms``, ``self.results``) is left untouched.
        """
        from invcalc.batch import prepare_batch

        images = list(images)
        if not images:
            return []
        for atoms in images:
            validate(atoms, neutral_only=True)
            check_supported(atoms.numbers, self.potential.elements)
        if "stress" in properties:
            flat = [i for i, a in enumerate(images) if not a.pbc.all()]
            if flat:
                raise PropertyNotImplementedError(
                    f"stress needs cells periodic in all three directions (images {flat})"
                )
        batch = prepare_batch(self.potential, images, self.dtype, self.device)
        want_forces = "forces" in properties or "stress" in properties
        members = self.potential.ensemble_size > 1 and "forces_uncertainty" in properties
        periodic = [bool(a.pbc.all()) for a in images]
        out = engine.run(
            self.potential, batch.prepared, batch.positions,
            forces=want_forces or members, virial=want_forces and any(periodic),
            member_forces=members,
        )
        return self._split(out, batch, periodic)

    def _split(
        self, out: engine.FlatEvaluation, batch: tp.Any, periodic: list[bool]
    ) -> list[dict[str, tp.Any]]:
        """Per-structure result dicts (input atom order, eV units) of a batch run."""
        k = self._ev
        inverse = batch.prepared.layout.inverse
        atomic = out.atomic.index_select(0, inverse).cpu().numpy() * k
        energy = out.energy.cpu().numpy() * k
        spread = out.members.std(0, unbiased=False).cpu().numpy() * k
        forces = f_spread = virial = None
        if out.forces is not None:
            forces = out.forces.index_select(0, inverse).to(torch.float64).cpu().numpy() * k
        if out.member_forces is not None:
            mf = out.member_forces.index_select(1, inverse).to(torch.float64)
            dev = mf - mf.mean(0)
            f_spread = dev.pow(2).sum(-1).mean(0).sqrt().cpu().numpy() * k
        if out.virial is not None:
            virial = out.virial.to(torch.float64).cpu().numpy() * k
        results = []
        for s, (lo, hi) in enumerate(zip(batch.offsets[:-1], batch.offsets[1:])):
            r: dict[str, tp.Any] = {
                "energy": float(energy[s]),
                "free_energy": float(energy[s]),
                "energies": atomic[lo:hi].copy(),
                "energy_uncertainty": float(spread[s]),
            }
            if forces is not None:
                r["forces"] = forces[lo:hi].copy()
            if f_spread is not None:
                r["forces_uncertainty"] = f_spread[lo:hi].copy()
            elif self.potential.ensemble_size == 1:
                r["forces_uncertainty"] = np.zeros(hi - lo)
            if virial is not None and periodic[s]:
                r["stress"] = full_3x3_to_voigt_6_stress(virial[s] / batch.volumes[s])
            results.append(r)
        return results

    def get_hessian(self, atoms: Atoms | None = None) -> np.ndarray:
        """Hessian d2E/dr2 of ``atoms`` (default: the attached atoms), (3N, 3N) eV/Å^2.

        Rows and columns run over (atom 0 x, y, z, atom 1 x, ...), as
        ``ase.vibrations.VibrationsData.from_2d`` expects.  Use ``dtype=torch.float64``
        for precise vibrational analysis.
        """
        atoms = atoms if atoms is not None else self.atoms
        if atoms is None:
            raise ValueError("no atoms: pass atoms or attach this calculator first")
        system = self._system(atoms)
        h = hessian(self.potential, system.numbers, system.positions, system.cell)
        return h.cpu().numpy() * self._ev

    # ---- helpers --------------------------------------------------------------------

    def _system(self, atoms: Atoms) -> System:
        validate(atoms, neutral_only=True)
        check_supported(atoms.numbers, self.potential.elements)
        return to_system(atoms, self.potential.cutoff, self.dtype, self.device)
