"""Built-in model names: the embedded default and torchani's published models."""

from __future__ import annotations

import urllib.error

import pytest
import torchani

from invcalc import InvCalc, ModelNotAvailableError


def test_missing_default_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(
        "invcalc.builtin.default_model_path", lambda: str(tmp_path / "default.pt")
    )
    with pytest.raises(ModelNotAvailableError, match="no embedded default model"):
        InvCalc()


@pytest.mark.parametrize("name", ["ani1x", "ani2x", "ani1ccx"])
def test_offline_torchani_download_is_a_clear_error(monkeypatch, name):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    factory = {"ani1x": "ANI1x", "ani2x": "ANI2x", "ani1ccx": "ANI1ccx"}[name]
    monkeypatch.setattr(torchani.models, factory, offline)
    with pytest.raises(ModelNotAvailableError, match=f"{name}.*offline"):
        InvCalc(name)


def test_unknown_names_and_paths():
    with pytest.raises(FileNotFoundError, match="neither a model file nor a built-in"):
        InvCalc("ani3x")
    with pytest.raises(TypeError, match="model must be"):
        InvCalc(42)
