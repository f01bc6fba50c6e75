r"""Yesterday's posterior as today's prior: from ``mcmc.get_samples()`` to a joint ``LearnedScore``.

Each latent site's draws are mapped to unconstrained space with Pyro's own bijection for its
support (``biject_to(site["fn"].support)``, the transforms NUTS itself uses), flattened and
concatenated into one ``(n, D)`` sample set, and a single :class:`LearnedScore` is built on it:
correlations between sites are kept. :class:`PosteriorPrior` maps back.

Two lines in practice::

    pp = posterior_prior(mcmc.get_samples(), model, y_batch1)    # after NUTS on batch 1
    def model2(y):                                               # batch 2
        theta = pp.sample("prev")["theta"]                       # z ~ LearnedScore, theta = T(z)
        ...

Inside ``model2`` the latent is the unconstrained vector ``z`` (site ``"prev"``), so no Jacobian
is needed; :meth:`PosteriorPrior.log_prob` gives the density of constrained values (with the
change-of-variables term) for models that sample the constrained sites themselves.

Example:
    >>> import pyro, pyro.distributions as dist
    >>> def model():
    ...     return pyro.sample("s", dist.LogNormal(0.0, 1.0))
    >>> draws = {"s": dist.LogNormal(0.0, 1.0).sample((500,)).double()}
    >>> pp = posterior_prior(draws, model, estimator="kde")
    >>> pp.prior.event_shape, pp.to_constrained(pp.to_unconstrained(draws))["s"].shape
    (torch.Size([1]), torch.Size([500]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import torch
from numpy.typing import ArrayLike
from pyro import poutine
from pyro.distributions.transforms import biject_to
from torch import Tensor

from pyro_disco.distributions.learned_score import LearnedScore
from pyro_disco.estimators.base import Estimator

__all__ = ["posterior_prior", "PosteriorPrior", "SiteMap"]


class SiteMap(NamedTuple):
    """One site's place in the joint unconstrained vector."""

    name: str
    transform: object  # unconstrained -> constrained (torch Transform)
    shape: torch.Size  # one draw of the constrained site
    unconstrained_shape: torch.Size  # one draw in unconstrained space
    start: int  # columns start:stop of the joint vector
    stop: int


class PosteriorPrior:
    """A joint :class:`LearnedScore` ``prior`` on the unconstrained ``(D,)`` vector of several
    sites, and the maps between that vector and the sites' values.

    Attributes:
        prior: the :class:`LearnedScore` on ``(D,)``.
        sites: one :class:`SiteMap` per site, in column order.
    """

    def __init__(self, prior: LearnedScore, sites: list[SiteMap]) -> None:
        self.prior, self.sites = prior, sites
        self.dim = sites[-1].stop if sites else 0

    def to_unconstrained(self, values: dict[str, Tensor]) -> Tensor:
        """``{name: (*lead, *shape)}`` -> ``(*lead, D)``."""
        parts, lead = [], None
        for s in self.sites:
            v = torch.as_tensor(values[s.name])
            k = v.dim() - len(s.shape)
            if k < 0 or v.shape[k:] != s.shape:
                raise ValueError(
                    f"site {s.name!r}: expected shape (..., *{tuple(s.shape)}), got {tuple(v.shape)}"
                )
            lead = v.shape[:k] if lead is None else lead
            parts.append(s.transform.inv(v).reshape(*v.shape[:k], s.stop - s.start))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def to_constrained(self, z: Tensor) -> dict[str, Tensor]:
        """``(*lead, D)`` -> ``{name: (*lead, *shape)}`` (each site through its bijection)."""
        lead = z.shape[:-1]
        return {
            s.name: s.transform(z[..., s.start : s.stop].reshape(lead + s.unconstrained_shape))
            for s in self.sites
        }

    def log_abs_det_jacobian(self, z: Tensor) -> Tensor:
        """``(*lead, D) -> (*lead)``: :math:`\\log|\\det \\partial x/\\partial z|` summed over sites."""
        lead = z.shape[:-1]
        total = z.new_zeros(lead)
        for s in self.sites:
            zs = z[..., s.start : s.stop].reshape(lead + s.unconstrained_shape)
            ladj = s.transform.log_abs_det_jacobian(zs, s.transform(zs))
            total = total + ladj.reshape(*lead, -1).sum(-1)
        return total

    def log_prob(self, values: dict[str, Tensor]) -> Tensor:
        """Density of the *constrained* site values:
        :math:`\\log p_z(z) - \\log|\\det \\partial x/\\partial z|` with ``z = T^{-1}(x)``."""
        z = self.to_unconstrained(values)
        return self.prior.log_prob(z) - self.log_abs_det_jacobian(z)

    def sample(self, name: str = "posterior_prior", *, deterministic: bool = True) -> dict[str, Tensor]:
        """Inside a Pyro model: ``z ~ prior`` as site ``name``; returns the sites' values. With
        ``deterministic`` each value is also recorded as a ``pyro.deterministic`` site of its
        own name (``Predictive`` and arviz then show it)."""
        values = self.to_constrained(pyro.sample(name, self.prior))
        if deterministic:
            values = {
                k: pyro.deterministic(k, v, event_dim=len(s.shape))
                for (k, v), s in zip(values.items(), self.sites)
            }
        return values

    def __repr__(self) -> str:
        sites = ", ".join(f"{s.name}{tuple(s.shape)}" for s in self.sites)
        return f"PosteriorPrior(D={self.dim}, sites=[{sites}], prior={self.prior!r})"


