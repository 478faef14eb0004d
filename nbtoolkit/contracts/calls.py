"""What the run-time checks of every extension point share: which exceptions pass through a check
unchanged, and how an exception raised inside a plugin is reported."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from ..errors import NBToolkitError, PluginError
from ..registry import describe

T = TypeVar("T")

#: exceptions a check passes on unchanged: nbtoolkit's own (a caller's mistake, an error the
#: plugin raised on purpose) and the machine's (out of memory)
PASS_THROUGH: tuple[type[BaseException], ...] = (NBToolkitError, MemoryError,
                                                 getattr(torch, "OutOfMemoryError", MemoryError))


def call_plugin(obj: object, kind: str, where: str, call: Callable[[], T]) -> T:
    """``call()``, a call into the plugin object ``obj`` of the extension point ``kind``; any
    exception other than :data:`PASS_THROUGH` becomes a :class:`~nbtoolkit.errors.PluginError`
    naming ``obj`` (:func:`~nbtoolkit.registry.describe`) and ``where`` it was raised (``in step()``)."""
    try:
        return call()
    except PASS_THROUGH:
        raise
    except Exception as exc:
        raise PluginError(f"{describe(obj, kind)} raised {type(exc).__name__} {where}: {exc}") from exc
