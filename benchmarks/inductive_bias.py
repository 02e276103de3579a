"""Invariance as inductive bias, measured: raw coordinates vs augmentation vs invariant features.

Water conformations (xTB Langevin MD at 300/600/1000 K plus random displacements, all
centred and aligned to one orientation with one atom order, as in a naive dataset) are
labelled with GFN2-xTB (tblite).  With the same data and the same training budget
(optimiser, steps, batch size, schedule) we train

- ``raw``: an MLP on the flattened coordinates;
- ``augmented``: the same MLP with a fresh random rotation and permutation of identical
  atoms for every structure of every minibatch;
- ``descriptor``: the same MLP on sorted inverse distances (a global invariant descriptor);
- ``invariant``: ``invcalc.InvariantPotential`` (AEVs + per-element networks), trained on
  energies, and ``invariant_forces`` on energies + forces;

and test them on the same held-out conformations, unchanged, randomly translated,
rotated, with identical atoms permuted, and all combined.  Learning curves (training
size x seeds) show the error on the rotated test set against training size.  The full
run adds ethanol, where every model is trained on energies + forces.

Run (OMP_NUM_THREADS=1 keeps tblite on one core; the script sets it if unset):

    OMP_NUM_THREADS=1 python benchmarks/inductive_bias.py --quick   # headline, ~2 min
    OMP_NUM_THREADS=1 python benchmarks/inductive_bias.py           # full, see results .md

Writes ``--out`` (JSON), a markdown table next to it (``.md``) and the plot (``.png``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import typing as tp
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> (model kind, trained on forces too)
WATER_MODELS = {
    "raw": ("raw", False),
    "augmented": ("augmented", False),
    "descriptor": ("descriptor", False),
    "invariant": ("invariant", False),
    "invariant_forces": ("invariant", True),
}
ETHANOL_MODELS = {
    "raw_forces": ("raw", True),
    "augmented_forces": ("augmented", True),
    "descriptor_forces": ("descriptor", True),
    "invariant": ("invariant", False),
    "invariant_forces": ("invariant", True),
}
#: Learning rates per model kind and force training, chosen by the validation sweep of
#: the full run (``lr_sweep`` in its JSON); used as given by --quick and --smoke.
DEFAULT_LR = {
    "raw": 1e-2, "augmented": 1e-2, "descriptor": 1e-2,
    "invariant": 2e-2, "invariant_forces": 2e-2,
}
LR_GRID = (5e-3, 1e-2, 2e-2)

MODES: dict[str, dict[str, tp.Any]] = {
    "smoke": dict(n_test=100, n_val=0, sizes=[100], seeds=[0], steps=300,
                  headline_size=100, tune=False, ethanol=None),
    "quick": dict(n_test=500, n_val=0, sizes=[1000], seeds=[0], steps=4000,
                  headline_size=1000, tune=False, ethanol=None),
    "full": dict(n_test=500, n_val=300, sizes=[100, 300, 1000, 3000], seeds=[0, 1, 2],
                 steps=4000, headline_size=1000, tune=True,
                 ethanol=dict(n_test=500, size=1000, seeds=[0])),
}
#: Structures sampled beyond test + validation + the largest training size.
POOL_MARGIN = 100


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _setup_paths() -> None:
    """Make ``_ib_*`` and, when not installed, ``invcalc`` importable from a checkout."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    try:
        import invcalc  # noqa: F401
    except ImportError:
        sys.path.insert(1, str(HERE.parent))


