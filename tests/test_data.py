"""Tests of invcalc.data: molecule list, conformers, sampling, labelling, resumability."""

from __future__ import annotations

import collections
import ctypes
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

rdkit = pytest.importorskip("rdkit")

from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict  # noqa: E402

from invcalc.data import sampling  # noqa: E402
from invcalc.data.conformers import embed_conformers  # noqa: E402
from invcalc.data.molecules import (  # noqa: E402
    CATEGORIES,
    MoleculeEntry,
    read_smiles_file,
    select,
    split_for,
    validate_entries,
    validate_entry,
)

# ---------------------------------------------------------------- molecule list


def test_shipped_list_is_valid_unique_and_sized():
    entries = read_smiles_file()
    canonical = validate_entries(entries)  # raises listing every problem
    assert 400 <= len(entries) <= 1200  # "several hundred"
    assert len(set(canonical)) == len(entries)
    assert len({e.name for e in entries}) == len(entries)
    assert {e.category for e in entries} == set(CATEGORIES)


def test_shipped_split_is_the_seeded_hash_and_spread():
    entries = read_smiles_file()
    for e in entries:
        assert e.split == split_for(e.smiles), e.name
    test = select(entries, "test")
    assert 0.07 <= len(test) / len(entries) <= 0.13
    per_category = collections.Counter(e.category for e in test)
    assert set(per_category) == set(CATEGORIES), "every category has held-out molecules"
    by_name = {e.name: e for e in entries}
    # cluster monomers must be training molecules
    assert by_name["water"].split == by_name["methanol"].split == "train"


def test_shipped_strings_survive_extxyz():
    # the store escapes backslashes (ASE's reader unescapes, its writer doesn't escape)
    for e in read_smiles_file():
        for value in (e.smiles, e.name, e.category):
            escaped = value.replace("\\", "\\\\")
            parsed = key_val_str_to_dict(key_val_dict_to_str({"k": escaped}))["k"]
            assert parsed == value and isinstance(parsed, str), value


def test_substituted_list_is_its_command_output_disjoint_and_from_training_parents(tmp_path):
    from invcalc.data import substitution

    shipped = read_smiles_file("substituted")
    canonical = validate_entries(shipped)
    curated = read_smiles_file()
    assert not set(canonical) & {e.smiles for e in curated}, "no curated molecule repeated"
    for e in shipped:
        assert e.split == split_for(e.smiles), e.name
    parents = {e.name: e for e in curated}
    for e in shipped:
        parent = parents[e.name.rsplit("-", 1)[0]]
        assert parent.split == "train", f"{e.name} derives from a held-out molecule"
        assert e.category == parent.category
    # the file is exactly what its documented command writes
    from invcalc.data.molecules import default_smiles_path

    assert "--count 1500 --seed 0" in default_smiles_path("substituted").read_text().splitlines()[2]
    out = tmp_path / "substituted.smi"
    substitution.main(["--count", "1500", "--seed", "0", "-o", str(out)])
    assert read_smiles_file(out) == shipped


def test_derivatives_substitute_each_carbon_symmetry_class_once():
    from invcalc.data.substitution import SUBSTITUENTS, derivatives

    toluene = MoleculeEntry("Cc1ccccc1", "toluene", "hydrocarbon", "train")
    products = derivatives(toluene)
    # methyl C, ipso has no H, ortho, meta, para: 4 classes
    assert len(products) == 4 * len(SUBSTITUENTS)
    fluoro = {s for n, s in products if "-F" in n}
    assert fluoro == {"Cc1ccccc1F", "Cc1cccc(F)c1", "Cc1ccc(F)cc1", "FCc1ccccc1"}
    chiral = derivatives(MoleculeEntry("C[C@H](N)C(=O)O", "alanine", "amino_acid", "train"))
    products = dict(chiral)
    assert products["alanine-Me1"] == "CC(C)(N)C(=O)O"  # the stereocentre goes away
    assert products["alanine-F0"] == "N[C@@H](CF)C(=O)O"  # and is kept where it stays


