"""Every example runs (on a model built here when no default model is installed)."""

from __future__ import annotations

import os
import runpy
import sys

import pytest

from invcalc import save_model
from invcalc.builtin import default_model_path
from conftest import morse_potential

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def _run(script: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(os.path.join(EXAMPLES, script), run_name="__main__")


def test_quickstart_on_a_model_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "morse.pt"
    save_model(morse_potential(), path)
    _run("quickstart.py", ["--model", str(path), "--steps", "20"], monkeypatch)
    out = capsys.readouterr().out
    assert "relaxed in" in out and "E_pot/eV" in out


@pytest.mark.skipif(not os.path.isfile(default_model_path()), reason="no default model installed")
def test_quickstart_on_the_default_model(monkeypatch, capsys):
    _run("quickstart.py", ["--steps", "20"], monkeypatch)
    assert "embedded default" in capsys.readouterr().out