def evaluate(model, test, test_sets) -> dict[str, tp.Any]:
    """Energy/force errors per transform and the invariance error of one model."""
    import numpy as np
    from _ib_models import predict

    by_t, energies = {}, {}
    for kind, (pos, f_ref) in test_sets.items():
        e, f = predict(model, pos)
        energies[kind] = e
        err = e - test.energy
        by_t[kind] = {
            "energy_mae_eV": float(np.abs(err).mean()),
            "energy_rmse_eV": float(np.sqrt((err ** 2).mean())),
            "force_mae_eVA": float(np.abs(f - f_ref).mean()),
        }
    # invariance error: per structure, the largest change of the prediction over its
    # transformed copies; reported as the worst structure and the mean over structures.
    spread = np.max([np.abs(e - energies["identity"]) for e in energies.values()], axis=0)
    # the same for a float64 copy of the trained model: what is left of the float32
    # invariance error there is exact-arithmetic non-invariance, not round-off.
    model64 = copy.deepcopy(model).double()
    e64 = [predict(model64, pos)[0] for pos, _ in test_sets.values()]
    spread64 = np.max([np.abs(e - e64[0]) for e in e64], axis=0)
    return {"by_transform": by_t, "invariance_error_eV": float(spread.max()),
            "invariance_error_mean_eV": float(spread.mean()),
            "invariance_error_float64_eV": float(spread64.max())}


def fit_and_test(name, kind, forces, train, test, test_sets, steps, lr, seed):
    from _ib_models import TrainConfig, build, n_parameters, train as fit

    cfg = TrainConfig(steps=steps, lr=lr)
    t0 = time.perf_counter()
    model = build(kind, train, cfg, seed)
    history = fit(model, train, cfg, forces=forces, augmented=kind == "augmented", seed=seed)
    seconds = time.perf_counter() - t0
    out = evaluate(model, test, test_sets)
    out.update(train_time_s=round(seconds, 2), n_parameters=n_parameters(model), lr=lr,
               trained_on="energies+forces" if forces else "energies",
               final_train_loss=float(sum(history[-100:]) / len(history[-100:])))
    _log(f"    {name:18s} N={len(train):5d} seed={seed} {seconds:6.1f} s  "
         f"MAE identity {out['by_transform']['identity']['energy_mae_eV'] * 1e3:9.2f} meV, "
         f"rotated {out['by_transform']['rotated']['energy_mae_eV'] * 1e3:9.2f} meV")
    return out


def _split(n_pool: int, n_test: int, n_val: int):
    import numpy as np

    perm = np.random.default_rng(12345).permutation(n_pool)
    return perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]


def _train_subset(train_pool, size: int, seed: int):
    import numpy as np

    if size > len(train_pool):
        raise ValueError(f"training size {size} > pool of {len(train_pool)} structures")
    return np.random.default_rng(1000 + seed).permutation(train_pool)[:size]


def sweep_lr(data, val_idx, train_pool, models, size, steps) -> dict[str, tp.Any]:
    """Validation MAE (untransformed, as a practitioner would tune) per model and lr."""
    from _ib_data import transformed_test_sets

    val = data.subset(val_idx)
    val_sets = {k: v for k, v in transformed_test_sets(val, seed=99).items()
                if k in ("identity", "rotated")}
    train = data.subset(_train_subset(train_pool, size, 0))
    table: dict[str, dict[str, float]] = {}
    for name, (kind, forces) in models.items():
        table[name] = {}
        for lr in LR_GRID:
            r = fit_and_test(name, kind, forces, train, val, val_sets, steps, lr, 0)
            table[name][f"{lr:g}"] = r["by_transform"]["identity"]["energy_mae_eV"]
    best = {name: float(min(t, key=t.get)) for name, t in table.items()}
    return {"size": size, "steps": steps, "grid": list(LR_GRID),
            "val_mae_identity_eV": table, "chosen": best}


def run_molecule(molecule, models, *, pool, n_test, n_val, sizes, seeds, steps,
                 headline_size, lrs, cache_dir, tune=False):
    from _ib_data import SamplingSpec, load_or_generate, transformed_test_sets
    from _ib_report import aggregate

    _log(f"{molecule}: data")
    data = load_or_generate(SamplingSpec(molecule, pool), cache_dir, log=_log)
    test_idx, val_idx, train_pool = _split(len(data), n_test, n_val)
    test = data.subset(test_idx)
    test_sets = transformed_test_sets(test, seed=2024)
    train_mean = float(data.energy[train_pool].mean())
    out: dict[str, tp.Any] = {
        "molecule": molecule, "n_atoms": int(len(data.numbers)), "pool": pool,
        "n_test": n_test, "n_val": n_val,
        "label_std_eV": float(data.energy.std()),
        "mean_predictor_mae_eV": float(abs(test.energy - train_mean).mean()),
    }
    if tune:
        _log(f"{molecule}: learning-rate sweep on the validation set (N={headline_size})")
        out["lr_sweep"] = sweep_lr(data, val_idx, train_pool, models, headline_size, steps)
        lrs = out["lr_sweep"]["chosen"]
    runs: dict[str, dict[int, dict[int, dict]]] = {name: {} for name in models}
    for size in sizes:
        for seed in seeds:
            train = data.subset(_train_subset(train_pool, size, seed))
            for name, (kind, forces) in models.items():
                runs[name].setdefault(size, {})[seed] = fit_and_test(
                    name, kind, forces, train, test, test_sets, steps, lrs[name], seed)
    out.update(aggregate(runs, sizes, seeds, headline_size, out["mean_predictor_mae_eV"]))
    out["train_size"] = headline_size
    out["lr"] = {name: lrs[name] for name in models}
    return out