def test_shipped_list_names_resolve_and_unknown_names_are_refused():
    from invcalc.data.molecules import default_smiles_path

    assert read_smiles_file("curated") == read_smiles_file()
    with pytest.raises(ValueError, match="no shipped molecule list 'nope'"):
        default_smiles_path("nope")


def test_store_round_trips_stereo_smiles(tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from invcalc.data.store import ResumableExtxyz, read_dataset

    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.info.update(smiles="C/C=C\\C", name="z_but_2_ene", temperature_K=300.0)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.25, forces=[[0, 0, 1.0], [0, 0, -1.0]])
    with ResumableExtxyz(tmp_path / "s.extxyz") as store:
        store.append("t1", [atoms], {})
    (back,) = read_dataset(tmp_path / "s.extxyz")
    assert back.info["smiles"] == "C/C=C\\C" and atoms.info["smiles"] == "C/C=C\\C"
    assert back.get_potential_energy() == -1.25
    np.testing.assert_array_equal(back.get_forces(), [[0, 0, 1.0], [0, 0, -1.0]])


@pytest.mark.parametrize(
    "smiles, why",
    [
        ("[NH4+]", "formal charges"),
        ("[NH3+]CC(=O)[O-]", "formal charges"),  # glycine zwitterion
        ("C[N+](=O)[O-]", "formal charges"),  # nitro: charge-separated
        ("[CH3]", "radical"),
        ("CBr", "not allowed"),
        ("CCCCCCCCCCCCC", "heavy atoms"),
        ("C1CC", "cannot parse"),
    ],
)
def test_validate_rejects(smiles, why):
    with pytest.raises(ValueError, match=why):
        validate_entry(MoleculeEntry(smiles, "x", "small", "train"))


def test_validate_rejects_duplicates_and_bad_names():
    dup = [MoleculeEntry("OCC", "a", "oxygen", "train"), MoleculeEntry("CCO", "b", "oxygen", "train")]
    with pytest.raises(ValueError, match="duplicates"):
        validate_entries(dup)
    for name in ("12", "T", "has space", "1e5"):
        with pytest.raises(ValueError, match="name"):
            validate_entry(MoleculeEntry("C", name, "small", "train"))
    with pytest.raises(ValueError, match=r"\[H\]F"):
        validate_entry(MoleculeEntry("F", "hf", "small", "train"))  # extxyz would read F as False
    assert validate_entry(MoleculeEntry("[H]F", "hf", "unknown", "train")) == "F"


def test_read_custom_list_defaults(tmp_path):
    path = tmp_path / "m.smi"
    path.write_text("# comment\nCCO ethanol\nC#N hcn small test\n")
    e = read_smiles_file(path)
    assert e[0] == MoleculeEntry("CCO", "ethanol", "unknown", split_for("CCO"))
    assert e[1].split == "test"
    path.write_text("CCO\n")
    with pytest.raises(ValueError, match="expected"):
        read_smiles_file(path)


