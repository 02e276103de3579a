"""benchmarks/_speed_profile.py: the stage profile of an ethanol call runs and counts right."""

from __future__ import annotations

import pytest
from ase.build import molecule
from conftest import benchmark_modules

from invcalc import InvCalc


@pytest.fixture(scope="module")
def bench():
    with benchmark_modules("speed", "_speed_profile") as modules:
        yield modules


def test_profile_stages_and_multiply_adds(bench):
    speed, prof = bench
    calc = InvCalc(speed.ani1x_like(members=2), device="cpu")
    p = prof.profile_call(calc, molecule("CH3CH2OH"), repeats=3)
    for key in ("calculator_call_ms", "engine_run_ms", "aevs_ms", "networks_ms",
                "aev_gradient_ms", "network_gflops", "large_gemm_gflops"):
        assert p[key] > 0, key
    # by hand: ANI-1x layers, first layers on the 240 AEV columns of H, C, O
    # (3 x 16 radial + 6 x 32 angular); forward all layers, backward all but the last
    sizes = {"H": (160, 128, 96), "C": (144, 112, 96), "O": (128, 112, 96)}
    per_member = 0
    for symbol, count in (("H", 6), ("C", 2), ("O", 1)):
        dims = (240, *sizes[symbol], 1)
        layers = [a * b for a, b in zip(dims[:-1], dims[1:])]
        per_member += count * (sum(layers) + sum(layers[:-1]))
    assert p["network_multiply_adds"] == 2 * per_member
    table = prof.profile_table(p, {"torchani / 10": 1.0, "missing": None})
    assert "torchani / 10" in table and "missing" not in table
