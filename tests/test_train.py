"""Training: data reading, self-energies, per-member losses, fit, outputs and resumption.

The reference is a known random ``InvariantPotential`` (the "teacher") labelling
rattled small H/C/O molecules, so every label is exact and cheap.
"""

from __future__ import annotations

import argparse
import json
import shlex

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import invcalc
from invcalc import InvCalc, InvariantPotential, UnsupportedElementError
from invcalc.derivatives import evaluate
from invcalc.train import CheckpointError, TrainConfig, add_train_arguments, config_from_args
from invcalc.train import fit, fit_self_energies, read_labelled, run_train
from invcalc.training.batches import PairCache, make_batch
from invcalc.training.checkpoint import load_checkpoint
from invcalc.training.dataset import split_indices
from invcalc.training.objective import loss_terms, member_outputs
from invcalc.units import ev_per

from conftest import SMALL_FEATURES

ELEMENTS = ("H", "C", "O")
TRUE_E0 = [-13.6, -1029.8, -2041.3]
NAMES = ["H2O", "CH4", "CH3OH", "C2H6", "H2CO", "HCOOH", "CH3CHO", "CH3CH2OH", "C2H4", "CO2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tests share the machine: run this module on one intra-op thread, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def teacher() -> InvariantPotential:
    return InvariantPotential.build(
        ELEMENTS, features=SMALL_FEATURES, hidden=(16, 16), self_energies=TRUE_E0, seed=7
    ).double().eval()


def labelled_molecules(count: int = 40) -> list[Atoms]:
    """Rattled H/C/O molecules with the teacher's energies (eV) and forces (eV/Å)."""
    model, images = teacher(), []
    for k in range(count):
        atoms = molecule(NAMES[k % len(NAMES)])
        atoms.rattle(0.08, seed=k)
        atoms.info["reference_method"] = "teacher"
        atoms.info["name"] = NAMES[k % len(NAMES)]
        z = torch.tensor(atoms.numbers).unsqueeze(0)
        pos = torch.tensor(atoms.positions - atoms.positions.mean(0)).unsqueeze(0)
        ev = evaluate(model, z, pos)
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(ev.energies.total[0]), forces=ev.forces[0].numpy()
        )
        images.append(atoms)
    return images


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "train.extxyz"
    ase.io.write(path, labelled_molecules())
    return str(path)


