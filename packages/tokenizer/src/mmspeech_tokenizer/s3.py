"""S3Tokenizer v2 (``speech_tokenizer_v2_25hz``): 16 kHz audio -> 25 Hz FSQ tokens (6561 codes).

Weights are loaded offline from a local file: the official ``speech_tokenizer_v2.onnx`` (converted with
s3tokenizer's onnx2torch), a converted ``.pt`` state dict, or a folder written by :meth:`save_pretrained`.
Nothing is ever downloaded; random weights only with :meth:`random_init` (tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from mmspeech_core import CheckpointError, SpeechTokens, Waveform
from mmspeech_core.checkpoint import load_pretrained_dir, save_pretrained_dir, weights_fingerprint
from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

from . import __version__
from .config import S3Config
from .data import log_mels

SAMPLE_RATE = 16000
FRAME_RATE = 25.0
CODEBOOK_SIZE = 3**8


def _build(cfg: S3Config) -> torch.nn.Module:
    # a fresh ModelConfig: s3tokenizer's default argument is a shared mutable instance
    mc = ModelConfig(
        n_mels=cfg.n_mels,
        n_audio_state=cfg.n_audio_state,
        n_audio_head=cfg.n_audio_head,
        n_audio_layer=cfg.n_audio_layer,
        n_codebook_size=CODEBOOK_SIZE,
    )
    return S3TokenizerV2("speech_tokenizer_v2_25hz", config=mc)


def _config_from_state(state: dict[str, torch.Tensor], path: Path) -> S3Config:
    """The shape of a bare state dict (.onnx / .pt carry no config): widths from conv1, depth from block ids."""
    w = state.get("encoder.conv1.weight")
    if w is None:
        raise CheckpointError(f"{path} does not hold S3Tokenizer v2 weights (no encoder.conv1.weight)")
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks.")}
    try:
        return S3Config(
            n_mels=int(w.shape[1]),
            n_audio_state=int(w.shape[0]),
            n_audio_head=int(w.shape[0]) // 64,
            n_audio_layer=len(layers),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


class S3SpeechTokenizer:
    """``encode(Waveform) -> SpeechTokens``, batched, any input rate, any length (> 30 s windows handled)."""

    sample_rate = SAMPLE_RATE
    frame_rate = FRAME_RATE
    vocab_size = CODEBOOK_SIZE

    def __init__(self, model: torch.nn.Module, config: S3Config) -> None:
        self.model = model.eval()
        self.config = config

    # ---- loading -----------------------------------------------------------------------------------
    @classmethod
    def random_init(cls, config: S3Config | None = None, seed: int = 0) -> S3SpeechTokenizer:
        """Random weights — only for tests and smoke runs; tokens carry no meaning."""
        torch.manual_seed(seed)
        cfg = config or S3Config()
        return cls(_build(cfg), cfg)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> S3SpeechTokenizer:
        """``.onnx`` (official release), ``.pt`` (converted state dict) or a folder from :meth:`save_pretrained`."""
        p = Path(path)
        if p.is_dir():
            cfg, state = load_pretrained_dir(p, "s3tokenizer", S3Config)
        elif p.is_file() and p.suffix == ".onnx":
            from s3tokenizer.utils import onnx2torch

            try:
                state = onnx2torch(str(p), None, False)
            except Exception as e:
                raise CheckpointError(f"cannot convert ONNX tokenizer {p}: {e}") from e
            cfg = _config_from_state(state, p)
        elif p.is_file():
            try:
                state = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:
                raise CheckpointError(f"cannot read tokenizer weights {p}: {e}") from e
            cfg = _config_from_state(state, p)
        else:
            raise CheckpointError(
                f"tokenizer weights not found: {p} (give a local .onnx, .pt or folder; nothing is downloaded)"
            )
        model = _build(cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{p} does not hold S3Tokenizer v2 weights: {e}") from e
        return cls(model.to(device), cfg)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        return save_pretrained_dir(
            Path(directory), "s3tokenizer", self.config, self.model.state_dict(), __version__
        )

    def fingerprint(self) -> str:
        """Hash of the weights (the same for the ONNX file and the folder converted from it)."""
        return weights_fingerprint(self.model.state_dict())

    def to(self, device: str | torch.device) -> S3SpeechTokenizer:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- encoding ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, wav: Waveform) -> SpeechTokens:
        """Waveform (any rate, resampled to 16 kHz) -> SpeechTokens (B, ~25·seconds)."""
        mel, mel_len = log_mels(wav, self.config.n_mels, self.device)
        codes, lengths = self.model.quantize(mel, mel_len)  # type: ignore[operator]
        codes = codes.long()
        return SpeechTokens.from_list(
            [codes[i, : int(n)].cpu() for i, n in enumerate(lengths.tolist())], FRAME_RATE, CODEBOOK_SIZE
        )
