"""Accuracy of a model on held-out molecules it never saw, against GFN2-xTB.

    OMP_NUM_THREADS=1 python benchmarks/default_model.py --data gfn2xtb_test.extxyz \\
        --model invcalc/models/default.pt --out benchmarks/results/default_model.json

Reports (JSON + markdown table):
- energy MAE per molecule (eV, kcal/mol) and force MAE (eV/Å) over every held-out
  structure, per element, per sampling kind (relaxation path, MD by temperature, ...)
  and per molecule, and how the ensemble spread correlates with the actual error;
- geometry: each held-out molecule relaxed with GFN2-xTB (tblite) to 0.01 eV/Å, then
  with the model from there; heavy-atom + H RMSD after optimal superposition;
- stability: Langevin MD at 300 K for ``--md-ps`` on every held-out molecule, checking
  that no bond breaks or forms;
- liquid water: 64 molecules in a periodic box (1 g/cm^3) for ``--water-ps`` at 300 K,
  position of the first O-O radial-distribution peak.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import numpy as np
from ase import Atoms, units

KCAL_PER_EV = 1.0 / (units.kcal / units.mol)


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (Å) of (N, 3) ``a`` and ``b`` after optimal translation and rotation."""
    a, b = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((a @ rot - b) ** 2).sum(1).mean()))


def structure_errors(frames: list[Atoms], calc) -> dict:
    """Energy, force and uncertainty errors of ``calc`` against the stored labels."""
    per_mol: dict[str, list] = defaultdict(list)
    de, sig, fae = [], [], []
    per_elem: dict[str, list] = defaultdict(list)
    per_kind: dict[str, list] = defaultdict(list)
    for a in frames:
        e_ref, f_ref = a.get_potential_energy(), a.get_forces()
        b = a.copy()
        b.calc = calc
        e, f = b.get_potential_energy(), b.get_forces()
        sigma = calc.get_property("energy_uncertainty", b)
        err = np.abs(f - f_ref)
        de.append(e - e_ref)
        sig.append(sigma)
        fae.append(err.mean())
        for s, row in zip(a.get_chemical_symbols(), err):
            per_elem[s].append(row.mean())
        pair = (abs(e - e_ref), err.mean())
        per_mol[a.info.get("name", "?")].append(pair)
        per_kind[_sampling_kind(a)].append(pair)
    de, sig = np.array(de), np.array(sig)
    return {
        "structures": len(frames),
        "energy_mae_eV": float(np.abs(de).mean()),
        "energy_mae_kcal_mol": float(np.abs(de).mean() * KCAL_PER_EV),
        "energy_rmse_eV": float(np.sqrt((de**2).mean())),
        "force_mae_eV_per_A": float(np.mean(fae)),
        "force_mae_per_element_eV_per_A": {s: float(np.mean(v)) for s, v in per_elem.items()},
        "uncertainty_error_pearson": float(np.corrcoef(sig, np.abs(de))[0, 1]),
        "uncertainty_error_spearman": float(
            np.corrcoef(np.argsort(np.argsort(sig)), np.argsort(np.argsort(np.abs(de))))[0, 1]
        ),
        "per_kind": _mae_table(per_kind),
        "per_molecule": _mae_table(per_mol),
    }


def novelty_report(frames: list[Atoms], lists: list[str], structures: dict) -> dict:
    """Rarest atom environment of each held-out molecule among the training molecules of
    ``lists`` (train split), and the errors of the never-seen ones against the others."""
    from _novelty import novelty, split_errors

    from invcalc.data.molecules import read_smiles_file, select

    training = [e.smiles for name in lists for e in select(read_smiles_file(name), "train")]
    held_out = {a.info["name"]: a.info["smiles"] for a in frames
                if "smiles" in a.info and not str(a.info.get("kind", "")).startswith("cluster")}
    per_molecule = novelty(held_out, training)
    return {"train_lists": lists, "training_molecules": len(training),
            "per_molecule": per_molecule,
            "split": split_errors(structures["per_molecule"], per_molecule, at_most=0)}


