"""Vectorised repetition-aware sampling: no per-candidate Python loop, no ``.item()`` per step.

After the softmax, float32 probabilities on the CPU go to one compiled call (:mod:`.cpu_sampling`, when numba
is installed); everything else (a GPU, other dtypes, no numba) takes the torch ops here. Both draw the same
tokens for the same uniforms."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from .config import SamplingConfig

log = logging.getLogger(__name__)

_Draw = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, SamplingConfig], torch.Tensor]


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """probs: (B, V) (unnormalised ok), u: (B,) in [0, 1) -> (B,) sampled indices.

    Never returns a zero-probability index: a parallel cumsum (CUDA) may make the total exceed the running
    sum at the last positive entry, and u·total could then land in the zero tail (an EOS before min_len).
    """
    cdf = probs.cumsum(-1)
    idx = (cdf <= u[:, None] * cdf[:, -1:]).sum(-1)  # first index whose cdf exceeds u·total
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(-1)  # last positive index per row
    return torch.minimum(idx, last)


def sample_step(
    logits: torch.Tensor,
    history: torch.Tensor,
    u_nucleus: torch.Tensor,
    u_full: torch.Tensor,
    cfg: SamplingConfig,
    speech_vocab: int,
    allow_eos: torch.Tensor | bool = True,
) -> torch.Tensor:
    """One decoding step for a batch.

    logits: (B, V) over speech codes + specials; history: (B, W) last tokens (-1 = none); u_*: (B,) uniforms.
    Nucleus (top-p within top-k) sample; if that token already occurs >= win·tau_r times in the window
    (the reference's comparison, no rounding), mask it and resample from the rest of the full distribution.
    EOS (id ``speech_vocab``) is masked where not ``allow_eos``; other special ids are never sampled.
    Temperature 0 is greedy.
    """
    # the ids after EOS are never drawn, nor EOS where every row bars it: they are left out, not masked. Only a
    # tail goes, so every id keeps its number, and the softmax over the rest equals the masked one's bit for
    # bit (a copy and a fill fewer: 11 against 17 µs at batch 1, 77 against 101 at 16, on 2 CPU cores)
    drawable = speech_vocab if allow_eos is False else speech_vocab + 1
    x = logits[:, :drawable]  # a view: the caller's logits are never written
    if cfg.temperature not in (0, 1):  # x / 1.0 is x: the default temperature (and greedy) do not divide
        x = x / cfg.temperature
    if not isinstance(allow_eos, bool):  # EOS barred on some rows only: a mask, on a copy of the view
        x = x.clone() if cfg.temperature in (0, 1) else x
        x[:, speech_vocab].masked_fill_(~torch.as_tensor(allow_eos, device=x.device), float("-inf"))
    if cfg.temperature == 0:
        return x.argmax(-1)
    probs = torch.softmax(x, dim=-1)
    if probs.device.type == "cpu" and probs.dtype == torch.float32 and (draw := cpu_kernel()) is not None:
        return draw(probs, history, u_nucleus, u_full, cfg)
    nucleus = _nucleus(probs, u_nucleus, cfg)
    w = history.shape[1]
    if w == 0:
        return nucleus
    repeats = (history == nucleus[:, None]).sum(-1)
    too_often = repeats >= w * cfg.tau_r
    if x.device.type != "cpu":
        # every row's fallback, used or not: asking which rows need one would wait for the device
        return torch.where(too_often, _fallback(probs, nucleus, u_full), nucleus)
    # on the CPU (without numba) the answer costs nothing, and the fallback's passes over the vocabulary
    # were 40 % of sampling at batch 16: draw it only for the rows that repeat (rows are independent)
    rows = too_often.nonzero().squeeze(1)
    if len(rows) == 0:
        return nucleus
    return nucleus.index_put((rows,), _fallback(probs[rows], nucleus[rows], u_full[rows]))


@functools.cache
def cpu_kernel() -> _Draw | None:
    """The compiled CPU tail (:mod:`.cpu_sampling`) when numba is installed (``mmspeech-llm[cpu]``), else
    None and the torch ops below. Same tokens either way. In the tiny LM's decode loop on this project's
    2-core CPU (``benchmarks/llm_step.py --sampler both``) it took the sampler from 0.20-0.25 to 0.08-0.11 ms
    a step at batch 1, and from 0.60 to 0.35-0.37 ms at batch 16, where torch's softmax is much of what is
    left.

    It is built here, once, so that a numba that cannot build it (no writable directory for its cache, a
    numpy it does not support) costs a warning and the torch ops, not a failed request."""
    try:
        from .cpu_sampling import draw

        u = torch.zeros(1, 2)[:, 0]  # strided, as the decode loop's slices of its uniforms are
        draw(torch.full((1, 4), 0.25), torch.zeros(1, 1, dtype=torch.long), u, u, SamplingConfig())
    except Exception as e:  # numba's errors have no common base: RuntimeError, TypingError, ImportError...
        if not (isinstance(e, ModuleNotFoundError) and e.name == "numba"):  # (not installed: no warning)
            log.warning(
                "numba is installed but cannot build the CPU sampler (%s); sampling with torch ops", e
            )
        return None
    return draw


def _nucleus(probs: torch.Tensor, u: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """probs: (B, V), u: (B,) -> (B,): a draw from the top-p share of the top-k tokens.

    top-k first, then top-p inside it: topk(25) costs a fraction of sorting all 6,564 ids (0.03 vs 0.45 ms
    per step at batch 1 on CPU) and yields the same ordered candidates. The kept candidates are a prefix of
    them, on which their cumulative sum is the kept ones' own: the draw is :func:`_inverse_cdf`'s over the
    kept candidates, in fewer passes.
    """
    cand_p, cand_i = probs.topk(min(cfg.top_k, probs.shape[-1]), dim=-1)  # (B, k), most probable first
    cdf = cand_p.cumsum(-1)
    keep = (cdf - cand_p) < cfg.top_p  # exclusive cumsum: the top token is always kept
    total = cdf.gather(-1, keep.sum(-1, keepdim=True) - 1)  # (B, 1): the kept candidates' mass
    idx = ((cdf <= u[:, None] * total) & keep).sum(-1)
    last = ((cand_p > 0) & keep).sum(-1) - 1  # never a zero-probability candidate (see _inverse_cdf)
    return cand_i.gather(-1, torch.minimum(idx, last)[:, None]).squeeze(-1)


def _fallback(probs: torch.Tensor, nucleus: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """probs: (R, V), nucleus, u: (R,) -> (R,): a draw from the whole distribution without the nucleus token
    (a row with nothing else left keeps it)."""
    rest = probs.scatter(-1, nucleus[:, None], 0.0)
    rest = torch.where(rest.sum(-1, keepdim=True) > 0, rest, probs)
    return _inverse_cdf(rest, u)
