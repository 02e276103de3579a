"""Models known by name: the embedded default and torchani's published ANI models."""

from __future__ import annotations

import os
import typing as tp
from importlib import resources

from invcalc.potential import InvariantPotential

BuiltinName = tp.Literal["default", "ani1x", "ani2x", "ani1ccx"]

#: File name of the embedded default model inside ``invcalc/models``.
DEFAULT_MODEL_FILE = "default.pt"

_TORCHANI_FACTORIES = {"ani1x": "ANI1x", "ani2x": "ANI2x", "ani1ccx": "ANI1ccx"}


class ModelNotAvailableError(RuntimeError):
    """A named model cannot be had here (not installed, or a download failed)."""


def builtin_names() -> tuple[str, ...]:
    """Names accepted by ``load_builtin``."""
    return ("default", *_TORCHANI_FACTORIES)


def default_model_path() -> str:
    """Path of the embedded default model file (it may not exist)."""
    return os.fspath(resources.files("invcalc") / "models" / DEFAULT_MODEL_FILE)


def load_builtin(name: str) -> InvariantPotential:
    """Load a model by name: ``"default"`` or one of torchani's ANI models.

    torchani downloads its published weights on first use; offline, this raises
    ``ModelNotAvailableError`` saying so.
    """
    if name == "default":
        from invcalc.modelfile import load_model

        path = default_model_path()
        if not os.path.isfile(path):
            raise ModelNotAvailableError(
                f"no embedded default model is installed ({path} is missing); pass a "
                "model file path, an InvariantPotential or a torchani model instead"
            )
        return load_model(path)
    if name not in _TORCHANI_FACTORIES:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(builtin_names())}")
    import torchani

    factory = getattr(torchani.models, _TORCHANI_FACTORIES[name])
    try:
        model = factory()
    except Exception as err:  # urllib/huggingface errors vary by version and network
        raise ModelNotAvailableError(
            f"could not obtain torchani's {name} weights: torchani downloads them on first "
            f"use and this failed (offline?): {type(err).__name__}: {err}"
        ) from err
    return InvariantPotential.from_torchani(model)


def resolve_model(model: tp.Any) -> InvariantPotential:
    """An ``InvariantPotential`` from what ``InvCalc(model=...)`` accepts.

    ``None`` (the embedded default), a built-in name, a model-file path, an
    ``InvariantPotential`` (used as is) or a torchani ANI model (wrapped).
    """
    import torch

    if model is None:
        model = "default"
    if isinstance(model, InvariantPotential):
        return model
    if isinstance(model, torch.nn.Module):
        return InvariantPotential.from_torchani(model)
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        if text in builtin_names():
            return load_builtin(text)
        if os.path.exists(text):
            from invcalc.modelfile import load_model

            return load_model(text)
        raise FileNotFoundError(
            f"{text!r} is neither a model file nor a built-in model name "
            f"({', '.join(builtin_names())})"
        )
    raise TypeError(
        "model must be None, a built-in name, a path, an InvariantPotential or a "
        f"torchani ANI model, not {type(model).__name__}"
    )