def _sampling_kind(atoms: Atoms) -> str:
    """How a structure was sampled (``atoms.info['kind']``), MD frames by temperature."""
    kind = str(atoms.info.get("kind", "?"))
    if kind == "md":
        return f"md_{float(atoms.info.get('temperature_K', 0)):.0f}K"
    return kind


def _mae_table(groups: dict[str, list]) -> dict:
    """Energy (eV) and force (eV/Å) MAE of each group of (|dE|, force MAE) pairs."""
    return {
        k: {"energy_mae_eV": float(np.mean([x[0] for x in v])),
            "force_mae_eV_per_A": float(np.mean([x[1] for x in v])), "structures": len(v)}
        for k, v in sorted(groups.items())
    }


def relaxed_molecules(frames: list[Atoms]) -> dict[str, Atoms]:
    """First relaxation end point per molecule (the last 'relax' frame of conformer 0)."""
    best: dict[str, Atoms] = {}
    for a in frames:
        if a.info.get("kind") != "relax" or a.info.get("conformer", 0) != 0:
            continue
        name = a.info["name"]
        if name not in best or a.info.get("frame", 0) > best[name].info.get("frame", 0):
            best[name] = a
    return {k: Atoms(v.numbers, v.positions) for k, v in best.items()}


def geometry_rmsd(molecules: dict[str, Atoms], calc) -> dict:
    """xTB-relaxed vs model-relaxed geometries (RMSD after superposition)."""
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    rows = {}
    for name, mol in molecules.items():
        ref = mol.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        BFGS(ref, logfile=None).run(fmax=0.01, steps=500)
        ours = Atoms(ref.numbers, ref.positions)
        ours.calc = calc
        ok = BFGS(ours, logfile=None).run(fmax=0.01, steps=1000)
        rows[name] = {"rmsd_A": kabsch_rmsd(ours.positions, ref.positions), "converged": bool(ok)}
    rmsd = np.array([r["rmsd_A"] for r in rows.values()])
    return {"median_rmsd_A": float(np.median(rmsd)), "mean_rmsd_A": float(rmsd.mean()),
            "max_rmsd_A": float(rmsd.max()), "molecules": rows}


def _md_one(job: tuple) -> tuple[str, bool]:
    """Langevin MD at 300 K of one molecule; True when its bond graph never changed.

    ``job``: (name, numbers, positions, calculator or model file/name, ps, index k,
    seed, torch threads or None to leave them).  Top level, so that a process pool can
    run it; a worker given a model name builds its own calculator.
    """
    import torch
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from invcalc import InvCalc
    from invcalc.data.sampling import bond_pairs

    name, numbers, positions, model, ps, k, seed, threads = job
    if threads is not None:
        torch.set_num_threads(threads)
    atoms = Atoms(numbers, positions)
    atoms.calc = model if not isinstance(model, str) else InvCalc(model, device="cpu")
    bonds = {tuple(b) for b in bond_pairs(atoms).tolist()}
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed + k))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01,
                   rng=np.random.default_rng(seed + 1000 + k))
    for _ in range(0, int(round(ps * 1000 / 0.5)), 100):
        dyn.run(100)
        if {tuple(b) for b in bond_pairs(atoms).tolist()} != bonds:
            return name, False
    return name, True


def md_stability(molecules: dict[str, Atoms], calc, ps: float, seed: int = 0,
                 workers: int = 1, model: str | None = None) -> dict:
    """Langevin MD at 300 K; a molecule fails when its bond graph changes.

    With ``workers`` > 1 the molecules run in that many processes (one torch thread
    each), each loading ``model`` (a model file or name) itself; the trajectories are
    the same as in one process (seeds are per molecule).
    """
    if workers > 1 and model is None:
        raise ValueError("md_stability with workers > 1 needs the model's file or name")
    # in worker processes: the model by name and one torch thread each
    source, threads = (model, 1) if workers > 1 else (calc, None)
    jobs = [(name, mol.numbers, mol.positions, source, ps, k, seed, threads)
            for k, (name, mol) in enumerate(molecules.items())]
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = dict(pool.map(_md_one, jobs))
    else:
        results = dict(map(_md_one, jobs))
    return {"ps": ps, "intact": int(sum(results.values())), "total": len(results),
            "broken": sorted(k for k, v in results.items() if not v)}


