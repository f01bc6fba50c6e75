r"""Start a mixture-aware universal network from a trained universal network without one.

Adding the Gaussian-mixture feature column (``mixture_components > 0``) grows three weight
shapes of :class:`~pyro_disco.nn.universal.UniversalDiScoFormer`; everything else (the four
equivariant blocks, their bandwidths, the final norm and the heads' hidden layers) keeps its
shape and is copied as is:

- the **input embedding** gains the mixture's two log-density columns and the Gram entries
  of its score correction. The old columns are copied to where the same quantity sits in the
  new layout (the Gram triangle is re-indexed); the new columns start at zero, so the trunk
  computes exactly what it computed before.
- the **log-density head's** and **score head's** last layers gain one gate each, for the
  mixture's corrections. With ``blend = b`` the old gates are scaled by ``1 - b`` and the
  mixture gate opens at ``b``: the network starts at

  .. math:: s = (1 - b)\, s_{\text{old}} + b\, s_{\text{mixture}}, \qquad
            \log f = (1 - b) \log f_{\text{old}} + b \log f_{\text{mixture}}

  (in whitened coordinates). ``b = 1`` is the BIC mixture exactly, with a pretrained trunk
  to learn corrections from; ``b = 0`` is the old network exactly.

Example:
    >>> from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer
    >>> old = UniversalDiScoFormer(UniversalConfig(max_dim=4))
    >>> new = warm_start_mixture(old, mixture_components=3, blend=1.0)
    >>> new.config.mixture_components
    3
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer

__all__ = ["warm_start_mixture", "reblend_mixture", "embedding_column_map"]


def _triu_positions(size: int) -> dict[tuple[int, int], int]:
    i, j = torch.triu_indices(size, size)
    return {(int(a), int(b)): p for p, (a, b) in enumerate(zip(i, j))}


def embedding_column_map(num_kde: int) -> list[int]:
    """For each input column of a universal network with ``num_kde`` feature columns and no
    mixture, its index in the network with the mixture column appended (see
    :meth:`UniversalDiScoFormer._inputs`: 5 scalars, K log-densities, K log-densities / d,
    the Gram triangle of K + 1 vectors)."""
    k_old, k_new = num_kde, num_kde + 1
    cols = list(range(5))
    cols += [5 + j for j in range(k_old)]
    cols += [5 + k_new + j for j in range(k_old)]
    old_tri, new_tri = _triu_positions(k_old + 1), _triu_positions(k_new + 1)
    base = 5 + 2 * k_new
    by_old = sorted(old_tri.items(), key=lambda kv: kv[1])
    cols += [base + new_tri[ij] for ij, _ in by_old]
    return cols


@torch.no_grad()
def warm_start_mixture(
    old: UniversalDiScoFormer, mixture_components: int, *, blend: float = 1.0, **mixture_options: float | bool
) -> UniversalDiScoFormer:
    """A new trainable :class:`UniversalDiScoFormer` with ``mixture_components`` that starts
    from ``old`` (a universal network without the mixture column), as the module docstring
    says; ``mixture_options`` are the other ``mixture_*`` fields of
    :class:`~pyro_disco.nn.universal.UniversalConfig`. ``old`` is not modified."""
    if not isinstance(old, UniversalDiScoFormer):
        raise TypeError(f"warm start needs a universal DiScoFormer, got {type(old).__name__}")
    if old.config.mixture_components:
        raise ValueError("the old network already has a mixture column; resume it instead")
    if mixture_components < 1:
        raise ValueError(f"mixture_components must be >= 1, got {mixture_components}")
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend}")
    cfg: UniversalConfig = replace(old.config, mixture_components=mixture_components, **mixture_options)
    new = UniversalDiScoFormer(cfg)
    src = {k: v.detach().clone().float() for k, v in old.state_dict().items()}
    dst = new.state_dict()
    k_old = len(cfg.kde_features)
    for name, value in src.items():
        if dst[name].shape == value.shape and not name.startswith(("logdensity_head.2", "score_head.2")):
            dst[name].copy_(value)
    # embedding: old columns in their new places, mixture columns zero
    cols = embedding_column_map(k_old)
    dst["embed.weight"].zero_()
    dst["embed.weight"][:, cols] = src["embed.weight"]
    dst["embed.bias"].copy_(src["embed.bias"])
    # log-density head rows: [u, γ'_1..K] -> [u, γ'_1..K, γ'_mix]
    w, b = src["logdensity_head.2.weight"], src["logdensity_head.2.bias"]
    dst["logdensity_head.2.weight"].zero_()
    dst["logdensity_head.2.bias"].zero_()
    dst["logdensity_head.2.weight"][: 1 + k_old] = (1 - blend) * w
    dst["logdensity_head.2.bias"][: 1 + k_old] = (1 - blend) * b
    dst["logdensity_head.2.bias"][1 + k_old] = blend
    # score head rows: [γ_1..K, g_messages] -> [γ_1..K, γ_mix, g_messages]
    w, b = src["score_head.2.weight"], src["score_head.2.bias"]
    dst["score_head.2.weight"].zero_()
    dst["score_head.2.bias"].zero_()
    dst["score_head.2.weight"][:k_old] = (1 - blend) * w[:k_old]
    dst["score_head.2.bias"][:k_old] = (1 - blend) * b[:k_old]
    dst["score_head.2.weight"][k_old + 1 :] = (1 - blend) * w[k_old:]
    dst["score_head.2.bias"][k_old + 1 :] = (1 - blend) * b[k_old:]
    dst["score_head.2.bias"][k_old] = blend
    new.load_state_dict(dst)
    return new


@torch.no_grad()
def reblend_mixture(
    old: UniversalDiScoFormer, *, blend: float = 0.0, **mixture_options: int | float | bool | str
) -> UniversalDiScoFormer:
    """A new trainable :class:`UniversalDiScoFormer` from ``old``, a universal network that
    already has a mixture column: every weight is copied, the ``mixture_*`` fields of its
    config are replaced by ``mixture_options`` (the EM's options change no weight shape), and
    the heads' last layers start at ``(1 - blend)`` times the old network plus ``blend`` times
    the mixture, as in :func:`warm_start_mixture`. ``blend = 0`` is the old network with the
    new EM options. ``old`` is not modified."""
    if not isinstance(old, UniversalDiScoFormer) or not old.config.mixture_components:
        raise ValueError(
            "reblend_mixture needs a universal network with a mixture column; use warm_start_mixture"
        )
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend}")
    bad = [k for k in mixture_options if not k.startswith("mixture_")]
    if bad:
        raise ValueError(f"only mixture_* options can change, got {bad}")
    new = UniversalDiScoFormer(replace(old.config, **mixture_options))
    state = {k: v.detach().clone().float() for k, v in old.state_dict().items()}
    j = len(old.config.kde_features)  # the mixture's gate: row 1 + K of the density head, K of the score head
    for head, row in (("logdensity_head.2", 1 + j), ("score_head.2", j)):
        state[f"{head}.weight"] *= 1 - blend
        state[f"{head}.bias"] *= 1 - blend
        state[f"{head}.bias"][row] += blend
    new.load_state_dict(state)
    return new
