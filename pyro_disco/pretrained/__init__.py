"""Pretrained DiScoFormer weights shipped with the package, and the only place weight files are read.

Weight files hold a plain dict (``config``, ``state_dict``, ``metadata``) saved with
``torch.save`` and are loaded with ``weights_only=True`` (no unpickling of arbitrary
objects); every shipped file is checked against the sha256 recorded in this module's
registry before it is loaded.

Example:
    >>> from pyro_disco.pretrained import available_dims
    >>> isinstance(available_dims(), list)
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_disco._validation import checked_once
from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.nn import DiScoFormer, UniversalDiScoFormer, model_from_config

__all__ = [
    "available_dims",
    "available_models",
    "auto_dims",
    "default_model_name",
    "load_model",
    "load_weights",
    "model_from_state",
    "save_weights",
    "registry_path",
    "RegistryError",
    "pretrained_estimator",
    "WEIGHTS_DIR",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_REGISTRY_FILE = Path(__file__).resolve().parent / "registry.json"


def registry_path() -> Path:
    """The registry file (name -> entry) that ``pyro-disco export`` writes and the loaders read."""
    return _REGISTRY_FILE


def _registry() -> dict[str, dict]:
    """Name -> entry, written by ``pyro-disco export``: ``{"file", "sha256", "dim", "auto"}`` for a
    per-dimension model (``auto``: bool), ``{"file", "sha256", "dims": [lo, hi], "auto": [d, ...]}``
    for the universal one (``auto``: the dimensions where it is the default)."""
    path = _REGISTRY_FILE
    if not path.exists():
        raise RegistryError(
            f"the pretrained-model registry {path} is missing; reinstall pyro_disco "
            "(without it no shipped model can be verified, and 'auto' would silently fall back to KDE)"
        )
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"the pretrained-model registry {path} is unreadable: {exc}") from exc
    if not isinstance(entries, dict):
        raise RegistryError(f"the pretrained-model registry {path} must map names to entries")
    for name, entry in entries.items():
        _check_entry(name, entry, path)
    return entries


class RegistryError(RuntimeError):
    """The registry of shipped models is missing, unreadable or has an invalid entry."""


def _check_entry(name: str, entry: object, path: Path) -> None:
    if not isinstance(entry, dict):
        raise RegistryError(f"{path}: entry {name!r} must be an object, got {entry!r}")
    file = entry.get("file")
    if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
        raise RegistryError(f"{path}: entry {name!r} has an invalid file name {file!r}")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not sha:
        raise RegistryError(
            f"{path}: entry {name!r} has no sha256 (got {sha!r}); every shipped model must be verifiable"
        )
    if "dim" not in entry and "dims" not in entry:
        raise RegistryError(f"{path}: entry {name!r} has neither 'dim' nor 'dims'")


def _entry_dims(entry: dict) -> list[int]:
    if "dims" in entry:
        lo, hi = entry["dims"]
        return list(range(int(lo), int(hi) + 1))
    return [int(entry["dim"])]


def _entry_auto(entry: dict) -> list[int]:
    auto = entry.get("auto", True)
    if isinstance(auto, bool):
        return _entry_dims(entry) if auto else []
    return [int(d) for d in auto]


def available_models() -> dict[str, list[int]]:
    """Shipped model names and the dimensions each serves."""
    return {name: _entry_dims(entry) for name, entry in _registry().items()}


def available_dims() -> list[int]:
    """Dimensions for which pretrained weights ship with the package."""
    return sorted({d for dims in available_models().values() for d in dims})


def auto_dims() -> list[int]:
    """Dimensions where ``estimator="auto"`` picks the transformer: a shipped model that the
    accuracy benchmark found better than Scott's KDE (registry field ``"auto"``)."""
    return sorted({d for e in _registry().values() for d in _entry_auto(e)})


def default_model_name(dim: int) -> str:
    """The shipped model used for samples of dimension ``dim``: one whose registry ``auto``
    covers ``dim`` (the universal model first: it is only marked there where the benchmark found
    it at least as good as the per-dimension model), else the per-dimension model, else the
    universal one."""
    registry = _registry()
    covering = [n for n, e in registry.items() if dim in _entry_dims(e)]
    if not covering:
        raise ValueError(
            f"no pretrained DiScoFormer for d={dim}; shipped dimensions: {available_dims()}. "
            "Use estimator='kde' (Gaussian KDE), or train one with `pyro-disco train --dim "
            f"{dim} --out RUN` and load it with pyro_disco.pretrained.load_weights"
        )

    def rank(name: str) -> tuple[int, int]:
        entry = registry[name]
        return (dim not in _entry_auto(entry), ("dims" in entry) != (dim in _entry_auto(entry)))

    return min(covering, key=rank)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(path: str | Path, sha256: str | None = None) -> DiScoFormer | UniversalDiScoFormer:
    """Load a DiScoFormer from a weight file written by :func:`save_weights`, without
    unpickling; verify ``sha256`` when given. (A training ``checkpoint.pt`` is read by
    :func:`pyro_disco.training.export.load_checkpoint`.)"""
    path = Path(path)
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ValueError(
                f"sha256 mismatch for {path}: expected {sha256}, got {actual}; the file was modified"
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:
        return model_from_state(state["config"], state["state_dict"])
    if "model" in state and "model_config" in state:
        raise ValueError(
            f"{path} is a training checkpoint, not a weight file: load it with "
            "pyro_disco.training.export.load_checkpoint (or export it with `pyro-disco export`)"
        )
    raise ValueError(f"{path} is not a DiScoFormer weight file (no config/state_dict)")


def model_from_state(config: dict, state_dict: dict) -> DiScoFormer | UniversalDiScoFormer:
    """A frozen network in eval mode from a config dict and its weights (as stored in weight
    files and training checkpoints)."""
    model = model_from_config(config)
    model.load_state_dict(state_dict)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save_weights(model: DiScoFormer, path: str | Path, metadata: dict | None = None) -> str:
    """Write ``model`` (config + float32 weights + metadata) and return the file's sha256."""
    state = {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # atomic: a failed write never leaves a truncated weight file under the real name
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sha256_file(path)


@lru_cache(maxsize=8)
def load_model(name_or_dim: str | int) -> DiScoFormer | UniversalDiScoFormer:
    """The shipped model with this name, or the default one for this dimension (shared and
    read-only: never modify it in place; :meth:`DiScoFormerEstimator.adapt` copies it)."""
    registry = _registry()
    if isinstance(name_or_dim, int):
        name = default_model_name(name_or_dim)
    else:
        name = name_or_dim
        if name not in registry:
            raise ValueError(f"unknown pretrained model {name!r}; available: {sorted(registry)}")
    entry = registry[name]
    return load_weights(WEIGHTS_DIR / entry["file"], sha256=entry["sha256"])


def pretrained_estimator(samples: Tensor, name: str | None = None, **kwargs: Any) -> DiScoFormerEstimator:
    """A :class:`~pyro_disco.estimators.transformer.DiScoFormerEstimator` on ``samples`` with
    the shipped model for their dimension (or the named one)."""
    with checked_once(samples) as x:  # the estimator skips the repeat check
        model = load_model(name if name is not None else int(x.shape[1]))
        return DiScoFormerEstimator(model, x, **kwargs)
