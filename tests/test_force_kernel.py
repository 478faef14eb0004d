"""The chunked force kernel against simple references, on every path it can take.

Paths of :func:`nbtoolkit.kernel.accelerations` / :func:`potential_energy`: "small" (the whole
problem in one chunk), "pairs" (N <= 32 and B >= 32: batch innermost, pairs i < j), "rows"
(blocks of systems and rows), each without an autograd graph (in place, possibly on worker
threads) and with one (out of place, checkpointed when chunked), plus the optional compiled
path. Shrinking ``CHUNK_ELEMENTS`` forces many chunks, blocks and checkpoints on tiny inputs.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nbtoolkit.kernel as kernel
import nbtoolkit.threads as threads
from nbtoolkit import accelerations, potential_energy
from nbtoolkit.compiled import COMPILE_ENV

F64 = torch.float64


def loop_accelerations(mass, position, G, eps):
    """Plain double loop over bodies: the definition, one system at a time."""
    B, N, D = position.shape
    out = torch.zeros(B, N, D, dtype=F64)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                if i != j:
                    r = position[b, j] - position[b, i]
                    out[b, i] += G * mass[b, j] * r / (r.dot(r) + eps**2) ** 1.5
    return out


def loop_potential(mass, position, G, eps):
    B, N, _ = position.shape
    out = torch.zeros(B, dtype=F64)
    for b in range(B):
        for i in range(N):
            for j in range(i + 1, N):
                r = position[b, j] - position[b, i]
                out[b] -= G * mass[b, i] * mass[b, j] / (r.dot(r) + eps**2).sqrt()
    return out


def previous_accelerations(mass, position, G=1.0, softening=0.0):
    """The formulation the chunked kernel replaced ((B, N, N, D) displacements)."""
    off = 1 - torch.eye(position.shape[-2], dtype=position.dtype)
    disp = position.unsqueeze(-3) - position.unsqueeze(-2)
    d2 = disp.square().sum(-1) + (softening**2 + 1 - off)
    return G * ((d2.pow(-1.5) * (mass.unsqueeze(-2) * off)).unsqueeze(-2) @ disp).squeeze(-2)


def previous_potential(mass, position, G=1.0, softening=0.0):
    off = 1 - torch.eye(position.shape[-2], dtype=position.dtype)
    disp = position.unsqueeze(-3) - position.unsqueeze(-2)
    d2 = disp.square().sum(-1) + (softening**2 + 1 - off)
    return -0.5 * G * (mass.unsqueeze(-1) * mass.unsqueeze(-2) * d2.rsqrt() * off).sum((-1, -2))


def cluster(batch, n, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.5 + torch.rand(batch, n, generator=g, dtype=F64), torch.randn(batch, n, dim, generator=g, dtype=F64)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """A chunk budget of 64 numbers: every path splits into many chunks, blocks and checkpoints."""
    monkeypatch.setattr(kernel, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(kernel, "GRAPH_CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(kernel, "GRAPH_CHECKPOINT_ELEMENTS", 128)
    monkeypatch.setattr(kernel, "SMALL_ELEMENTS", 0)
    monkeypatch.setattr(kernel, "_PAIR_TASK_MIN", 4)


# (batch, n, dim) -> path with the default budgets: small, pairs, rows, pairs in 2-D, small, pairs unrolled
# (without a graph) for three bodies and for two in 2-D
CASES = [(2, 3, 3), (64, 5, 3), (3, 70, 3), (40, 8, 2), (1, 2, 3), (700, 3, 3), (600, 2, 2)]


def path(batch, n, dim):
    pairs = kernel._use_pairs(n, batch)
    if kernel._use_small(batch, n, dim, pairs):
        return "small"
    return ("unrolled" if n <= kernel.UNROLL_MAX_N else "pairs") if pairs else "rows"


def test_the_cases_cover_every_path():
    assert [path(*case) for case in CASES] == ["small", "pairs", "rows", "pairs", "small", "unrolled", "unrolled"]


@pytest.mark.parametrize("chunks", ["default", "tiny"])
@pytest.mark.parametrize("batch, n, dim", CASES)
def test_kernel_matches_the_double_loop_and_the_previous_formulation(batch, n, dim, chunks, request):
    if chunks == "tiny":
        request.getfixturevalue("tiny_chunks")
    mass, pos = cluster(batch, n, dim, seed=batch + n)
    G, eps = 1.7, 0.05
    acc, pot = accelerations(mass, pos, G, eps), potential_energy(mass, pos, G, eps)
    assert acc.shape == pos.shape and pot.shape == (batch,)
    torch.testing.assert_close(acc, loop_accelerations(mass, pos, G, eps), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(pot, loop_potential(mass, pos, G, eps), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(acc, previous_accelerations(mass, pos, G, eps), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(pot, previous_potential(mass, pos, G, eps), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("batch, n", [(64, 3), (64, 16), (8, 64), (2, 200)])
def test_larger_systems_match_the_previous_formulation(batch, n):
    mass, pos = cluster(batch, n, seed=n)
    torch.testing.assert_close(accelerations(mass, pos, 1.0, 0.01), previous_accelerations(mass, pos, 1.0, 0.01),
                               rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(potential_energy(mass, pos, 1.0, 0.01), previous_potential(mass, pos, 1.0, 0.01),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("batch, n, dim", CASES)
def test_graph_and_no_graph_paths_agree(batch, n, dim, tiny_chunks):
    mass, pos = cluster(batch, n, dim, seed=3)
    with torch.no_grad():
        acc0, pot0 = accelerations(mass, pos, 1.0, 0.1), potential_energy(mass, pos, 1.0, 0.1)
    x = pos.clone().requires_grad_(True)
    acc1, pot1 = accelerations(mass, x, 1.0, 0.1), potential_energy(mass, x, 1.0, 0.1)
    assert acc1.requires_grad and pot1.requires_grad
    torch.testing.assert_close(acc1.detach(), acc0, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(pot1.detach(), pot0, rtol=1e-13, atol=0)


@pytest.mark.parametrize("chunks, batch, n", [("default", 2, 3), ("default", 64, 5), ("default", 2, 9),
                                              ("tiny", 2, 3), ("tiny", 32, 3), ("tiny", 2, 9)])
def test_gradcheck_positions_masses_and_dt(batch, n, chunks, request):
    if chunks == "tiny":
        request.getfixturevalue("tiny_chunks")
    mass, pos = cluster(batch, n, seed=7)
    vel = torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    x = pos.clone().requires_grad_(True)
    m = mass.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, x: accelerations(m, x, 1.3, 0.2), (m, x))
    assert torch.autograd.gradcheck(lambda m, x: potential_energy(m, x, 1.3, 0.2), (m, x))
    dt = torch.full((batch,), 0.05, dtype=F64, requires_grad=True)

    def after_step(dt):  # a drift then the kick and potential energy, as training does
        moved = pos + dt[:, None, None] * vel
        return accelerations(mass, moved, 1.0, 0.1).square().sum((-1, -2)) + potential_energy(mass, moved, 1.0, 0.1)

    assert torch.autograd.gradcheck(after_step, (dt,))


def test_accelerations_are_minus_gradient_of_potential_on_every_path(tiny_chunks):
    for batch, n, _ in CASES:
        mass, pos = cluster(batch, n, seed=11)
        x = pos.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(potential_energy(mass, x, 1.0, 0.05).sum(), x)
        torch.testing.assert_close(accelerations(mass, pos, 1.0, 0.05), -grad / mass.unsqueeze(-1), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("batch, n", [(2, 5), (64, 5), (3, 70)])
def test_zero_mass_bodies_exert_nothing_but_feel_the_others(batch, n):
    mass, pos = cluster(batch, n + 2, seed=5)
    mass[:, -2:] = 0.0
    acc, pot = accelerations(mass, pos, 1.0, 0.01), potential_energy(mass, pos, 1.0, 0.01)
    real_acc = accelerations(mass[:, :n], pos[:, :n], 1.0, 0.01)
    torch.testing.assert_close(acc[:, :n], real_acc, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(pot, potential_energy(mass[:, :n], pos[:, :n], 1.0, 0.01), rtol=1e-13, atol=0)
    torch.testing.assert_close(acc[:, n:], loop_accelerations(mass, pos, 1.0, 0.01)[:, n:], rtol=1e-12, atol=1e-13)
    assert (acc[:, n:].abs() > 0).all()
    x = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(accelerations(mass, x, 1.0, 0.01).sum() + potential_energy(mass, x, 1.0, 0.01).sum(), x)
    assert torch.isfinite(grad).all()


def test_leading_shapes_broadcast_mass_and_degenerate_sizes():
    mass, pos = cluster(6, 4, seed=2)
    acc = accelerations(mass, pos)
    torch.testing.assert_close(accelerations(mass.reshape(2, 3, 4), pos.reshape(2, 3, 4, 3)).reshape(6, 4, 3), acc)
    shared = mass[:1]  # one mass row for every system
    torch.testing.assert_close(accelerations(shared, pos), previous_accelerations(shared, pos), rtol=1e-12, atol=1e-13)
    one = accelerations(torch.ones(3, 1, dtype=F64), torch.randn(3, 1, 3, dtype=F64))
    assert one.shape == (3, 1, 3) and (one == 0).all()
    assert accelerations(torch.ones(0, 4, dtype=F64), torch.zeros(0, 4, 3, dtype=F64)).shape == (0, 4, 3)
    assert potential_energy(torch.ones(5, 1, dtype=F64), torch.randn(5, 1, 2, dtype=F64)).shape == (5,)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("graph, batch, n", [(False, 512, 16), (False, 64, 300), (False, 2, 2000),
                                             (True, 2048, 16), (True, 64, 300), (True, 2, 2000)])
def test_no_temporary_grows_like_b_n_n(batch, n, graph):
    """Every tensor the kernel creates, forward and backward, stays within B N D or the chunk
    budget (a (B, N, N) or (B, N, N, D) tensor of these sizes would be 2 to 1000 times larger)."""
    mass, pos = cluster(batch, n, seed=1)
    x = pos.clone().requires_grad_(graph)
    with torch.set_grad_enabled(graph), LargestTensor() as probe:
        acc = accelerations(mass, x, 1.0, 0.01)
        pot = potential_energy(mass, x, 1.0, 0.01)
        if graph:
            (acc.sum() + pot.sum()).backward()
    bound = max(kernel.GRAPH_CHUNK_ELEMENTS if graph else threads.CHUNK_ELEMENTS, batch * n * 3)
    assert probe.largest <= bound < batch * n * n


def test_device_budget_gives_the_same_answer(monkeypatch):
    """The large chunks used off the CPU (one block, one chunk) compute the same sums."""
    cases = [cluster(64, 5, seed=12), cluster(3, 70, seed=13), cluster(600, 16, seed=14)]
    with torch.no_grad():
        cpu = [(accelerations(m, x, 1.0, 0.01), potential_energy(m, x, 1.0, 0.01)) for m, x in cases]
        monkeypatch.setattr(kernel, "_chunk", lambda t: kernel.DEVICE_CHUNK_ELEMENTS)
        big = [(accelerations(m, x, 1.0, 0.01), potential_energy(m, x, 1.0, 0.01)) for m, x in cases]
    for (a0, u0), (a1, u1) in zip(cpu, big):
        torch.testing.assert_close(a1, a0, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(u1, u0, rtol=1e-13, atol=0)


def test_worker_pool_gives_the_same_answer(monkeypatch):
    mass, pos = cluster(1500, 5, seed=4)
    rows_mass, rows_pos = cluster(24, 70, seed=6)
    with torch.no_grad():
        one = [accelerations(mass, pos, 1.0, 0.01), potential_energy(rows_mass, rows_pos, 1.0, 0.01),
               accelerations(rows_mass, rows_pos, 1.0, 0.01)]
        monkeypatch.setenv(threads.THREADS_ENV, "2")
        monkeypatch.setattr(threads, "available_cpus", lambda: 4)
        monkeypatch.setattr(kernel, "_PAIR_TASK_MIN", 64)
        assert threads.kernel_workers() == 2
        two = [accelerations(mass, pos, 1.0, 0.01), potential_energy(rows_mass, rows_pos, 1.0, 0.01),
               accelerations(rows_mass, rows_pos, 1.0, 0.01)]
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_worker_pool_runs_every_block_once_and_reraises():
    seen = []
    threads.run_blocks(seen.append, list(range(50)), workers=3)
    assert sorted(seen) == list(range(50))

    def boom(block):
        if block == 7:
            raise ValueError("block 7")

    with pytest.raises(ValueError, match="block 7"):
        threads.run_blocks(boom, list(range(20)), workers=2)


def test_thread_policy_defaults(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    assert threads.kernel_workers() == 1
    monkeypatch.setenv(threads.THREADS_ENV, "not a number")
    assert threads.kernel_workers() == 1
    monkeypatch.setenv(threads.THREADS_ENV, "100000")
    assert threads.kernel_workers() == threads.available_cpus()
    previous = torch.get_num_threads()
    try:
        assert threads.apply_thread_policy() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- compiled path
def test_compiled_path_falls_back_to_eager_with_one_warning(fresh_compiled, monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", unavailable)
    mass, pos = cluster(3, 5, seed=9)
    with pytest.warns(RuntimeWarning, match="compiled force kernel is unavailable.*no compiler here"):
        first = accelerations(mass, pos, 1.0, 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = accelerations(mass, pos, 1.0, 0.01)
    assert not kernel.compiled_acc.available()
    torch.testing.assert_close(first, loop_accelerations(mass, pos, 1.0, 0.01), rtol=1e-12, atol=1e-13)
    assert torch.equal(first, second)


def test_compiled_path_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert not kernel.compiled_acc.available()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler for inductor")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compiler stack
def test_compiled_path_matches_the_double_loop(fresh_compiled):
    mass, pos = cluster(4, 6, seed=10)
    mass[:, 0] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with torch.no_grad():
            acc = accelerations(mass, pos, 1.3, 0.02)
    assert kernel.compiled_acc.compiled is not None and not kernel.compiled_acc.failed
    torch.testing.assert_close(acc, loop_accelerations(mass, pos, 1.3, 0.02), rtol=1e-12, atol=1e-13)
    x = pos.clone().requires_grad_(True)  # with a graph the eager kernel runs (and differentiates)
    (grad,) = torch.autograd.grad(accelerations(mass, x, 1.3, 0.02).sum(), x)
    assert torch.isfinite(grad).all()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler for inductor")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compiler stack
def test_potential_energy_traced_by_a_compiled_caller_matches_the_double_loop():
    """A compiled caller (the learned dt under NBTOOLKIT_COMPILE=1) gets the fused sum: padding bodies and the
    diagonal still drop out, and no Python-side caching or thread lookup breaks the graph."""
    mass, pos = cluster(3, 7, seed=11)
    mass[:, -1] = 0.0  # a padding body
    compiled = torch.compile(potential_energy, dynamic=False, fullgraph=True)
    with torch.no_grad():
        pot = compiled(mass, pos, 1.3, 0.02)
        unsoftened = compiled(mass, pos, 1.3, 0.0)
    torch.testing.assert_close(pot, loop_potential(mass, pos, 1.3, 0.02), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(unsoftened, loop_potential(mass, pos, 1.3, 0.0), rtol=1e-12, atol=1e-13)