def test_import_has_no_side_effects():
    code = (
        "import os, sys\n"
        "import invcalc.data, invcalc.data.labels, invcalc.data.tasks, invcalc.data.sampling\n"
        "import invcalc.data.conformers, invcalc.data.store, invcalc.data.molecules, invcalc.cli\n"
        "assert 'tblite' not in sys.modules and 'rdkit' not in sys.modules, sorted(sys.modules)\n"
        "assert 'OMP_NUM_THREADS' not in os.environ\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---------------------------------------------------------------- conformers and sampling


def test_conformers_are_reproducible_molecules():
    a = embed_conformers("CCO", 3, seed=7)
    b = embed_conformers("CCO", 3, seed=7)
    assert 1 <= len(a) <= 3 and len(a) == len(b)
    for x, y in zip(a, b):
        assert x.get_chemical_formula() == "C2H6O"
        np.testing.assert_allclose(x.positions, y.positions)
        assert x.info["forcefield"] == "MMFF94"
        assert len(sampling.bond_pairs(x)) == 8
    assert len(embed_conformers("O", 5, seed=0)) == 1  # duplicates pruned
    with pytest.raises(ValueError, match="parse"):
        embed_conformers("C1CC", 1)


def test_rattle_is_seeded_and_keeps_bonds():
    atoms = embed_conformers("CC(=O)O", 1, seed=1)[0]
    a = sampling.rattle(atoms, 3, 0.05, np.random.default_rng(3))
    b = sampling.rattle(atoms, 3, 0.05, np.random.default_rng(3))
    assert len(a) == 3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert sampling.topology_intact(x, sampling.bond_pairs(atoms))
    broken = atoms.copy()
    broken.positions[0] += 5.0
    assert not sampling.topology_intact(broken, sampling.bond_pairs(atoms))


@pytest.mark.parametrize("n", [2, 8, 16])
def test_clusters_do_not_overlap(n):
    rng = np.random.default_rng(n)
    water = embed_conformers("O", 1, seed=0)[0]
    methanol = embed_conformers("CO", 1, seed=0)[0]
    monomers = [water if k % 2 else methanol for k in range(n)]
    cluster = sampling.pack_cluster(monomers, rng, min_distance=2.0)
    assert len(cluster) == sum(len(m) for m in monomers)
    assert sampling.min_intermolecular_distance(cluster) >= 2.0
    assert set(cluster.arrays["mol_id"]) == set(range(n))
    # molecules stay rigid: intramolecular distances are the monomer's
    for k, mono in enumerate(monomers):
        part = cluster[cluster.arrays["mol_id"] == k]
        np.testing.assert_allclose(part.get_all_distances(), mono.get_all_distances(), atol=1e-10)
    again = sampling.pack_cluster(monomers, np.random.default_rng(n), min_distance=2.0)
    np.testing.assert_array_equal(cluster.positions, again.positions)


# ---------------------------------------------------------------- xTB (tblite)


def _one_omp_thread_here():
    try:
        ctypes.CDLL("libgomp.so.1", mode=getattr(os, "RTLD_NOLOAD", 0)).omp_set_num_threads(1)
    except OSError:
        pass


@pytest.fixture(scope="module")
def xtb(one_omp_thread):
    from invcalc.data.labels import make_calculator

    return make_calculator()


def test_xtb_md_hessian_normal_modes(xtb):
    water = embed_conformers("O", 1, seed=0)[0]
    final, path, converged = sampling.relax(water, xtb, n_frames=2)
    assert converged and len(path) == 2
    np.testing.assert_allclose(path[-1].positions, final.positions)
    md = sampling.langevin_md(final, xtb, 800.0, 3, np.random.default_rng(0), interval=5, equilibration=5)
    md2 = sampling.langevin_md(final, xtb, 800.0, 3, np.random.default_rng(0), interval=5, equilibration=5)
    assert len(md) == 3
    # same seed, same trajectory -- up to the SCF tolerance (tblite restarts each SCF
    # from the calculator's previous wavefunction, which differs between the two runs)
    np.testing.assert_allclose(md[-1].positions, md2[-1].positions, atol=1e-4)
    assert np.abs(md[-1].positions - final.positions).max() > 1e-3
    hess = sampling.hessian(final, xtb)
    assert hess.shape == (9, 9)
    np.testing.assert_allclose(hess, hess.T)
    nm = sampling.normal_mode_displacements(final, hess, 300.0, 4, np.random.default_rng(1))
    assert len(nm) == 4
    shifts = [np.abs(f.positions - final.positions).max() for f in nm]
    assert 0.001 < max(shifts) < 0.5  # thermal amplitudes of O-H modes at 300 K
    com = [f.get_center_of_mass() for f in nm]
    np.testing.assert_allclose(com, [final.get_center_of_mass()] * 4, atol=1e-4)


def test_failed_scf_is_skipped(one_omp_thread):
    from invcalc.data.labels import label_structure, make_calculator

    atoms = embed_conformers("CCO", 1, seed=0)[0]
    atoms.rattle(0.3, seed=1)
    assert label_structure(atoms, make_calculator(max_iterations=1)) is None
    record = label_structure(atoms, make_calculator())
    assert record is not None and record["forces"].shape == (9, 3)


TINY = dict(
    n_conformers=1, relax_frames=2, relax_steps=30, md_temperatures_K=(500.0,), md_frames=2,
    md_interval=5, md_equilibration=5, normal_mode_frames=1, normal_mode_temperatures_K=(300.0,),
    rattle_frames=1, cluster_size_range=(2, 3), cluster_relax_frames=1, cluster_relax_steps=5,
    cluster_md_frames=1,
)
TINY_ENTRIES = [
    MoleculeEntry("O", "water", "solvent", "train"),
    MoleculeEntry("C#N", "hydrogen_cyanide", "small", "train"),
    MoleculeEntry("CO", "methanol", "solvent", "test"),
]


@pytest.fixture(scope="module")
def tiny_tasks():
    from invcalc.data.tasks import SamplingConfig, plan_tasks

    return plan_tasks(TINY_ENTRIES, SamplingConfig(**TINY), split="all", seed=5, n_clusters=1)


def _by_key(path):
    from invcalc.data.store import read_dataset

    out = {}
    for atoms in read_dataset(path):
        key = (atoms.info["task_id"], atoms.info["frame"])
        assert key not in out, f"duplicate structure {key}"
        out[key] = atoms
    return out


def _assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].info == b[key].info
        np.testing.assert_allclose(a[key].positions, b[key].positions, atol=atol)
        assert a[key].get_potential_energy() == pytest.approx(b[key].get_potential_energy(), abs=atol)
        np.testing.assert_allclose(a[key].get_forces(), b[key].get_forces(), atol=atol)


