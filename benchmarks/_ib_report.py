"""Aggregation, learning-curve analysis, markdown table and plot of the inductive-bias runs."""

from __future__ import annotations

import math
import typing as tp
from pathlib import Path

import numpy as np

from _ib_data import TRANSFORMS

LABELS = {
    "raw": "raw coordinates (MLP)",
    "augmented": "augmented (MLP + random rotations/permutations)",
    "augmented_b256": "augmented, batch 256 (8x the structures per step)",
    "augmented_forces_b256": "augmented, batch 256 (8x the structures per step)",
    "descriptor": "sorted inverse distances (MLP)",
    "invariant": "invariant (InvariantPotential, AEV)",
    "invariant_forces": "invariant, energies + forces",
    "raw_forces": "raw coordinates (MLP)",
    "augmented_forces": "augmented (MLP + random rotations/permutations)",
    "descriptor_forces": "sorted inverse distances (MLP)",
}
STYLES: dict[str, dict[str, tp.Any]] = {
    "raw": {"color": "C0"},
    "augmented": {"color": "C1"},
    "augmented_b256": {"color": "C1", "ls": "--", "mfc": "white"},
    "descriptor": {"color": "C2"},
    "invariant": {"color": "C3"},
    "invariant_forces": {"color": "C4", "ls": "--", "mfc": "white"},
}
TRANSFORM_TITLES = {"identity": "unchanged", "translated": "translated", "rotated": "rotated",
                    "permuted": "permuted", "combined": "all combined"}


def _headline(per_seed: dict[int, dict]) -> dict[str, tp.Any]:
    runs = list(per_seed.values())

    def mean(f):
        return float(np.mean([f(r) for r in runs]))

    out: dict[str, tp.Any] = {}
    for t in TRANSFORMS:
        key = "test_mae_eV" if t == "identity" else f"test_mae_{t}_eV"
        out[key] = mean(lambda r: r["by_transform"][t]["energy_mae_eV"])
    out["test_mae_rotated_eV_std"] = float(np.std(
        [r["by_transform"]["rotated"]["energy_mae_eV"] for r in runs]))
    out["invariance_error_eV"] = float(max(r["invariance_error_eV"] for r in runs))
    out["invariance_error_mean_eV"] = mean(lambda r: r["invariance_error_mean_eV"])
    out["invariance_error_float64_eV"] = float(
        max(r["invariance_error_float64_eV"] for r in runs))
    out["train_mae_eV"] = mean(lambda r: r["train_mae_eV"])
    out["final_train_loss"] = mean(lambda r: r["final_train_loss"])
    out["force_mae_eVA"] = mean(lambda r: r["by_transform"]["identity"]["force_mae_eVA"])
    out["force_mae_rotated_eVA"] = mean(lambda r: r["by_transform"]["rotated"]["force_mae_eVA"])
    out["by_transform"] = {
        t: {k: mean(lambda r, t=t, k=k: r["by_transform"][t][k])
            for k in ("energy_mae_eV", "energy_rmse_eV", "force_mae_eVA")}
        for t in TRANSFORMS}
    first = runs[0]
    out.update(trained_on=first["trained_on"], n_parameters=first["n_parameters"],
               lr=first["lr"], batch_size=first["batch_size"],
               train_time_s=mean(lambda r: r["train_time_s"]),
               n_seeds=len(runs), seeds=sorted(per_seed))
    return out


def _curve(runs: dict[int, dict[int, dict]], sizes, seeds, f) -> dict[str, list]:
    per_seed = [[f(runs[n][s]) for s in seeds] for n in sizes]
    return {"mean": [float(np.mean(v)) for v in per_seed],
            "std": [float(np.std(v)) for v in per_seed],
            "per_seed": per_seed}


def power_law(sizes: tp.Sequence[int], errors: tp.Sequence[float]) -> dict[str, float]:
    """Least-squares fit of error = prefactor * N**exponent (in log-log)."""
    b, a = np.polyfit(np.log(sizes), np.log(errors), 1)
    return {"exponent": float(b), "prefactor": float(math.exp(a))}


def _size_reaching(sizes, errors, target: float) -> tuple[float, bool] | None:
    """Smallest N at which the (log-log interpolated) curve first drops to ``target``,
    and whether that is only a bound (already below it at the smallest size)."""
    if errors[0] <= target:
        return float(sizes[0]), errors[0] < target
    for (n0, e0), (n1, e1) in zip(zip(sizes, errors), zip(sizes[1:], errors[1:])):
        if e1 <= target < e0:
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return float(math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))), False
    return None


