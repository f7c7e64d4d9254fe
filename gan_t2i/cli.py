"""What every `python -m gan_t2i.<task>` shares: user errors print as one line, exit code 1."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from gan_t2i.utils import GanT2IError, configure_cpu

F = TypeVar("F", bound=Callable[..., Any])


def task(fn: F) -> F:
    """Wrap a Hydra task body: CPU hygiene first; a `GanT2IError` becomes one line and exit 1.

    Hydra would print a traceback for any exception escaping the task, so user errors are caught
    here, inside `@hydra.main`.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        configure_cpu()
        try:
            return fn(*args, **kwargs)
        except GanT2IError as e:
            logging.getLogger("gan_t2i").debug("user error", exc_info=True)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
