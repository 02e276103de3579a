"""Active-learning exploration: boxes, carved clusters, planning, and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule

import invcalc
from invcalc.data.explore import ExploreConfig, carve_cluster, periodic_box, plan_explore_tasks
from invcalc.data.molecules import read_smiles_file

from conftest import make_potential, morse_potential


def waters(n: int) -> list[Atoms]:
    return [molecule("H2O") for _ in range(n)]


def test_periodic_box_has_the_density_and_no_overlaps():
    box = periodic_box(waters(8), 2, 1.1, np.random.default_rng(0))
    grams = box.get_masses().sum() / units.kg * 1e3
    assert grams / (box.get_volume() * 1e-24) == pytest.approx(1.1)
    assert box.pbc.all() and len(box) == 24
    d = box.get_all_distances(mic=True)
    other = box.arrays["mol_id"][:, None] != box.arrays["mol_id"][None, :]
    assert d[other].min() >= 1.7
    with pytest.raises(ValueError, match="needs 8 molecules"):
        periodic_box(waters(7), 2, 1.0, np.random.default_rng(0))


def test_carved_cluster_holds_whole_molecules_unwrapped_across_the_boundary():
    box = periodic_box(waters(27), 3, 1.0, np.random.default_rng(1))
    box.positions += 0.4 * box.cell.lengths()  # molecules now straddle the faces
    box.wrap()
    cluster = carve_cluster(box, 4.5)
    assert not cluster.pbc.any()
    mol_id, members = cluster.arrays["mol_id"], cluster.info["box_molecules"]
    assert len(members) == mol_id.max() + 1 and 3 <= len(members) < 27
    d_box = box.get_all_distances(mic=True)
    for k, m in enumerate(members):  # each molecule whole: O-H lengths as in the box
        ours = np.flatnonzero(mol_id == k)
        theirs = np.flatnonzero(box.arrays["mol_id"] == m)
        d = cluster.get_all_distances()[np.ix_(ours, ours)]
        np.testing.assert_allclose(d, d_box[np.ix_(theirs, theirs)], atol=1e-10)
    # the closest intermolecular contact of the box is inside, at its true length
    other = box.arrays["mol_id"][:, None] != box.arrays["mol_id"][None, :]
    in_cluster = mol_id[:, None] != mol_id[None, :]
    assert cluster.get_all_distances()[in_cluster].min() == pytest.approx(d_box[other].min())


def test_plan_explores_training_molecules_only_and_follows_the_model(tmp_path):
    model = tmp_path / "m.pt"
    invcalc.save_model(make_potential(), model)
    entries = read_smiles_file(None)[:40]
    tasks = plan_explore_tasks(entries, model, ExploreConfig(), n_boxes=3)
    assert [t.kind for t in tasks[:3]] == ["explore_box"] * 3
    names = {t.name for t in tasks[3:]}
    assert names == {e.name for e in entries if e.split == "train"}
    assert {t.composition for t in tasks[:3]} == {"water", "methanol", "mixed"}
    invcalc.save_model(make_potential(seed=1), model)  # another model: new task ids
    again = plan_explore_tasks(entries, model, ExploreConfig(), n_boxes=3)
    assert not {t.task_id for t in tasks} & {t.task_id for t in again}
    with pytest.raises(FileNotFoundError, match="not a file"):
        plan_explore_tasks(entries, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="box_density_scale"):
        ExploreConfig(box_density_scale=(1.2, 1.0))


@pytest.mark.usefixtures("one_omp_thread")
def test_explore_command_labels_what_the_models_md_visits(tmp_path, capsys):
    pytest.importorskip("rdkit")
    pytest.importorskip("tblite")
    from invcalc.cli import main
    from invcalc.data.explore import file_digest
    from invcalc.data.store import read_dataset

    model = tmp_path / "m.pt"
    invcalc.save_model(morse_potential(torch.float32), model)  # real minima: MD holds together
    smiles = tmp_path / "tiny.smi"
    smiles.write_text("O water solvent train\nC#N hydrogen_cyanide small test\n")
    out = tmp_path / "explore.extxyz"
    argv = ["explore", str(model), "-o", str(out), "--smiles", str(smiles), "--workers", "0",
            "--temperatures", "300", "--steps", "40", "--frames", "2", "--boxes", "1",
            "--box-steps", "50", "--box-frames", "2", "--no-progress"]
    assert main(argv) == 0
    assert "2 tasks run, 0 already done" in capsys.readouterr().out
    frames = read_dataset(out)
    kinds = [a.info["kind"] for a in frames]
    assert kinds.count("explore_cluster") == 2 and 1 <= kinds.count("explore_md") <= 3
    assert {a.info["name"] for a in frames} == {"water", "explore_box_water_0000"}  # no test molecule
    for a in frames:
        assert not a.pbc.any() and a.get_forces().shape == (len(a), 3)
        assert a.info["explore_model_sha256"] == file_digest(model)
        assert a.info["explore_sigma_eV"] == 0.0  # one member: no spread
        assert a.info["split"] == "train" and a.info["ref_method"] == "GFN2-xTB"
    clusters = [a for a in frames if a.info["kind"] == "explore_cluster"]
    assert all(a.info["smiles"] == ".".join(["O"] * a.info["n_molecules"]) for a in clusters)
    assert main(argv) == 0 and "0 tasks run, 2 already done" in capsys.readouterr().out