def data_efficiency(curves: dict[str, dict], sizes, mean_mae: float,
                    reference: str = "invariant") -> dict[str, tp.Any]:
    """How many times more training data a model needs than ``reference`` for the same
    rotated-test MAE, read off the measured curves (log-log interpolation, no
    extrapolation).

    At the largest size N_max the worse of the two curves sets the target error eps; the
    better one reaches eps at some N <= N_max.  factor = N_model(eps) / N_ref(eps): > 1
    when the model needs more data, < 1 when it needs less.  When the better curve is
    below eps already at the smallest size, only a bound is known (``bound``: ">=" or
    "<=").  A model worse than predicting the mean at N_max gets no factor.
    """
    ref = curves[reference]["mae_rotated_eV"]["mean"]
    n_max = sizes[-1]
    out: dict[str, tp.Any] = {"reference": reference, "test_set": "rotated"}
    for name, c in curves.items():
        if name == reference:
            continue
        err = c["mae_rotated_eV"]["mean"]
        entry: dict[str, tp.Any] = {"error_at_max_size_eV": err[-1],
                                    "reference_error_at_max_size_eV": ref[-1],
                                    "max_size": n_max}
        if err[-1] >= mean_mae:
            entry.update(factor=None, bound=None, note="worse than predicting the mean: more "
                         "data does not help on rotated inputs")
        elif err[-1] >= ref[-1]:  # the model is worse: where does the reference get there?
            n_ref, is_bound = _size_reaching(sizes, ref, err[-1])  # type: ignore[misc]
            entry.update(target_error_eV=err[-1], factor=n_max / n_ref,
                         bound=">=" if is_bound else None)
        else:  # the model is better: where does it reach the reference's best error?
            n_model, is_bound = _size_reaching(sizes, err, ref[-1])  # type: ignore[misc]
            entry.update(target_error_eV=ref[-1], factor=n_model / n_max,
                         bound="<=" if is_bound else None)
        out[name] = entry
    return out


def aggregate(runs: dict[str, dict[int, dict[int, dict]]], sizes, seeds, headline_size,
              mean_mae: float | None = None, reference: str = "invariant") -> dict[str, tp.Any]:
    """Headline (mean over seeds at ``headline_size``) and learning curves."""
    headline = {name: _headline(r[headline_size]) for name, r in runs.items()}
    curves = {
        name: {
            "mae_rotated_eV": _curve(r, sizes, seeds,
                                     lambda x: x["by_transform"]["rotated"]["energy_mae_eV"]),
            "mae_identity_eV": _curve(r, sizes, seeds,
                                      lambda x: x["by_transform"]["identity"]["energy_mae_eV"]),
            "invariance_error_eV": _curve(r, sizes, seeds, lambda x: x["invariance_error_eV"]),
        }
        for name, r in runs.items()
    }
    lc: dict[str, tp.Any] = {"test_set": "rotated", "sizes": list(sizes), "seeds": list(seeds),
                             "models": curves}
    if len(sizes) >= 2:
        lc["power_law"] = {n: power_law(sizes, c["mae_rotated_eV"]["mean"])
                           for n, c in curves.items()}
        if mean_mae is not None and reference in curves:
            lc["data_efficiency"] = data_efficiency(curves, sizes, mean_mae, reference)
    return {"headline": headline, "learning_curves": lc}


# ---- markdown -----------------------------------------------------------------------


def _mev(x: float) -> str:
    v = x * 1e3
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def _model_table(models: dict[str, dict]) -> list[str]:
    head = ("| model | trained on | train set | "
            + " | ".join(TRANSFORM_TITLES[t] for t in TRANSFORMS)
            + " | invariance error (eV), float32 / float64 | force MAE, rotated (eV/Å) |")
    lines = [head, "|" + "---|" * (len(TRANSFORMS) + 5)]
    for name, m in models.items():
        cells = [_mev(m["by_transform"][t]["energy_mae_eV"]) for t in TRANSFORMS]
        lines.append(f"| {LABELS.get(name, name)} | {m['trained_on']} | "
                     f"{_mev(m['train_mae_eV'])} | " + " | ".join(cells)
                     + f" | {m['invariance_error_eV']:.1e} / {m['invariance_error_float64_eV']:.0e}"
                     f" | {m['force_mae_rotated_eVA']:.3f} |")
    return lines


