"""Model files: tensors plus JSON metadata in one ``torch.save`` file.

The file is a plain dict read back with ``torch.load(weights_only=True)``, which
un-pickles only tensors and primitive containers, so nothing in a file is ever
executed.  Layout::

    {"format": "invcalc-model", "format_version": 1,
     "metadata": "<JSON text>",        # spec, energy unit, reference method, training...
     "tensors": {name: Tensor}}         # the potential's state_dict, bit-exact
"""

from __future__ import annotations

import json
import os
import typing as tp
import zipfile

import torch

from invcalc.potential import InvariantPotential
from invcalc.spec import ModelSpec

FORMAT = "invcalc-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupt or not an invcalc model."""


def save_model(potential: InvariantPotential, path: str | os.PathLike, **metadata: tp.Any) -> None:
    """Write ``potential`` and JSON-able ``metadata`` (e.g. reference_method, training).

    The file is written to a temporary name and renamed, so an interrupted save never
    leaves a truncated model behind.
    """
    info = dict(metadata)
    info["spec"] = potential.spec.to_json()
    try:
        text = json.dumps(info)
    except TypeError as err:
        raise TypeError(f"model metadata must be JSON-serialisable: {err}") from None
    tensors = {k: v.detach().cpu().clone() for k, v in potential.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": text,
        "tensors": tensors,
    }
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict[str, tp.Any]:
    """The metadata dict of a model file (``spec`` included)."""
    return _read(path)[0]


def load_model(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> InvariantPotential:
    """Rebuild the potential saved at ``path`` in eval mode (float32 unless ``dtype``).

    Raises ``ModelFileError`` naming the file when it is unreadable or not a model.
    """
    metadata, tensors = _read(path)
    name = os.fspath(path)
    try:
        spec = ModelSpec.from_json(metadata["spec"])
        potential = InvariantPotential.from_spec(spec)
        potential.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{name}: inconsistent model file ({err})") from err
    potential.metadata = metadata
    potential.eval()
    potential.requires_grad_(False)
    if device is not None or dtype is not None:
        potential.to(device=device, dtype=dtype)
    return potential


def _read(path: str | os.PathLike) -> tuple[dict[str, tp.Any], dict[str, torch.Tensor]]:
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ModelFileError(f"{name}: no such model file")
    try:
        payload = torch.load(name, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise ModelFileError(f"{name}: not a readable invcalc model file ({err})") from err
    except Exception as err:  # weights_only refusals raise pickle's UnpicklingError
        raise ModelFileError(f"{name}: refused to load ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{name}: not an invcalc model file")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{name}: model format version {version!r} is not supported "
            f"(this invcalc reads version {FORMAT_VERSION})"
        )
    try:
        metadata = json.loads(payload["metadata"])
        tensors = payload["tensors"]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{name}: damaged metadata ({err})") from err
    if not isinstance(tensors, dict) or not all(
        isinstance(v, torch.Tensor) for v in tensors.values()
    ):
        raise ModelFileError(f"{name}: damaged tensor table")
    return metadata, tensors
