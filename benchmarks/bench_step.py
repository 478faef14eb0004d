"""Throughput of the batched leapfrog: system-steps per second against one-system-at-a-time loops.

A "system-step" is one system advanced by one KDK leapfrog step. For N = 3, 16, 64, 256 bodies
and B = 1, 64, 1024, 4096 systems (Plummer spheres in Hénon units, softening 0.01, float64,
dt = 1e-3) it times

* the registry's ``leapfrog`` integrator stepping the whole batch at once (torch, no autograd);
* a plain NumPy KDK loop, one system after another, vectorised over particles only;
* REBOUND's ``leapfrog`` (when ``import rebound`` works; it is optional and imported only
  here), one simulation per system, stepped one after another.

The loops over many systems time a subset of them (``--subset``) and report the rate per
system-step, which is what the whole batch would take one system at a time. Each cell runs for
about ``--seconds`` seconds and reports the best of three timed runs.

``--contend`` times the batched column twice per row, interleaved: on the machine as it is,
and with one busy process (a pure-Python spin loop) beside it, and prints the ratio, next to
the same ratio for REBOUND's single-threaded C loop (what the neighbour's fair share costs on
this machine at this moment).
``--quick`` runs a subset of the table. ``--device cuda`` runs the batched side on a GPU.
``--compiled`` adds the opt-in compiled kernel (``NBTOOLKIT_COMPILE=1``) to the kernel table.

It then prints the force kernel alone against the previous (B, N, N, D) formulation, measured
interleaved in this process, and the peak extra memory of one force evaluation, including
B = 64, N = 1024 (on CPU: the C heap in use, sampled after every torch operation; on CUDA the
allocator's peak).

Threads follow :mod:`nbtoolkit.threads`: one torch intra-op thread unless ``--threads`` says
otherwise; the kernel's own worker pool is ``NBTOOLKIT_KERNEL_THREADS`` (default 1).

Run: ``python benchmarks/bench_step.py [--quick] [--contend] [--seconds 0.5] [--subset 16]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nbtoolkit import get_host
from nbtoolkit.compiled import COMPILE_ENV
from nbtoolkit.kernel import accelerations
from nbtoolkit.presets import plummer
from nbtoolkit.state import NBodyState
from nbtoolkit.threads import apply_thread_policy, kernel_workers

SIZES = (3, 16, 64, 256)
BATCHES = (1, 64, 1024, 4096)
QUICK = [(3, 1), (3, 1024), (3, 4096), (16, 64), (16, 1024), (64, 64), (64, 1024), (256, 64)]
SOFTENING = 0.01
DT = 1e-3
#: distinct Plummer realisations per state; larger batches repeat them (throughput only)
DISTINCT = 256


def load_rebound() -> Any:
    try:
        import rebound
    except ImportError:
        return None
    return rebound


@dataclass
class Row:
    n: int
    batch: int
    batched: float
    numpy: float
    rebound: float | None
    looped_systems: int
    contended: float | None = None
    rebound_contended: float | None = None


def timed_rate(run: Callable[[int], None], work_per_step: int, seconds: float, repeats: int = 3, min_steps: int = 1,
               sync: Callable[[], None] = lambda: None) -> float:
    """Units of work per second of ``run(steps)``, best of ``repeats`` timed runs (the fastest run
    is the one least disturbed by other processes). A calibration run picks the step count; when
    it alone takes longer than ``seconds`` it is the only run."""
    start = time.perf_counter()
    run(min_steps)
    sync()
    per_step = (time.perf_counter() - start) / min_steps
    best = work_per_step / per_step
    if per_step * min_steps > seconds:  # a slow cell: the calibration run is the measurement
        return best
    steps = max(min_steps, int(seconds / repeats / max(per_step, 1e-9)))
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        sync()
        best = max(best, work_per_step * steps / (time.perf_counter() - start))
    return best


def make_state(n: int, batch: int, device: str = "cpu") -> NBodyState:
    base = plummer(n=n, seed=n, dim=3, softening=SOFTENING, num_systems=min(batch, DISTINCT))
    if batch > base.batch_size:
        reps = -(-batch // base.batch_size)
        tile = lambda t: t.repeat(reps, *([1] * (t.dim() - 1)))[:batch]  # noqa: E731
        base = base.replace(mass=tile(base.mass), position=tile(base.position), velocity=tile(base.velocity),
                            time=tile(base.time))
    return base.to(device=torch.device(device)) if device != "cpu" else base


# ----------------------------------------------------------------------------- batched torch
def batched_rate(state: NBodyState, seconds: float) -> float:
    """System-steps per second of the registry leapfrog on the whole batch."""
    integrator = get_host().integrators.create("leapfrog")
    dt = torch.full((state.batch_size,), DT, dtype=state.dtype, device=state.position.device)
    current = integrator.step(state, dt)  # fills the acceleration cache: one force evaluation per step
    sync = torch.cuda.synchronize if state.position.is_cuda else (lambda: None)

    def run(steps: int) -> None:
        nonlocal current
        for _ in range(steps):
            current = integrator.step(current, dt)

    return timed_rate(run, state.batch_size, seconds, sync=sync)


class BusyNeighbour:
    """One other CPU-bound process (a pure-Python spin loop) for the duration of a ``with`` block."""

    def __enter__(self) -> BusyNeighbour:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


# ----------------------------------------------------------------------------- NumPy loop
def numpy_accelerations(mass: np.ndarray, position: np.ndarray, G: float, eps2: float) -> np.ndarray:
    """a_i = G sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^{3/2} for one system: (N,), (N, D) -> (N, D)."""
    disp = position[None, :, :] - position[:, None, :]
    d2 = np.einsum("ijk,ijk->ij", disp, disp) + eps2
    np.fill_diagonal(d2, 1.0)
    weight = d2 ** -1.5 * mass[None, :]
    np.fill_diagonal(weight, 0.0)
    return G * np.einsum("ij,ijk->ik", weight, disp)


class NumpySystem:
    """One system advanced by the same KDK scheme as the torch leapfrog, with its acceleration cached."""

    def __init__(self, state: NBodyState, index: int) -> None:
        data = state.index(index).to_dict()
        self.mass = data["mass"][0].numpy().copy()
        self.x = data["position"][0].numpy().copy()
        self.v = data["velocity"][0].numpy().copy()
        self.G, self.eps2 = state.G, state.softening**2
        self.a = numpy_accelerations(self.mass, self.x, self.G, self.eps2)

    def steps(self, count: int, dt: float) -> None:
        for _ in range(count):
            self.v += 0.5 * dt * self.a
            self.x += dt * self.v
            self.a = numpy_accelerations(self.mass, self.x, self.G, self.eps2)
            self.v += 0.5 * dt * self.a


def numpy_rate(state: NBodyState, systems: int, seconds: float) -> float:
    loop = [NumpySystem(state, i) for i in range(systems)]

    def run(steps: int) -> None:
        for system in loop:
            system.steps(steps, DT)

    return timed_rate(run, systems, seconds)


def numpy_matches_torch(state: NBodyState, steps: int = 20) -> float:
    """Largest position difference between the NumPy loop and the torch leapfrog after ``steps``."""
    integrator = get_host().integrators.create("leapfrog")
    dt = torch.full((state.batch_size,), DT, dtype=state.dtype)
    current = state
    for _ in range(steps):
        current = integrator.step(current, dt)
    worst = 0.0
    for i in range(state.batch_size):
        system = NumpySystem(state, i)
        system.steps(steps, DT)
        worst = max(worst, float(np.abs(system.x - current.position[i].numpy()).max()))
    return worst


# ----------------------------------------------------------------------------- REBOUND
def rebound_rate(rebound: Any, state: NBodyState, systems: int, seconds: float) -> float:
    """System-steps per second of REBOUND's leapfrog (drift-kick-drift), one simulation per system."""
    sims: list[Any] = []
    data = state.to_dict()
    for i in range(systems):
        sim = rebound.Simulation()
        sim.G = state.G
        sim.softening = state.softening
        sim.integrator = "leapfrog"
        sim.dt = DT
        for m, x, v in zip(data["mass"][i], data["position"][i], data["velocity"][i], strict=True):
            sim.add(m=float(m), x=float(x[0]), y=float(x[1]), z=float(x[2]), vx=float(v[0]), vy=float(v[1]), vz=float(v[2]))
        sims.append(sim)

    def run(steps: int) -> None:
        for sim in sims:
            if hasattr(sim, "steps"):
                sim.steps(steps)
            else:  # older REBOUND: integrate to a time without shortening the last step
                sim.integrate(sim.t + steps * DT, exact_finish_time=0)

    return timed_rate(run, systems, seconds)