def water_rdf(calc, ps: float, seed: int = 0) -> dict:
    """First O-O RDF peak of 64 waters at 1 g/cm^3 and 300 K (Langevin)."""
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    n_side, length = 4, (64 * 18.015 / 0.6022) ** (1 / 3)  # Å for 1 g/cm^3
    w = molecule("H2O")
    positions, symbols = [], []
    for idx in np.ndindex(n_side, n_side, n_side):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        positions.append((w.positions - w.positions.mean(0)) @ q.T
                         + (np.array(idx) + 0.5) * length / n_side)
        symbols += w.get_chemical_symbols()
    box = Atoms(symbols, np.concatenate(positions), cell=[length] * 3, pbc=True)
    box.calc = calc
    MaxwellBoltzmannDistribution(box, temperature_K=300, rng=rng)
    dyn = Langevin(box, 0.5 * units.fs, temperature_K=300, friction=0.01, rng=rng)
    oxygens = [i for i, s in enumerate(symbols) if s == "O"]
    bins = np.linspace(0.0, length / 2, 121)
    hist = np.zeros(len(bins) - 1)
    steps = int(round(ps * 1000 / 0.5))
    t0 = time.perf_counter()
    closest, temperatures = np.inf, []
    for k in range(0, steps, 20):
        dyn.run(20)
        if k >= steps // 5:  # discard the first fifth as equilibration
            temperatures.append(box.get_temperature())
            for i in oxygens:
                d = box.get_distances(i, oxygens, mic=True)
                d = d[d > 0]  # the other oxygens
                hist += np.histogram(d, bins)[0]
                closest = min(closest, float(d.min()))
    shell = 4 / 3 * np.pi * (bins[1:] ** 3 - bins[:-1] ** 3)
    g = hist / shell
    g /= g[-20:].mean() if g[-20:].mean() > 0 else 1.0
    centres = 0.5 * (bins[1:] + bins[:-1])
    return {"ps": ps, "first_peak_A": float(centres[np.argmax(g)]), "peak_height": float(g.max()),
            "min_OO_A": closest, "mean_temperature_K": float(np.mean(temperatures)),
            "seconds": time.perf_counter() - t0,
            "max_force_eV_per_A": float(np.abs(box.get_forces()).max())}


