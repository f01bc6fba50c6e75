r"""The autograd plumbing of ``LearnedScore.log_prob``: value from the density head, gradient
from the score head, and derivatives of that gradient by recomputing the score with a graph.

Orders of differentiation of ``log_prob`` (reverse mode, plain autograd or ``torch.func``):

- 1st: the estimator's score head :math:`\hat s(x)` (saved from the forward pass, free);
- 2nd: :math:`\partial \hat s / \partial x`, by re-evaluating :math:`\hat s` at the saved input
  with a graph (KDE: exact torch ops; transformer: through the network);
- 3rd: by double backward through the same recomputation (the transformer's attention then runs
  on torch's math kernel, the fused CPU kernel having no double backward);
- 4th and higher raise ``RuntimeError`` (``once_differentiable``) rather than return zeros.

Forward mode (``torch.func.jvp``, ``jacfwd``, ``torch.func.hessian``) is not implemented and
raises; use ``torch.func.jacrev(torch.func.grad(f))`` or ``torch.autograd.functional.hessian``.
Every function has a ``vmap`` rule (the estimators take any leading batch shape), so
``torch.func.vmap`` composes with ``grad`` and ``jacrev``.

Queries are evaluated in the estimator's dtype and device and the results come back in the
query's dtype and device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from pyro_disco.estimators.base import Estimator, SampleEstimator, as_logdensity_and_score_fn

__all__ = ["log_prob_with_score", "score_with_jacobian"]

Spec = tuple[torch.dtype, torch.device]  # the estimator's (dtype, device)
InDims = tuple[int | None, ...]  # torch.func.vmap's batched dimension of each argument


def log_prob_with_score(x: Tensor, estimator: Estimator, spec: Spec) -> Tensor:
    """``(..., d) -> (...)``: the estimator's log-density, with the score head as its gradient.
    ``spec`` is the estimator's ``(dtype, device)``."""
    return _apply(_LogProb, x, estimator, spec)[0]


def score_with_jacobian(x: Tensor, estimator: Estimator, spec: Spec) -> Tensor:
    """``(..., d) -> (..., d)``: the score head, differentiable in ``x``."""
    return _apply(_Score, x, estimator, spec)


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Any:
    """``fn.apply(*args)`` without its per-call ``inspect.signature`` binding (about 0.3 ms, a
    twentieth of a NUTS leapfrog with the transformer) when no ``torch.func`` transform is
    active: every argument is positional and no ``forward`` has defaults, so the binding is the
    identity. Under ``vmap``/``grad``/``jacrev`` the public path runs, as before."""
    if torch._C._are_functorch_transforms_active():
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*args)  # the C apply Function.apply ends in


def _eval(
    estimator: Estimator, x: Tensor, spec: Spec, score_only: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """The estimator at ``x`` moved to ``spec``; results moved back to ``x``'s dtype and device."""
    dtype, device = spec
    xq = x.to(device=device, dtype=dtype)
    if score_only:
        return estimator.score(xq).to(device=x.device, dtype=x.dtype)
    if isinstance(estimator, SampleEstimator):
        # the per-query path (a NUTS leapfrog): the shape was checked by LearnedScore and the
        # dtype and device set just above, so only finiteness is left of the query checks
        if not bool(torch.isfinite(xq).all()):
            raise ValueError("x contains non-finite values (NaN or inf)")
        logp, score = estimator._logdensity_and_score(xq.reshape(-1, xq.shape[-1]))
        logp, score = logp.reshape(xq.shape[:-1]), score.reshape(xq.shape)
    else:
        logp, score = as_logdensity_and_score_fn(estimator)(xq)
    return logp.to(device=x.device, dtype=x.dtype), score.to(device=x.device, dtype=x.dtype)


def _batch_rule(fn: Callable[..., Any], in_dims: InDims, *tensors: Tensor) -> Any:
    """A ``torch.func.vmap`` rule: the estimators take any leading batch shape, so move the
    vmapped dimension of every tensor argument to the front (expanding unbatched ones)."""
    size = next(t.shape[d] for t, d in zip(tensors, in_dims) if d is not None)
    moved = [t.movedim(d, 0) if d is not None else t.expand(size, *t.shape) for t, d in zip(tensors, in_dims)]
    return fn(*moved)


class _LogProb(torch.autograd.Function):
    """Value: the estimator's log-density. Gradient: the estimator's score head, itself
    differentiable (through :class:`_Score`), so Hessians and Laplace approximations see the
    score head's Jacobian."""

    @staticmethod
    def forward(x: Tensor, estimator: Estimator, spec: Spec) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return _eval(estimator, x.detach(), spec)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: Any) -> None:
        x, estimator, spec = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1])
        ctx.estimator, ctx.spec = estimator, spec

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_logp: Tensor, _grad_score: Tensor | None
    ) -> tuple[Tensor, None, None]:
        x, score = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the score needs a graph of its own
            score = _Score.apply(x, ctx.estimator, ctx.spec)
        return grad_logp.unsqueeze(-1) * score, None, None

    @staticmethod
    def vmap(info: Any, in_dims: InDims, x: Tensor, estimator: Estimator, spec: Spec) -> tuple[Any, Any]:
        out = _batch_rule(lambda x: _LogProb.apply(x, estimator, spec), in_dims[:1], x)
        return out, (0, 0)