# ----------------------------------------------------------------------------- force kernel alone
def previous_accelerations(mass: torch.Tensor, position: torch.Tensor, G: float = 1.0, softening: float = 0.0) -> torch.Tensor:
    """The kernel before the chunked rewrite: (B, N, N, D) displacements and a batched 1 x N @ N x D matmul."""
    off = 1 - torch.eye(position.shape[-2], dtype=position.dtype, device=position.device)
    disp = position.unsqueeze(-3) - position.unsqueeze(-2)
    d2 = disp.square().sum(-1) + (softening**2 + 1 - off)
    weights = d2.pow(-1.5) * (mass.unsqueeze(-2) * off)
    return G * (weights.unsqueeze(-2) @ disp).squeeze(-2)


def compiled_accelerations(mass: torch.Tensor, position: torch.Tensor, G: float, softening: float) -> torch.Tensor:
    """The kernel with NBTOOLKIT_COMPILE=1 (torch.compile'd when it works, eager after a warning)."""
    old = os.environ.get(COMPILE_ENV)
    os.environ[COMPILE_ENV] = "1"
    try:
        return accelerations(mass, position, G, softening)
    finally:
        if old is None:
            os.environ.pop(COMPILE_ENV, None)
        else:
            os.environ[COMPILE_ENV] = old