def _ratios(models: dict[str, dict], ref: str) -> list[str]:
    r = models[ref]["test_mae_rotated_eV"]
    return [f"- rotated-test MAE ratio {n} / {ref}: **{m['test_mae_rotated_eV'] / r:,.1f}x**"
            for n, m in models.items() if n != ref]


def _data_note(result: dict[str, tp.Any]) -> str:
    parts = [result[m] for m in ("water", "ethanol") if m in result]
    if all(p["data_from_cache"] for p in parts):
        return "with the GFN2-xTB data read from the cache"
    return "including " + " and ".join(
        f"{p['data_time_s']:.0f} s to sample and label the {p['molecule']} data"
        for p in parts if not p["data_from_cache"])


def _sampling_note(result: dict[str, tp.Any]) -> str:
    sp = result["water"]["sampling"]
    temps = "/".join(f"{t:g}" for t in sp["temperatures_K"])
    pools = " and ".join(f"{result[m]['pool']} {m}" for m in ("water", "ethanol") if m in result)
    return (f"Data: {pools} conformations, {sp['md_fraction']:.0%} from "
            f"xTB Langevin MD at {temps} K (a frame every {sp['stride']} steps of "
            f"{sp['timestep_fs']} fs), the rest MD frames displaced by Gaussian noise of "
            f"{sp['displacement_sigma']} Å; every conformation centred and Kabsch-aligned to "
            f"one orientation with one atom order; random split into test, validation and "
            f"training pool (nested training subsets per seed).")


