"""Names of the first release that still work, with a :class:`DeprecationWarning`: renamed
keywords (:func:`renamed_kwargs`) and functions kept only for compatibility (:func:`deprecated`)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_kwargs", "deprecated"]

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


def deprecated(advice: str) -> Callable[[F], F]:
    """Decorator: the function still works, with a :class:`DeprecationWarning` that ends with
    ``advice`` (what to use instead).

    Example:
        >>> @deprecated("use abs")
        ... def magnitude(x: int) -> int:
        ...     return abs(x)
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     magnitude(-2), str(caught[0].message)
        (2, 'magnitude() is deprecated; use abs')
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            warnings.warn(f"{fn.__qualname__}() is deprecated; {advice}", DeprecationWarning, stacklevel=2)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
