"""Stage 1: text (+ speaker reference, + prompt) -> speech tokens, on a Qwen2 backbone (no text LM head)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mmspeech_core import LMPrompt, PretrainedMixin, SpeakerEmbedding, SpeechTokens, Waveform
from mmspeech_core.nn import SpeakerEncoder, fp32_attention
from mmspeech_core.training import item_seeds
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, AutoConfig, Qwen2Config, Qwen2Model
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from . import __version__
from .config import BackboneConfig, LLMConfig, SamplingConfig
from .data import LLMBatch, reference_mel
from .decode import DecodeMode, DecoderPool, make_decoder
from .infer import sample_step
from .layout import IGNORE, SPEECH, SPK, TEXT, PaddedLayout, inference_prefix, pad

# The backbone's "sdpa" runs as transformers' SDPA, except under CPU autocast (bf16 training on a CPU),
# where it computes in fp32 (see mmspeech_core.nn.fp32_attention): the rotary embedding leaves q and k in
# fp32 and v in bf16, and autocast would cast all three to bf16 for a backward ~4x slower (medium's LM step on
# one AMX core: 0.57 s fp32, 0.58 s bf16 autocast, 0.42 s with this). Registered under its own name, so
# other transformers models in the process keep theirs; saved configs still say "sdpa".
_SDPA = "mmspeech_sdpa"


def _sdpa(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *a: Any, **kw: Any
) -> Any:
    return fp32_attention(
        lambda q, k, v: sdpa_attention_forward(module, q, k, v, *a, **kw), query, key, value
    )


AttentionInterface.register(_SDPA, _sdpa)
AttentionMaskInterface.register(_SDPA, sdpa_mask)


def qwen2_config(b: BackboneConfig, vocab: int) -> Any:
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=b.hidden_size,
        num_hidden_layers=b.num_layers,
        num_attention_heads=b.num_heads,
        num_key_value_heads=b.num_kv_heads,
        intermediate_size=b.intermediate_size,
        rope_parameters={"rope_type": "default", "rope_theta": b.rope_theta},
        max_position_embeddings=b.max_positions,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = _SDPA if b.attn_implementation == "sdpa" else b.attn_implementation
    return cfg


def backbone_config_from_hf(directory: str | Path) -> tuple[BackboneConfig, int]:
    """Read a local Qwen2 folder's config.json -> (BackboneConfig, text vocab size). No download."""
    c = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    rope = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get(
        "rope_theta", 1e6
    )
    b = BackboneConfig(
        pretrained=str(directory),
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        intermediate_size=c.intermediate_size,
        rope_theta=float(rope),
        max_positions=c.max_position_embeddings,
    )
    return b, int(c.vocab_size)