def posterior_prior(
    samples: dict[str, Tensor],
    model: Callable[..., Any],
    *model_args: Any,
    sites: list[str] | None = None,
    estimator: str | Estimator = "auto",
    weights: Tensor | ArrayLike | None = None,
    model_kwargs: dict | None = None,
    **learned_score_kwargs: Any,
) -> PosteriorPrior:
    """A joint prior on the unconstrained space of ``model``'s latent sites, from their draws.

    Args:
        samples: ``{name: (n, *site_shape)}``, e.g. ``mcmc.get_samples()`` (constrained values).
        model: the model that produced them; it is traced once (with ``model_args`` and
            ``model_kwargs``) to read each site's support and shape.
        *model_args: the model's positional arguments for that trace.
        sites: which sites to use (default: every key of ``samples``); each must be a latent
            (not observed) sample site of ``model``.
        estimator: passed to :class:`LearnedScore`.
        weights: ``(n,)`` weights of importance or SMC draws, passed to :class:`LearnedScore`.
        model_kwargs: the model's keyword arguments for the trace.
        **learned_score_kwargs: further :class:`LearnedScore` arguments.

    Returns:
        a :class:`PosteriorPrior`; ``.prior`` is the ``LearnedScore`` on ``(n, D)``.
    """
    names = list(samples) if sites is None else list(sites)
    if not names:
        raise ValueError("no sites: samples is empty")
    trace = poutine.trace(model).get_trace(*model_args, **(model_kwargs or {}))
    latent = {
        k: v
        for k, v in trace.nodes.items()
        if v["type"] == "sample" and not v["is_observed"] and not v["infer"].get("_deterministic")
    }
    missing = [k for k in names if k not in latent]
    if missing:
        raise ValueError(
            f"sites {missing} are not latent sample sites of the model; latent sites: {sorted(latent)}"
        )
    maps, columns, n = [], [], None
    start = 0
    for name in names:
        site = latent[name]
        value = torch.as_tensor(samples[name])
        shape = site["value"].shape
        if value.shape[1:] != shape:
            raise ValueError(
                f"site {name!r}: draws must have shape (n, *{tuple(shape)}), got {tuple(value.shape)}"
            )
        if n is not None and value.shape[0] != n:
            raise ValueError(f"site {name!r} has {value.shape[0]} draws, the others {n}")
        n = value.shape[0]
        transform = biject_to(site["fn"].support)
        z = transform.inv(value)  # n *unconstrained
        size = math.prod(z.shape[1:])
        maps.append(SiteMap(name, transform, shape, z.shape[1:], start, start + size))
        columns.append(z.reshape(n, size))
        start += size
    joint = torch.cat(columns, dim=-1)  # n D
    prior = LearnedScore(joint, estimator, weights=weights, **learned_score_kwargs)
    return PosteriorPrior(prior, maps)
