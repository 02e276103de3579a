"""benchmarks/model_card.py: the card's measured sections come from the runs, nothing typed."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_modules


@pytest.fixture(scope="module")
def model_card():
    with benchmark_modules("model_card") as (module,):
        yield module


def _metrics():
    return {"kept_epoch": 3, "best_epoch": 2, "epochs_run": 3, "validation": {"force_mae_eV_per_A": 0.1},
            "history": [{"epoch": 1}], "self_energies_eV": {"H": -13.6}, "unrelated": 1,
            "data": {"num_structures": 10, "num_train": 9, "num_validation": 1, "sha256": "ab",
                     "elements": ["H"], "num_left_out_max_force": 2}}


def test_first_report_wins_per_key(model_card):
    merged, source = model_card.merge_reports(
        [{"structures": 1, "geometry": 2}, {"structures": 99, "md_stability": 3}])
    assert merged == {"structures": 1, "geometry": 2, "md_stability": 3}
    assert source == {"structures": 0, "geometry": 0, "md_stability": 1}


def test_refresh_replaces_measured_sections_and_keeps_written_ones(model_card, tmp_path):
    card = {"name": "x", "known_limits": ["a"], "commands": ["c"],
            "data": {"molecules": "words", "structures": 5, "left_out_max_force_15_eV_per_A": 7},
            "held_out": {"old": 1}, "reference_checks": [{"name": "old"}]}
    paths = {}
    for name, obj in {"card": card, "m": _metrics(), "r1": {"structures": 1}, "r2": {"md_stability": 2},
                      "refs": {"reference_checks": [{"name": "new"}]}}.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    model_card.main([str(paths["card"]), "--metrics", str(paths["m"]), "--report", str(paths["r1"]),
                     "--report", str(paths["r2"]), "--reference-checks", str(paths["refs"])])
    new = json.loads(paths["card"].read_text())
    assert new["name"] == "x" and new["known_limits"] == ["a"] and new["commands"] == ["c"]
    assert new["data"] == {"molecules": "words", "structures": 10, "left_out_max_force": 2, "train": 9,
                           "validation": 1, "sha256": "ab"}
    assert new["training"]["kept_epoch"] == 3 and "unrelated" not in new["training"]
    assert new["held_out"] == {"structures": 1, "md_stability": 2}
    assert new["reference_checks"] == [{"name": "new"}]
    assert new["elements"] == ["H"]


def test_without_inputs_the_card_is_unchanged(model_card):
    card = {"name": "x", "held_out": {"a": 1}}
    assert model_card.refresh_card(card, None, [], None) == card
