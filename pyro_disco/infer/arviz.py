"""arviz bridge: chains, Pyro ``MCMC`` runs and particle clouds to arviz data, plus ESS/R-hat.

Works with arviz 0.23.x (Python 3.11: ``InferenceData``, ``from_dict(posterior=...)``) and
arviz >= 1.0 (Python >= 3.12: ``xarray.DataTree``, ``from_dict({"posterior": ...})``, no
``from_pyro``). Sample statistics use arviz's names: ``diverging``, ``acceptance_rate``.
ESS and split R-hat come from arviz when it is installed, else from :mod:`pyro.ops.stats`.
arviz is an optional dependency (``pip install "pyro-disco[arviz]"``); without it the conversions
raise an ``ImportError`` that says so, and :func:`ess_rhat` falls back to Pyro.

Example:
    >>> chains = torch.randn(2, 100, 3)  # chains, draws, d
    >>> data = to_inference_data(chains, sample_stats={"diverging": torch.zeros(2, 100, dtype=torch.bool)})
    >>> sorted(ess_rhat(chains))
    ['ess', 'rhat']
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from pyro.infer import MCMC
from torch import Tensor

__all__ = ["arviz_major_version", "to_inference_data", "from_mcmc", "from_particles", "ess_rhat"]


def _arviz() -> ModuleType:
    try:
        return importlib.import_module("arviz")
    except ImportError as exc:
        raise ImportError(
            'arviz is an optional dependency of pyro_disco: pip install "pyro-disco[arviz]"'
        ) from exc


def arviz_major_version() -> int | None:
    """0 for arviz 0.x, 1 for 1.x, ``None`` when arviz is not installed."""
    try:
        az = _arviz()
    except ImportError:
        return None
    return int(str(az.__version__).split(".")[0])


def _numpy(x: Tensor | ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _as_group(data: Tensor | ArrayLike | dict, var_name: str, what: str) -> dict[str, np.ndarray]:
    if isinstance(data, dict):
        out = {k: _numpy(v) for k, v in data.items()}
    else:
        out = {var_name: _numpy(data)}
    for k, v in out.items():
        if v.ndim < 2:
            raise ValueError(f"{what} {k!r} must be (chains, draws, ...), got shape {v.shape}")
    return out


def to_inference_data(
    samples: Tensor | ArrayLike | dict,
    *,
    var_name: str = "x",
    sample_stats: dict | None = None,
    coords: dict | None = None,
    dims: dict | None = None,
) -> Any:  # arviz.InferenceData (0.x) or xarray.DataTree (>= 1.0)
    """Chains to arviz data.

    Args:
        samples: ``(chains, draws, *shape)`` tensor/array, or a dict of them.
        var_name: the variable's name when ``samples`` is not a dict.
        sample_stats: dict of ``(chains, draws)`` arrays, e.g. ``diverging`` (bool),
            ``acceptance_rate``.
        coords, dims: passed to arviz's ``from_dict``.

    Returns:
        ``arviz.InferenceData`` (arviz 0.x) or ``xarray.DataTree`` (arviz >= 1.0), with groups
        ``posterior`` and, when given, ``sample_stats``.
    """
    az = _arviz()
    posterior = _as_group(samples, var_name, "samples")
    shapes = {v.shape[:2] for v in posterior.values()}
    stats = None
    if sample_stats:
        stats = _as_group(sample_stats, "stat", "sample_stats")
        shapes |= {v.shape[:2] for v in stats.values()}
    if len(shapes) != 1:
        raise ValueError(f"variables and sample stats need one (chains, draws); got {sorted(shapes)}")
    if arviz_major_version() >= 1:
        groups = {"posterior": posterior}
        if stats:
            groups["sample_stats"] = stats
        return az.from_dict(groups, coords=coords, dims=dims)
    return az.from_dict(posterior=posterior, sample_stats=stats, coords=coords, dims=dims)


def from_mcmc(mcmc: MCMC, *, coords: dict | None = None, dims: dict | None = None) -> Any:
    """A finished :class:`pyro.infer.MCMC` run to arviz data (no ``from_pyro`` needed).

    ``sample_stats`` gets ``diverging`` from the kernel's ``divergences`` diagnostics (any
    Pyro kernel that reports them: NUTS, HMC, :class:`~pyro_disco.infer.ULA`,
    :class:`~pyro_disco.infer.MALA`) and ``acceptance_rate`` per draw where the kernel records
    it (the Langevin kernels do).
    """
    samples = mcmc.get_samples(group_by_chain=True)
    chains, draws = next(iter(samples.values())).shape[:2]
    diag = mcmc.diagnostics()
    stats = {}
    if "divergences" in diag:
        diverging = np.zeros((chains, draws), dtype=bool)
        for i, key in enumerate(sorted(diag["divergences"], key=lambda k: int(k.split()[-1]))):
            diverging[i, np.asarray(diag["divergences"][key], dtype=np.int64)] = True
        stats["diverging"] = diverging
    if "acceptance_prob" in diag:
        rows = [diag["acceptance_prob"][f"chain {i}"] for i in range(chains)]
        stats["acceptance_rate"] = np.asarray(rows, dtype=np.float64).reshape(chains, draws)
    return to_inference_data(samples, sample_stats=stats or None, coords=coords, dims=dims)


def from_particles(
    particles: Tensor | ArrayLike,
    *,
    var_name: str = "x",
    coords: dict | None = None,
    dims: dict | None = None,
) -> Any:
    """Particles to arviz data.

    ``(n, d)`` (a final SVGD/flow cloud) becomes one chain of ``n`` draws. A trajectory
    ``(num_saved, n, d)`` becomes ``n`` chains (one per particle) of ``num_saved`` draws, for
    trace plots of particle paths; ESS/R-hat are meaningless for that layout.
    """
    x = _numpy(particles)
    if x.ndim == 2:
        return to_inference_data(x[None], var_name=var_name, coords=coords, dims=dims)
    if x.ndim != 3:
        raise ValueError(f"particles must be (n, d) or a trajectory (num_saved, n, d), got shape {x.shape}")
    with warnings.catch_warnings():  # arviz warns when chains > draws, the normal case here
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        return to_inference_data(np.swapaxes(x, 0, 1), var_name=var_name, coords=coords, dims=dims)


def _pyro_ess_rhat(x: Tensor) -> dict[str, Tensor]:
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    return {
        "ess": effective_sample_size(x, chain_dim=0, sample_dim=1),
        "rhat": split_gelman_rubin(x, chain_dim=0, sample_dim=1),
    }


def _arviz_values(result: Any, var: str) -> np.ndarray:
    if hasattr(result, "children") and "posterior" in getattr(result, "children", {}):
        result = result["posterior"]
    return np.asarray(result[var].values)


def ess_rhat(chains: Tensor | ArrayLike, *, backend: str = "auto") -> dict[str, Tensor]:
    """Bulk ESS and split R-hat of ``chains`` ``(chains, draws, *shape)``, each ``(*shape)``.

    ``backend``: ``"arviz"``, ``"pyro"`` (:func:`pyro.ops.stats.effective_sample_size`,
    :func:`pyro.ops.stats.split_gelman_rubin`), or ``"auto"`` (arviz if installed).
    Needs at least 4 draws per chain.
    """
    x = chains if isinstance(chains, Tensor) else torch.as_tensor(np.asarray(chains))
    if x.dim() < 2 or x.shape[1] < 4:
        raise ValueError(f"chains must be (chains, draws >= 4, ...), got shape {tuple(x.shape)}")
    if backend not in ("auto", "arviz", "pyro"):
        raise ValueError(f"backend must be 'auto', 'arviz' or 'pyro', got {backend!r}")
    if backend == "pyro" or (backend == "auto" and arviz_major_version() is None):
        return _pyro_ess_rhat(x.detach().double())
    az = _arviz()
    data = to_inference_data(x, var_name="x")
    out = {}
    for name, fn in (("ess", az.ess), ("rhat", az.rhat)):
        out[name] = torch.as_tensor(_arviz_values(fn(data), "x"), dtype=torch.float64)
    return out