def markdown(result: dict[str, tp.Any], png_name: str | None = None) -> str:
    s = result["settings"]
    w = result["water"]
    seeds = len(s["seeds"])
    lines = [
        "# Invariance as inductive bias, measured",
        "",
        f"`benchmarks/inductive_bias.py` ({s['mode']} mode): every model {s['steps']} Adam "
        f"steps of 32 structures (cosine decay; the `_b256` ablations 256), hidden layers "
        f"{s['hidden']}, float32, "
        f"{s['torch_threads']} torch thread(s), OMP_NUM_THREADS={s['OMP_NUM_THREADS']}; "
        f"wall time **{result['wall_time_s'] / 60:.1f} min** for the whole run, "
        + _data_note(result) + ".",
        "",
        _sampling_note(result),
        "",
        f"## Water (GFN2-xTB), {s['headline_size']} training structures, "
        f"{seeds} seed{'s' if seeds > 1 else ''}",
        "",
        f"Energy MAE in **meV** on the same {w['n_test']} held-out conformations under each "
        f"transform; predicting the training mean gives {_mev(w['mean_predictor_mae_eV'])} meV "
        f"(label std {_mev(w['label_std_eV'])} meV).",
        "",
        *_model_table(result["models"]),
        "",
        *_ratios(result["models"], w["reference"]),
    ]
    lc = result["learning_curves"]
    if len(lc["sizes"]) >= 2:
        names = list(lc["models"])
        k = len(lc["seeds"])
        lines += ["", f"## Learning curves: rotated-test energy MAE (meV), mean ± std over "
                  f"{k} seed{'s' if k > 1 else ''}", "",
                  "| N | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for i, n in enumerate(lc["sizes"]):
            cells = [f"{_mev(c['mae_rotated_eV']['mean'][i])} ± "
                     f"{_mev(c['mae_rotated_eV']['std'][i])}" for c in lc["models"].values()]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines += ["", "Power-law fits (MAE ∝ N^b): " + ", ".join(
            f"{n} b = {p['exponent']:.2f}" for n, p in lc["power_law"].items()) + "."]
        de = lc.get("data_efficiency")
        if de:
            lines += ["", f"Data-efficiency factor: training data a model needs / data the "
                      f"{de['reference']} model needs for the same rotated-test MAE, read off "
                      f"the curves at N = {lc['sizes'][-1]} (see `data_efficiency` in "
                      f"`_ib_report.py`):", ""]
            for n, e in de.items():
                if not isinstance(e, dict):
                    continue
                if e["factor"] is None:
                    lines.append(f"- {n}: none ({e['note']})")
                else:
                    f = e["factor"]
                    txt = f"{f:,.0f}x" if f >= 1 else f"1/{1 / f:,.0f}"
                    lines.append(f"- {n}: {e['bound'] or ''} {txt} (at "
                                 f"{_mev(e['target_error_eV'])} meV)".replace(":  ", ": "))
    if png_name:
        alt = "learning curves" if len(result["learning_curves"]["sizes"]) > 1 else "results"
        lines += ["", f"![{alt}]({png_name})"]
    if "ethanol" in result:
        e = result["ethanol"]
        n_seeds = next(iter(e["models"].values()))["n_seeds"]
        lines += ["", f"## Ethanol (GFN2-xTB), {e['train_size']} training structures, "
                  f"{n_seeds} seed{'s' if n_seeds > 1 else ''}", ""]
        lines += [f"Energy MAE in meV; predicting the mean gives "
                  f"{_mev(e['mean_predictor_mae_eV'])} meV.", "",
                  *_model_table(e["models"]), "", *_ratios(e["models"], e["reference"])]
    if "lr_sweep" in w:
        sw = w["lr_sweep"]
        lines += ["", f"Learning rates: chosen per model on {w['n_val']} untransformed "
                  f"validation structures (N = {sw['size']}) from {sw['grid']}: "
                  + ", ".join(f"{n} {lr:g}" for n, lr in sw["chosen"].items()) + "."]
    lines += ["", "Invariance error: per test structure, the largest change of the predicted "
              "energy over its unchanged, translated (±3 Å), rotated, permuted and combined "
              "copies; the worst structure is shown, for the trained float32 model and for a "
              "float64 copy of it (what survives in float64 is not round-off).", ""]
    return "\n".join(lines)


# ---- plot ---------------------------------------------------------------------------


def plot(result: dict[str, tp.Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lc = result["learning_curves"]
    sizes = lc["sizes"]
    mean_mae = result["water"]["mean_predictor_mae_eV"] * 1e3
    if len(sizes) < 2:
        _bars(result, path, mean_mae)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharey=True)
    for ax, key, title in [(axes[0], "mae_identity_eV", "unchanged test set"),
                           (axes[1], "mae_rotated_eV", "randomly rotated test set")]:
        for name, c in lc["models"].items():
            m = np.array(c[key]["mean"]) * 1e3
            sd = np.array(c[key]["std"]) * 1e3
            ax.errorbar(sizes, m, yerr=sd, marker="o", ms=4, capsize=3,
                        label=LABELS.get(name, name), **STYLES.get(name, {}))
        ax.axhline(mean_mae, color="grey", ls=":", lw=1.2, label="predicting the mean")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training structures N")
        ax.set_title(f"water, GFN2-xTB: {title}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("energy MAE (meV)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8.5, frameon=False)
    n_seeds = len(lc["seeds"])
    fig.suptitle(f"Invariance as inductive bias: water energies, mean ± std over {n_seeds} "
                 f"seed{'s' if n_seeds > 1 else ''}, same data and training budget", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _bars(result: dict[str, tp.Any], path: Path, mean_mae: float) -> None:
    """One training size: energy MAE per model and test transform (log scale)."""
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, ax = plt.subplots(figsize=(10, 4.6))
    width = 0.8 / len(models)
    x = np.arange(len(TRANSFORMS))
    for k, (name, m) in enumerate(models.items()):
        y = [m["by_transform"][t]["energy_mae_eV"] * 1e3 for t in TRANSFORMS]
        ax.bar(x + (k - (len(models) - 1) / 2) * width, y, width, label=LABELS.get(name, name),
               color=STYLES.get(name, {}).get("color"),
               hatch="//" if STYLES.get(name, {}).get("ls") else None, edgecolor="white")
    ax.axhline(mean_mae, color="grey", ls="--", lw=1, label="predicting the mean")
    ax.set_xticks(x, [TRANSFORM_TITLES[t] for t in TRANSFORMS])
    ax.set_yscale("log")
    ax.set_ylabel("energy MAE (meV)")
    ax.set_xlabel("test set (same held-out conformations)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    s = result["settings"]
    ax.set_title(f"water, GFN2-xTB: N = {s['headline_size']} training structures, "
                 f"{len(s['seeds'])} seed(s), same data and training budget", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