def small_config(data: str, out, **kw) -> TrainConfig:
    base = dict(
        data=data, out=str(out), features=SMALL_FEATURES, hidden=(16, 16), ensemble_size=2,
        epochs=4, batch_size=8, lr=3e-3, progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---- reading ------------------------------------------------------------------------


def test_reads_extxyz_and_db_alike(data_file, tmp_path):
    xyz = read_labelled(data_file)
    db_path = tmp_path / "train.db"
    with ase.db.connect(db_path) as db:
        for atoms in ase.io.read(data_file, index=":"):
            db.write(atoms)
    db = read_labelled(db_path)
    assert len(xyz) == len(db) == 40
    assert xyz.elements == ELEMENTS and xyz.reference_method == "teacher"
    torch.testing.assert_close(db.energies, xyz.energies, rtol=0, atol=1e-9)
    torch.testing.assert_close(db.forces, xyz.forces, rtol=0, atol=1e-9)
    centred = torch.zeros(40, 3, dtype=torch.float64)
    torch.testing.assert_close(xyz.positions.sum(1), centred, atol=1e-9, rtol=0)
    padding = xyz.num_atoms[:, None] <= torch.arange(xyz.numbers.shape[1])
    assert bool((xyz.numbers[padding] == -1).all()) and bool((xyz.numbers[~padding] > 0).all())


def test_missing_labels_give_clear_errors(tmp_path):
    bare = molecule("H2O")
    ase.io.write(tmp_path / "none.extxyz", [bare])
    with pytest.raises(ValueError, match=r"none.extxyz, structure 0: no energy label"):
        read_labelled(tmp_path / "none.extxyz")
    only_energy = molecule("H2O")
    only_energy.calc = SinglePointCalculator(only_energy, energy=-1.0)
    ase.io.write(tmp_path / "energy.extxyz", [labelled_molecules(1)[0], only_energy])
    with pytest.raises(ValueError, match=r"energy.extxyz, structure 1: no force labels"):
        read_labelled(tmp_path / "energy.extxyz")
    with pytest.raises(ValueError, match=r"no energy under atoms.info\['dft_energy'\]"):
        read_labelled(tmp_path / "energy.extxyz", energy_key="dft_energy")
    with pytest.raises(FileNotFoundError):
        read_labelled(tmp_path / "absent.extxyz")


def test_other_bad_structures_are_refused(tmp_path):
    good = labelled_molecules(1)[0]
    periodic = good.copy()
    periodic.calc = SinglePointCalculator(periodic, energy=-1.0, forces=np.zeros((3, 3)))
    periodic.cell, periodic.pbc = [8, 8, 8], True
    ase.io.write(tmp_path / "pbc.extxyz", [good, periodic])
    with pytest.raises(ValueError, match="structure 1: periodic structures are not supported"):
        read_labelled(tmp_path / "pbc.extxyz")
    other = good.copy()
    other.calc = SinglePointCalculator(other, energy=-1.0, forces=np.zeros((3, 3)))
    other.info["reference_method"] = "other"
    ase.io.write(tmp_path / "mixed.extxyz", [good, other])
    with pytest.raises(ValueError, match="mix reference methods"):
        read_labelled(tmp_path / "mixed.extxyz")
    held_out = good.copy()
    held_out.calc = SinglePointCalculator(held_out, energy=-1.0, forces=np.zeros((3, 3)))
    held_out.info["split"] = "test"
    ase.io.write(tmp_path / "test_split.extxyz", [good, held_out])
    with pytest.raises(ValueError, match="structure 1: marked info\\['split'\\] = 'test'"):
        read_labelled(tmp_path / "test_split.extxyz")


def test_elements_must_match_the_data(data_file, tmp_path):
    with pytest.raises(UnsupportedElementError, match="unsupported element"):
        fit(small_config(data_file, tmp_path / "m.pt", elements=("H", "C")))
    with pytest.raises(ValueError, match="no training structure contains N"):
        fit(small_config(data_file, tmp_path / "m.pt", elements=("H", "C", "N", "O")))


def test_split_is_seeded_disjoint_and_keeps_groups(tmp_path):
    images = labelled_molecules(30)
    ase.io.write(tmp_path / "d.extxyz", images)
    data = read_labelled(tmp_path / "d.extxyz", group_key="name")
    train, val = split_indices(data, 0.2, seed=3)
    again = split_indices(data, 0.2, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert sorted(train.tolist() + val.tolist()) == list(range(30))
    assert len(val) == 6  # two whole molecules of three conformers each
    names = lambda idx: {images[i].info["name"] for i in idx.tolist()}  # noqa: E731
    assert not names(train) & names(val)
    assert not torch.equal(val, split_indices(data, 0.2, seed=4)[1])


# ---- self-energies ------------------------------------------------------------------


def test_self_energy_regression_is_exact_on_linear_data():
    rng = np.random.default_rng(0)
    counts = torch.tensor(rng.integers(0, 12, size=(50, 4)), dtype=torch.float64)
    counts[:, 0] += 1
    e0 = torch.tensor([-13.587, -1029.86, -1484.27, -2041.84], dtype=torch.float64)
    fitted = fit_self_energies(counts, counts @ e0)
    assert fitted.rank == 4 and fitted.rmse_per_atom < 1e-10
    torch.testing.assert_close(fitted.self_energies, e0, rtol=0, atol=1e-9)


def test_self_energy_regression_warns_when_undetermined():
    counts = torch.tensor([[4.0, 1.0]] * 5, dtype=torch.float64)  # only CH4 conformers
    with pytest.warns(UserWarning, match="determine only 1 of 2"):
        fitted = fit_self_energies(counts, torch.full((5,), -1085.0, dtype=torch.float64))
    assert float(counts[0] @ fitted.self_energies) == pytest.approx(-1085.0, abs=1e-9)


# ---- objective ----------------------------------------------------------------------


def test_cached_pairs_and_member_forces_are_exact(data_file):
    data = read_labelled(data_file)
    pot = InvariantPotential.build(
        ELEMENTS, features=SMALL_FEATURES, hidden=(8,), ensemble_size=3, seed=1
    ).double()
    cache = PairCache.build(data, pot.element_indices, pot.cutoff, torch.float64)
    index = torch.tensor([5, 0, 17, 33, 2])
    batch = make_batch(data, cache, index, torch.float64)
    out = member_outputs(pot, batch, forces=True, create_graph=False)
    ref = pot(batch.numbers, batch.positions)  # pairs searched afresh
    torch.testing.assert_close(out.energies, ref.members, rtol=0, atol=1e-10)
    for m in range(3):
        pos = batch.positions.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(pot(batch.numbers, pos).members[m].sum(), pos)
        torch.testing.assert_close(out.forces[m], -g, rtol=0, atol=1e-10)


def test_members_learn_only_from_their_own_loss(data_file):
    data = read_labelled(data_file)
    pot = InvariantPotential.build(
        ELEMENTS, features=SMALL_FEATURES, hidden=(8,), ensemble_size=2, seed=1
    ).double()
    cache = PairCache.build(data, pot.element_indices, pot.cutoff, torch.float64)
    batch = make_batch(data, cache, torch.arange(8), torch.float64)

    def member1_grads() -> list[torch.Tensor]:
        pot.zero_grad()
        out = member_outputs(pot, batch, forces=True, create_graph=True)
        loss_terms(out, batch).total(1.0).sum().backward()
        return [p.grad.clone() for p in pot.networks.members[1].parameters()]

    before = member1_grads()
    with torch.no_grad():
        for p in pot.networks.members[0].parameters():
            p.add_(0.1 * torch.randn_like(p))
    for a, b in zip(before, member1_grads()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- fit ----------------------------------------------------------------------------


def test_fit_learns_and_writes_model_plot_and_metrics(data_file, tmp_path):
    cfg = small_config(data_file, tmp_path / "model.pt", epochs=6)
    result = fit(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["monitored_loss"] < result.history[0]["monitored_loss"]
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(result.metrics_path.read_text())
    val = report["validation"]
    assert val["num_structures"] == 4 and report["data"]["num_train"] == 36
    for key in ("energy_mae_per_atom_eV", "energy_rmse_per_molecule_kcal_mol",
                "force_rmse_eV_per_A"):
        assert np.isfinite(val[key])
    kcal = ev_per("kcal/mol")
    per_molecule = val["energy_mae_per_molecule_eV"] / kcal
    assert val["energy_mae_per_molecule_kcal_mol"] == pytest.approx(per_molecule)
    assert set(val["force_mae_per_element_eV_per_A"]) == set(ELEMENTS)

    model = invcalc.load_model(result.model_path)
    meta = model.metadata
    assert meta["reference_method"] == "teacher"
    assert meta["training"]["data"]["num_structures"] == 40
    assert meta["training"]["command"].startswith("invcalc train ")
    assert TrainConfig.from_json(meta["training"]["config"]) == cfg
    assert meta["validation_metrics"]["force_mae_eV_per_A"] == val["force_mae_eV_per_A"]
    assert model.ensemble_size == 2
    for name, tensor in result.potential.state_dict().items():
        assert torch.equal(tensor.cpu(), model.state_dict()[name]), name

    atoms = labelled_molecules(3)[2]
    reference = atoms.get_potential_energy()
    atoms.calc = InvCalc(str(result.model_path), device="cpu", dtype=torch.float64)
    energy = atoms.get_potential_energy()
    assert abs(energy - reference) / len(atoms) < 0.05  # eV/atom, after 6 tiny epochs
    assert atoms.calc.get_property("energy_uncertainty") > 0
    assert atoms.get_forces().shape == (len(atoms), 3)


def test_interrupted_run_resumes_exactly(data_file, tmp_path):
    whole = fit(small_config(data_file, tmp_path / "a.pt", epochs=4))

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    cfg = small_config(data_file, tmp_path / "b.pt", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, callback=interrupt)
    ckpt = load_checkpoint(cfg.checkpoint_path)
    steps_per_epoch = -(-36 // 8)
    assert ckpt.progress.epoch == 2 and len(ckpt.progress.history) == 2
    assert all(
        int(s["step"]) == 2 * steps_per_epoch for s in ckpt.optimizer["state"].values()
    )
    resumed = fit(dataclass_replace(cfg, resume=True))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    for name, tensor in whole.potential.state_dict().items():
        assert torch.equal(tensor, resumed.potential.state_dict()[name]), name

    with pytest.raises(CheckpointError, match="hidden"):
        fit(dataclass_replace(cfg, resume=True, hidden=(8, 8)))


def dataclass_replace(cfg: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def test_command_line_round_trip_and_run(data_file, tmp_path, capsys):
    cfg = small_config(data_file, tmp_path / "cli.pt", epochs=1, ensemble_size=1, plot=False)
    parser = add_train_arguments(argparse.ArgumentParser(prog="invcalc train"))
    args = parser.parse_args(shlex.split(cfg.command())[2:])
    assert args.resume  # the command line resumes by default: rerun to continue
    assert config_from_args(args) == dataclass_replace(cfg, resume=True)
    assert run_train(args) == 0
    assert "force MAE" in capsys.readouterr().out
    assert (tmp_path / "cli.pt").is_file() and (tmp_path / "cli.metrics.json").is_file()
    assert not (tmp_path / "cli.parity.png").exists()


def test_keep_writes_the_last_or_the_best_epochs_weights(data_file, tmp_path):
    # a rate far too high, so that the last epoch is not the best one
    cfg = small_config(data_file, tmp_path / "k.pt", epochs=3, lr=0.3)
    best = fit(cfg)
    ckpt = load_checkpoint(cfg.checkpoint_path)
    assert best.best_epoch < 3 and best.report["kept_epoch"] == best.best_epoch
    # resuming a finished run with keep="last" trains no more and writes the last weights
    last = fit(dataclass_replace(cfg, resume=True, keep="last"))
    assert [h["epoch"] for h in last.history] == [1, 2, 3]
    assert last.report["kept_epoch"] == 3
    written = invcalc.load_model(last.model_path).state_dict()
    for name, tensor in ckpt.model.items():
        assert torch.equal(tensor.cpu(), last.potential.state_dict()[name].cpu()), name
        assert torch.equal(tensor.cpu(), written[name]), name
    for name, tensor in ckpt.best_model.items():
        assert torch.equal(tensor.cpu(), best.potential.state_dict()[name].cpu()), name
    assert any(not torch.equal(ckpt.model[k], ckpt.best_model[k]) for k in ckpt.model)
    with pytest.raises(ValueError, match="keep"):
        dataclass_replace(cfg, keep="first")


def test_fine_tuning_starts_from_the_model_and_keeps_its_architecture(data_file, tmp_path):
    base = fit(small_config(data_file, tmp_path / "base.pt", epochs=2, plot=False))
    start = invcalc.load_model(base.model_path).state_dict()
    # a rate so small that one epoch cannot move the weights measurably
    tuned = fit(small_config(data_file, tmp_path / "tuned.pt", epochs=1, lr=1e-12,
                             init=str(base.model_path), plot=False))
    for name, tensor in start.items():
        torch.testing.assert_close(tuned.potential.state_dict()[name].cpu(), tensor,
                                   rtol=0, atol=1e-8, msg=name)
    assert torch.equal(tuned.potential.self_energies.cpu(), start["self_energies"])
    assert tuned.report["self_energy_fit"]["used"] is False
    assert tuned.history[0]["monitored_loss"] == pytest.approx(
        base.history[base.best_epoch - 1]["monitored_loss"], rel=1e-6)
    # a fresh run with the same settings starts elsewhere
    fresh = fit(small_config(data_file, tmp_path / "fresh.pt", epochs=1, lr=1e-12, plot=False))
    assert fresh.history[0]["monitored_loss"] > 2 * tuned.history[0]["monitored_loss"]
    with pytest.raises(ValueError, match=r"hidden \(8, 8\) \(the model has \(16, 16\)\)"):
        fit(small_config(data_file, tmp_path / "bad.pt", hidden=(8, 8), init=str(base.model_path)))
    # on the command line the architecture defaults to the model's
    parser = add_train_arguments(argparse.ArgumentParser(prog="invcalc train"))
    args = parser.parse_args([data_file, "--out", str(tmp_path / "c.pt"), "--init", str(base.model_path)])
    cfg = config_from_args(args)
    assert (cfg.hidden, cfg.ensemble_size, cfg.features, cfg.elements) == ((16, 16), 2, SMALL_FEATURES, ELEMENTS)


def test_max_force_leaves_out_the_structures_with_larger_forces(data_file, tmp_path):
    data = read_labelled(data_file)
    largest = data.max_force()
    expected = [np.linalg.norm(a.get_forces(), axis=1).max() for a in ase.io.read(data_file, ":")]
    np.testing.assert_allclose(largest.numpy(), expected, rtol=1e-12)
    limit = float(largest.median())
    kept = int((largest <= limit).sum())
    assert 0 < kept < len(data)
    result = fit(small_config(data_file, tmp_path / "mf.pt", epochs=1, max_force=limit, plot=False))
    info = result.report["data"]
    assert info["num_structures"] == kept
    assert info["num_left_out_max_force"] == len(data) - kept
    assert info["num_train"] + info["num_validation"] == kept
    with pytest.raises(ValueError, match="every structure has a force above"):
        fit(small_config(data_file, tmp_path / "none.pt", max_force=1e-9 * limit))
    with pytest.raises(ValueError, match="max_force must be positive"):
        small_config(data_file, tmp_path / "neg.pt", max_force=-1.0)