def reference_checks(frames: list[Atoms], calc, count: int = 5) -> list[dict]:
    """A few held-out relaxed structures with GFN2-xTB and model energies, for the card."""
    picked = list(relaxed_molecules(frames).items())[:count]
    rows = []
    for name, mol in picked:
        src = next(a for a in frames if a.info.get("name") == name and a.info.get("kind") == "relax"
                   and np.allclose(a.positions, mol.positions))
        # stored positions are rounded to 1e-6 Å; the model energy is of those positions
        b = Atoms(mol.numbers, np.round(mol.positions, 6))
        b.calc = calc
        rows.append({"name": name, "symbols": b.get_chemical_symbols(),
                     "positions": b.positions.tolist(),
                     "reference_energy_eV": src.get_potential_energy(),
                     "model_energy_eV": b.get_potential_energy()})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="held-out labelled extxyz")
    parser.add_argument("--model", default="default", help="model file or name")
    parser.add_argument("--out", default=None, help="results JSON (a .md table is written beside)")
    parser.add_argument("--md-ps", type=float, default=10.0, help="MD per molecule, ps (0: skip)")
    parser.add_argument("--water-ps", type=float, default=5.0, help="water box MD, ps (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes for the per-molecule MD runs (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N molecules")
    parser.add_argument("--train-list", action="append", default=[],
                        help="molecule list(s) the model trained on (a shipped name such as "
                             "'curated', or a path; repeatable): the report then says which "
                             "held-out molecules have an atom environment no training "
                             "molecule has, and their errors against the others")
    parser.add_argument("--card", default=None,
                        help="also write a model card JSON: this report, the model file's "
                             "metadata and a few stored reference structures")
    args = parser.parse_args(argv)

    import torch

    from invcalc import InvCalc
    from invcalc.data.store import read_dataset

    torch.set_num_threads(args.threads)
    frames = read_dataset(args.data)
    if args.limit is not None:
        keep = sorted({a.info.get("name") for a in frames})[: args.limit]
        frames = [a for a in frames if a.info.get("name") in keep]
    calc = InvCalc(args.model, device="cpu")
    t0 = time.perf_counter()
    report = {"model": os.path.basename(args.model), "data": os.path.basename(args.data),
              "threads": args.threads}
    report["structures"] = structure_errors(frames, calc)
    if args.train_list:
        report["novelty"] = novelty_report(frames, args.train_list, report["structures"])
    molecules = relaxed_molecules(frames)
    report["geometry"] = geometry_rmsd(molecules, calc)
    if args.md_ps > 0:
        report["md_stability"] = md_stability(
            molecules, calc, args.md_ps, workers=args.workers, model=args.model
        )
    if args.water_ps > 0:
        report["water_box"] = water_rdf(calc, args.water_ps)
    report["seconds"] = time.perf_counter() - t0
    if args.card:
        from invcalc.modelfile import read_metadata

        meta = read_metadata(args.model) if os.path.isfile(args.model) else {}
        card = {"model": os.path.basename(args.model), "metadata": meta, "held_out": report,
                "reference_checks": reference_checks(frames, calc)}
        with open(args.card, "w") as handle:
            json.dump(card, handle, indent=1)
    s, g = report["structures"], report["geometry"]
    lines = [
        "| metric (held-out molecules) | value | target |",
        "|---|---|---|",
        f"| structures / molecules | {s['structures']} / {len(molecules)} | |",
        f"| energy MAE per molecule | {s['energy_mae_kcal_mol']:.2f} kcal/mol "
        f"({1000 * s['energy_mae_eV']:.0f} meV) | ≤ 1 kcal/mol |",
        f"| force MAE | {1000 * s['force_mae_eV_per_A']:.0f} meV/Å | ≤ 50 meV/Å |",
        f"| relaxed-geometry RMSD vs GFN2-xTB (median) | {g['median_rmsd_A']:.3f} Å | ≤ 0.02 Å |",
        f"| ensemble σ vs \\|energy error\\| (Spearman) | {s['uncertainty_error_spearman']:.2f} | |",
    ]
    for sym, v in sorted(s["force_mae_per_element_eV_per_A"].items()):
        lines.append(f"| force MAE on {sym} | {1000 * v:.0f} meV/Å | |")
    for kind, v in s["per_kind"].items():
        lines.append(f"| {kind} structures ({v['structures']}): energy / force MAE | "
                     f"{v['energy_mae_eV'] * KCAL_PER_EV:.2f} kcal/mol / "
                     f"{1000 * v['force_mae_eV_per_A']:.0f} meV/Å | |")
    if "novelty" in report:
        n = report["novelty"]["split"]
        lines.append(
            f"| molecules with an atom environment no training molecule has "
            f"({len(n['novel'])}) vs the others ({n['others']}): median energy / force MAE | "
            f"{n['novel_median_energy_mae_eV'] * KCAL_PER_EV:.1f} vs "
            f"{n['others_median_energy_mae_eV'] * KCAL_PER_EV:.1f} kcal/mol / "
            f"{1000 * n['novel_median_force_mae_eV_per_A']:.0f} vs "
            f"{1000 * n['others_median_force_mae_eV_per_A']:.0f} meV/Å | |")
    if "md_stability" in report:
        m = report["md_stability"]
        lines.append(f"| intact after {m['ps']:g} ps Langevin MD at 300 K | {m['intact']}/{m['total']} | all |")
    if "water_box" in report:
        w = report["water_box"]
        lines.append(f"| 64-water box, {w['ps']:g} ps at 300 K: first O–O RDF peak | {w['first_peak_A']:.2f} Å | ≈ 2.8 Å |")
        lines.append(f"| same: closest O–O contact, mean temperature | {w['min_OO_A']:.2f} Å, "
                     f"{w['mean_temperature_K']:.0f} K | |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
