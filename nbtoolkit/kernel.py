"""The force kernel: Newtonian accelerations and potential energy of batched bodies, chunked.

:func:`accelerations` and :func:`potential_energy` (re-exported by :mod:`nbtoolkit.physics`)
take masses ``(..., N)`` and positions ``(..., N, D)`` with any leading batch shape, are
differentiable, and loop in Python only over chunks of a fixed size (see below). Softening
``eps`` enters as ``1 / sqrt(r^2 + eps^2)`` (Plummer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor

from .compiled import CompiledFunction
from .threads import CHUNK_ELEMENTS, kernel_workers, run_blocks

# ----------------------------------------------------------------------------- force kernel
#
# The formulations below compute exactly the sums of the textbook kernel, pair by pair, on
# component-wise differences x_j - x_i (no cancellation against |x|), and never form a
# (..., N, N, D) tensor: every temporary holds at most threads.CHUNK_ELEMENTS numbers (below
# torch's parallel grain; GRAPH_CHUNK_ELEMENTS with an autograd graph), so peak extra memory
# is the (B, N, D) input/output copies plus a fixed budget per worker thread.
#
# * "pairs" (small N, large batch): the batch is the innermost, contiguous dimension and only
#   the N (N - 1) / 2 pairs i < j are visited (Newton's third law gives the force on j). Every
#   operation then runs over long contiguous rows of systems, whatever N. Without a graph and
#   for N <= UNROLL_MAX_N (at most 3 pairs) each pair works on slices of the rows, in place,
#   instead of gathering the pairs' rows and scattering their forces (index_select/index_add).
# * "rows" (larger N, or few systems): blocks of systems and of rows i, each (b, rows, N), with
#   all N columns j; 1 / r_ii is made exactly 0 (r_ii^2 = +inf), so the diagonal adds nothing.
# * "small" (B N N D up to SMALL_ELEMENTS, or up to one chunk outside the pair path): the same
#   sums in the fewest operations, since per-operation overhead is all that matters there.
#
# Without an autograd graph, independent blocks of the batch run on the kernel's worker threads
# (see nbtoolkit.threads). With a graph (training), one thread computes the same operations out
# of place, and a problem larger than GRAPH_CHECKPOINT_ELEMENTS is checkpointed chunk by chunk,
# so backward recomputes each chunk instead of storing it: memory stays bounded there too.
# Results agree with the textbook (B, N, N, D) formulation to round-off (about 1e-14 relative;
# the order of the sums differs between paths, so they are not bitwise equal).

#: the pair formulation is used for N up to this (and batches of at least PAIR_MIN_BATCH)
PAIR_MAX_N = 32
PAIR_MIN_BATCH = 32
#: up to this N the gradient-free pair path visits its (at most 3) pairs one by one on views of the
#: rows (1.5-3x faster than gathering and scattering them at N = 2 and 3 with B >= 1024)
UNROLL_MAX_N = 3
#: systems per worker task on the pair path (long rows amortise the per-operation overhead)
_PAIR_TASK_MIN = 512
#: with an autograd graph: elements per temporary (larger chunks, fewer graph nodes), and the
#: size of the whole pair problem (B N N D) above which chunks are checkpointed, i.e. recomputed
#: in backward instead of kept: saved tensors then stay within a fixed budget too
GRAPH_CHUNK_ELEMENTS = 1 << 18
GRAPH_CHECKPOINT_ELEMENTS = 1 << 22
#: below this B N N D the "small" path (fewest operations) beats the pair path
SMALL_ELEMENTS = 4096
#: elements per temporary on GPUs and other devices, where no OpenMP grain applies and each
#: operation costs a kernel launch: chunks there only bound memory (128 MiB in float64)
DEVICE_CHUNK_ELEMENTS = 1 << 24


def _chunk(t: Tensor) -> int:
    return CHUNK_ELEMENTS if t.device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


@functools.lru_cache(maxsize=64)
def _pair_index(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(i, j) of the N (N - 1) / 2 pairs i < j."""
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0].contiguous(), iu[1].contiguous()


