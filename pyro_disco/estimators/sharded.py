r"""Sharded estimation on ``torch.distributed``: a large query set split across ranks.

Every rank holds the same estimator (built from the same samples: the estimators are
deterministic, the transformer's log-normaliser included, fixed seed) and the same queries;
rank ``r`` answers rows ``r·⌈m/N⌉ … (r+1)·⌈m/N⌉ − 1`` and ``all_gather`` gives every rank
the whole answer. Queries are independent, so the result is the one-process answer (to the
round-off of a different row blocking). Launch with ``torchrun``; gloo on CPU, NCCL on GPUs
(the estimator and the queries on the rank's GPU: NCCL gathers CUDA tensors only).

**Splitting the context too (very large n): on paper.** The transformer's cost per query is
attention over the ``n`` context tokens, and the encoder's is ``n²``. Each rank ``r`` could hold
a slice ``C_r`` of the (already encoded) keys and values of every layer. For a query row with
logits :math:`a_j = q\cdot k_j` a rank computes its partial softmax statistics

.. math:: M_r = \max_{j\in C_r} a_j,\quad Z_r = \sum_{j\in C_r} e^{a_j - M_r},\quad
          O_r = \sum_{j\in C_r} e^{a_j - M_r} v_j,

and the exact attention output is
:math:`\sum_r e^{M_r - M} O_r / \sum_r e^{M_r - M} Z_r` with :math:`M = \max_r M_r` (one
``all_reduce(MAX)`` of ``M`` then one ``all_reduce(SUM)`` of the rescaled ``(Z, O)``: the
flash-attention combination, exact up to round-off). The KDE input features combine the same
way (a log-sum-exp over the slices). Every layer's query update needs the previous layer's
combined output, so a query costs ``2L`` small all-reduces of ``(m, H, e + d + 1)`` floats; the
per-rank work and memory fall as ``n/N``. Encoding is harder: the context tokens are also the
queries of the encoder, so layer ``ℓ`` of rank ``r``'s tokens needs every rank's layer-``ℓ`` keys
and values, i.e. a ring exchange of ``n·H·(e + d + 1)`` floats per layer (ring attention);
the ``n²`` work splits as ``n²/N``. Not implemented: the encoder and attention would need a
process-group argument threaded through :mod:`pyro_disco.nn`, and at the sizes where it pays
(n ≳ 10⁵) a single GPU already holds the context.

Example (``torchrun --standalone --nproc_per_node=2 script.py``)::

    import torch.distributed as dist
    dist.init_process_group("gloo")
    est = GaussianKDE(samples)                       # the same samples on every rank
    logp, score = sharded_logdensity_and_score(est, queries)   # every rank gets all rows
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from pyro_disco.estimators.base import Estimator, as_logdensity_and_score_fn

__all__ = ["sharded_logdensity_and_score"]


def sharded_logdensity_and_score(
    estimator: Estimator, x: Tensor, *, group: dist.ProcessGroup | None = None
) -> tuple[Tensor, Tensor]:
    """Log-density ``(...)`` and score ``(..., d)`` at ``x`` ``(..., d)``, each rank of ``group``
    (default: the whole world) answering one contiguous slice of the rows; every rank returns
    the whole answer. Without an initialised process group this is one
    ``logdensity_and_score`` call."""
    if not (dist.is_available() and dist.is_initialized()):
        return as_logdensity_and_score_fn(estimator)(x)
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    d = x.shape[-1]
    flat = x.reshape(-1, d)
    m = flat.shape[0]
    per = math.ceil(m / size)
    logp, score = as_logdensity_and_score_fn(estimator)(flat[rank * per : (rank + 1) * per])
    pad = per - logp.shape[0]  # the last ranks may hold fewer rows (or none): all_gather needs equal sizes
    mine = torch.cat([logp.unsqueeze(-1), score], dim=-1)  # per' (1 + d)
    mine = torch.cat([mine, mine.new_zeros(pad, d + 1)])
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine.contiguous(), group=group)
    out = torch.cat(parts)[:m]
    return out[:, 0].reshape(x.shape[:-1]), out[:, 1:].reshape(x.shape)