class SpeechLM(nn.Module, PretrainedMixin):
    """Backbone-only Qwen2 + speech embedding/head + learnable speaker encoder.

    The 151,936-wide text head of ``Qwen2ForCausalLM`` is never built: only speech tokens are predicted.
    """

    checkpoint_kind = "llm"
    config_class = LLMConfig
    package_version = __version__

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.config = config
        m = config.model
        h = m.backbone.hidden_size
        self.backbone = Qwen2Model(qwen2_config(m.backbone, m.text_vocab))
        self.special = nn.Embedding(2, h)  # sos, task
        self.speech_embed = nn.Embedding(m.head_size, h)
        self.head = nn.Linear(h, m.head_size)
        self.mel = reference_mel(m)
        self.speaker_encoder = SpeakerEncoder(m.spk_mels, m.spk_hidden, m.spk_layers, m.spk_heads, m.spk_dim)
        self.spk_proj = nn.Linear(m.spk_dim, h)
        self.decoders = DecoderPool()  # static KV caches (and CUDA graphs) kept between requests
        # how stream / generate decode when not told (see decode.py): a runtime choice, not saved
        self.decode_mode: DecodeMode = "auto"

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> SpeechLM:
        """``.to()``, ``.half()`` and the like make new parameter tensors: decoders (and CUDA graphs) made
        on the old ones would read freed memory, so they are dropped (loading weights copies in place)."""
        self.decoders = DecoderPool(self.decoders.size, self.decoders.bucket)
        return super()._apply(fn, recurse)  # type: ignore[no-any-return]

    def load_backbone(self, directory: str | Path) -> None:
        """Initialise the backbone from a local Hugging Face Qwen2 folder (safetensors), shapes checked."""
        pre = Qwen2Model.from_pretrained(str(directory), local_files_only=True)
        missing, unexpected = self.backbone.load_state_dict(pre.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"backbone at {directory} does not match: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    # ---- speaker ---------------------------------------------------------------------------------
    def embed_speaker(self, reference: Waveform) -> SpeakerEmbedding:
        """Reference audio (any length, untranscribed) -> (B, spk_dim) unit vectors."""
        sr = self.config.model.spk_sample_rate
        ref = reference.resample(sr).to(self.device)
        mel = self.mel(ref.audio)
        return self.embed_reference_mels(mel, self.mel.frames(ref.lengths).clamp(max=mel.shape[-1]))

    def embed_reference_mels(self, mel: torch.Tensor, frames: torch.Tensor) -> SpeakerEmbedding:
        """(B, n_mels, T) references' log-mels (``data.reference_mel``; padding ignored), (B,) frames ->
        (B, spk_dim) unit vectors."""
        return SpeakerEmbedding(self.speaker_encoder(mel.to(self.device), frames.to(self.device)))

    # ---- embeddings --------------------------------------------------------------------------------
    def embed(self, kind: torch.Tensor, ids: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """kind, ids: (B, L); spk: (B, spk_dim) -> (B, L, H)."""
        text = self.backbone.embed_tokens(torch.where(kind == TEXT, ids, 0))
        speech = self.speech_embed(torch.where(kind == SPEECH, ids, 0))
        special = self.special(torch.where((kind != TEXT) & (kind != SPEECH) & (kind != SPK), ids, 0))
        s = self.spk_proj(spk)[:, None].to(text.dtype)
        k = kind[..., None]
        return torch.where(
            k == TEXT, text, torch.where(k == SPEECH, speech, torch.where(k == SPK, s, special))
        )

    def _hidden(
        self, emb: torch.Tensor, mask: torch.Tensor, cache: Any = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        if positions is None:
            positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        out = self.backbone(
            inputs_embeds=emb,
            attention_mask=mask.long(),
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    # ---- training ----------------------------------------------------------------------------------
    def training_loss(self, batch: LLMBatch) -> dict[str, torch.Tensor]:
        spk = self.embed_reference_mels(batch.reference, batch.reference_frames).vectors
        layout = batch.layout
        hidden = self._hidden(self.embed(layout.kind, layout.ids, spk), layout.mask)
        sel = layout.target != IGNORE
        logits = self.head(hidden[sel]).float()  # only predicted positions: no (B, L, V) tensor
        target = layout.target[sel]
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc.detach()}

    # ---- inference ---------------------------------------------------------------------------------
    def _check_text(self, ids: Sequence[torch.Tensor]) -> None:
        v = self.config.model.text_vocab
        for x in ids:
            if len(x) == 0:
                raise ValueError("text has no tokens")
            if int(x.min()) < 0 or int(x.max()) >= v:
                raise ValueError(
                    f"text token ids must lie in [0, {v}) — does the tokenizer match this model?"
                )

    @torch.inference_mode()
    def stream(
        self,
        text: Sequence[torch.Tensor],
        speaker: SpeakerEmbedding,
        prompt: LMPrompt | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | Sequence[int] | None = None,
        decode: DecodeMode | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decode step by step with a KV cache. Yields ``(tokens (B,), alive (B,) bool)`` per step; a row's
        token is meaningful where ``alive`` (its EOS step yields alive=False). Batch rows are independent.
        ``prompt``: one-shot (the reference's transcript and speech tokens continue into the target).
        ``decode``: ``auto`` (CUDA graphs on GPU), ``dynamic``, ``static``, ``cuda_graph`` or ``compiled`` (see
        ``decode.py``); None: :attr:`decode_mode`."""
        cfg = sampling or self.config.sampling
        self._check_request(text, speaker, prompt)
        batch = self._prefix_batch(text, prompt)
        limits = _LengthLimits.of(text, cfg, self.device)
        u = _uniforms(item_seeds(seed, len(text)), limits.steps, self.device)  # (B, steps, 2)
        emb = self.embed(batch.kind, batch.ids, speaker.vectors.to(self.device))
        decoder = make_decoder(decode or self.decode_mode, self, emb, batch.mask, u.shape[1])
        try:
            yield from self._decode_loop(decoder, u, limits, cfg)
        finally:  # also when the caller stops early: the generator is closed
            decoder.release()

    def _check_request(
        self, text: Sequence[torch.Tensor], speaker: SpeakerEmbedding, prompt: LMPrompt | None
    ) -> None:
        self._check_text(text)
        if len(speaker) != len(text):
            raise ValueError(f"{len(speaker)} speaker vectors for {len(text)} texts")
        if prompt is not None:
            if len(prompt) != len(text):
                raise ValueError(
                    f"prompt batch size {len(prompt)} does not match the text batch size {len(text)}"
                )
            self._check_text(prompt.text)

    def _prefix_batch(self, text: Sequence[torch.Tensor], prompt: LMPrompt | None) -> PaddedLayout:
        """Left-padded inference prefixes ``[sos, spk, (prompt text +) text, task_id(, prompt speech)]``."""
        if prompt is None:
            prefixes = [inference_prefix(t, None) for t in text]
        else:
            prefixes = [
                inference_prefix(torch.cat([pt, t]), ps)
                for pt, t, ps in zip(prompt.text, text, prompt.tokens.unbatch())
            ]
        return pad(prefixes, left=True).to(self.device)  # type: ignore[no-any-return]

    def _decode_loop(
        self, decoder: Any, u: torch.Tensor, limits: _LengthLimits, cfg: SamplingConfig
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        m = self.config.model
        b, steps = u.shape[:2]
        logits = decoder.logits
        history = torch.full((b, cfg.win_size), -1, dtype=torch.long, device=self.device)
        alive = torch.ones(b, dtype=torch.bool, device=self.device)
        # asking whether any row is still alive copies from the device and waits for it: on a GPU that
        # stalls the launch queue, so it is asked every few steps there (a few wasted steps at the end,
        # whose rows are already dead); on the CPU it is free and asked every step
        check_every = 8 if self.device.type == "cuda" else 1
        for step in range(steps):
            allow_eos = limits.allow_eos(step)
            tok = sample_step(logits, history, u[:, step, 0], u[:, step, 1], cfg, m.speech_vocab, allow_eos)
            alive = alive & ~((tok == m.eos) | (step >= limits.max_len))
            yield tok, alive
            if step == steps - 1 or (step % check_every == check_every - 1 and not bool(alive.any())):
                return
            if cfg.win_size:  # a window of 0 turns repetition-aware sampling off: keep no history
                history = torch.cat([history[:, 1:], tok[:, None]], 1)
            logits = decoder.step(self.speech_embed(tok.clamp(max=m.head_size - 1))[:, None])

    def generate(
        self,
        text: Sequence[torch.Tensor],
        speaker: SpeakerEmbedding,
        prompt: LMPrompt | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | Sequence[int] | None = None,
        decode: DecodeMode | None = None,
    ) -> SpeechTokens:
        """Batched generation -> SpeechTokens (EOS excluded). ``text``: list of (N_i,) text-token tensors."""
        steps = list(self.stream(text, speaker, prompt, sampling, seed, decode))
        tokens = torch.stack([tok for tok, _ in steps], 1).cpu()  # (B, S): one copy, no sync per step
        lengths = torch.stack([alive for _, alive in steps], 1).sum(1).cpu()  # alive is a prefix per row
        return SpeechTokens.from_list(
            [tokens[i, : int(n)] for i, n in enumerate(lengths)],
            self.config.model.token_rate,
            self.config.model.speech_vocab,
        )


@dataclass
class _LengthLimits:
    """Per row (B,): EOS is blocked before ``min_len`` steps and forced at ``max_len`` (ratios of the target
    text's length, not counting a prompt)."""

    min_len: torch.Tensor
    max_len: torch.Tensor
    # the steps before which EOS is blocked on every row, and from which on none: a bool then, not a mask
    eos_closed_until: int
    eos_open_at: int
    steps: int  # the longest row's max_len: how many steps a batch can take

    @classmethod
    def of(cls, text: Sequence[torch.Tensor], cfg: SamplingConfig, device: torch.device) -> _LengthLimits:
        # on the host, so that min() and max() wait for no device
        text_len = torch.tensor([len(t) for t in text], dtype=torch.float)
        min_len = (text_len * cfg.min_len_ratio).long()
        max_len = (text_len * cfg.max_len_ratio).long().clamp_min(1)
        return cls(
            min_len.to(device), max_len.to(device), int(min_len.min()), int(min_len.max()), int(max_len.max())
        )

    def allow_eos(self, step: int) -> torch.Tensor | bool:
        """(B,) whether each row may end at ``step``; a bool when all rows agree (most steps)."""
        if step < self.eos_closed_until:
            return False
        return True if step >= self.eos_open_at else step >= self.min_len


def _uniforms(seeds: Sequence[int | None], steps: int, device: torch.device) -> torch.Tensor:
    """(B, steps, 2) uniforms for the nucleus and fallback draws, each row from its own generator:
    batched == unbatched for equal seeds."""
    rows = [
        torch.rand(steps, 2, generator=torch.Generator().manual_seed(s) if s is not None else None)
        for s in seeds
    ]
    return torch.stack(rows).to(device)


def with_sampling(cfg: LLMConfig, **kw: Any) -> LLMConfig:
    return dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, **kw))
