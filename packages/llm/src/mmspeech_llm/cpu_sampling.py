"""The sampler's tail on the CPU as one compiled loop (numba, the ``cpu`` extra).

On the CPU, torch spends 3-15 µs dispatching each small op, and the tail of :func:`infer.sample_step`
(top-k, top-p, the inverse-CDF draw, the repetition check, the fallback) is two dozen of them: at batch 1
that was most of the sampler. This module does the whole tail, row by row, in one call that dispatches
nothing. It draws the tokens the torch path draws: the same float32 probabilities (torch's softmax), the
same comparisons in the same precision, and cumulative sums accumulated in float64 and stored as float32,
as torch's CPU ``cumsum`` does. (Candidates whose probabilities tie exactly come lower id first here; torch's
``topk`` leaves their order unspecified.)

Only :func:`draw` is public; ``infer`` imports this module when numba is installed and the probabilities are
float32 on the CPU.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .config import SamplingConfig


def draw(
    probs: torch.Tensor,
    history: torch.Tensor,
    u_nucleus: torch.Tensor,
    u_full: torch.Tensor,
    cfg: SamplingConfig,
) -> torch.Tensor:
    """probs: (B, V) float32 on the CPU, history: (B, W), u_*: (B,) -> (B,) int64 tokens, as
    :func:`infer.sample_step` draws them after its softmax."""
    # .numpy() shares memory, strided or not: a copy or an allocation per argument would cost more than the
    # draw itself at batch 1 (~7 µs a .contiguous() copy); detach(): logits may come from a graph. Only the
    # probabilities must be contiguous (the top-k reads their rows as int32): a softmax's output is, no copy
    tokens = _draw_rows(
        probs.detach().contiguous().numpy(),
        history.numpy(),
        u_nucleus.numpy(),
        u_full.numpy(),
        min(cfg.top_k, probs.shape[1]),
        # torch compares a float32 tensor with a Python float in float32, and counts with it in float32 too
        np.float32(cfg.top_p),
        np.float32(history.shape[1] * cfg.tau_r),
    )
    return torch.from_numpy(tokens)


@numba.njit(cache=True, nogil=True)
def _draw_rows(probs, history, u_nucleus, u_full, k, top_p, min_repeats):  # type: ignore[no-untyped-def]
    b, v = probs.shape
    out = np.empty(b, np.int64)
    cand_p = np.empty(k, np.float32)
    cand_i = np.empty(k, np.int64)
    cdf = np.empty(v, np.float32)  # the candidates' cdf, or a fallback's over the whole vocabulary
    maxima = np.empty(v // _BLOCK + 1, np.int32)
    for r in range(b):
        _top_k(probs[r], cand_p, cand_i, maxima)
        tok = _nucleus(cand_p, cand_i, u_nucleus[r], top_p, cdf)
        repeats = 0
        for w in range(history.shape[1]):
            repeats += history[r, w] == tok
        if history.shape[1] > 0 and np.float32(repeats) >= min_repeats:
            tok = _fallback(probs[r], tok, u_full[r], cdf)
        out[r] = tok
    return out


_BLOCK = 64  # ids per block of the top-k's first pass
_INF_BITS = 0x7F800000  # +inf's float32 bits: every larger int32 is a NaN's


@numba.njit(cache=True, nogil=True)
def _top_k(p, cand_p, cand_i, maxima):  # type: ignore[no-untyped-def]
    """The k most probable ids of ``p``, most probable first (ties: the lower id first); ``maxima`` is
    scratch of at least ``len(p) // 64 + 1``.

    Two passes. The first takes each block of 64 ids' maximum; the k-th largest of these is a threshold
    no top-k id lies under (k blocks each hold an id at least that probable). The second inserts, in id
    order, only the ids at or above it: ~28 of 6,561 on the random tiny LM's flat rows, in ~25 blocks. On
    this project's CPU, a row in cache: 3.2 µs against 7.2 for one pass offering every id to the best k so
    far (its early insertions, ~140 a row and up to k moves each, were most of its time); the same ids.
    The first pass compares the probabilities' bits as int32, which order non-negative floats as their
    values do, because a compiled integer maximum vectorises and a float one (NaN-aware) does not. A row
    holding a negative number or a NaN, or too short for k blocks, takes the one-pass scan.
    """
    k = cand_p.shape[0]
    v = p.shape[0]
    full = v // _BLOCK
    nb = full + (full * _BLOCK < v)  # the tail, if any, is a block of its own
    if nb < k or not _block_maxima(p.view(np.int32), maxima[:nb]):
        _scan_top_k(p, cand_p, cand_i)
        return
    top = maxima[:nb].view(np.float32)
    n = 0
    for b in range(nb):  # the k largest maxima, in the candidates' arrays
        n = _insert(cand_p, cand_i, n, top[b], b)
    threshold = cand_p[k - 1]
    n = 0
    for b in range(nb):
        if top[b] >= threshold:
            for j in range(b * _BLOCK, min(b * _BLOCK + _BLOCK, v)):
                if p[j] >= threshold:
                    n = _insert(cand_p, cand_i, n, p[j], j)


@numba.njit(cache=True, nogil=True)
def _scan_top_k(p, cand_p, cand_i):  # type: ignore[no-untyped-def]
    """:func:`_top_k` in one pass, every id offered to the best k so far."""
    n = 0
    for j in range(p.shape[0]):
        n = _insert(cand_p, cand_i, n, p[j], j)


@numba.njit(cache=True, nogil=True)
def _block_maxima(bits, maxima):  # type: ignore[no-untyped-def]
    """Each block of ``bits`` (a float32 row as int32)'s maximum into ``maxima``; False if the row holds a
    negative number (-0 included) or a NaN, whose bits would not order as their values."""
    lo = np.int32(0)
    hi = np.int32(0)
    full = bits.shape[0] // _BLOCK
    for b in range(full):  # a constant trip count: the loop the compiler vectorises
        top = np.int32(0)
        low = np.int32(0)
        for j in range(b * _BLOCK, b * _BLOCK + _BLOCK):
            top = max(top, bits[j])
            low = min(low, bits[j])
        maxima[b] = top
        lo = min(lo, low)
        hi = max(hi, top)
    if full < maxima.shape[0]:  # the tail
        top = np.int32(0)
        for j in range(full * _BLOCK, bits.shape[0]):
            top = max(top, bits[j])
            lo = min(lo, bits[j])
        maxima[full] = top
        hi = max(hi, top)
    return lo >= 0 and hi <= _INF_BITS


@numba.njit(cache=True, nogil=True)
def _insert(cand_p, cand_i, n, x, j):  # type: ignore[no-untyped-def]
    """Insert id ``j`` of probability ``x`` among the ``n`` best so far (sorted, ties in id order, ids
    arriving in ascending order) if it belongs in the best k; returns their new count."""
    k = cand_p.shape[0]
    if n == k:
        if not x > cand_p[k - 1]:
            return n
        pos = k - 1
    else:
        pos = n
        n += 1
    while pos > 0 and x > cand_p[pos - 1]:
        cand_p[pos] = cand_p[pos - 1]
        cand_i[pos] = cand_i[pos - 1]
        pos -= 1
    cand_p[pos] = x
    cand_i[pos] = j
    return n


@numba.njit(cache=True, nogil=True)
def _nucleus(cand_p, cand_i, u, top_p, cdf):  # type: ignore[no-untyped-def]
    """A draw from the top-p share of the candidates: ``infer._nucleus`` after its ``topk``."""
    acc = 0.0  # float64, as torch's CPU cumsum accumulates float32
    kept = 0
    positive = 0
    for c in range(cand_p.shape[0]):
        acc += cand_p[c]
        cdf[c] = np.float32(acc)
        if cdf[c] - cand_p[c] < top_p:  # exclusive cumsum: the top candidate is always kept
            kept += 1
            positive += cand_p[c] > 0
    threshold = u * cdf[kept - 1]
    idx = 0
    for c in range(kept):
        idx += cdf[c] <= threshold
    return cand_i[min(idx, positive - 1)]  # never a zero-probability candidate


@numba.njit(cache=True, nogil=True)
def _fallback(p, tok, u, cdf):  # type: ignore[no-untyped-def]
    """A draw from the whole distribution without ``tok`` (a row with nothing else left keeps it):
    ``infer._fallback``."""
    v = p.shape[0]
    skip = -1
    for j in range(v):
        if j != tok and p[j] > 0:
            skip = tok
            break
    acc = 0.0
    last = 0  # the last id with mass: the draw never goes past it
    for j in range(v):
        if j != skip:
            acc += p[j]
            if p[j] > 0:
                last = j
        cdf[j] = np.float32(acc)
    idx = np.searchsorted(cdf, u * cdf[v - 1], side="right")  # how many cdf entries are <= u·total
    return min(idx, last)
