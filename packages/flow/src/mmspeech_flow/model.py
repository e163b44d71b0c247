"""Chunk-aware conditional flow matching: speech tokens (+ speaker, + prompt latents) -> VAE latents."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from mmspeech_core import (
    FlowPrompt,
    Latents,
    PretrainedMixin,
    SpeakerEmbedding,
    SpeechTokens,
    lengths_to_mask,
)
from mmspeech_core.nn import KVCache, SpeakerEncoder, TransformerBlock, chunk_attention_mask, sinusoidal
from mmspeech_core.training import item_seeds
from torch import nn

from . import __version__
from .config import FlowConfig, FlowInferConfig, FlowModelConfig
from .data import FlowBatch
from .graph import CallState, StreamGraphs
from .infer import solve
from .losses import flow_matching_loss


class TokenEncoder(nn.Module):
    """tokens (B, N) -> mu (B, C, N·ratio). Lookahead conv on tokens, transformer blocks at token rate,
    nearest upsampling + causal conv, transformer blocks at latent rate, projection to latent_dim."""

    def __init__(self, c: FlowModelConfig) -> None:
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.lookahead = nn.Conv1d(c.dim, c.dim, kernel_size=c.lookahead + 1) if c.lookahead > 0 else None
        self.pre = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, c.ff_mult, c.dropout) for _ in range(c.encoder_layers)]
        )
        self.up_conv = nn.Conv1d(c.dim, c.dim, kernel_size=2 * c.ratio + 1)
        self.post = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, c.ff_mult, c.dropout) for _ in range(c.encoder_post_layers)]
        )
        self.norm = nn.LayerNorm(c.dim)
        self.proj = nn.Linear(c.dim, c.latent_dim)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, chunked: bool) -> torch.Tensor:
        c = self.c
        valid = lengths_to_mask(lengths, tokens.shape[1])  # (B, N)
        x = self.embed(tokens.clamp(0, c.vocab_size - 1)) * valid[..., None]  # (B, N, D)
        if self.lookahead is not None:  # right context: token i sees tokens i..i+lookahead
            h = F.pad(x.transpose(1, 2), (0, c.lookahead))
            x = x + F.leaky_relu(self.lookahead(h)).transpose(1, 2) * valid[..., None]
        mask = chunk_attention_mask(valid, c.chunk_size if chunked else None, left_chunks=c.left_chunks)
        for blk in self.pre:
            x = blk(x, mask)
        x = x * valid[..., None]
        # upsample: repeat each token `ratio` times, then a causal conv (no look into the next chunk)
        x = x.repeat_interleave(c.ratio, dim=1).transpose(1, 2)  # (B, D, T)
        x = x + self.up_conv(F.pad(x, (2 * c.ratio, 0)))
        x = x.transpose(1, 2)
        lat_valid = lengths_to_mask(lengths * c.ratio, x.shape[1])
        mask = chunk_attention_mask(
            lat_valid, c.chunk_size * c.ratio if chunked else None, left_chunks=c.left_chunks
        )
        for blk in self.post:
            x = blk(x, mask)
        mu = self.proj(self.norm(x)) * lat_valid[..., None]
        return mu.transpose(1, 2)  # (B, C, T)

    def stream(self, tokens: torch.Tensor, n: int, state: EncoderState) -> torch.Tensor:
        """The next ``n`` tokens of one chunk-causal stream -> their μ (B, C, n·ratio), continuing
        ``state``. ``tokens`` (B, n + k): those n, then the k <= lookahead tokens after them that exist
        (fewer only at the end of the utterance, where the offline pass pads with zeros too). Equal to
        ``forward(..., chunked=True)`` on the whole sequence, frame for frame, if every call but the last
        covers whole chunks."""
        c, r = self.c, self.c.ratio
        x = self.embed(tokens.clamp(0, c.vocab_size - 1))  # (B, n + k, D)
        if self.lookahead is not None:
            h = F.pad(x.transpose(1, 2), (0, n + c.lookahead - x.shape[1]))
            x = x[:, :n] + F.leaky_relu(self.lookahead(h)).transpose(1, 2)
        else:
            x = x[:, :n]
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        pre, post = state.pre[0], state.post[0]
        mask = chunk_attention_mask(valid, c.chunk_size, pre.length, c.left_chunks, pre.kept)
        for blk, cache in zip(self.pre, state.pre):
            x = blk(x, mask, cache=cache)
        x = x.repeat_interleave(r, dim=1).transpose(1, 2)  # (B, D, n·r)
        tail = state.up_tail if state.up_tail is not None else x.new_zeros(x.shape[0], x.shape[1], 2 * r)
        h = torch.cat([tail, x], dim=-1)
        state.up_tail = h[..., -2 * r :]
        x = (x + self.up_conv(h)).transpose(1, 2)
        mask = chunk_attention_mask(
            valid.repeat_interleave(r, 1), c.chunk_size * r, post.length, c.left_chunks, post.kept
        )
        for blk, cache in zip(self.post, state.post):
            x = blk(x, mask, cache=cache)
        return self.proj(self.norm(x)).transpose(1, 2)


@dataclass
class EncoderState:
    """What a streamed :class:`TokenEncoder` keeps between chunks."""

    pre: list[KVCache]  # one per token-rate block
    post: list[KVCache]  # one per latent-rate block
    # (B, D, 2·ratio) the last upsampled frames: the causal upsampling conv's left context
    up_tail: torch.Tensor | None = None

    def clone(self) -> EncoderState:
        """A copy with buffers of its own (a CUDA graph's replay overwrites the original's)."""
        tail = self.up_tail.clone() if self.up_tail is not None else None
        return EncoderState([kv.clone() for kv in self.pre], [kv.clone() for kv in self.post], tail)

    @classmethod
    def new(cls, c: FlowModelConfig) -> EncoderState:
        pre, post = cache_windows(c)
        return cls(
            [KVCache(pre) for _ in range(c.encoder_layers)],
            [KVCache(post) for _ in range(c.encoder_post_layers)],
        )


def cache_windows(c: FlowModelConfig) -> tuple[int | None, int | None]:
    """Frames a stream's caches keep at token rate and at latent rate: ``left_chunks`` chunks (all, None,
    without a bound). Calls but the last cover whole chunks, so the next needs no older ones."""
    if not c.left_chunks:
        return None, None
    return c.left_chunks * c.chunk_size, c.left_chunks * c.chunk_size * c.ratio


class Estimator(nn.Module):
    """DiT velocity estimator: (x_t, mu, prompt cond) per frame, (t, speaker) globally via AdaLN."""

    def __init__(self, c: FlowModelConfig) -> None:
        super().__init__()
        self.c = c
        self.inp = nn.Linear(3 * c.latent_dim, c.dim)
        self.time = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.spk = nn.Linear(c.spk_dim, c.dim)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(c.dim, c.heads, c.ff_mult, c.dropout, cond_dim=c.dim)
                for _ in range(c.estimator_layers)
            ]
        )
        self.norm = nn.LayerNorm(c.dim, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 2 * c.dim))
        self.out = nn.Linear(c.dim, c.latent_dim)
        nn.init.zeros_(self.final_ada[1].weight)  # type: ignore[index, union-attr, arg-type]
        nn.init.zeros_(self.final_ada[1].bias)  # type: ignore[index, union-attr, arg-type]

    def attention_mask(
        self, valid: torch.Tensor, chunked: bool, past: int = 0, kept: int | None = None
    ) -> torch.Tensor:
        """(B, T, kept + T): the same for every ODE evaluation of a call, so callers build it once."""
        c = self.c
        return chunk_attention_mask(
            valid, c.chunk_size * c.ratio if chunked else None, past, c.left_chunks, kept
        )

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spk: torch.Tensor,
        cond: torch.Tensor,
        chunked: bool,
        caches: Sequence[KVCache] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x, mu, cond: (B, C, T); valid: (B, T) bool; t: (B,); spk: (B, spk_dim) -> velocity (B, C, T).
        ``caches`` (streaming, chunked only): one per block, holding the earlier frames of this ODE
        evaluation; x continues them. ``mask``: :meth:`attention_mask` for these frames (built once per
        solve by the caller), or None where every frame may attend to every other."""
        h = self.inp(torch.cat([x, mu, cond], dim=1).transpose(1, 2))  # (B, T, D)
        g = self.time(sinusoidal(t, self.c.dim).to(h.dtype)) + self.spk(spk)
        for k, blk in enumerate(self.blocks):
            h = blk(h, mask, g, caches[k] if caches else None)
        scale, shift = self.final_ada(g)[:, None].chunk(2, dim=-1)
        v = self.out(self.norm(h) * (1 + scale) + shift)
        return v.transpose(1, 2) * valid[:, None]


