"""The samplers' one run loop: step a state behind a progress bar, keep the infos, save states.

:func:`pyro_disco.infer.langevin.run`, :func:`pyro_disco.infer.svgd.run` and
:func:`pyro_disco.infer.particles.run` are this loop around their own pure ``step``; what differs
between them (step-size adaptation, the outlier check of the first refit) lives in the
``step_fn`` they pass, which sees the step's index.

Example:
    >>> from typing import NamedTuple
    >>> class Info(NamedTuple):
    ...     value: torch.Tensor
    >>> state, info, saved = run_loop(
    ...     torch.zeros(()), lambda i, s: (s + 1, Info(s + 1)), 4, num_warmup=1, save_every=2
    ... )
    >>> state.item(), info.value.tolist(), [s.item() for s in saved]
    (5.0, [2.0, 3.0, 4.0, 5.0], [0.0, 3.0, 5.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from tqdm.auto import tqdm

__all__ = ["run_loop"]

S = TypeVar("S")
I = TypeVar("I", bound=NamedTuple)  # noqa: E741 (the info type, as in BlackJAX's State/Info)


def run_loop(
    state: S,
    step_fn: Callable[[int, S], tuple[S, I]],
    num_steps: int,
    *,
    num_warmup: int = 0,
    save_every: int = 0,
    save_start: bool = True,
    info_dim: int = 0,
    desc: str = "",
    progress: bool = False,
) -> tuple[S, I, list[S]]:
    """Call ``state, info = step_fn(i, state)`` for ``i`` in ``range(num_warmup + num_steps)``.

    Args:
        num_warmup: leading steps whose info is dropped and whose states are never saved.
        save_every: save the state after every this many kept steps (0: save none).
        save_start: with ``save_every``, also save the starting state first.
        info_dim: the infos of the kept steps are stacked field by field along this dim.

    Returns:
        The final state, the stacked info (``num_steps`` entries along ``info_dim``) and the
        saved states.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_warmup < 0:
        raise ValueError(f"num_warmup must be >= 0, got {num_warmup}")
    saved = [state] if save_every and save_start else []
    infos = []
    for i in tqdm(range(num_warmup + num_steps), disable=not progress, desc=desc):
        state, info = step_fn(i, state)
        kept = i - num_warmup + 1  # kept steps so far (<= 0 during warm-up)
        if kept <= 0:
            continue
        infos.append(info)
        if save_every and kept % save_every == 0:
            saved.append(state)
    info = type(infos[0])(*(torch.stack(f, dim=info_dim) for f in zip(*infos, strict=True)))
    return state, info, saved