def main(argv: tp.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="headline only: one size, one seed")
    mode.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default benchmarks/results/inductive_bias[_quick].json)")
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the training sizes")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--steps", type=int, help="override the training steps")
    parser.add_argument("--no-ethanol", action="store_true", help="skip the ethanol section")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite is imported
    _setup_paths()
    import torch

    torch.set_num_threads(args.threads)
    from _ib_report import markdown, plot

    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = dict(MODES[name])
    for key in ("sizes", "seeds", "steps"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if cfg["headline_size"] not in cfg["sizes"]:
        cfg["headline_size"] = sorted(cfg["sizes"], key=lambda n: abs(n - 1000))[0]
    if args.no_ethanol:
        cfg["ethanol"] = None
    out_path = args.out or RESULTS / ("inductive_bias.json" if name == "full"
                                      else f"inductive_bias_{name}.json")
    cache_dir = None if args.no_cache else args.cache_dir
    t0 = time.perf_counter()
    water = run_molecule(
        "water", WATER_MODELS, pool=cfg["n_test"] + cfg["n_val"] + max(cfg["sizes"]) + POOL_MARGIN,
        n_test=cfg["n_test"],
        n_val=cfg["n_val"], sizes=cfg["sizes"], seeds=cfg["seeds"], steps=cfg["steps"],
        headline_size=cfg["headline_size"], lrs=DEFAULT_LR, cache_dir=cache_dir,
        tune=cfg["tune"])
    result: dict[str, tp.Any] = {
        "benchmark": "inductive_bias", "mode": name,
        "models": water.pop("headline"), "learning_curves": water.pop("learning_curves"),
        "water": water,
    }
    if cfg["ethanol"]:
        e = cfg["ethanol"]
        lrs = {n: water["lr"]["invariant_forces" if k == "invariant" and f else k]
               for n, (k, f) in ETHANOL_MODELS.items()}
        ethanol = run_molecule(
            "ethanol", ETHANOL_MODELS, pool=e["n_test"] + e["size"] + POOL_MARGIN,
            n_test=e["n_test"], n_val=0,
            sizes=[e["size"]], seeds=e["seeds"], steps=cfg["steps"], headline_size=e["size"],
            lrs=lrs, cache_dir=cache_dir)
        ethanol.pop("learning_curves")
        ethanol["models"] = ethanol.pop("headline")
        result["ethanol"] = ethanol
    result["settings"] = {
        "mode": name, "steps": cfg["steps"], "lr_grid": list(LR_GRID) if cfg["tune"] else None, "batch_size": 32, "hidden": [64, 64],
        "optimizer": "Adam, cosine decay to 1e-5", "sizes": cfg["sizes"], "seeds": cfg["seeds"],
        "headline_size": cfg["headline_size"], "torch_threads": args.threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "processor": platform.processor() or None,
    }
    result["wall_time_s"] = round(time.perf_counter() - t0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result, png_name=None if args.no_plot else out_path.with_suffix(".png").name)
    out_path.with_suffix(".md").write_text(table)
    if not args.no_plot:
        plot(result, out_path.with_suffix(".png"))
    print(table)
    _log(f"wrote {out_path} (+ .md{'' if args.no_plot else ', .png'}) in {result['wall_time_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
