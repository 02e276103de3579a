"""benchmarks/_novelty.py: which held-out molecules have chemistry training never saw."""

from __future__ import annotations

import pytest
from ase import Atoms
from conftest import benchmark_modules

pytest.importorskip("rdkit")


@pytest.fixture(scope="module")
def bench():
    with benchmark_modules("_novelty", "default_model") as modules:
        yield modules


def test_environments_name_element_degree_aromaticity_and_neighbors(bench):
    nov, _ = bench
    assert nov.atom_environments("FF") == {"F1(F)"}
    assert nov.atom_environments("c1cnon1") >= {"O2a(N,N)", "N2a(C,O)", "H1(C)"}
    with pytest.raises(ValueError, match="cannot parse"):
        nov.atom_environments("C(")


def test_rarest_environment_counts_training_molecules(bench):
    nov, _ = bench
    out = nov.novelty({"f2": "FF", "ethane": "CC"}, ["CC", "CF", "CCO"])
    assert out["f2"] == {"rarest_environment": "F1(F)", "training_molecules_with_it": 0}
    # ethane's atoms: C4(C,H,H,H) in CC and CCO; H1(C) in all three
    assert out["ethane"] == {"rarest_environment": "C4(C,H,H,H)", "training_molecules_with_it": 2}
    errors = {"f2": {"energy_mae_eV": 1.0, "force_mae_eV_per_A": 2.0},
              "ethane": {"energy_mae_eV": 0.1, "force_mae_eV_per_A": 0.2}}
    split = nov.split_errors(errors, out, at_most=0)
    assert split["novel"] == ["f2"] and split["others"] == 1
    assert split["novel_median_energy_mae_eV"] == 1.0
    assert split["others_median_force_mae_eV_per_A"] == 0.2


def test_report_against_a_shipped_list_skips_clusters(bench):
    _, dm = bench
    frames = [Atoms("F2", [[0, 0, 0], [0, 0, 1.4]], info={"name": "f2", "smiles": "FF"}),
              Atoms("OH2", [[0, 0, 0], [0, 0, 1], [0, 1, 0]],
                    info={"name": "w", "smiles": "O.O", "kind": "cluster_md"})]
    structures = {"per_molecule": {"f2": {"energy_mae_eV": 1.0, "force_mae_eV_per_A": 2.0}}}
    report = dm.novelty_report(frames, ["curated"], structures)
    assert set(report["per_molecule"]) == {"f2"}
    assert report["per_molecule"]["f2"]["training_molecules_with_it"] == 0
    assert report["training_molecules"] > 400
