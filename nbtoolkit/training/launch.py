"""``nbtoolkit train --nproc N``: start the same command on N processes through ``torch.distributed.run``.

The launcher runs torch's own elastic agent in this process (the code of ``torchrun``): one
machine by default (``--standalone``), or one node of a multi-node run with ``--nnodes`` and
``--rdzv-endpoint HOST:PORT`` (rendezvous backend c10d; start the same command on every node).
Each worker runs ``python -m nbtoolkit train`` with the same arguments, less these flags, and
trains data-parallel (:mod:`.distributed`).

Faults. If a worker fails, the agent stops the others (SIGTERM) within its monitor interval and
the launcher returns the failing worker's exit status (128 + the signal number for a worker
killed by a signal). A worker that raised has printed the cause; for one killed by a signal
(``kill -9``, the out-of-memory killer) the launcher prints which it was and how to resume. The
workers die with the launcher: each asks the kernel (Linux) for SIGTERM when its parent, the
launcher, exits, so a launcher killed with SIGKILL leaves no orphaned workers training on.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: flags of the launcher, each followed by one value; not passed on to the workers
LAUNCH_FLAGS = ("--nproc", "--nnodes", "--rdzv-endpoint")
#: environment variable through which the workers learn the launcher's process id
LAUNCHER_PID = "NBTOOLKIT_LAUNCHER_PID"


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
    """Run the workers and wait for them; returns 0, or the exit status of the failing worker
    (see the module docstring)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    previous = os.environ.get(LAUNCHER_PID)
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the workers inherit the launcher's environment
    try:
        torchrun.run(torchrun.parse_args(torchrun_argv(args, argv)))
    except ChildFailedError as exc:
        rank, failure = root_failure(exc.failures)
        if failure.exitcode < 0:
            print(killed_message(rank, failure.pid, failure.signal_name(), args), file=sys.stderr)
            return 128 - failure.exitcode
        return failure.exitcode
    finally:
        if previous is None:
            os.environ.pop(LAUNCHER_PID, None)
        else:
            os.environ[LAUNCHER_PID] = previous
    return 0


def root_failure(failures: dict[int, Any]) -> tuple[int, Any]:
    """The global rank and ``ProcessFailure`` of the worker whose failure stopped the run: first one
    killed by a signal other than the SIGTERM with which the agent stops the others, then one that
    exited with an error status, then any; the earliest of them (the others failed because of it)."""
    def kind(rank: int) -> int:
        code = failures[rank].exitcode
        return 0 if code < 0 and code != -signal.SIGTERM else 1 if code > 0 else 2

    rank = min(failures, key=lambda r: (kind(r), failures[r].timestamp, r))
    return rank, failures[rank]


def killed_message(rank: int, pid: int, signal_name: str, args: argparse.Namespace) -> str:
    """What the launcher prints when worker ``rank`` was killed by a signal (it printed nothing itself)."""
    path = getattr(args, "train_checkpoint_path", None) or getattr(args, "resume", None)
    text = (f"nbtoolkit train: training process {rank} (pid {pid}) was killed by {signal_name}; "
            "the other processes were stopped. ")
    if path is None:
        return text + "Resume from the last checkpoint with --resume PATH."
    if not Path(path).is_file():
        return text + (f"No checkpoint had been written to {path} yet (--checkpoint-every K writes one every "
                       "K epochs).")
    nodes = f" --nnodes {args.nnodes} --rdzv-endpoint {args.rdzv_endpoint}" if getattr(args, "nnodes", None) else ""
    return text + (f"Checkpoints are written whole or not at all: continue from the last one with "
                   f"`nbtoolkit train --nproc {args.nproc}{nodes} --resume {path}` (another --nproc re-shards "
                   "the systems).")


def die_with_launcher() -> None:
    """In a worker started by :func:`launch`: have the kernel send SIGTERM to this process when the
    launcher exits (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing), and exit now if it already did.
    Does nothing in a process the launcher did not start (such as one under ``torchrun``)."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is None or not launcher.isdigit() or not sys.platform.startswith("linux"):
        return
    if os.getppid() == int(launcher):
        import ctypes

        pr_set_pdeathsig, unsigned = 1, ctypes.c_ulong
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # int prctl(int option, unsigned long arg2, ...)
        if prctl(ctypes.c_int(pr_set_pdeathsig), unsigned(signal.SIGTERM), unsigned(0), unsigned(0), unsigned(0)) != 0 \
                or os.getppid() == int(launcher):
            return  # set (or not possible here), and the launcher still runs
    elif _running(int(launcher)):
        return  # not the launcher's child: the variable was inherited from elsewhere
    raise SystemExit(128 + signal.SIGTERM)  # the launcher is gone: do not train on as an orphan


def _running(pid: int) -> bool:
    """True when process ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])