@pytest.fixture(scope="module")
def serial_run(tiny_tasks, tmp_path_factory, one_omp_thread):
    from invcalc.data.labels import label_dataset

    path = tmp_path_factory.mktemp("serial") / "tiny.extxyz"
    summary = label_dataset(tiny_tasks, path)
    return path, summary


def test_plan_holds_out_test_molecules(tiny_tasks):
    from invcalc.data.tasks import SamplingConfig, plan_tasks

    train = plan_tasks(TINY_ENTRIES, SamplingConfig(**TINY), split="train", seed=5, n_clusters=1)
    assert all(t.split == "train" for t in train)
    assert "methanol" not in {t.name for t in train}
    assert {t.task_id for t in train} < {t.task_id for t in tiny_tasks}  # ids don't depend on the plan
    assert [t.kind for t in tiny_tasks].count("cluster") == 2  # one per split
    other = plan_tasks(TINY_ENTRIES, SamplingConfig(**TINY), split="all", seed=6, n_clusters=1)
    assert not {t.task_id for t in other} & {t.task_id for t in tiny_tasks}


def test_serial_run_writes_labelled_extxyz(serial_run, tiny_tasks):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    path, summary = serial_run
    assert summary.errors == [] and summary.n_run == len(tiny_tasks) == 5
    assert summary.n_label_failures == 0
    structures = read(path, ":")  # plain ASE read
    assert len(structures) == summary.n_structures > 15
    kinds = collections.Counter(a.info["kind"] for a in structures)
    assert {"relax", "md", "normal_mode", "rattle", "cluster_packed", "cluster_md"} <= set(kinds)
    for atoms in structures:
        assert isinstance(atoms.calc, SinglePointCalculator)
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces().shape == (len(atoms), 3)
        info = atoms.info
        assert info["ref_method"] == "GFN2-xTB" and info["ref_code"].startswith("tblite-")
        assert info["split"] in ("train", "test") and isinstance(info["smiles"], str)
        assert isinstance(info["temperature_K"], float)
        if info["kind"].startswith("cluster"):
            assert sampling.min_intermolecular_distance(atoms) > 1.0
            assert info["n_molecules"] == len(set(atoms.arrays["mol_id"]))
    methanol = [a for a in structures if a.info["name"] == "methanol"]
    assert methanol and all(a.info["split"] == "test" for a in methanol)
    assert {a.info["temperature_K"] for a in structures if a.info["kind"] == "md"} == {500.0}