@functools.lru_cache(maxsize=64)
def _diagonal_shift(n: int, eps2: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(N, N): eps^2 off the diagonal and +inf on it, so 1 / r_ii = 0 exactly (with zero
    gradient) and the self-interaction drops out of every sum. Only for N N within one chunk."""
    return torch.full((n, n), eps2, dtype=dtype, device=device).fill_diagonal_(float("inf"))


def _needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _use_pairs(n: int, batch: int) -> bool:
    return 2 <= n <= PAIR_MAX_N and batch >= PAIR_MIN_BATCH


def _use_small(batch: int, n: int, dim: int, pairs: bool) -> bool:
    """Whole problem in one go: always when tiny (operation count is all that matters), and up to
    one chunk when the pair path does not apply."""
    size = batch * n * n * dim
    return size <= SMALL_ELEMENTS or (not pairs and size <= CHUNK_ELEMENTS)


def _flatten(mass: Tensor, position: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """mass (B, N) and position (B, N, D) over the broadcast leading shape, and that shape."""
    n, d = position.shape[-2:]
    lead = tuple(position.shape[:-2])
    if tuple(mass.shape[:-1]) != lead:
        lead = tuple(torch.broadcast_shapes(mass.shape[:-1], position.shape[:-2]))
        mass, position = mass.expand(*lead, n), position.expand(*lead, n, d)
    return mass.reshape(-1, n), position.reshape(-1, n, d), lead


# --- pairs i < j, batch innermost: xt (N, D, b), mt (N, b)
def _pairs_chunk_acc(xt: Tensor, mt: Tensor, i: Tensor, j: Tensor, eps2: float) -> Tensor:
    """Differentiable: contribution of pairs (i, j) to G a, (N, D, b) (G is folded into mt)."""
    r = xt.index_select(0, j) - xt.index_select(0, i)  # (p, D, b): x_j - x_i
    w = (r.square().sum(1) + eps2).rsqrt()
    f = r * (w * w * w).unsqueeze(1)  # r_ij / |r_ij|^3
    out = torch.zeros_like(xt).index_add(0, i, f * mt.index_select(0, j).unsqueeze(1))
    return out.index_add(0, j, f * mt.index_select(0, i).unsqueeze(1), alpha=-1)


def _pairs_chunk_pot(xt: Tensor, mt: Tensor, i: Tensor, j: Tensor, eps2: float) -> Tensor:
    """Differentiable: sum over pairs (i, j) of m_i m_j / r_ij, (b,)."""
    r = xt.index_select(0, j) - xt.index_select(0, i)
    w = (r.square().sum(1) + eps2).rsqrt()
    return (w * mt.index_select(0, i) * mt.index_select(0, j)).sum(0)


def _pairs_acc_nograd(xt: Tensor, mt: Tensor, eps2: float) -> Tensor:
    """In place, without a graph: the sum of _pairs_chunk_acc over all pairs (same operations)."""
    n, d, b = xt.shape
    pi, pj = _pair_index(n, xt.device)
    step = max(1, _chunk(xt) // (d * b))
    acc = torch.zeros_like(xt)
    for s in range(0, pi.numel(), step):
        i, j = pi[s : s + step], pj[s : s + step]
        r = xt.index_select(0, j).sub_(xt.index_select(0, i))
        w = r.square().sum(1).add_(eps2).rsqrt_()
        f = r.mul_((w * w * w).unsqueeze(1))
        acc.index_add_(0, i, f * mt.index_select(0, j).unsqueeze(1))
        acc.index_add_(0, j, f.mul_(mt.index_select(0, i).unsqueeze(1)), alpha=-1)
    return acc


@functools.lru_cache(maxsize=8)
def _pair_list(n: int) -> tuple[tuple[int, int], ...]:
    """The pairs i < j of N bodies, in the order of :func:`_pair_index`."""
    return tuple((i, j) for i in range(n) for j in range(i + 1, n))


def _pairs_acc_unrolled(xt: Tensor, mt: Tensor, eps2: float) -> Tensor:
    """Like :func:`_pairs_acc_nograd` for N <= UNROLL_MAX_N: pair by pair on row views (D, b), in place."""
    acc = torch.zeros_like(xt)
    x, m, a = xt.unbind(0), mt.unbind(0), acc.unbind(0)
    for i, j in _pair_list(xt.shape[0]):  # at most 3 pairs
        r = x[j] - x[i]
        w = r.mul(r).sum(0).add_(eps2).rsqrt_()
        f = r.mul_(w.mul(w).mul_(w))
        a[i].addcmul_(f, m[j])
        a[j].addcmul_(f, m[i], value=-1)
    return acc


def _pairs_pot_unrolled(xt: Tensor, mt: Tensor, eps2: float) -> Tensor:
    """Like :func:`_pairs_pot_nograd` for N <= UNROLL_MAX_N: pair by pair on row views."""
    total = xt.new_zeros(xt.shape[-1])
    x, m = xt.unbind(0), mt.unbind(0)
    for i, j in _pair_list(xt.shape[0]):  # at most 3 pairs
        r = x[j] - x[i]
        total.addcmul_(r.mul_(r).sum(0).add_(eps2).rsqrt_().mul_(m[i]), m[j])
    return total


def _pairs_pot_nograd(xt: Tensor, mt: Tensor, eps2: float) -> Tensor:
    n, d, b = xt.shape
    pi, pj = _pair_index(n, xt.device)
    step = max(1, _chunk(xt) // (d * b))
    total = xt.new_zeros(b)
    for s in range(0, pi.numel(), step):
        total += _pairs_chunk_pot(xt, mt, pi[s : s + step], pj[s : s + step], eps2)
    return total


# --- rows i (all columns j), batch outermost: xt (b, D, N), m (b, N)
def _rows_sq(xt: Tensor, r0: int, r1: int, eps2: float) -> tuple[list[Tensor], Tensor]:
    """Component differences d_c = x_j - x_i, each (b, r1 - r0, N), and softened r^2 with +inf
    where j = i (so 1 / r_ii = 0 exactly, with zero gradient)."""
    d = [c.unsqueeze(-2) - c.narrow(-1, r0, r1 - r0).unsqueeze(-1) for c in xt.unbind(1)]
    s = d[0] * d[0]
    for dc in d[1:]:
        s = torch.addcmul(s, dc, dc)
    s.diagonal(r0, -2, -1).fill_(float("inf"))  # no operation above saves s for backward
    return d, s + eps2


def _rows_chunk_acc(xt: Tensor, m: Tensor, r0: int, r1: int, eps2: float) -> Tensor:
    """Differentiable: G a_i for rows r0:r1, (b, r1 - r0, D) (G is folded into m)."""
    d, s = _rows_sq(xt, r0, r1, eps2)
    w = s.rsqrt()
    w = w * w * w * m.unsqueeze(-2)
    return torch.stack([(dc * w).sum(-1) for dc in d], -1)


def _rows_chunk_pot(xt: Tensor, m: Tensor, r0: int, r1: int, eps2: float) -> Tensor:
    """Differentiable: sum over i in r0:r1 and j != i of m_i m_j / r_ij, (b,)."""
    _, s = _rows_sq(xt, r0, r1, eps2)
    return ((s.rsqrt() * m.unsqueeze(-2)).sum(-1) * m.narrow(1, r0, r1 - r0)).sum(-1)


def _row_step(b: int, n: int, budget: int | None = None) -> int:
    return max(1, min(n, (CHUNK_ELEMENTS if budget is None else budget) // max(1, b * n)))


def _rows_acc_nograd(xt: Tensor, m: Tensor, eps2: float, out: Tensor) -> None:
    """In-place version of _rows_chunk_acc over all rows, written into out (b, N, D)."""
    b, dim, n = xt.shape
    step = _row_step(b, n, _chunk(xt))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        d = [c.unsqueeze(-2) - c.narrow(-1, r0, r1 - r0).unsqueeze(-1) for c in xt.unbind(1)]
        s = d[0] * d[0]
        for dc in d[1:]:
            s.addcmul_(dc, dc)
        s.diagonal(r0, -2, -1).fill_(float("inf"))
        w = s.add_(eps2).rsqrt_()
        w = (w * w).mul_(w).mul_(m.unsqueeze(-2))
        rows = out.narrow(1, r0, r1 - r0)
        for c, dc in enumerate(d):
            rows.select(-1, c).copy_(dc.mul_(w).sum(-1))


def _rows_pot_nograd(xt: Tensor, m: Tensor, eps2: float) -> Tensor:
    b, _, n = xt.shape
    step = _row_step(b, n, _chunk(xt))
    total = xt.new_zeros(b)
    for r0 in range(0, n, step):
        total += _rows_chunk_pot(xt, m, r0, min(n, r0 + step), eps2)
    return total


# --- the whole problem in one chunk (B N N D within the budget): fewest operations
def _small_sq(x: Tensor, eps2: float) -> tuple[Tensor, Tensor]:
    n = x.shape[-2]
    disp = x.unsqueeze(-3) - x.unsqueeze(-2)  # (B, N, N, D): x_j - x_i, at most one chunk
    return disp, disp.square().sum(-1) + _diagonal_shift(n, eps2, x.dtype, x.device)


def _small_acc(m: Tensor, x: Tensor, eps2: float) -> Tensor:
    disp, s = _small_sq(x, eps2)
    w = s.rsqrt()
    w = w * w * w * m.unsqueeze(-2)
    return (disp * w.unsqueeze(-1)).sum(-2)


def _small_pot(m: Tensor, x: Tensor, eps2: float) -> Tensor:
    _, s = _small_sq(x, eps2)
    return 0.5 * ((s.rsqrt() * m.unsqueeze(-2)).sum(-1) * m).sum(-1)


def _batch_blocks(batch: int, n: int, pairs: bool, dim: int, budget: int) -> list[tuple[int, int]]:
    """Independent, nearly equal blocks of systems for the worker threads, each small enough that
    every operation on it (copies and accumulators included) stays within the chunk budget."""
    if pairs:
        # the unrolled pairs' temporaries are rows (D, b); the others' gathered pairs (pairs, D, b)
        widest = max(1, budget // (dim if n <= UNROLL_MAX_N else n * dim))
        workers = kernel_workers()
        size = widest if workers == 1 else min(widest, max(_PAIR_TASK_MIN, -(-batch // (4 * workers))))
    else:
        size = max(1, budget // (n * max(n, dim)))
    count = -(-batch // size)
    size = -(-batch // count)
    return [(s, min(size, batch - s)) for s in range(0, batch, size)]


def _checkpointed(fn: Callable[..., Tensor], *args: Any, chunked: bool) -> Tensor:
    if not chunked:
        return fn(*args)
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


def _graph_chunks(m: Tensor, x: Tensor, pairs: bool) -> tuple[list[tuple[Any, ...]], bool]:
    """The leading arguments of every chunk of a graph-recording evaluation, in the pair layout
    ((x, m) batch-last, pair indices) or the row layout ((x, m), row range), and whether the chunks
    are checkpointed (recomputed in backward) to keep the graph's memory bounded."""
    batch, n, dim = x.shape
    if pairs:
        xt, mt = x.permute(1, 2, 0), m.t()
        pi, pj = _pair_index(n, x.device)
        step = max(1, GRAPH_CHUNK_ELEMENTS // (dim * batch))
        chunks: list[tuple[Any, ...]] = [(xt, mt, pi[s : s + step], pj[s : s + step]) for s in range(0, pi.numel(), step)]
        return chunks, pi.numel() * dim * batch > GRAPH_CHECKPOINT_ELEMENTS
    xt = x.transpose(1, 2)
    step = _row_step(batch, n, GRAPH_CHUNK_ELEMENTS)
    chunks = [(xt, m, r0, min(n, r0 + step)) for r0 in range(0, n, step)]
    return chunks, batch * n * n * dim > GRAPH_CHECKPOINT_ELEMENTS


def _graph_acc(m: Tensor, x: Tensor, eps2: float, pairs: bool) -> Tensor:
    """Accelerations (B, N, D) on the autograd graph, one thread, chunked and checkpointed."""
    chunks, chunked = _graph_chunks(m, x, pairs)
    if pairs:
        parts = [_checkpointed(_pairs_chunk_acc, *args, eps2, chunked=chunked) for args in chunks]
        acc = parts[0]
        for part in parts[1:]:
            acc = acc + part
        return acc.permute(2, 0, 1)
    rows = [_checkpointed(_rows_chunk_acc, *args, eps2, chunked=chunked) for args in chunks]
    return rows[0] if len(rows) == 1 else torch.cat(rows, 1)


def _graph_pot(m: Tensor, x: Tensor, eps2: float, pairs: bool) -> Tensor:
    """sum_{i<j} m_i m_j / r_ij, (B,), on the autograd graph."""
    chunks, chunked = _graph_chunks(m, x, pairs)
    if pairs:
        return torch.stack([_checkpointed(_pairs_chunk_pot, *args, eps2, chunked=chunked) for args in chunks]).sum(0)
    parts = [_checkpointed(_rows_chunk_pot, *args, eps2, chunked=chunked) for args in chunks]
    return 0.5 * torch.stack(parts).sum(0)


def _nograd_acc(m: Tensor, x: Tensor, G: float, eps2: float, pairs: bool) -> Tensor:
    batch, n, dim = x.shape
    out = torch.empty_like(x)
    def block(span: tuple[int, int]) -> None:
        xb, mb, ob = x.narrow(0, *span), m.narrow(0, *span), out.narrow(0, *span)
        if pairs:
            kernel = _pairs_acc_unrolled if n <= UNROLL_MAX_N else _pairs_acc_nograd
            ob.copy_(kernel(xb.permute(1, 2, 0).contiguous(), (mb * G).t().contiguous(), eps2).permute(2, 0, 1))
        else:
            _rows_acc_nograd(xb.transpose(1, 2).contiguous(), mb * G, eps2, ob)

    run_blocks(block, _batch_blocks(batch, n, pairs, dim, _chunk(x)))
    return out


def _nograd_pot(m: Tensor, x: Tensor, eps2: float, pairs: bool) -> Tensor:
    batch, n, dim = x.shape
    out = x.new_empty(batch)
    def block(span: tuple[int, int]) -> None:
        xb, mb, ob = x.narrow(0, *span), m.narrow(0, *span), out.narrow(0, *span)
        if pairs:
            kernel = _pairs_pot_unrolled if n <= UNROLL_MAX_N else _pairs_pot_nograd
            ob.copy_(kernel(xb.permute(1, 2, 0).contiguous(), mb.t().contiguous(), eps2))
        else:
            ob.copy_(_rows_pot_nograd(xb.transpose(1, 2).contiguous(), mb, eps2)).mul_(0.5)

    run_blocks(block, _batch_blocks(batch, n, pairs, dim, _chunk(x)))
    return out


# --- optional compiled path (opt-in: NBTOOLKIT_COMPILE=1, see nbtoolkit.compiled)
#: largest B N N handed to the compiled kernel (beyond it the eager kernel bounds memory), and
#: largest N (beyond it the eager kernel was faster: 0.8x at N = 64 and 256; 1.4-2.2x at N <= 16)
COMPILE_MAX_PAIRS = 1 << 22
COMPILE_MAX_N = 32


def _fused_acc(m: Tensor, x: Tensor, eps2: float) -> Tensor:
    """The textbook kernel on the whole batch, written for the compiler to fuse into one loop
    nest (the (B, N, N, D) expression is never stored once fused)."""
    disp = x.unsqueeze(-3) - x.unsqueeze(-2)
    s = disp.square().sum(-1) + eps2 + torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
    w = s.rsqrt()
    w = w * w * w * m.unsqueeze(-2)
    return (disp * w.unsqueeze(-1)).sum(-2)


def _fused_pot(m: Tensor, x: Tensor, eps2: float) -> Tensor:
    """sum_{i<j} m_i m_j / sqrt(r_ij^2 + eps^2) (B,) as one expression over the whole batch, for the compiler to fuse."""
    off = 1 - torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
    disp = x.unsqueeze(-3) - x.unsqueeze(-2)
    inv = (disp.square().sum(-1) + eps2 + (1 - off)).rsqrt() * off  # the diagonal shifted off 0, then dropped
    return 0.5 * (m.unsqueeze(-1) * m.unsqueeze(-2) * inv).sum((-1, -2))


#: the compiled kernel (after a failure to compile, the eager kernel is used for the rest of the process)
compiled_acc = CompiledFunction(_fused_acc, "force kernel", dynamic=False)


def accelerations(mass: Tensor, position: Tensor, G: float = 1.0, softening: float = 0.0) -> Tensor:
    """Gravitational accelerations a_i = G sum_j m_j r_ij / (|r_ij|^2 + eps^2)^{3/2}, r_ij = x_j - x_i.

    mass (..., N), position (..., N, D) -> acceleration (..., N, D), differentiable with respect
    to both. Bodies of zero mass exert no force and still feel the others. No (..., N, N, D)
    tensor is formed: temporaries stay within a fixed chunk budget (see the comment above).
    With ``NBTOOLKIT_COMPILE=1`` evaluations without an autograd graph use a torch.compile'd
    kernel instead (falling back to this one, with one warning, if compiling fails).
    """
    m, x, lead = _flatten(mass, position)
    batch, n, dim = x.shape
    if batch == 0 or n < 2:
        return (x * 0).reshape(*lead, n, dim)
    eps2 = float(softening) ** 2
    pairs = _use_pairs(n, batch)
    graph = _needs_graph(m, x)
    acc = None
    if not graph and n <= COMPILE_MAX_N and batch * n * n <= COMPILE_MAX_PAIRS and compiled_acc.available():
        acc = compiled_acc((m * G).detach(), x.detach(), eps2)
    if acc is None:
        if _use_small(batch, n, dim, pairs):
            acc = _small_acc(m * G, x, eps2)
        elif graph:
            acc = _graph_acc(m * G, x, eps2, pairs)
        else:
            acc = _nograd_acc(m.detach(), x.detach(), G, eps2, pairs)
    return acc.reshape(*lead, n, dim)


def potential_energy(mass: Tensor, position: Tensor, G: float = 1.0, softening: float = 0.0) -> Tensor:
    """U = -G sum_{i<j} m_i m_j / sqrt(|r_ij|^2 + eps^2). mass (..., N), position (..., N, D) -> (...).

    Same kernel as :func:`accelerations` (chunked, no (..., N, N) tensor of the whole batch); traced by
    ``torch.compile`` (a compiled caller, :mod:`nbtoolkit.compiled`), the textbook sum for the compiler to fuse.
    """
    m, x, lead = _flatten(mass, position)
    batch, n, _ = x.shape
    if batch == 0 or n < 2:
        return (x * 0).sum((-1, -2)).reshape(lead)
    eps2 = float(softening) ** 2
    if torch.compiler.is_compiling() and batch * n * n <= COMPILE_MAX_PAIRS:
        return (-G * _fused_pot(m, x, eps2)).reshape(lead)
    pairs = _use_pairs(n, batch)
    if _use_small(batch, n, x.shape[-1], pairs):
        u = _small_pot(m, x, eps2)
    elif _needs_graph(m, x):
        u = _graph_pot(m, x, eps2, pairs)
    else:
        u = _nograd_pot(m.detach(), x.detach(), eps2, pairs)
    return (-G * u).reshape(lead)
