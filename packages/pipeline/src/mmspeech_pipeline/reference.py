"""Reference-audio checks: the pitfalls users hit (too short, too long, silent, stereo, low sample rate)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from mmspeech_core import Waveform
from mmspeech_core.audio import AudioError, audio_info, read_audio


class ReferenceAudioError(ValueError):
    """A reference recording that would give a poor or wrong voice."""


@dataclass
class ReferencePolicy:
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    min_sample_rate: int = 16000
    silence_rms: float = 1e-3  # below this the recording is treated as silent
    allow_stereo: bool = False  # True: downmix instead of refusing


def load_reference(
    src: str | os.PathLike[str] | Waveform, sample_rate: int | None, policy: ReferencePolicy | None = None
) -> Waveform:
    """Path or single-item Waveform -> checked mono Waveform at ``sample_rate`` (None: its own rate)."""
    p = policy or ReferencePolicy()
    if isinstance(src, Waveform):
        if src.batch_size != 1:
            raise ReferenceAudioError(f"one reference per call, got a batch of {src.batch_size}")
        if src.sample_rate < p.min_sample_rate:
            raise ReferenceAudioError(
                f"reference sample rate {src.sample_rate} Hz is below {p.min_sample_rate} Hz"
            )
        x = src.unbatch()[0]
        sr = src.sample_rate
    else:
        try:
            sr, channels, _ = audio_info(src)
        except AudioError as e:
            raise ReferenceAudioError(str(e)) from e
        if channels > 1 and not p.allow_stereo:
            raise ReferenceAudioError(
                f"reference {src} has {channels} channels; pass a mono recording (or allow_stereo=True to downmix)"
            )
        if sr < p.min_sample_rate:
            raise ReferenceAudioError(
                f"reference {src} is sampled at {sr} Hz; at least {p.min_sample_rate} Hz is needed"
            )
        try:
            x = read_audio(src)
        except AudioError as e:  # unreadable, empty, NaN/Inf samples
            raise ReferenceAudioError(str(e)) from e
    if not torch.isfinite(x).all():
        raise ReferenceAudioError("reference has NaN or Inf samples")
    dur = len(x) / sr
    if dur < p.min_seconds:
        raise ReferenceAudioError(f"reference is {dur:.2f} s long; at least {p.min_seconds} s is needed")
    if dur > p.max_seconds:
        raise ReferenceAudioError(
            f"reference is {dur:.1f} s long; trim it to at most {p.max_seconds} s (3-10 s works best)"
        )
    # RMS around the mean: a constant (DC) signal is as empty of voice as silence
    rms = float(x.float().std(correction=0))
    if rms < p.silence_rms:
        raise ReferenceAudioError(f"reference is silent or constant (RMS around its mean {rms:.2e})")
    wav = Waveform.from_list([x], sr)
    return wav.resample(sample_rate) if sample_rate else wav