def kernel_table(cells: list[tuple[int, int]], seconds: float, device: str, compiled: bool) -> None:
    print("\nForce kernel alone (one evaluation), previous formulation against the current one, interleaved"
          + (" (compiled: NBTOOLKIT_COMPILE=1, compile time excluded):" if compiled else ":"))
    kinds = [("previous", previous_accelerations), ("current", accelerations)]
    if compiled:
        kinds.append(("compiled", compiled_accelerations))
    header = f"{'N':>4} {'B':>6} " + " ".join(f"{name + ' sys/s':>15}" for name, _ in kinds) + f" {'current/previous':>17}"
    if compiled:
        header += f" {'compiled/current':>17}"
    print(header)
    print("-" * len(header))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for n, batch in cells:
        state = make_state(n, batch, device)
        m, x = state.mass, state.position
        if compiled:
            compiled_accelerations(m, x, 1.0, SOFTENING)  # compile outside the timing
        best = {name: 0.0 for name, _ in kinds}
        for _ in range(2):
            for name, fn in kinds:
                def run(steps: int, fn: Callable[..., torch.Tensor] = fn) -> None:
                    for _ in range(steps):
                        fn(m, x, 1.0, SOFTENING)  # noqa: B023 (run is called inside this iteration)
                best[name] = max(best[name], timed_rate(run, batch, seconds / 2, repeats=2, min_steps=1, sync=sync))
        line = f"{n:>4} {batch:>6} " + " ".join(f"{best[name]:15.4g}" for name, _ in kinds)
        line += f" {best['current'] / best['previous']:16.1f}x"
        if compiled:
            line += f" {best['compiled'] / best['current']:16.2f}x"
        print(line)