class _Score(torch.autograd.Function):
    """Value: the score head; vector-Jacobian product: by recomputation (:class:`_ScoreVJP`)."""

    @staticmethod
    def forward(x: Tensor, estimator: Estimator, spec: Spec) -> Tensor:
        with torch.no_grad():
            return _eval(estimator, x.detach(), spec, score_only=True)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: Any) -> None:
        x, estimator, spec = inputs
        ctx.save_for_backward(x)
        ctx.estimator, ctx.spec = estimator, spec

    @staticmethod
    def backward(ctx: FunctionCtx, grad_score: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return _ScoreVJP.apply(x, grad_score, ctx.estimator, ctx.spec), None, None

    @staticmethod
    def vmap(info: Any, in_dims: InDims, x: Tensor, estimator: Estimator, spec: Spec) -> tuple[Any, Any]:
        return _batch_rule(lambda x: _Score.apply(x, estimator, spec), in_dims[:1], x), 0


def _score_vjp(
    x: Tensor, v: Tensor, estimator: Estimator, spec: Spec, create_graph: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, v) -> (xr, vr, vᵀ ∂s/∂x)`` on plain tensors (queries are independent, so one
    backward gives every row's product). The math attention kernel has a double backward."""
    xr = x.detach().requires_grad_(True)
    vr = v.detach().requires_grad_(create_graph)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        s = _eval(estimator, xr, spec, score_only=True)
        (out,) = torch.autograd.grad(s, xr, vr, create_graph=create_graph)
    return xr, vr, out


class _ScoreVJP(torch.autograd.Function):
    """``vᵀ ∂ŝ/∂x`` by recomputing the score with a graph; its own backward (third derivatives
    of ``log_prob``) by double backward. A fourth derivative raises."""

    @staticmethod
    def forward(x: Tensor, v: Tensor, estimator: Estimator, spec: Spec) -> Tensor:
        return _score_vjp(x, v, estimator, spec, create_graph=False)[2]

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: Any) -> None:
        x, v, estimator, spec = inputs
        ctx.save_for_backward(x, v)
        ctx.estimator, ctx.spec = estimator, spec

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor, Tensor | None, None, None]:
        x, v = ctx.saved_tensors
        xr, vr, out = _score_vjp(x, v, ctx.estimator, ctx.spec, create_graph=True)
        with torch.enable_grad():
            gx, gv = torch.autograd.grad(out, (xr, vr), grad_out, allow_unused=True)
        gx = torch.zeros_like(x) if gx is None else gx
        return gx, gv, None, None

    @staticmethod
    def vmap(
        info: Any, in_dims: InDims, x: Tensor, v: Tensor, estimator: Estimator, spec: Spec
    ) -> tuple[Tensor, int]:
        return _batch_rule(lambda x, v: _ScoreVJP.apply(x, v, estimator, spec), in_dims[:2], x, v), 0
