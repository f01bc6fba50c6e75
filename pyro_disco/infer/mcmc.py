r"""Pyro ``MCMCKernel`` shells over the functional Langevin core (:mod:`pyro_disco.infer.langevin`).

:class:`ULA` and :class:`MALA` plug into :class:`pyro.infer.MCMC`; each step is one call of
:func:`~pyro_disco.infer.langevin.ula_step` or :func:`~pyro_disco.infer.langevin.mala_step`,
with the step size adapted during warm-up by dual averaging
(:func:`~pyro_disco.infer.langevin.step_size_update`, which steps Pyro's
:class:`~pyro.ops.dual_averaging.DualAveraging`, as Pyro's HMC/NUTS do).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.infer.mcmc.util import initialize_model
from torch import Tensor
from torch.distributions.transforms import Transform

from pyro_disco._compat import renamed_kwargs
from pyro_disco._stats import logdensity_and_autograd_score
from pyro_disco.estimators.base import ScoreLike, as_logdensity_and_score_fn, as_score_fn
from pyro_disco.infer.langevin import (
    init,
    mala_step,
    step_size_init,
    step_size_update,
    ula_step,
)

__all__ = ["ULA", "MALA"]


class _LangevinKernel(MCMCKernel):
    """Shared shell: packs Pyro's ``params`` dict into one flat vector and calls the core."""

    method = "mala"

    @renamed_kwargs(score_fn="score")
    def __init__(
        self,
        model: Callable[..., Any] | None = None,
        potential_fn: Callable[[dict[str, Tensor]], Tensor] | None = None,
        score: ScoreLike | None = None,
        logdensity_fn: Callable[[Tensor], Tensor] | None = None,
        *,
        step_size: float = 0.1,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.574,
        transforms: dict[str, Transform] | None = None,
        site: str = "x",
        initial_params: dict[str, Tensor] | None = None,
    ) -> None:
        given = [a is not None for a in (model, potential_fn, score)]
        if sum(given) != 1:
            raise ValueError("give exactly one of model=, potential_fn= or score=")
        if not (isinstance(step_size, (int, float)) and step_size > 0):
            raise ValueError(f"step_size must be a positive number, got {step_size!r}")
        if not 0.0 < target_accept_prob < 1.0:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
        if (
            score is not None
            and self.method == "mala"
            and logdensity_fn is None
            and not callable(getattr(score, "logdensity", None))
        ):
            raise ValueError("MALA with a bare score_fn needs logdensity_fn= (or pass an estimator object)")
        self.model, self.potential_fn = model, potential_fn
        self.score, self.logdensity_fn = score, logdensity_fn
        self.init_step_size, self.adapt_step_size = float(step_size), adapt_step_size
        self.target_accept_prob, self.site = target_accept_prob, site
        self.transforms = transforms if transforms is not None else (None if model is not None else {})
        self._user_params = initial_params
        self._initial_params = initial_params
        self._reset(0)

    def _reset(self, warmup_steps: int) -> None:
        self._warmup_steps, self._t = warmup_steps, 0
        self._adapt = step_size_init(self.init_step_size)
        self.step_size = self.init_step_size
        self._state, self._last = None, None
        self._divergences, self._accept_probs, self._accept_count = [], [], 0
        self._mean_accept_prob = 0.0

    @property
    def initial_params(self) -> dict[str, Tensor] | None:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict[str, Tensor] | None) -> None:
        self._user_params = params
        self._initial_params = params

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        self._reset(warmup_steps)
        if self.model is not None:
            init_params, potential_fn, transforms, _ = initialize_model(
                self.model, model_args=args, model_kwargs=kwargs
            )
            self.potential_fn, self.transforms = potential_fn, transforms
            self._initial_params = self._user_params if self._user_params is not None else init_params
        if self._initial_params is None:
            raise ValueError(
                "initial_params are required with potential_fn= or score= "
                f"(e.g. MCMC(..., initial_params={{'{self.site}': x0}}))"
            )
        if self.score is not None and set(self._initial_params) != {self.site}:
            got = sorted(self._initial_params)
            raise ValueError(f"with score= the only site is {self.site!r}, got {got}")
        self._names = sorted(self._initial_params)
        self._shapes = [self._initial_params[k].shape for k in self._names]

    def _pack(self, params: dict[str, Tensor]) -> Tensor:
        return torch.cat([params[k].detach().reshape(-1) for k in self._names])

    def _unpack(self, flat: Tensor) -> dict:
        out, pos = {}, 0
        for k, shape in zip(self._names, self._shapes, strict=True):
            out[k] = flat[pos : pos + shape.numel()].reshape(shape)
            pos += shape.numel()
        return out

    def _logdensity_and_score(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        if self.score is not None:
            x = flat.reshape(self._shapes[0])
            if self.logdensity_fn is None and not callable(getattr(self.score, "logdensity", None)):
                logp = torch.zeros((), dtype=flat.dtype)  # ULA only: never used for acceptance
                return logp, as_score_fn(self.score)(x).reshape(-1)
            logp, score = as_logdensity_and_score_fn(self.score, self.logdensity_fn)(x)
            return logp.reshape(()), score.reshape(-1)
        potential, grad = logdensity_and_autograd_score(lambda z: self.potential_fn(self._unpack(z)), flat)
        return -potential, -grad

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        flat = self._pack(params)
        if self._state is None or self._last is not params:
            self._state = init(flat, None, logdensity_and_score_fn=self._logdensity_and_score)
        if self.method == "mala":
            state, info = mala_step(self._state, self._logdensity_and_score, self.step_size)
        else:
            state, info = ula_step(self._state, lambda z: self._logdensity_and_score(z)[1], self.step_size)
            state = state._replace(logdensity=self._state.logdensity)
        self._state = state
        prob = float(info.acceptance_prob)
        self._t += 1
        if self._t <= self._warmup_steps:
            if self.method == "mala" and self.adapt_step_size:
                self._adapt = step_size_update(self._adapt, prob, self.target_accept_prob)
                last = self._t == self._warmup_steps
                log_h = self._adapt.log_step_size_avg if last else self._adapt.log_step_size
                self.step_size = math.exp(log_h)
            n = self._t
        else:
            n = self._t - self._warmup_steps
            self._accept_probs.append(prob)
            self._accept_count += int(info.is_accepted)
            if bool(info.is_divergent):
                self._divergences.append(n - 1)
        self._mean_accept_prob += (prob - self._mean_accept_prob) / n
        self._last = self._unpack(state.position)
        return self._last

    def logging(self) -> OrderedDict:
        return OrderedDict(
            [("step size", f"{self.step_size:.2e}"), ("acc. prob", f"{self._mean_accept_prob:.3f}")]
        )

    def diagnostics(self) -> dict[str, Any]:
        """``divergences`` (post-warm-up draw indices, as arviz's ``from_pyro`` reads them),
        ``acceptance rate``, per-draw ``acceptance_prob`` and the final ``step_size``."""
        n = max(self._t - self._warmup_steps, 1)
        return {
            "divergences": list(self._divergences),
            "acceptance rate": self._accept_count / n,
            "acceptance_prob": list(self._accept_probs),
            "step_size": self.step_size,
        }


class ULA(_LangevinKernel):
    r"""Unadjusted Langevin kernel for :class:`pyro.infer.MCMC`.

    Driven by exactly one of ``model`` (a Pyro model; latent sites in unconstrained space),
    ``potential_fn`` (``dict -> scalar`` potential energy :math:`-\log \pi`, Pyro's
    convention) or ``score`` (a bare ``score_fn(x)`` or an estimator, one site named
    ``site``; ``score_fn=`` is its deprecated name). Step size is fixed (there is no acceptance
    to adapt on); the chain is biased by :math:`O(h)`.

    Example:
        >>> from pyro.infer import MCMC
        >>> k = ULA(score=lambda x: -x, step_size=0.1, initial_params={"x": torch.zeros(2)})
        >>> mcmc = MCMC(k, num_samples=20, warmup_steps=10, disable_progbar=True)
        >>> mcmc.run()
        >>> mcmc.get_samples()["x"].shape
        torch.Size([20, 2])
    """

    method = "ula"

    @renamed_kwargs(score_fn="score")
    def __init__(
        self,
        model: Callable[..., Any] | None = None,
        potential_fn: Callable[[dict[str, Tensor]], Tensor] | None = None,
        score: ScoreLike | None = None,
        *,
        step_size: float = 0.05,
        transforms: dict[str, Transform] | None = None,
        site: str = "x",
        initial_params: dict[str, Tensor] | None = None,
    ) -> None:
        super().__init__(
            model,
            potential_fn,
            score,
            None,
            step_size=step_size,
            adapt_step_size=False,
            transforms=transforms,
            site=site,
            initial_params=initial_params,
        )


class MALA(_LangevinKernel):
    r"""Metropolis-adjusted Langevin kernel for :class:`pyro.infer.MCMC`.

    Same drivers as :class:`ULA`; with a bare ``score_fn`` as ``score`` a log-density is needed
    too (an estimator object carries one, or pass ``logdensity_fn``). During warm-up the step size
    is adapted by dual averaging toward ``target_accept_prob`` (default 0.574, the optimal
    MALA rate of Roberts & Rosenthal 1998).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import MCMC
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> mcmc = MCMC(MALA(model), num_samples=20, warmup_steps=20, disable_progbar=True)
        >>> mcmc.run()
        >>> mcmc.get_samples()["z"].shape
        torch.Size([20, 2])
    """

    method = "mala"