def _heap_in_use() -> Callable[[], int] | None:
    """Bytes currently allocated from the C heap (glibc's mallinfo2, all arenas and mmapped
    blocks: where torch's CPU tensors live), or None where that is unavailable."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


def peak_extra_memory(fn: Callable[..., torch.Tensor], mass: torch.Tensor, position: torch.Tensor) -> int | None:
    """Peak extra bytes during one force evaluation (its output included): on CUDA the
    allocator's peak; on CPU the C heap in use, sampled after every torch operation."""
    from torch.utils._python_dispatch import TorchDispatchMode

    if position.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(mass, position, 1.0, SOFTENING)
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - base
    in_use = _heap_in_use()
    if in_use is None:
        return None

    class Peak(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.base = in_use()
            self.peak = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use() - self.base)
            return out

    with Peak() as probe:
        out = fn(mass, position, 1.0, SOFTENING)
    del out
    return probe.peak


def memory_table(device: str) -> None:
    print("\nPeak extra memory of one force evaluation (output (B, N, 3) included; kernel on one worker thread):")
    old = os.environ.get("NBTOOLKIT_KERNEL_THREADS")
    os.environ["NBTOOLKIT_KERNEL_THREADS"] = "1"  # the probe sees the operations of the calling thread
    try:
        g = torch.Generator().manual_seed(0)
        for kind, batch, n in (("previous", 64, 256), ("current", 64, 256), ("current", 64, 1024), ("current", 4096, 64)):
            fn = previous_accelerations if kind == "previous" else accelerations
            x = torch.randn(batch, n, 3, dtype=torch.float64, generator=g).to(device)
            m = torch.rand(batch, n, dtype=torch.float64, generator=g).to(device)
            with torch.no_grad():
                peak = peak_extra_memory(fn, m, x)
            shown = "n/a" if peak is None else f"{peak / 2**20:9.1f} MiB"
            print(f"  {kind:>8} kernel, B = {batch:>4}, N = {n:>4}: {shown}   (B N D = {batch * n * 3 * 8 / 2**20:.1f} MiB;"
                  f" one (B, N, N, D) tensor = {batch * n * n * 3 * 8 / 2**20:,.0f} MiB)")
    finally:
        if old is None:
            os.environ.pop("NBTOOLKIT_KERNEL_THREADS", None)
        else:
            os.environ["NBTOOLKIT_KERNEL_THREADS"] = old


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="target duration of each timed cell (s)")
    parser.add_argument("--subset", type=int, default=16,
                        help="systems timed by the one-at-a-time loops when B is larger (rate extrapolated per system-step)")
    parser.add_argument("--quick", action="store_true", help="a subset of the table (N, B) cells")
    parser.add_argument("--contend", action="store_true", help="also time the batched column beside one busy process")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of the batched side")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: nbtoolkit's thread policy)")
    parser.add_argument("--no-kernel-table", action="store_true", help="skip the kernel-alone and memory tables")
    parser.add_argument("--compiled", action="store_true",
                        help="add the opt-in compiled kernel (NBTOOLKIT_COMPILE=1) to the kernel-alone table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available here")
        return 2
    apply_thread_policy(args.threads)
    rebound = load_rebound()

    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch thread(s), "
          f"{kernel_workers()} kernel worker(s), {os.cpu_count()} CPUs ({platform.machine()}, {platform.processor() or '?'}), "
          f"load average {os.getloadavg()[0]:.2f} at start; float64, softening {SOFTENING}, dt {DT}; "
          f"batched side on {args.device}; best of 3 timed runs per cell")
    if rebound is None:
        print("REBOUND is not installed (`import rebound` failed): its column is skipped.")
    else:
        print(f"REBOUND {rebound.__version__}: integrator 'leapfrog' (drift-kick-drift), direct summation.")

    cells = QUICK if args.quick else [(n, b) for n in SIZES for b in BATCHES]
    rows: list[Row] = []
    with torch.no_grad():
        for n, batch in cells:
            state = make_state(n, batch)
            deviation = numpy_matches_torch(state.index(slice(0, 2)) if batch >= 2 else state)
            if deviation > 1e-10:
                raise RuntimeError(f"NumPy loop disagrees with the torch leapfrog by {deviation:.3g} (N = {n})")
            looped = min(batch, args.subset)
            device_state = make_state(n, batch, args.device) if args.device != "cpu" else state
            batched = batched_rate(device_state, args.seconds)
            contended = None
            if args.contend:
                with BusyNeighbour():
                    contended = batched_rate(device_state, args.seconds)
                batched = max(batched, batched_rate(device_state, args.seconds))  # idle again, after
            numpy_loop = numpy_rate(state, looped, args.seconds)
            reb = rebound_rate(rebound, state, looped, args.seconds) if rebound is not None else None
            reb_contended = None
            if args.contend and rebound is not None:  # the same neighbour's cost to single-threaded C
                with BusyNeighbour():
                    reb_contended = rebound_rate(rebound, state, looped, args.seconds)
            rows.append(Row(n, batch, batched, numpy_loop, reb, looped, contended, reb_contended))
            print(f"  done N = {n}, B = {batch}", file=sys.stderr, flush=True)

    print()
    header = (f"{'N':>4} {'B':>6} {'batched steps/s':>16} {'numpy steps/s':>14} {'rebound steps/s':>16} "
              f"{'batched/numpy':>14} {'batched/rebound':>16}")
    if args.contend:
        header += f" {'contended steps/s':>18} {'contended/idle':>15} {'REBOUND c/i':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        reb = f"{row.rebound:16.4g}" if row.rebound is not None else f"{'n/a':>16}"
        ratio = f"{row.batched / row.rebound:16.3g}" if row.rebound is not None else f"{'n/a':>16}"
        line = f"{row.n:>4} {row.batch:>6} {row.batched:16.4g} {row.numpy:14.4g} {reb} {row.batched / row.numpy:14.3g} {ratio}"
        if row.contended is not None:
            line += f" {row.contended:18.4g} {row.contended / row.batched:15.2f}"
            line += f" {row.rebound_contended / row.rebound:12.2f}" if row.rebound_contended else f" {'n/a':>12}"
        print(line)
    print(f"(steps/s are system-steps per second; where B > {args.subset} the NumPy"
          f"{'' if rebound is None else ' and REBOUND'} loops timed {args.subset} of the systems "
          "and the rate is per system-step, i.e. extrapolated to the whole batch)")

    print("\nRequirements of issue 9 on these figures:")
    big = [r for r in rows if r.batch >= 64]
    print(f"  batched >= NumPy loop for every N with B >= 64: {all(r.batched >= r.numpy for r in big)}")
    drops = []
    by_cell = {(r.n, r.batch): r for r in rows}
    for r in rows:
        prev = [b for b in BATCHES if b < r.batch and (r.n, b) in by_cell]
        if prev:
            p = by_cell[(r.n, max(prev))]
            drops.append(r.batched >= 0.5 * p.batched)
    print(f"  no drop of more than 2x as B grows to the next measured size: {all(drops) if drops else 'n/a'}")
    if args.contend:
        print(f"  with a busy neighbour, every row at least half its idle figure: "
              f"{all(r.contended >= 0.5 * r.batched for r in rows if r.contended is not None)}")
    if rebound is not None:
        for n, b, want in ((3, 4096, 1.0), (16, 1024, 0.25), (64, 1024, 0.25)):
            if (n, b) in by_cell:
                r = by_cell[(n, b)]
                print(f"  N = {n}, B = {b}: batched / REBOUND = {r.batched / r.rebound:.2f} (wanted >= {want})")

    if not args.no_kernel_table:
        kcells = [(3, 4096), (16, 1024), (64, 1024), (256, 64)]
        if not args.quick:
            kcells.append((256, 1))
        with torch.no_grad():
            kernel_table(kcells, args.seconds, args.device, args.compiled)
        memory_table(args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
