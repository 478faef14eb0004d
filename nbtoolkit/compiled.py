"""Opt-in ``torch.compile`` of hot functions: ``NBTOOLKIT_COMPILE=1``.

Small tensors make eager PyTorch pay its per-operation overhead (a few microseconds) hundreds of
times per call; compiling fuses the operations into a few loops. Three paths use it, all only when no
autograd graph is being recorded: the force kernel for small N (:mod:`nbtoolkit.kernel`), the learned
dt predictors' evaluation (:mod:`plugins.safety_classes`) and leapfrog's estimate of a step's error
(:mod:`nbtoolkit.shadow`). Each compiles on its first call (a few seconds,
again for each new shape of the batch, up to torch's recompile limit) and falls back to eager, with one
warning, if compiling is unavailable or fails.

It pays in runs of one batch shape (``simulate``, ``evaluate``, the viewer). Work that flies many shapes passes
the recompile limit (8 graphs a function) and then checks every stored graph's guards before running eagerly:
``nbtoolkit calibrate --model learned`` took 19.8 minutes with it against 12.9 without (the same factors).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

#: environment variable that turns the compiled paths on ("1")
COMPILE_ENV = "NBTOOLKIT_COMPILE"


def compile_requested() -> bool:
    """True when ``NBTOOLKIT_COMPILE=1``."""
    return os.environ.get(COMPILE_ENV, "").strip() == "1"


class CompiledFunction:
    """``fn`` through ``torch.compile`` (made on the first call), or None from a call once compiling has failed.

    ``what`` names the function in the warning. :meth:`available` is False after a failure: callers then
    keep to their eager path for the rest of the process."""

    def __init__(self, fn: Callable[..., Any], what: str, **compile_options: Any) -> None:
        self.fn = fn
        self.what = what
        self.compile_options = compile_options
        self.compiled: Callable[..., Any] | None = None
        self.failed = False

    def available(self) -> bool:
        """Compiling is requested (:func:`compile_requested`) and has not failed."""
        return compile_requested() and not self.failed

    def __call__(self, *args: Any) -> Any:
        """The compiled function's result, or None (after one warning) when compiling is unavailable or fails."""
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, **self.compile_options)
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
            self.failed = True
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
            warnings.warn(f"nbtoolkit: the compiled {self.what} is unavailable ({type(exc).__name__}: {message}); "
                          "using the eager one", RuntimeWarning, stacklevel=3)
            return None
