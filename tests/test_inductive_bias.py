"""benchmarks/inductive_bias.py: its symmetry helpers, a seconds-long smoke run, and (slow)
the --quick headline comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BENCHMARKS, benchmark_modules

SCRIPT = BENCHMARKS / "inductive_bias.py"


@pytest.fixture(scope="module")
def ib():
    """The benchmark's helper modules, imported from the checkout."""
    with benchmark_modules("_ib_data", "_ib_models") as modules:
        yield modules


def test_random_rotation_is_proper_and_orthogonal(ib):
    data, _ = ib
    rng = np.random.default_rng(0)
    for _ in range(20):
        rot = data.random_rotation(rng)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)


def test_permutation_moves_only_identical_atoms(ib):
    data, _ = ib
    numbers = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    rng = np.random.default_rng(1)
    for _ in range(20):
        perm = data.random_permutation(numbers, rng)
        assert sorted(perm) == list(range(len(numbers)))
        assert (numbers[perm] == numbers).all()
        assert (perm != np.arange(len(numbers))).any()


def test_augmentation_keeps_geometry_and_rotates_forces(ib):
    torch = pytest.importorskip("torch")
    _, models = ib
    numbers = np.array([8, 1, 1])
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(5, 3, 3, dtype=torch.float64)
    forces = torch.randn(5, 3, 3, dtype=torch.float64)
    p2, f2 = models.augment(pos, forces, numbers, gen)
    # one rotation and one permutation of the H atoms for positions and forces alike:
    # every dot product among {positions, forces} is kept up to that permutation.
    for b in range(5):
        gram2 = torch.cat([p2[b], f2[b]]) @ torch.cat([p2[b], f2[b]]).T
        matches = []
        for perm in ([0, 1, 2], [0, 2, 1]):
            x = torch.cat([pos[b, perm], forces[b, perm]])
            matches.append(torch.allclose(x @ x.T, gram2, atol=1e-10))
        assert any(matches)
    assert not torch.allclose(p2, pos)


def test_align_removes_rotation_and_translation(ib):
    data, _ = ib
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(5, 3))
    ref -= ref.mean(0)
    moved = ref @ data.random_rotation(rng).T + np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(data.align(moved, ref), ref, atol=1e-12)


def _run(tmp_path: Path, mode: str) -> dict:
    out = tmp_path / f"ib_{mode}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHANI_NO_WARN_EXTENSIONS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), f"--{mode}", "--out", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".md").read_text().startswith("# Invariance as inductive bias")
    assert out.with_suffix(".png").stat().st_size > 10_000
    return json.loads(out.read_text())


def _check_shape_and_invariance(result: dict) -> None:
    models = result["models"]
    for name in ("raw", "augmented", "invariant"):
        for key in ("test_mae_eV", "test_mae_rotated_eV", "invariance_error_eV"):
            assert np.isfinite(models[name][key]), (name, key)
    assert {"sizes", "seeds", "models"} <= set(result["learning_curves"])
    inv, raw = models["invariant"], models["raw"]
    # invariant: float32 round-off only (and ~1e-14 eV in float64); raw: not invariant
    assert inv["invariance_error_eV"] < 1e-4
    assert inv["invariance_error_float64_eV"] < 1e-9
    assert raw["invariance_error_eV"] > 1e-2
    maes = [inv["by_transform"][t]["energy_mae_eV"] for t in inv["by_transform"]]
    assert max(maes) - min(maes) < 1e-5
    assert raw["test_mae_rotated_eV"] > 10 * raw["test_mae_eV"]


def test_smoke_run(tmp_path):
    pytest.importorskip("tblite")
    pytest.importorskip("matplotlib")
    result = _run(tmp_path, "smoke")
    _check_shape_and_invariance(result)


@pytest.mark.slow
def test_quick_headline(tmp_path):
    """The --quick comparison (~2-3 min on 2 cores) reproduces the expected ordering."""
    pytest.importorskip("tblite")
    pytest.importorskip("matplotlib")
    result = _run(tmp_path, "quick")
    _check_shape_and_invariance(result)
    models, mean_mae = result["models"], result["water"]["mean_predictor_mae_eV"]
    inv = models["invariant"]["test_mae_rotated_eV"]
    assert models["raw"]["test_mae_rotated_eV"] > mean_mae  # worse than predicting the mean
    assert models["raw"]["test_mae_rotated_eV"] > 100 * inv
    assert models["augmented"]["test_mae_rotated_eV"] > 5 * inv
    assert inv < 0.02  # tens of meV at most
