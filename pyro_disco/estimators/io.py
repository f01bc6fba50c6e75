"""Save, load and move fitted estimators: a plain dict of tensors and a config, never a pickle.

A saved file holds ``{"format", "version", "kind", "config", "tensors"}``: the samples, any
weights or fixed shifts, the network's ``state_dict`` for the transformer, and only strings,
numbers, lists and dicts besides. :func:`load_estimator` reads it with
``torch.load(weights_only=True)`` (torch's safe loader: no code runs) and rebuilds the
estimator by its constructor, so the loaded one answers exactly as the saved one did.

Kinds: :class:`GaussianKDE`, :class:`SDKDE` (the shift along the score at the samples is
stored; the loaded estimator keeps it fixed), :class:`EmpSDKDE`,
:class:`WeightedGaussianKDE` and :class:`DiScoFormerEstimator` (test-time adapted weights
included).

Example:
    >>> import tempfile, os
    >>> kde = GaussianKDE(torch.randn(200, 2, dtype=torch.float64))
    >>> path = os.path.join(tempfile.mkdtemp(), "kde.pt")
    >>> save_estimator(kde, path)
    >>> again = load_estimator(path)
    >>> q = torch.zeros(1, 2, dtype=torch.float64)
    >>> torch.equal(again.logdensity(q), kde.logdensity(q))
    True
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_disco.estimators.base import _IO_HOOKS, SampleEstimator
from pyro_disco.estimators.kde import SDKDE, EmpSDKDE, GaussianKDE
from pyro_disco.estimators.transformer import DiScoFormerEstimator
from pyro_disco.estimators.weighted import WeightedGaussianKDE
from pyro_disco.nn import model_from_config

__all__ = ["save_estimator", "load_estimator", "estimator_state", "estimator_from_state", "move_estimator"]

FORMAT, VERSION = "pyro-disco-estimator", 1


def _kernel_config(est: GaussianKDE | WeightedGaussianKDE) -> tuple[dict, dict]:
    """The KDE constructor's arguments: a bandwidth factor, or the explicit covariance given."""
    cov_arg = getattr(est, "_covariance_arg", None)
    config: dict = {"block_size": int(est.block_size)}
    if hasattr(est, "whitening_method"):  # not the weighted KDE
        config["whitening"] = est.whitening_method
    tensors: dict = {}
    if cov_arg is None:
        config["bandwidth"] = float(est.bandwidth)
    elif isinstance(cov_arg, (int, float)):
        config["covariance_scalar"] = float(cov_arg)
    else:
        tensors["covariance"] = torch.as_tensor(cov_arg).detach().clone()
    return config, tensors


def estimator_state(est: SampleEstimator) -> dict:
    """The plain-dict state of a fitted estimator (tensors detached, on their device)."""
    if not isinstance(est, (DiScoFormerEstimator, GaussianKDE, WeightedGaussianKDE)):
        raise TypeError(
            f"cannot save a {type(est).__name__}; supported: GaussianKDE, SDKDE, EmpSDKDE, "
            "WeightedGaussianKDE, DiScoFormerEstimator"
        )
    tensors: dict = {"samples": est.samples.detach()}
    if isinstance(est, DiScoFormerEstimator):
        config = {
            "model_config": est.model.config.to_dict(),
            "block_size": int(est.block_size),
            "query_block": int(est.query_block),
            "whitening": est.whitening_method,
            "adaptation_losses": [float(v) for v in getattr(est, "adaptation_losses", [])],
        }
        tensors["state_dict"] = {k: v.detach() for k, v in est.model.state_dict().items()}
        kind = "DiScoFormerEstimator"
    elif isinstance(est, WeightedGaussianKDE):
        config, extra = _kernel_config(est)
        tensors.update(extra, weights=est.weights.detach())
        kind = "WeightedGaussianKDE"
    else:  # GaussianKDE, SDKDE, EmpSDKDE
        config, extra = _kernel_config(est)
        tensors.update(extra)
        kind = type(est).__name__
        if kind not in ("GaussianKDE", "SDKDE", "EmpSDKDE"):
            raise TypeError(f"cannot save a {kind}: only the package's own estimator classes")
        if kind == "SDKDE":
            tensors["score_at_samples"] = est._score_fn(est.samples.detach()).detach()
    return {"format": FORMAT, "version": VERSION, "kind": kind, "config": config, "tensors": tensors}


def estimator_from_state(state: dict) -> SampleEstimator:
    """Rebuild an estimator from :func:`estimator_state`'s dict."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("not a saved pyro-disco estimator (missing format tag)")
    if state.get("version") != VERSION:
        raise ValueError(f"saved estimator format version {state.get('version')} is not {VERSION}")
    kind, config, tensors = state["kind"], dict(state["config"]), state["tensors"]
    x = tensors["samples"]
    if kind == "DiScoFormerEstimator":
        model = model_from_config(config["model_config"])
        model.load_state_dict(tensors["state_dict"])
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        est = DiScoFormerEstimator(
            model.to(x.device),
            x,
            block_size=config["block_size"],
            query_block=config["query_block"],
            whitening=config.get("whitening", "standard"),
        )
        if config["adaptation_losses"]:
            est.adaptation_losses = list(config["adaptation_losses"])
        return est
    kernel = {"block_size": config["block_size"]}
    if "whitening" in config:
        kernel["whitening"] = config["whitening"]
    if "covariance" in tensors:
        kernel["covariance"] = tensors["covariance"]
    elif "covariance_scalar" in config:
        kernel["covariance"] = config["covariance_scalar"]
    else:
        kernel["bandwidth"] = config["bandwidth"]
    if kind == "GaussianKDE":
        return GaussianKDE(x, **kernel)
    if kind == "EmpSDKDE":
        return EmpSDKDE(x, **kernel)
    if kind == "SDKDE":
        shift = tensors["score_at_samples"]
        return SDKDE(x, lambda z: shift, **kernel)
    if kind == "WeightedGaussianKDE":
        return WeightedGaussianKDE(x, tensors["weights"], **kernel)
    raise ValueError(f"unknown saved estimator kind {kind!r}")


def save_estimator(est: SampleEstimator, path: str | os.PathLike) -> None:
    """Write ``est`` to ``path`` (tensors moved to the CPU), atomically (temp file + rename)."""
    state = _map_tensors(estimator_state(est), lambda t: t.cpu().contiguous())
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_estimator(
    path: str | os.PathLike, *, map_location: str | torch.device | None = "cpu"
) -> SampleEstimator:
    """Read an estimator written by :func:`save_estimator` (``torch.load(weights_only=True)``)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    return estimator_from_state(state)


def move_estimator(
    est: SampleEstimator, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> SampleEstimator:
    """A new estimator of the same kind on ``device`` with samples (and weights, shifts,
    covariance) in ``dtype``; a transformer's network keeps its own dtype."""

    def convert(t: Tensor, key: str) -> Tensor:
        float_data = t.is_floating_point() and key not in ("state_dict",)
        return t.to(device=device, dtype=dtype if float_data else None)

    state = estimator_state(est)
    tensors = {
        k: ({n: v.to(device=device) for n, v in t.items()} if k == "state_dict" else convert(t, k))
        for k, t in state["tensors"].items()
    }
    return estimator_from_state({**state, "tensors": tensors})


def _map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


_IO_HOOKS.update(
    save=save_estimator, load=load_estimator, move=move_estimator
)  # SampleEstimator.save/load/to