def test_forces_match_finite_differences(serial_run, one_omp_thread):
    from invcalc.data.labels import make_calculator
    from invcalc.data.store import read_dataset

    atoms = next(a for a in read_dataset(serial_run[0]) if a.info["name"] == "methanol" and a.info["kind"] == "md")
    stored = atoms.get_forces()
    probe = atoms.copy()
    probe.calc = make_calculator(accuracy=0.01)
    h = 2e-3
    numeric = np.zeros_like(stored)
    for i in range(len(probe)):
        for c in range(3):
            e = []
            for sign in (1, -1):
                probe.positions[i, c] = atoms.positions[i, c] + sign * h
                e.append(probe.get_potential_energy())
            probe.positions[i, c] = atoms.positions[i, c]
            numeric[i, c] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(stored, numeric, atol=5e-3)  # observed ~2e-4 eV/Å
    assert np.abs(stored).max() > 0.1  # not trivially zero


def test_thread_and_process_pools_match_serial(serial_run, tiny_tasks, tmp_path):
    from invcalc.data.labels import label_dataset, make_process_pool

    reference = _by_key(serial_run[0])
    # OpenMP thread limits are per thread: give each pool thread one OpenMP thread
    with ThreadPoolExecutor(2, initializer=_one_omp_thread_here) as pool:
        s = label_dataset(tiny_tasks, tmp_path / "threads.extxyz", executor=pool)
    assert s.errors == [] and s.n_run == len(tiny_tasks)
    _assert_same(_by_key(tmp_path / "threads.extxyz"), reference)
    with make_process_pool(2) as pool:
        s = label_dataset(tiny_tasks, tmp_path / "procs.extxyz", executor=pool)
    assert s.errors == [] and s.n_run == len(tiny_tasks)
    _assert_same(_by_key(tmp_path / "procs.extxyz"), reference)


def test_resume_after_interruption(serial_run, tiny_tasks, tmp_path):
    from invcalc.data.labels import label_dataset
    from invcalc.data.store import journal_path, read_journal

    path = tmp_path / "resumed.extxyz"

    def stop(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_dataset(tiny_tasks, path, on_result=stop)
    assert len(read_journal(path)) == 1
    # a crash mid-write leaves a torn structure and a torn journal line behind
    with open(path, "a") as fh:
        fh.write("6\nProperties=species:S:1:pos:R:3 energy=-1.0\nC 0.0 0.0")
    with open(journal_path(path), "a") as fh:
        fh.write('{"task": "mol-water-')
    again = label_dataset(tiny_tasks, path)
    assert again.n_skipped == 1 and again.n_run == len(tiny_tasks) - 1 and again.errors == []
    _assert_same(_by_key(path), _by_key(serial_run[0]))
    assert len(read_journal(path)) == len(tiny_tasks)
    size = path.stat().st_size
    third = label_dataset(tiny_tasks, path)  # nothing left to do
    assert third.n_run == 0 and third.n_skipped == len(tiny_tasks)
    assert path.stat().st_size == size


def test_store_refuses_foreign_or_truncated_files(tmp_path):
    from invcalc.data.store import ResumableExtxyz, journal_path

    foreign = tmp_path / "foreign.extxyz"
    foreign.write_text("1\n\nH 0 0 0\n")
    with pytest.raises(ValueError, match="no journal"):
        ResumableExtxyz(foreign).open()
    cut = tmp_path / "cut.extxyz"
    cut.write_text("")
    journal_path(cut).write_text('{"task": "a", "end": 100, "n": 1}\n')
    with pytest.raises(ValueError, match="shorter"):
        ResumableExtxyz(cut).open()
