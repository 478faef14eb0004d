"""Thread policy of the force kernel: steady when other processes share the cores.

Torch's intra-op parallelism splits each large operation over ``torch.get_num_threads()``
OpenMP threads with a static schedule and a barrier at its end. When another process is busy
on the same cores, one of those threads is descheduled and every other thread waits for it at
each barrier: a kernel made of a dozen such operations can run many times slower than on one
thread (the oversubscription collapse).

The force kernel avoids this by construction:

* every operation it issues works on a chunk of at most :data:`CHUNK_ELEMENTS` elements, below
  torch's parallel grain (``at::internal::GRAIN_SIZE`` = 32,768), so torch runs it inline on the
  calling thread and never opens a parallel region;
* independent blocks of the batch are handed to a small pool of worker threads
  (:func:`run_blocks`), each taking the next block when it finishes the last one (a dynamic
  schedule). Torch releases the GIL inside each operation, so the workers run in parallel on an
  idle machine; when a neighbour takes a core, the other workers simply take more blocks, and
  nothing waits at a barrier for a descheduled thread. A busy neighbour then costs its fair
  share of the cores, no more.

The number of workers is :func:`kernel_workers`: ``NBTOOLKIT_KERNEL_THREADS`` when set, else 1,
capped by the CPUs this process may run on. One is the default because on the shared 2-core
machine where this was measured, with other jobs running, a second worker cost more (GIL and
hand-off) than it gained; on an idle machine with spare cores, set it to the cores to use.
Work that records an autograd graph always runs on the calling thread (grad mode is per thread,
and training batches are small).

:func:`apply_thread_policy` is for entry points (benchmarks, scripts): it sets torch's own
intra-op thread count, which still governs the operations outside the kernel (the integrators'
elementwise updates, the predictor's matrix products). Its default is one thread: those
operations are cheap next to the kernel, and one thread is the only count that no neighbour can
make collapse.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

#: elements per temporary tensor in the force kernel: below torch's parallel grain (32,768),
#: so no kernel operation opens an OpenMP parallel region, and small enough to stay in cache
CHUNK_ELEMENTS = (1 << 15) - 1

#: environment variable that fixes the number of kernel worker threads (1 = no pool)
THREADS_ENV = "NBTOOLKIT_KERNEL_THREADS"

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def kernel_workers() -> int:
    """Worker threads for the force kernel: ``$NBTOOLKIT_KERNEL_THREADS`` (default 1), never more
    than the available CPUs and never less than 1."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    try:
        wanted = int(raw) if raw else 1
    except ValueError:
        wanted = 1
    return max(1, min(wanted, available_cpus()))


def apply_thread_policy(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (``threads``, default 1, capped by the available CPUs)
    and return it. Meant for entry points of processes that share their machine."""
    count = 1 if threads is None else max(1, min(int(threads), available_cpus()))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="nbtoolkit-kernel")
            _pool_size = size
        return _pool


def run_blocks(work: Callable[[T], None], blocks: Sequence[T], workers: int | None = None) -> None:
    """Run ``work(block)`` for every block, on up to ``workers`` threads with a dynamic schedule.

    The blocks must be independent (each writes its own part of the output). Runs on the calling
    thread when there is one worker or one block, or from inside a kernel worker. Worker threads
    run with autograd off: use this only for work that records no graph.
    """
    workers = kernel_workers() if workers is None else max(1, workers)
    if workers == 1 or len(blocks) <= 1 or threading.current_thread().name.startswith("nbtoolkit-kernel"):
        for block in blocks:
            work(block)
        return
    pending = list(blocks)
    pending.reverse()
    take = threading.Lock()

    def drain() -> None:
        with torch.no_grad():
            while True:
                with take:
                    if not pending:
                        return
                    block = pending.pop()
                work(block)

    pool = _executor(workers)
    helpers = [pool.submit(drain) for _ in range(min(workers, len(blocks)) - 1)]
    drain()  # the calling thread works too
    for helper in helpers:
        helper.result()  # re-raises a worker's exception
