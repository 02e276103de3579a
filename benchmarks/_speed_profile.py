"""Where one invcalc energy + forces call spends its time (part of benchmarks/speed.py).

Each stage of ``InvCalc.calculate`` is timed alone on the same structure, on the
inputs the calculator itself prepared (median of repeats, after warm-up):

* the whole ASE call (``atoms.get_forces()`` after a small displacement);
* ``engine.run``: features, networks and their gradients, forces;
* the AEVs alone (``invcalc.features.aevs``) and their gradient (``aev_grad``);
* the networks alone: all ensemble members' forward pass and dE/dG
  (``FusedEnsemble.energies_and_grad``), with their multiply-add count and rate;
* a large matrix product on the same thread(s), for the rate this CPU reaches at all.

What the whole call spends outside ``engine.run`` is ASE's state check, the pair
cache's update and the conversion of results.
"""

from __future__ import annotations

import time
import typing as tp

import numpy as np


def _median_ms(fn: tp.Callable[[], tp.Any], repeats: int, warmup: int = 50) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def network_multiply_adds(nets: tp.Any, counts: tp.Sequence[int], columns: int) -> int:
    """Multiply-adds of one forward pass and one dE/dG sweep of ``nets`` (a
    ``FusedEnsemble``) over ``counts`` atoms per element, first layers restricted to
    ``columns`` AEV entries (as ``engine.run`` does)."""
    total = 0
    for element, n in zip(nets.elements, counts):
        shapes = [tuple(w.shape) for w in element.weights]  # (M, in, out)
        shapes[0] = (shapes[0][0], columns, shapes[0][2])
        forward = sum(m * i * o for m, i, o in shapes)
        backward = sum(m * i * o for m, i, o in shapes[:-1])  # delta through hidden layers
        total += n * (forward + backward)
    return total


def profile_call(calc: tp.Any, atoms: tp.Any, repeats: int = 1000) -> dict[str, float]:
    """Stage times (ms) of ``calc`` (an ``InvCalc`` on CPU) on ``atoms``; see module doc."""
    import torch

    from invcalc import engine, features

    atoms = atoms.copy()
    atoms.calc = calc
    base = atoms.get_positions()
    rng = np.random.default_rng(5)

    def whole_call() -> None:
        atoms.set_positions(base + rng.normal(0.0, 0.005, base.shape))
        atoms.get_forces()

    out = {"calculator_call_ms": _median_ms(whole_call, repeats)}
    potential = calc.potential
    step = calc._cache.update(atoms, potential, calc.dtype, calc.device)
    prepared = step.prepared
    positions = step.positions[0].index_select(0, prepared.layout.order)
    out["engine_run_ms"] = _median_ms(lambda: engine.run(potential, prepared, positions), repeats)
    aev, plan = potential.aev_computer, prepared.plan
    with torch.no_grad():
        diff = engine.pair_vectors(prepared, positions)
        out["aevs_ms"] = _median_ms(lambda: features.aevs(aev, plan, diff, keep=True), repeats)
        g_all, saved = features.aevs(aev, plan, diff, keep=True)
        nets = potential.fused_networks()
        compact = (plan.present, plan.columns)
        counts = prepared.layout.counts
        out["networks_ms"] = _median_ms(
            lambda: nets.energies_and_grad(g_all, counts, "mean", compact), repeats
        )
        _, grad_g = nets.energies_and_grad(g_all, counts, "mean", compact)
        out["aev_gradient_ms"] = _median_ms(
            lambda: features.aev_grad(aev, plan, diff, grad_g, saved), repeats
        )
        macs = network_multiply_adds(nets, counts, int(plan.columns.numel()))
        a, b = torch.randn(64, 1024), torch.randn(1024, 1024)
        gemm_ms = _median_ms(lambda: a @ b, 200, warmup=20)
    out["network_multiply_adds"] = macs
    out["network_gflops"] = 2 * macs / out["networks_ms"] / 1e6
    out["large_gemm_gflops"] = 2 * 64 * 1024 * 1024 / gemm_ms / 1e6
    return out


def profile_table(profile: dict[str, float], reference: dict[str, float | None]) -> str:
    """Markdown table of ``profile`` with the per-call times of ``reference`` calculators."""
    p = profile
    rows = [
        ("whole ASE call (`atoms.get_forces()`)", p["calculator_call_ms"]),
        ("`engine.run`: features, networks, gradients, forces", p["engine_run_ms"]),
        ("AEVs alone", p["aevs_ms"]),
        (f"networks alone: {p['network_multiply_adds'] / 1e6:.1f} M multiply-adds at "
         f"{p['network_gflops']:.1f} GFLOP/s (a large GEMM: {p['large_gemm_gflops']:.0f})",
         p["networks_ms"]),
        ("AEV gradient alone: dE/dG -> dE/d(pair vectors)", p["aev_gradient_ms"]),
    ]
    rows += [(f"for comparison: {name}", ms) for name, ms in reference.items() if ms]
    lines = ["| ethanol, one energy + forces call | ms |", "|---|---:|"]
    lines += [f"| {label} | {ms:.3f} |" for label, ms in rows]
    return "\n".join(lines)
