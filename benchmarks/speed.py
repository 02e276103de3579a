"""Speed: invcalc vs torchani's ASE calculator (same weights) vs GFN2-xTB (tblite).

Side by side in one process, interleaved (round-robin blocks of calls, so that load
drifts on a shared machine hit every calculator alike):

* energy + forces per call, median over repeats, of ethanol (9 atoms), a drug-size
  molecule (oseltamivir, 50 atoms, RDKit geometry) and periodic water boxes from 81 to
  ~10^5 atoms -- every call after a small random displacement (an MD-like step); the
  first call of a structure (neighbor search included) is reported apart;
* MD steps per second (velocity Verlet, 0.5 fs);
* conformer screening: ``calculate_batch`` vs a loop of calls;
* peak memory (process maximum resident set, reported after each size; sizes run in
  increasing order, so for each size it bounds that size's peak);
* the scaling exponent b of t = a N^b fitted from 10^3 atoms up;
* where invcalc's ethanol call spends its time (``_speed_profile``): AEVs, networks
  (with their arithmetic rate), the rest;
* MD throughput in atom-steps per second of water boxes from 10^3 atoms up, for the
  8-member ensemble and for a single member.

``--device cuda`` runs invcalc and torchani on the GPU (GFN2-xTB stays on the CPU) and
writes speed_cuda.json/png/md instead; peak GPU memory is reported per system.

The model is the ANI-1x architecture (8 members, CELU, cosine cutoff) with random
weights, wrapped by invcalc and run by torchani itself; the numbers do not depend on
the weights' values.  Writes results/speed.json, speed.png and speed.md.

    python benchmarks/speed.py                 # full run (9 min on an idle 2-core CPU)
    python benchmarks/speed.py --quick         # small sizes only (~2 min)
    python benchmarks/speed.py --max-atoms 40000
    python benchmarks/speed.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import time
import typing as tp
from pathlib import Path


def _threads_from_argv(default: int = 1) -> int:
    argv = sys.argv[1:]
    for k, arg in enumerate(argv):
        if arg == "--threads" and k + 1 < len(argv):
            return int(argv[k + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


if __name__ == "__main__":
    # The benchmark (never the library) fixes the thread count of every runtime before
    # any of them loads -- torch's, MKL's, OpenBLAS's and tblite's OpenMP.  On a busy
    # 2-core machine, idle-spinning threads of one runtime slow the others several-fold.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = str(_threads_from_argv())

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _speed_profile import profile_call  # noqa: E402
from _speed_report import write_report  # noqa: E402

WATER_SIDES = (3, 6, 10, 15, 22, 33)  # 81, 648, 3000, 10125, 31944, 107811 atoms
DRUG_SMILES = "CCC(CC)OC1C=C(CC(N)C1NC(C)=O)C(=O)OCC"  # oseltamivir, C16H28N2O4


def ani1x_like(seed: int = 0, members: int = 8) -> tp.Any:
    """The ANI-1x architecture with random weights (as tests/test_torchani_compat.py)."""
    import torch
    from torchani.aev import AEVComputer
    from torchani.arch import ANI
    from torchani.nn import ANINetworks, Ensemble
    from torchani.sae import SelfEnergy

    symbols = ("H", "C", "N", "O")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = Ensemble([ANINetworks.like_1x(symbols) for _ in range(members)])
    model = ANI(
        symbols, AEVComputer.like_1x(), nets, SelfEnergy.with_gsaes(symbols, "wb97x", "631gd")
    )
    return model.eval()


def water_box(n_side: int, spacing: float = 3.1, seed: int = 0) -> tp.Any:
    """n_side^3 randomly oriented waters on a cubic lattice (~1 g/cm^3), periodic."""
    from ase import Atoms
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    w = molecule("H2O")
    base = w.positions - w.positions.mean(0)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    q, _ = np.linalg.qr(rng.normal(size=(len(grid), 3, 3)))
    centres = spacing * grid + rng.normal(0, 0.1, grid.shape)
    pos = np.einsum("ij,nkj->nik", base, q) + centres[:, None]
    length = n_side * spacing
    return Atoms("OH2" * len(grid), positions=pos.reshape(-1, 3), cell=[length] * 3, pbc=True)


def drug() -> tp.Any:
    """Oseltamivir with hydrogens, RDKit ETKDG + MMFF geometry."""
    from ase import Atoms
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(DRUG_SMILES))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    pos = mol.GetConformer().GetPositions()
    return Atoms([a.GetSymbol() for a in mol.GetAtoms()], positions=pos)


def conformers(count: int) -> list[tp.Any]:
    """``count`` RDKit conformers of the drug molecule (screening workload)."""
    from ase import Atoms
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(DRUG_SMILES))
    ids = AllChem.EmbedMultipleConfs(mol, numConfs=count, randomSeed=11)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    return [Atoms(symbols, positions=mol.GetConformer(i).GetPositions()) for i in ids]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    """Per-call wall times of one calculator on one structure."""

    def __init__(self, name: str, calc: tp.Any, atoms: tp.Any, budget_s: float) -> None:
        self.name, self.budget_s = name, budget_s
        self.atoms = atoms.copy()
        self.atoms.calc = calc
        self.rng = np.random.default_rng(1)
        self.times: list[float] = []
        self.first: float | None = None
        self.spent = 0.0

    def call(self) -> None:
        if self.first is not None:
            self.atoms.positions += self.rng.normal(0.0, 0.005, self.atoms.positions.shape)
        t0 = time.perf_counter()
        self.atoms.get_forces()
        dt = time.perf_counter() - t0
        self.spent += dt
        if self.first is None:
            self.first = dt
        else:
            self.times.append(dt)

    @property
    def open(self) -> bool:
        return self.spent < self.budget_s


def time_calls(
    timers: list[Timer], rounds: int, block: int
) -> dict[str, dict[str, float | int | None]]:
    """Interleaved rounds: each calculator makes ``block`` calls per round."""
    for t in timers:  # first calls: neighbor search, caches, one-time setup
        t.call()
    for _ in range(rounds):
        for t in timers:
            for _ in range(block):
                if t.open:
                    t.call()
    out = {}
    for t in timers:
        ms = np.array(t.times) * 1e3
        out[t.name] = {
            "median_ms": float(np.median(ms)) if len(ms) else None,
            "p25_ms": float(np.percentile(ms, 25)) if len(ms) else None,
            "p75_ms": float(np.percentile(ms, 75)) if len(ms) else None,
            "calls": int(len(ms)),
            "first_call_ms": None if t.first is None else t.first * 1e3,
        }
    return out


def _warm_verlet(calc: tp.Any, atoms: tp.Any, seed: int) -> tp.Any:
    """Velocity Verlet (0.5 fs) on a copy of ``atoms`` with 300 K momenta, after one
    warm-up step (pair search, caches)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    kt = 300 * units.kB
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(kt * atoms.get_masses())[:, None])
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(1)
    return dyn


