"""Keyword names of the first release that still work, with a :class:`DeprecationWarning`."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_kwargs"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_kwargs(**renames: str) -> Callable[[F], F]:
    """Decorator: ``old=value`` is passed on as ``new=value`` (``renames`` maps old -> new) with a
    :class:`DeprecationWarning`; both at once is a :class:`TypeError`.

    Example:
        >>> @renamed_kwargs(target="score")
        ... def run(score: int) -> int:
        ...     return score
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     run(target=3)
        3
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__qualname__}() got both {old}= and {new}=; pass {new}= only")
                    warnings.warn(
                        f"{fn.__qualname__}({old}=...) is deprecated; pass {new}=",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
