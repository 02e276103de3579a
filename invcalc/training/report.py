"""Predictions on a data split, error metrics, and the parity plot.

Metrics are those of the ensemble mean (the model as the calculator uses it).  Force
MAE/RMSE run over Cartesian components of real atoms.  kcal/mol values use
``invcalc.units`` (ASE's constants).
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import torch
from torch import Tensor

from invcalc.elements import symbol_of
from invcalc.potential import InvariantPotential
from invcalc.training.batches import PairCache, batches
from invcalc.training.dataset import LabelledData
from invcalc.training.objective import loss_terms, member_outputs
from invcalc.units import ev_per


class Predictions(tp.NamedTuple):
    """Reference and ensemble-mean predicted labels of S structures with A atoms in all.

    ``energy_ref``/``energy_pred``/``baseline``: (S,) eV float64 (baseline = sum of
    self-energies); ``num_atoms``: (S,); ``forces_ref``/``forces_pred``: (A, 3) eV/Å
    float64; ``atom_numbers``: (A,) atomic numbers; ``member_loss``: mean over the
    structures of the members' mean loss (the monitored quantity).
    """

    energy_ref: Tensor
    energy_pred: Tensor
    baseline: Tensor
    num_atoms: Tensor
    forces_ref: Tensor
    forces_pred: Tensor
    atom_numbers: Tensor
    member_loss: float


def predict(
    potential: InvariantPotential,
    data: LabelledData,
    cache: PairCache,
    index: Tensor,
    *,
    batch_size: int,
    force_weight: float,
) -> Predictions:
    """Predict the structures ``index`` of ``data`` in batches (no weight gradients)."""
    dtype = potential.dtype
    e_ref, e_pred, base, sizes, f_ref, f_pred, zs = [], [], [], [], [], [], []
    weighted_loss = 0.0
    for batch in batches(data, cache, index, batch_size, dtype):
        with torch.no_grad():
            out = member_outputs(potential, batch, forces=True, create_graph=False)
        assert out.forces is not None
        terms = loss_terms(out, batch)
        weighted_loss += float(terms.total(force_weight).mean()) * len(batch.energies)
        real = batch.numbers >= 0
        e_ref.append(batch.energies)
        e_pred.append(out.energies.mean(0))
        elem = potential.element_indices(batch.numbers)
        e0 = potential.self_energies[elem.clamp(min=0)].masked_fill(~real, 0.0)
        base.append(e0.sum(1))
        sizes.append(batch.num_atoms)
        f_ref.append(batch.forces[real])
        f_pred.append(out.forces.mean(0).detach().to(torch.float64)[real])
        zs.append(batch.numbers[real])
    cat = lambda xs: torch.cat(xs).detach().cpu()  # noqa: E731
    return Predictions(
        cat(e_ref), cat(e_pred), cat(base), cat(sizes), cat(f_ref), cat(f_pred), cat(zs),
        weighted_loss / max(len(index), 1),
    )


def metrics(pred: Predictions) -> dict[str, tp.Any]:
    """Energy errors per atom and per molecule (eV and kcal/mol), force errors (eV/Å)."""
    kcal = 1.0 / ev_per("kcal/mol")
    de = pred.energy_pred - pred.energy_ref
    de_atom = de / pred.num_atoms
    df = pred.forces_pred - pred.forces_ref
    out: dict[str, tp.Any] = {
        "num_structures": int(de.numel()),
        "num_atoms": int(pred.atom_numbers.numel()),
    }
    for label, err in (("per_atom", de_atom), ("per_molecule", de)):
        mae, rmse = _mae(err), _rmse(err)
        out[f"energy_mae_{label}_eV"] = mae
        out[f"energy_rmse_{label}_eV"] = rmse
        out[f"energy_mae_{label}_kcal_mol"] = mae * kcal
        out[f"energy_rmse_{label}_kcal_mol"] = rmse * kcal
    out["force_mae_eV_per_A"] = _mae(df)
    out["force_rmse_eV_per_A"] = _rmse(df)
    out["force_mae_per_element_eV_per_A"] = {
        symbol_of(int(z)): _mae(df[pred.atom_numbers == z])
        for z in torch.unique(pred.atom_numbers).tolist()
    }
    out["loss"] = pred.member_loss
    return out


def _mae(x: Tensor) -> float:
    return float(x.abs().mean()) if x.numel() else float("nan")


def _rmse(x: Tensor) -> float:
    return float(x.pow(2).mean().sqrt()) if x.numel() else float("nan")


def parity_plot(
    path: str | Path,
    main: Predictions,
    main_label: str,
    background: Predictions | None = None,
    title: str = "",
) -> None:
    """Write a PNG: energies (minus self-energies, per atom) and force components,
    predicted against reference, with ``background`` (e.g. training data) in grey.

    Uses matplotlib's object API on an Agg canvas; pyplot and global state untouched.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "the parity plot needs matplotlib (pip install 'invcalc[train]'), or set plot=False"
        ) from err
    fig = Figure(figsize=(10, 4.6), dpi=120)
    FigureCanvasAgg(fig)
    ax_e, ax_f = fig.subplots(1, 2)

    def energy_xy(p: Predictions) -> tuple[Tensor, Tensor]:
        return (
            (p.energy_ref - p.baseline) / p.num_atoms,
            (p.energy_pred - p.baseline) / p.num_atoms,
        )

    panels = [
        (ax_e, energy_xy, "E − Σ e₀ per atom (eV/atom)", "energy_mae_per_atom_eV", "eV/atom"),
        (ax_f, lambda p: (p.forces_ref.flatten(), p.forces_pred.flatten()),
         "force components (eV/Å)", "force_mae_eV_per_A", "eV/Å"),
    ]
    stats = metrics(main)
    for ax, xy, label, key, unit in panels:
        pts = [xy(main)] + ([xy(background)] if background is not None else [])
        lo = min(float(torch.cat(p).min()) for p in pts)
        hi = max(float(torch.cat(p).max()) for p in pts)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8, zorder=0)
        if background is not None:
            bx, by = xy(background)
            ax.scatter(bx, by, s=4, color="0.75", label="train", rasterized=True)
        mx, my = xy(main)
        ax.scatter(mx, my, s=6, color="tab:blue", label=main_label, rasterized=True)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.locator_params(nbins=5)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        rmse = stats[key.replace("_mae_", "_rmse_")]
        ax.set_title(f"{main_label}: MAE {stats[key]:.3g}, RMSE {rmse:.3g} {unit}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, markerscale=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(path))