def md_rate(calc: tp.Any, atoms: tp.Any, steps: int) -> float:
    """Velocity Verlet steps per second (0.5 fs, 300 K start), after one warm-up step."""
    dyn = _warm_verlet(calc, atoms, seed=3)
    t0 = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t0)


def md_throughput(calc: tp.Any, atoms: tp.Any, budget_s: float = 10.0) -> dict[str, float]:
    """Atom-steps per second of velocity Verlet (0.5 fs) on ``atoms``: one warm-up step
    (pair search), then steps until ``budget_s`` has passed (at least 2)."""
    dyn = _warm_verlet(calc, atoms, seed=4)
    steps, t0 = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - t0 < budget_s:
        dyn.run(1)
        steps += 1
    seconds = time.perf_counter() - t0
    return {"steps": steps, "seconds": seconds, "atom_steps_per_s": len(atoms) * steps / seconds}


def reset_peak_device_memory(device: str) -> None:
    """Start a new peak for ``peak_device_mb`` (nothing to do on the CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_device_mb(device: str) -> float | None:
    """Peak GPU memory allocated by torch since the last reset (None on CPU)."""
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of torch, MKL, OpenBLAS, tblite"
    )
    parser.add_argument("--max-atoms", type=int, default=110_000)
    parser.add_argument("--quick", action="store_true", help="molecules and <= 3000 atoms")
    parser.add_argument("--no-xtb", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (invcalc and torchani)")
    args = parser.parse_args()
    if args.quick:
        args.max_atoms = min(args.max_atoms, 3000)
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
    import torch

    torch.set_num_threads(args.threads)
    from invcalc import InvCalc
    from torchani.neighbors import AdaptiveList

    tblite = None
    if not args.no_xtb:
        try:
            from tblite.ase import TBLite

            tblite = TBLite
        except ImportError:
            print("tblite not installed: no GFN2-xTB column")

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    model = ani1x_like().to(device)
    adaptive = copy.deepcopy(model)
    adaptive.neighborlist = AdaptiveList()  # torchani's own cell list (>= 190 atoms)
    invcalc = InvCalc(model, device=device)
    xtb = tblite(method="GFN2-xTB", verbosity=0) if tblite else None
    meta = {
        "threads": args.threads,
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
        "model": "ANI-1x architecture, 8 members, random weights, float32",
        "skin_angstrom": invcalc._cache.skin,
    }
    print(f"threads={args.threads}, load average {meta['load_average_start']}", flush=True)
    results: dict[str, tp.Any] = {
        "meta": meta, "systems": {}, "md": {}, "md_throughput": {}, "batch": {}
    }

    from ase.build import molecule

    systems: list[tuple[str, tp.Callable[[], tp.Any]]] = [
        ("ethanol", lambda: molecule("CH3CH2OH")), ("oseltamivir", drug)
    ]
    for side in WATER_SIDES:
        if 3 * side**3 <= args.max_atoms:
            systems.append((f"water_{3 * side**3}", lambda side=side: water_box(side)))
    for name, build in systems:
        atoms = build()
        n = len(atoms)
        timers = [Timer("invcalc", invcalc, atoms, 120.0)]
        if n <= 700:
            timers.append(Timer("torchani", model.ase(), atoms, 60.0))
        if atoms.pbc.all() and n <= 11_000:
            timers.append(Timer("torchani_adaptive", adaptive.ase(), atoms, 60.0))
        if xtb is not None and n <= 100:
            timers.append(Timer("gfn2_xtb", xtb, atoms, 60.0))
        rounds, block = (20, 5) if n < 100 else (6, 2) if n < 5000 else (4, 1)
        print(f"{name}: {n} atoms ...", flush=True)
        searches = invcalc._cache.builds
        reset_peak_device_memory(device)
        timing: dict[str, tp.Any] = time_calls(timers, rounds, block)
        timing["atoms"] = n
        timing["peak_rss_mb"] = peak_rss_mb()
        timing["peak_gpu_mb"] = peak_device_mb(device)
        timing["invcalc_pair_searches"] = invcalc._cache.builds - searches
        results["systems"][name] = timing
        print(json.dumps(timing), flush=True)

    if device == "cpu":  # stage timings need no GPU synchronisation on the CPU
        results["profile"] = profile_call(invcalc, molecule("CH3CH2OH"))
        print("ethanol profile", results["profile"], flush=True)

    for name, atoms, steps in [
        ("ethanol", molecule("CH3CH2OH"), 200), ("oseltamivir", drug(), 100),
        ("water_648", water_box(6), 20),
    ]:
        rates = {"invcalc": md_rate(InvCalc(model, device=device), atoms, steps)}
        rates["torchani"] = md_rate(model.ase(), atoms, max(5, steps // 10))
        if xtb is not None and not atoms.pbc.any():
            rates["gfn2_xtb"] = md_rate(tblite(method="GFN2-xTB", verbosity=0), atoms, steps // 4)
        results["md"][name] = rates
        print(name, "MD steps/s", rates, flush=True)

    single = ani1x_like(members=1).to(device)
    for side in WATER_SIDES:
        n = 3 * side**3
        if 1000 <= n <= args.max_atoms:
            box = water_box(side)
            row: dict[str, tp.Any] = {"atoms": n}
            for label, net in (("ensemble_8", model), ("single", single)):
                reset_peak_device_memory(device)
                row[label] = md_throughput(InvCalc(net, device=device), box)
                row[label]["peak_gpu_mb"] = peak_device_mb(device)
            results["md_throughput"][f"water_{n}"] = row
            print(f"water_{n} MD throughput", row, flush=True)

    confs = conformers(200)
    t0 = time.perf_counter()
    invcalc.calculate_batch(confs)
    batch_s = time.perf_counter() - t0
    loop_calc = InvCalc(model, device=device)
    t0 = time.perf_counter()
    for atoms in confs:
        atoms.calc = loop_calc
        atoms.get_forces()
    loop_s = time.perf_counter() - t0
    sub = confs[:40]
    t0 = time.perf_counter()
    for atoms in sub:
        b = atoms.copy()
        b.calc = model.ase()
        b.get_forces()
    torchani_s = (time.perf_counter() - t0) / len(sub) * len(confs)
    results["batch"] = {
        "structures": len(confs), "atoms_each": len(confs[0]),
        "invcalc_batch_s": batch_s, "invcalc_loop_s": loop_s,
        "torchani_loop_s_estimated_from_40": torchani_s,
    }
    print("batch", results["batch"], flush=True)
    meta["load_average_end"] = os.getloadavg()
    meta["peak_rss_mb"] = peak_rss_mb()
    write_report(results, args.out, "speed" if device == "cpu" else "speed_cuda")


if __name__ == "__main__":
    main()
