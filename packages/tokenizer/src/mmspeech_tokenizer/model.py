"""Trainable FSQ speech tokenizer with CTC supervision ("supervised semantic tokens", as CosyVoice's).

16 kHz log-mel (100 Hz) -> two stride-2 convs (25 Hz) -> transformer encoder -> Linear(dim -> 8), tanh,
round to {-1, 0, 1} (straight-through) = one of 3^8 codes -> Linear(8 -> dim) -> transformer decoder ->
CTC over characters. After training only the encoder + FSQ are needed to tokenize.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmspeech_core import PretrainedMixin, SpeechTokens, Waveform, lengths_to_mask
from mmspeech_core.nn import TransformerBlock, chunk_attention_mask
from torch import nn

from . import __version__
from .config import FSQTokenizerConfig
from .data import CTCBatch, log_mels

SAMPLE_RATE = 16000


def fsq_quantize(h: torch.Tensor, levels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """h: (..., D) -> (quantised values in {-k..k} with straight-through gradient, codes (...,) in [0, levels^D)).

    Same index formula as S3Tokenizer v2: Σ_j (round(tanh(h_j)·0.999·k) + k) · levels^j with k = (levels-1)/2.
    """
    k = (levels - 1) // 2
    z = torch.tanh(h.float()) * 0.999 * k
    q = z + (z.round() - z).detach()
    digits = (z.round() + k).long()
    powers = levels ** torch.arange(h.shape[-1], device=h.device)
    return q, (digits * powers).sum(-1)


def fsq_decode_codes(codes: torch.Tensor, dims: int, levels: int = 3) -> torch.Tensor:
    """codes (...,) -> (..., dims) values in {-k..k}: the inverse of the index formula."""
    k = (levels - 1) // 2
    powers = levels ** torch.arange(dims, device=codes.device)
    return ((codes[..., None] // powers) % levels - k).float()


class FSQTokenizer(nn.Module, PretrainedMixin):
    checkpoint_kind = "fsq_tokenizer"
    config_class = FSQTokenizerConfig
    package_version = __version__
    sample_rate = SAMPLE_RATE
    frame_rate = 25.0

    def __init__(self, config: FSQTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        c = config.model
        if len(c.vocab) < 2:
            raise ValueError("vocab needs a blank plus at least one symbol (build it with `build_vocab`)")
        self.conv1 = nn.Conv1d(c.n_mels, c.dim, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(c.dim, c.dim, 3, stride=2, padding=1)
        self.encoder = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, 4, c.dropout) for _ in range(c.encoder_layers)]
        )
        self.down = nn.Linear(c.dim, c.fsq_dims)
        self.up = nn.Linear(c.fsq_dims, c.dim)
        self.decoder = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, 4, c.dropout) for _ in range(c.decoder_layers)]
        )
        self.norm = nn.LayerNorm(c.dim)
        self.ctc = nn.Linear(c.dim, len(c.vocab))

    @property
    def vocab_size(self) -> int:
        return self.config.model.codebook_size

    @property
    def device(self) -> torch.device:
        return self.ctc.weight.device

    @staticmethod
    def token_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        n = (mel_lengths + 1) // 2
        return (n + 1) // 2

    def encode_features(
        self, mel: torch.Tensor, mel_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, T) -> (quantised (B, N, D_fsq), codes (B, N), lengths (B,))."""
        valid = lengths_to_mask(mel_len, mel.shape[-1])
        x = F.gelu(self.conv1(mel * valid[:, None]))
        l1 = (mel_len + 1) // 2
        x = F.gelu(self.conv2(x * lengths_to_mask(l1, x.shape[-1])[:, None]))
        lengths = self.token_lengths(mel_len)
        valid = lengths_to_mask(lengths, x.shape[-1])
        x = x.transpose(1, 2)
        mask = chunk_attention_mask(valid, None)
        for blk in self.encoder:
            x = blk(x, mask)
        q, codes = fsq_quantize(self.down(x), self.config.model.fsq_levels)
        return q, codes, lengths

    def training_loss(self, batch: CTCBatch) -> dict[str, torch.Tensor]:
        q, _, lengths = self.encode_features(batch.mel, batch.mel_lengths)
        valid = lengths_to_mask(lengths, q.shape[1])
        x = self.up(q.to(self.up.weight.dtype))
        mask = chunk_attention_mask(valid, None)
        for blk in self.decoder:
            x = blk(x, mask)
        logp = self.ctc(self.norm(x)).float().log_softmax(-1).transpose(0, 1)  # (N, B, V)
        loss = F.ctc_loss(logp, batch.labels, lengths, batch.label_lengths, blank=0, zero_infinity=True)
        return {"loss": loss}

    @torch.inference_mode()
    def encode(self, wav: Waveform) -> SpeechTokens:
        mel, mel_len = log_mels(wav, self.config.model.n_mels, self.device)
        _, codes, lengths = self.encode_features(mel, mel_len)
        return SpeechTokens.from_list(
            [codes[i, : int(n)].cpu() for i, n in enumerate(lengths.tolist())], 25.0, self.vocab_size
        )


def build_vocab(texts: list[str]) -> list[str]:
    """Blank ('') + every character of the corpus, sorted."""
    return [""] + sorted({ch for t in texts for ch in t})
