"""``nbtoolkit train --nproc N``: start the same command on N processes through ``torch.distributed.run``.

The launcher runs torch's own elastic agent in this process (the code of ``torchrun``): one
machine by default (``--standalone``), or one node of a multi-node run with ``--nnodes`` and
``--rdzv-endpoint HOST:PORT`` (rendezvous backend c10d; start the same command on every node).
Each worker runs ``python -m nbtoolkit train`` with the same arguments, less these flags, and
trains data-parallel (:mod:`.distributed`). If a worker fails, the agent stops the others; the
worker that failed has already printed the cause, so the launcher only returns its exit status.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

#: flags of the launcher, each followed by one value; not passed on to the workers
LAUNCH_FLAGS = ("--nproc", "--nnodes", "--rdzv-endpoint")


def worker_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` (the arguments after ``nbtoolkit``) without the launcher flags and their values."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            out.append(arg)
    return out


def torchrun_argv(args: argparse.Namespace, argv: Sequence[str]) -> list[str]:
    """The ``torch.distributed.run`` command line that runs ``nbtoolkit`` ``argv`` on ``args.nproc`` processes per node."""
    if args.nnodes is not None or args.rdzv_endpoint is not None:
        if args.nnodes is None or args.rdzv_endpoint is None:
            from ..errors import ConfigError

            raise ConfigError("a multi-node run needs both --nnodes N and --rdzv-endpoint HOST:PORT")
        where = ["--nnodes", str(args.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint]
    else:
        where = ["--standalone"]
    return [*where, "--nproc-per-node", str(args.nproc), "-m", "nbtoolkit", *worker_argv(argv)]


def launch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the workers and wait for them; returns 0, or the exit status of the first failing worker."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.run(torchrun.parse_args(torchrun_argv(args, argv)))
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    return 0
