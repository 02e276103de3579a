"""Model files: bit-exact round trip, clear errors, nothing executed on load."""

from __future__ import annotations

import pickle

import pytest
import torch

from invcalc import InvCalc, ModelFileError, load_model, save_model
from invcalc.modelfile import read_metadata
from conftest import make_potential


def test_round_trip_is_bit_exact(tmp_path, ethanol):
    pot = make_potential(ensemble_size=2, dtype=torch.float32)
    path = tmp_path / "m.pt"
    save_model(pot, path, reference_method="GFN2-xTB", training={"epochs": 3})
    loaded = load_model(path)
    a, b = pot.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert loaded.spec == pot.spec
    assert loaded.metadata["reference_method"] == "GFN2-xTB"
    assert read_metadata(path)["training"] == {"epochs": 3}
    ethanol.calc = InvCalc(pot, device="cpu")
    e = ethanol.get_potential_energy()
    ethanol.calc = InvCalc(path, device="cpu")
    assert ethanol.get_potential_energy() == e


def test_file_loads_with_weights_only(tmp_path):
    save_model(make_potential(), tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["format"] == "invcalc-model"


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_model(make_potential(), tmp_path / "m.pt", bad=object())


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = tmp_path / "m.pt"
    save_model(make_potential(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=str(path)):
        load_model(path)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelFileError, match="junk.pt"):
        load_model(path)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, path)
    with pytest.raises(ModelFileError, match="not an invcalc model"):
        load_model(path)


def test_wrong_version_and_mismatched_tensors(tmp_path):
    pot = make_potential()
    path = tmp_path / "m.pt"
    save_model(pot, path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="version 99"):
        load_model(path)
    payload["format_version"] = 1
    payload["tensors"].pop("self_energies")
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="inconsistent"):
        load_model(path)


class _Exploit:
    def __reduce__(self):
        return (print, ("code from the model file ran",))


def test_code_in_a_file_is_never_run(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "invcalc-model", "payload": _Exploit()}, path, pickle_protocol=2)
    with pytest.raises(ModelFileError, match="evil.pt"):
        load_model(path)
    assert "code from the model file ran" not in capsys.readouterr().out
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_Exploit(), f)
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "plain.pkl")
    assert "ran" not in capsys.readouterr().out