class FlowModel(nn.Module, PretrainedMixin):
    """Stage 2. ``generate(tokens, speaker, prompt...) -> Latents``; ``training_loss(batch)`` for training."""

    checkpoint_kind = "flow"
    config_class = FlowConfig
    package_version = __version__

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        c = config.model
        self.encoder = TokenEncoder(c)
        self.estimator = Estimator(c)
        mean = torch.tensor(c.latent_mean or [0.0] * c.latent_dim)
        std = torch.tensor(c.latent_std or [1.0] * c.latent_dim)
        # from the config, so not saved with the weights
        self.register_buffer("latent_mean", mean[None, :, None], persistent=False)
        self.register_buffer("latent_std", std[None, :, None], persistent=False)
        self.latent_mean: torch.Tensor
        self.latent_std: torch.Tensor
        self.speaker_encoder = SpeakerEncoder(
            c.spk_in_dim, c.dim // 2, c.spk_layers, max(1, c.heads // 2), c.spk_dim
        )
        self.graphs = StreamGraphs()  # streams' first calls as CUDA graphs, kept between requests

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> FlowModel:
        """``.to()``, ``.half()`` and the like make new parameter tensors: graphs captured on the old ones
        would read freed memory, so they are dropped (loading weights copies in place and keeps them)."""
        self.graphs = StreamGraphs(self.graphs.size, self.graphs.on_cpu)
        return super()._apply(fn, recurse)  # type: ignore[no-any-return]

    # ---- latent normalisation (identity unless the config holds statistics) ------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) VAE latents -> the space the flow models."""
        return (x - self.latent_mean) / self.latent_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    # ---- conditioning ---------------------------------------------------------------------------
    def embed_speaker(self, reference: Latents) -> SpeakerEmbedding:
        """Reference utterance latents (B, C, T) of the target speaker -> (B, spk_dim) unit vectors."""
        if reference.channels != self.config.model.spk_in_dim:
            raise ValueError(
                f"reference has {reference.channels} channels, expected {self.config.model.spk_in_dim}"
            )
        ref = reference.to(self.device)
        return SpeakerEmbedding(self.speaker_encoder(self.normalize(ref.data), ref.lengths))

    def _check_tokens(self, tokens: SpeechTokens) -> None:
        c = self.config.model
        if abs(tokens.frame_rate - c.token_rate) > 1e-6:
            raise ValueError(
                f"tokens are at {tokens.frame_rate} Hz, this flow model expects {c.token_rate} Hz"
            )
        valid = tokens.tokens[tokens.mask()]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size})")

    # ---- training -------------------------------------------------------------------------------
    def training_loss(self, batch: FlowBatch) -> dict[str, torch.Tensor]:
        """Latent lengths must be token lengths × ratio (see :func:`mmspeech_flow.data.align`)."""
        tokens, latents = batch.tokens, batch.latents
        chunked = bool(torch.rand(()) < self.config.loss.chunk_prob)
        mu = self.encoder(tokens.tokens, tokens.lengths, chunked)
        spk = self.speaker_encoder(self.normalize(batch.reference.data), batch.reference.lengths)
        x1 = self.normalize(latents.data[..., : mu.shape[-1]])
        if x1.shape[-1] != mu.shape[-1] or not torch.equal(
            latents.lengths, tokens.lengths * self.config.model.ratio
        ):
            raise ValueError("latent lengths must equal token lengths × ratio (use mmspeech_flow.data.align)")
        return flow_matching_loss(self.estimator, x1, latents.mask(), mu, spk, self.config.loss, chunked)

    # ---- inference ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        tokens: SpeechTokens,
        speaker: SpeakerEmbedding,
        prompt: FlowPrompt | None = None,
        infer: FlowInferConfig | None = None,
        seed: int | Sequence[int] | None = None,
        chunked: bool = False,
    ) -> Latents:
        """Tokens (B, N) -> latents (B, C, N·ratio), lengths = token lengths × ratio.

        One-shot: the ``prompt``'s tokens and latents (same utterance) prefix the sequence; the prompt part
        is conditioned on and cut from the output. ``seed`` (int: item i uses seed+i, or one per item) makes
        each item's noise independent of its batch-mates, so batched == unbatched. ``chunked``: chunk-causal
        attention (streaming: a chunk's frames depend only on tokens up to its end plus the lookahead).
        """
        self._check_request(tokens, speaker, prompt)
        cond = self._conditions(tokens, speaker, prompt, chunked)
        noise = torch.stack(
            [_noise(cond.frames, self.config.model.latent_dim, s) for s in item_seeds(seed, len(tokens))]
        )
        x = solve(
            self._velocity(cond, infer or self.config.infer, chunked),
            noise.to(cond.mu) * cond.valid[:, None],
            infer or self.config.infer,
        )
        x = self.denormalize(x) * cond.valid[:, None]
        r = self.config.model.ratio
        outs = [x[i, :, p : int(n) * r] for i, (p, n) in enumerate(zip(cond.prompt_frames, cond.lengths))]
        return Latents.from_list(outs, frame_rate=self.config.model.latent_rate)

    def stream(
        self,
        speaker: SpeakerEmbedding,
        prompt: FlowPrompt | None = None,
        infer: FlowInferConfig | None = None,
        seed: int | Sequence[int | None] | None = None,
    ) -> FlowStream:
        """Start a chunk-by-chunk generation of one utterance per speaker vector (see
        :class:`FlowStream`)."""
        return FlowStream(self, speaker, prompt, infer or self.config.infer, seed)

    def _check_request(
        self, tokens: SpeechTokens, speaker: SpeakerEmbedding, prompt: FlowPrompt | None
    ) -> None:
        c = self.config.model
        self._check_tokens(tokens)
        if len(speaker) != len(tokens):
            raise ValueError(f"{len(speaker)} speaker vectors for {len(tokens)} token sequences")
        if (tokens.lengths == 0).any():
            raise ValueError("every token sequence needs at least one token")
        if prompt is not None:
            self._check_tokens(prompt.tokens)
            if len(prompt) != len(tokens):
                raise ValueError(
                    f"prompt batch size {len(prompt)} does not match the token batch size {len(tokens)}"
                )
            if prompt.latents.channels != c.latent_dim:
                raise ValueError(
                    f"prompt latents have {prompt.latents.channels} channels, expected {c.latent_dim}"
                )

    def _conditions(
        self, tokens: SpeechTokens, speaker: SpeakerEmbedding, prompt: FlowPrompt | None, chunked: bool
    ) -> _Conditions:
        """Prompt tokens prefixed to the targets, their latents as the condition, the encoded tokens (μ)."""
        c, dev = self.config.model, self.device
        items = [x.to(dev) for x in tokens.unbatch()]
        conds = [torch.zeros(c.latent_dim, 0, device=dev) for _ in items]
        prompt_frames = [0] * len(items)
        if prompt is not None:
            for i, (pt, cd) in enumerate(self._prompt_items(prompt)):
                items[i] = torch.cat([pt, items[i]])
                conds[i], prompt_frames[i] = cd, cd.shape[-1]
        full = SpeechTokens.from_list(items, frame_rate=c.token_rate)
        lengths = full.lengths.to(dev)
        mu = self.encoder(full.tokens.to(dev), lengths, chunked)  # (B, C, T)
        cond = torch.zeros_like(mu)
        for i, cd in enumerate(conds):
            cond[i, :, : cd.shape[-1]] = cd
        valid = lengths_to_mask(lengths * c.ratio, mu.shape[-1])  # (B, T)
        return _Conditions(mu, cond, valid, speaker.vectors.to(dev, mu.dtype), lengths, prompt_frames)

    def _prompt_items(self, prompt: FlowPrompt) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per item, on the model's device: the prompt's (P,) tokens and its (C, P·ratio) normalised latents,
        trimmed to agree (the two extractors may disagree by a frame)."""
        r, dev = self.config.model.ratio, self.device
        out = []
        for pt, pl in zip(prompt.tokens.unbatch(), prompt.latents.unbatch()):
            n = min(len(pt), pl.shape[-1] // r)
            out.append((pt[:n].to(dev), self.normalize(pl[None, :, : n * r].to(dev))[0]))
        return out

    def _velocity(
        self,
        cond: _Conditions,
        infer: FlowInferConfig,
        chunked: bool,
        caches: Callable[[], list[KVCache]] | None = None,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """v(x, t) with classifier-free guidance: one estimator call on (cond, uncond) stacked on the batch
        axis; the stacked constants are built once here, not at every ODE step. ``caches()`` (streaming)
        gives the key/value caches of the evaluation about to run."""
        b, w = cond.mu.shape[0], infer.cfg_rate
        valid = cond.valid if w == 0 else torch.cat([cond.valid, cond.valid])
        masks: list[torch.Tensor | None] = []  # every evaluation of a solve has the same mask: build it once

        def kv_and_mask() -> tuple[list[KVCache] | None, torch.Tensor | None]:
            kv = caches() if caches is not None else None
            if not masks:
                masks.append(self._estimator_mask(valid, chunked, kv))
            return kv, masks[0]

        if w == 0:

            def plain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                kv, mask = kv_and_mask()
                return self.estimator(x, valid, cond.mu, t.expand(b), cond.spk, cond.cond, chunked, kv, mask)

            return plain
        mu2 = torch.cat([cond.mu, torch.zeros_like(cond.mu)])
        spk2 = torch.cat([cond.spk, torch.zeros_like(cond.spk)])
        cond2 = torch.cat([cond.cond, torch.zeros_like(cond.cond)])

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            kv, mask = kv_and_mask()
            v = self.estimator(torch.cat([x, x]), valid, mu2, t.expand(2 * b), spk2, cond2, chunked, kv, mask)
            v_cond, v_uncond = v.chunk(2)
            return (1 + w) * v_cond - w * v_uncond

        return velocity

    def _estimator_mask(
        self, valid: torch.Tensor, chunked: bool, kv: list[KVCache] | None
    ) -> torch.Tensor | None:
        """The estimator's mask for these frames, or None where every frame may attend to every other (a
        streamed chunk, an unpadded full pass): no mask, faster kernels. A stream's frames are all valid,
        so there the question is answered on the host (no device sync, as a CUDA graph capture needs)."""
        if kv is None:
            mask = self.estimator.attention_mask(valid, chunked)
            return None if bool(mask.all()) else mask
        past, kept = kv[0].length, kv[0].kept
        probe = torch.ones(1, valid.shape[1], dtype=torch.bool)
        if bool(self.estimator.attention_mask(probe, chunked, past, kept).all()):
            return None
        return self.estimator.attention_mask(valid, chunked, past, kept)

    def _stream_call(
        self,
        infer: FlowInferConfig,
        count: int,
        tokens: torch.Tensor,
        spk: torch.Tensor,
        prompt: torch.Tensor,
        noise: torch.Tensor,
        state: CallState | None = None,
    ) -> CallState:
        """The device work of one :class:`FlowStream` call, continuing ``state`` (None: a stream's first
        call, from fresh caches): ``tokens`` (B, count + k) the call's tokens and the k <= lookahead after
        them, ``spk`` (B, D), ``prompt`` (B, C, ≤ count·ratio) the normalised prompt latents over its frames,
        ``noise`` (B, C, count·ratio). Returns the frames' normalised latents in ``state.latents``. No host
        sync, so a first call can be captured as a CUDA graph (:mod:`mmspeech_flow.graph`)."""
        c, b = self.config.model, tokens.shape[0]
        if state is None:
            state = CallState(tokens.new_zeros(0), EncoderState.new(c), [])
        mu = self.encoder.stream(tokens, count, state.encoder)  # (B, C, count·ratio)
        cond = torch.zeros_like(mu)
        cond[:, :, : prompt.shape[-1]] = prompt
        valid = torch.ones(b, mu.shape[-1], dtype=torch.bool, device=mu.device)
        conds = _Conditions(mu, cond, valid, spk.to(mu.dtype), torch.full((b,), count), [0] * b)
        evaluation = iter(range(1 << 30))
        estimator = state.estimator

        def caches() -> list[KVCache]:
            k = next(evaluation)
            if k == len(estimator):
                estimator.append([KVCache(cache_windows(c)[1]) for _ in self.estimator.blocks])
            return estimator[k]

        state.latents = solve(self._velocity(conds, infer, True, caches), noise.to(mu), infer)
        return state


class FlowStream:
    """Utterances' latents, chunk by chunk, each chunk computed once.

    The chunk-causal model makes a chunk's frames depend only on tokens up to its end (plus the
    lookahead); so each call runs the token encoder and the ODE over the new chunks alone, attending to
    the keys and values earlier chunks left in the caches (the encoder's per block, the estimator's per
    block and per ODE evaluation). With every earlier chunk in reach (``left_chunks`` 0) a chunk's cost
    still grows with its position, through that attention over the cached frames (linearly; on CPU, base
    flow: 0.98 s for the 2nd one-second chunk, 2.06 s for the 59th), and the caches with the utterance
    (evaluations × blocks × frames × width); a model with ``left_chunks`` N attends to N earlier chunks
    only, so the caches keep N chunks and every chunk costs the same. The result equals
    ``generate(..., chunked=True)`` on the whole sequence to float tolerance. Fixed-step solvers only
    (euler / midpoint / rk4): dopri5 picks its steps from the whole sequence, which a stream never sees.
    On a CUDA model the first call, whose latency a listener waits for, replays a CUDA graph captured at
    the second stream of its shape (``FlowInferConfig.cuda_graph``; :mod:`mmspeech_flow.graph`).

    A stream has B rows (one per speaker vector) that advance in one batch: concurrent streams whose
    tokens arrive in step (an LM batch). Their one-shot prompts must have the same number of tokens, so
    the rows' chunks line up. A row that ends before the others is moved to a stream of its own with
    :meth:`split`. Each row draws its own noise (``seed``: int, row i uses seed+i, or one per row), so a
    row's latents do not depend on its batch-mates.
    """

    def __init__(
        self,
        model: FlowModel,
        speaker: SpeakerEmbedding,
        prompt: FlowPrompt | None,
        infer: FlowInferConfig,
        seed: int | Sequence[int | None] | None,
    ) -> None:
        if infer.solver == "dopri5":
            raise ValueError("streaming needs a fixed-step solver (euler, midpoint, rk4), not dopri5")
        if prompt is not None and len(prompt) != len(speaker):
            raise ValueError(f"{len(prompt)} prompts for {len(speaker)} speaker vectors")
        c, dev = model.config.model, model.device
        b = len(speaker)
        self.model, self.infer, self.seeds = model, infer, item_seeds(seed, b)
        # (B, P) prompt tokens and (B, C, P·ratio) their normalised latents
        self.prefix = torch.zeros(b, 0, dtype=torch.long, device=dev)
        self.prompt_cond = torch.zeros(b, c.latent_dim, 0, device=dev)
        if prompt is not None:
            model._check_tokens(prompt.tokens)
            items = model._prompt_items(prompt)
            if len({len(p) for p, _ in items}) > 1:
                raise ValueError(
                    f"the prompts of one stream have {sorted({len(p) for p, _ in items})} tokens: rows "
                    "advance together, so their prompts need the same length (stream them apart)"
                )
            self.prefix = torch.stack([p for p, _ in items])
            self.prompt_cond = torch.stack([cd for _, cd in items])
        self.spk = speaker.vectors.to(dev)  # (B, D)
        self.done = 0  # tokens (prompt included) whose frames are out
        self.state: CallState | None = None  # the caches the next call continues (None before the first)

    def __len__(self) -> int:
        return self.spk.shape[0]

    @torch.inference_mode()
    def advance(self, tokens: torch.Tensor, last: bool = False) -> torch.Tensor:
        """``tokens``: all speech tokens of the utterances so far (without the prompt), (B, N), or (N,)
        for a one-row stream. Returns the (B, C, frames) latents ((C, frames) for (N,) tokens) that became
        final since the previous call: whole chunks whose lookahead tokens have arrived, or, with
        ``last``, everything left."""
        one = tokens.dim() == 1
        tokens = tokens[None] if one else tokens
        if tokens.shape[0] != len(self):
            raise ValueError(f"{tokens.shape[0]} token rows for a stream of {len(self)}")
        out = self._advance(tokens.to(self.prefix.device, torch.long), last)
        return out[0] if one else out

    def _advance(self, tokens: torch.Tensor, last: bool) -> torch.Tensor:
        c, m, b = self.model.config.model, self.model, len(self)
        full = torch.cat([self.prefix, tokens], dim=1)  # (B, P + N)
        n = full.shape[1]
        # whole chunks (counted from the prompt's start) whose lookahead has arrived; at the end, the rest
        final = max(0, (n - c.lookahead) // c.chunk_size * c.chunk_size)
        end = n if last else final
        if end <= self.done:
            return torch.zeros(b, c.latent_dim, 0, device=self.prefix.device)
        start, r = self.done, c.ratio
        new = SpeechTokens(
            tokens=full[:, start:end], lengths=torch.full((b,), end - start), frame_rate=c.token_rate
        )
        m._check_tokens(new)
        window = full[:, start : end + c.lookahead]  # (B, end - start + k) with the lookahead that exists
        prompt = self.prompt_cond[:, :, start * r : end * r]
        # each row's offline noise, sliced
        noise = torch.stack([_noise(end * r, c.latent_dim, s)[:, start * r :] for s in self.seeds])
        noise = noise.to(self.prefix.device)
        # a first call of whole chunks has one shape per (rows, prompt length): a graph's replay serves
        # every later stream of it; a first call that is also the last (a sentence shorter than a chunk)
        # has a shape per length, and runs eagerly
        if start == 0 and not last and self.infer.cuda_graph and m.graphs.applies(self.prefix.device):
            key = (b, window.shape[1], end, prompt.shape[-1], self.spk.dtype, astuple(self.infer))
            call = functools.partial(m._stream_call, self.infer, end)
            self.state = m.graphs.run(key, call, window, self.spk, prompt, noise)
        else:
            self.state = m._stream_call(self.infer, end - start, window, self.spk, prompt, noise, self.state)
        self.done = end
        keep = max(0, self.prompt_cond.shape[-1] - start * r)  # prompt frames are conditioned on, not output
        return m.denormalize(self.state.latents)[:, :, keep:]

    def split(self, rows: Sequence[int]) -> FlowStream:
        """Move ``rows`` (positions in this stream) to a new stream, which is returned; this one keeps the
        other rows, in their order. For a row that ends (or lags) while its batch-mates go on: each
        stream's caches are copies of its rows."""
        b = len(self)
        if not rows or len(set(rows)) != len(rows) or not all(0 <= i < b for i in rows):
            raise ValueError(f"rows {list(rows)} are not distinct positions in a stream of {b}")
        moved = torch.tensor(list(rows))
        kept = torch.tensor([i for i in range(b) if i not in set(rows)], dtype=torch.long)
        out = copy.copy(self)
        out._take(moved)
        self._take(kept)
        return out

    def _take(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of every per-row tensor and cache."""
        # with classifier-free guidance the estimator runs B conditional rows, then B unconditional ones
        guided = rows if self.infer.cfg_rate == 0 else torch.cat([rows, rows + len(self)])
        dev = self.prefix.device
        self.seeds = [self.seeds[i] for i in rows.tolist()]
        self.prefix, self.prompt_cond, self.spk = (
            self.prefix[rows.to(dev)],
            self.prompt_cond[rows.to(dev)],
            self.spk[rows.to(dev)],
        )
        if self.state is None:
            return
        e = self.state.encoder
        encoder = EncoderState(
            [kv.select(rows) for kv in e.pre],
            [kv.select(rows) for kv in e.post],
            e.up_tail[rows.to(e.up_tail.device)] if e.up_tail is not None else None,
        )
        estimator = [[kv.select(guided) for kv in evaluation] for evaluation in self.state.estimator]
        self.state = CallState(self.state.latents[rows.to(dev)], encoder, estimator)


@dataclass
class _Conditions:
    """What the ODE is conditioned on, for a batch of B items over T latent frames."""

    mu: torch.Tensor  # (B, C, T) encoded, upsampled tokens
    cond: torch.Tensor  # (B, C, T) prompt latents (normalised) on the prompt frames, zeros elsewhere
    valid: torch.Tensor  # (B, T) bool
    spk: torch.Tensor  # (B, D) speaker vectors
    lengths: torch.Tensor  # (B,) tokens per item, prompt included
    prompt_frames: list[int]  # latent frames of each item's prompt (cut from the output)

    @property
    def frames(self) -> int:
        return self.mu.shape[-1]


def _noise(frames: int, channels: int, seed: int | None) -> torch.Tensor:
    """(C, T) standard normal. Drawn time-major, so a longer draw with the same seed extends a shorter one
    (streaming re-runs see the same noise on frames they already produced)."""
    g = None
    if seed is not None:
        g = torch.Generator().manual_seed(int(seed))
    return torch.randn(frames, channels, generator=g).T
