"""Invariance as inductive bias, measured: raw coordinates vs augmentation vs invariant features.

Water conformations (xTB Langevin MD at 300/600/1000 K plus random displacements, all
centred and aligned to one orientation with one atom order, as in a naive dataset) are
labelled with GFN2-xTB (tblite).  With the same data and the same training budget
(optimiser, steps, batch size, schedule) we train

- ``raw``: an MLP on the flattened coordinates;
- ``augmented``: the same MLP with a fresh random rotation and permutation of identical
  atoms for every structure of every minibatch (``augmented_b256``: the same with 8x
  larger minibatches, an ablation that gives augmentation its best recipe found);
- ``descriptor``: the same MLP on sorted inverse distances (a global invariant descriptor);
- ``invariant``: ``invcalc.InvariantPotential`` (AEVs + per-element networks), trained on
  energies, and ``invariant_forces`` on energies + forces;

and test them on the same held-out conformations, unchanged, randomly translated,
rotated, with identical atoms permuted, and all combined.  Learning rates come from a
validation sweep (full run).  Learning curves (training size x seeds) show the error on
the rotated test set against training size.  The full run adds ethanol, where every
model but one is trained on energies + forces.

Run (OMP_NUM_THREADS=1 keeps tblite on one core; the script sets it if unset):

    OMP_NUM_THREADS=1 python benchmarks/inductive_bias.py --quick   # headline, ~2 min
    OMP_NUM_THREADS=1 python benchmarks/inductive_bias.py           # full, 20-30 min
    OMP_NUM_THREADS=1 python benchmarks/inductive_bias.py --out long.json \
        --sizes 100 250 500 1000 2000 4000 --seeds 0 1 2 3 4    # longer curve, ~1 h

Writes ``--out`` (JSON), a markdown table next to it (``.md``) and the plot (``.png``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
import typing as tp
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> (model kind, trained on forces too, batch size).  Every model gets the same
#: steps, optimiser and schedule; "augmented_b256" is the one exception, an ablation with
#: 8x larger minibatches (8x the structures per step), the best recipe found for it.
WATER_MODELS = {
    "raw": ("raw", False, 32),
    "augmented": ("augmented", False, 32),
    "augmented_b256": ("augmented", False, 256),
    "descriptor": ("descriptor", False, 32),
    "invariant": ("invariant", False, 32),
    "invariant_forces": ("invariant", True, 32),
}
ETHANOL_MODELS = {
    "raw_forces": ("raw", True, 32),
    "augmented_forces": ("augmented", True, 32),
    "augmented_forces_b256": ("augmented", True, 256),
    "descriptor_forces": ("descriptor", True, 32),
    "invariant": ("invariant", False, 32),
    "invariant_forces": ("invariant", True, 32),
}
#: Learning rates per water model, chosen by the validation sweep of the full run
#: (``water.lr_sweep`` in its JSON); used as given by --quick and --smoke.  Ethanol
#: models reuse the rate of the water model of the same kind, forces and batch size.
DEFAULT_LR = {
    "raw": 1e-2, "augmented": 1e-2, "augmented_b256": 5e-3, "descriptor": 5e-3,
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


def fit_and_test(name, spec, train, test, test_sets, steps, lr, seed):
    import numpy as np
    from _ib_models import TrainConfig, build, n_parameters, predict, train as fit

    kind, forces, batch_size = spec
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size)
    t0 = time.perf_counter()
    model = build(kind, train, cfg, seed)
    history = fit(model, train, cfg, forces=forces, augmented=kind == "augmented", seed=seed)
    seconds = time.perf_counter() - t0
    out = evaluate(model, test, test_sets)
    out["train_mae_eV"] = float(np.abs(predict(model, train.positions)[0] - train.energy).mean())
    out.update(train_time_s=round(seconds, 2), n_parameters=n_parameters(model), lr=lr,
               batch_size=batch_size,
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
    for name, spec in models.items():
        table[name] = {}
        for lr in LR_GRID:
            r = fit_and_test(name, spec, train, val, val_sets, steps, lr, 0)
            table[name][f"{lr:g}"] = r["by_transform"]["identity"]["energy_mae_eV"]
    best = {name: float(min(t, key=t.get)) for name, t in table.items()}
    return {"size": size, "steps": steps, "grid": list(LR_GRID),
            "val_mae_identity_eV": table, "chosen": best}


def run_molecule(molecule, models, *, pool, n_test, n_val, sizes, seeds, steps,
                 headline_size, lrs, cache_dir, reference, tune=False):
    """Train and test ``models`` on one molecule; ``reference`` is the model that ratios
    and data-efficiency factors are taken against."""
    from _ib_data import SamplingSpec, load_or_generate, transformed_test_sets
    from _ib_report import aggregate

    _log(f"{molecule}: data")
    spec = SamplingSpec(molecule, pool)
    cached = cache_dir is not None and (Path(cache_dir) / f"{spec.key()}.npz").exists()
    t0 = time.perf_counter()
    data = load_or_generate(spec, cache_dir, log=_log)
    data_seconds = time.perf_counter() - t0
    test_idx, val_idx, train_pool = _split(len(data), n_test, n_val)
    test = data.subset(test_idx)
    test_sets = transformed_test_sets(test, seed=2024)
    train_mean = float(data.energy[train_pool].mean())
    out: dict[str, tp.Any] = {
        "molecule": molecule, "n_atoms": int(len(data.numbers)), "pool": pool,
        "sampling": dataclasses.asdict(spec), "data_from_cache": cached,
        "data_time_s": round(data_seconds, 1),
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
            for name, spec in models.items():
                runs[name].setdefault(size, {})[seed] = fit_and_test(
                    name, spec, train, test, test_sets, steps, lrs[name], seed)
    out.update(aggregate(runs, sizes, seeds, headline_size, out["mean_predictor_mae_eV"],
                         reference))
    out["reference"] = reference
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
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="only rewrite the .md and .png of an existing result JSON")
    args = parser.parse_args(argv)
    if args.report:
        _setup_paths()
        _write_report(json.loads(args.report.read_text()), args.report, not args.no_plot)
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite is imported
    _setup_paths()
    import torch

    torch.set_num_threads(args.threads)

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
    water_pool = cfg["n_test"] + cfg["n_val"] + max(cfg["sizes"]) + POOL_MARGIN
    water = run_molecule(
        "water", WATER_MODELS, pool=water_pool, n_test=cfg["n_test"], n_val=cfg["n_val"],
        sizes=cfg["sizes"], seeds=cfg["seeds"], steps=cfg["steps"],
        headline_size=cfg["headline_size"], lrs=DEFAULT_LR, cache_dir=cache_dir,
        reference="invariant", tune=cfg["tune"])
    result: dict[str, tp.Any] = {
        "benchmark": "inductive_bias", "mode": name,
        "models": water.pop("headline"), "learning_curves": water.pop("learning_curves"),
        "water": water,
    }
    if cfg["ethanol"]:
        e = cfg["ethanol"]
        water_of = {spec: n for n, spec in WATER_MODELS.items()}
        lrs = {n: water["lr"][water_of.get(spec, water_of.get((spec[0], False, spec[2])))]
               for n, spec in ETHANOL_MODELS.items()}
        ethanol = run_molecule(
            "ethanol", ETHANOL_MODELS, pool=e["n_test"] + e["size"] + POOL_MARGIN,
            n_test=e["n_test"], n_val=0,
            sizes=[e["size"]], seeds=e["seeds"], steps=cfg["steps"], headline_size=e["size"],
            lrs=lrs, cache_dir=cache_dir, reference="invariant_forces")
        ethanol.pop("learning_curves")
        ethanol["models"] = ethanol.pop("headline")
        result["ethanol"] = ethanol
    result["settings"] = {
        "mode": name, "steps": cfg["steps"], "lr_grid": list(LR_GRID) if cfg["tune"] else None,
        "batch_size": {n: b for n, (_, _, b) in WATER_MODELS.items()}, "hidden": [64, 64],
        "optimizer": "Adam, cosine decay to 1e-5", "sizes": cfg["sizes"], "seeds": cfg["seeds"],
        "headline_size": cfg["headline_size"], "torch_threads": args.threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "processor": platform.processor() or None,
    }
    result["wall_time_s"] = round(time.perf_counter() - t0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    _write_report(result, out_path, not args.no_plot)
    _log(f"wrote {out_path} (+ .md{', .png' if not args.no_plot else ''}) "
         f"in {result['wall_time_s']} s")
    return 0


def _write_report(result: dict[str, tp.Any], json_path: Path, with_plot: bool) -> None:
    """The markdown table (printed and written next to the JSON) and the plot."""
    from _ib_report import markdown, plot

    png = json_path.with_suffix(".png")
    table = markdown(result, png_name=png.name if with_plot else None)
    json_path.with_suffix(".md").write_text(table)
    if with_plot:
        plot(result, png)
    print(table)


if __name__ == "__main__":
    raise SystemExit(main())
