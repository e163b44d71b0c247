"""Audio I/O (soundfile) and resampling. torchaudio >= 2.9 has no loader, so we never call it for I/O."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as AT

from .checkpoint import atomic_write
from .types import Waveform


class AudioError(ValueError):
    """Unreadable, empty or otherwise unusable audio."""


def resample(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """(..., T) -> (..., T') band-limited sinc resampling (torchaudio's, with its default filter)."""
    if orig_sr == new_sr:
        return x
    return _resampler(orig_sr, new_sr, x.dtype, x.device)(x)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int, dtype: torch.dtype, device: torch.device) -> AT.Resample:
    """torchaudio's ``functional.resample`` builds its sinc kernel on every call; the transform keeps it, and
    its output is the function's, bit for bit, for the same dtype. 22.05 -> 24 kHz (the eSpeak corpus), 3.2 s
    of audio: 0.57-0.64 ms against 0.91-0.99 ms (best of 30 on 2 CPU cores); 24 -> 16 kHz, whose kernel is
    small: no difference beyond the noise."""
    return AT.Resample(orig_sr, new_sr, dtype=dtype).to(device)


def read_audio(
    path: str | os.PathLike[str], sample_rate: int | None = None, mono: bool = True
) -> torch.Tensor:
    """Read a file -> (T,) float32 mono (or (C, T) with mono=False), resampled to ``sample_rate`` if given.

    Returns the tensor only; see :func:`load_audio` for a :class:`Waveform`.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioError(f"cannot decode audio file {path}: {e}") from e
    if data.shape[0] == 0:
        raise AudioError(f"audio file is empty: {path}")
    x = torch.from_numpy(np.ascontiguousarray(data.T))  # (C, T)
    if mono:
        x = x.mean(0)
    if not torch.isfinite(x).all():
        raise AudioError(f"audio file contains NaN/Inf samples: {path}")
    return resample(x, sr, sample_rate) if sample_rate else x


def audio_info(path: str | os.PathLike[str]) -> tuple[int, int, float]:
    """(sample_rate, channels, duration_s) without decoding."""
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise AudioError(f"cannot read audio header of {path}: {e}") from e
    return int(info.samplerate), int(info.channels), float(info.frames) / info.samplerate


def load_audio(paths: str | os.PathLike[str] | list[str | os.PathLike[str]], sample_rate: int) -> Waveform:
    """One or many files -> batched mono :class:`Waveform` at ``sample_rate``."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return Waveform.from_list([read_audio(p, sample_rate) for p in items], sample_rate)


# output container by file suffix: (soundfile format, subtype)
AUDIO_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),  # needs libsndfile >= 1.1 (soundfile's wheels ship it)
}


def audio_format(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(format, subtype) that ``path``'s suffix names; ``ValueError`` for a suffix that cannot be written."""
    return _suffix_format(Path(path).suffix.lower(), f" ({path})")


def _suffix_format(suffix: str, where: str = "") -> tuple[str, str]:
    if suffix not in writable_formats():
        raise ValueError(
            f"cannot write {suffix or 'a file without a suffix'} audio{where}; use one of {writable_formats()}"
        )
    return AUDIO_FORMATS[suffix]


def writable_formats() -> list[str]:
    """The suffixes of :data:`AUDIO_FORMATS` this machine's libsndfile can write."""
    return [k for k, (f, _) in AUDIO_FORMATS.items() if f in sf.available_formats()]


# Encoding runs in numpy, not torch: a server encodes on its web thread, and a torch op large enough to
# use OpenMP there would start a second OpenMP team beside the synthesis thread's, after which libgomp
# busy-waits less and synthesis runs up to 3x slower on a small CPU (see mmspeech_pipeline.scheduler).


def encode_audio(x: torch.Tensor | np.ndarray, sample_rate: int, suffix: str) -> bytes:
    """Mono (T,) audio -> the bytes of a file in the container ``suffix`` names (e.g. ".wav"); ".pcm" is
    raw 16-bit little-endian samples (OpenAI's ``pcm``)."""
    a = _float_array(x)
    if a.ndim != 1:
        raise ValueError(f"expected mono (T,) audio, got shape {tuple(a.shape)}")
    if suffix == ".pcm":
        return pcm16(a)
    fmt, subtype = _suffix_format(suffix)
    buf = io.BytesIO()
    sf.write(buf, np.clip(a, -1.0, 1.0), sample_rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def pcm16(x: torch.Tensor | np.ndarray) -> bytes:
    """(T,) float audio in [-1, 1] -> raw 16-bit little-endian PCM."""
    return (np.clip(_float_array(x), -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def _float_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def save_audio(
    path: str | os.PathLike[str], wav: Waveform | torch.Tensor, sample_rate: int | None = None
) -> None:
    """Write one item (B must be 1 for a Waveform), atomically, in the format its suffix names
    (.wav / .flac: 16-bit PCM, .ogg: Vorbis, .mp3)."""
    suffix = Path(path).suffix.lower()
    audio_format(path)  # refuse an unwritable suffix before any work
    if isinstance(wav, Waveform):
        if wav.batch_size != 1:
            raise ValueError(f"save_audio writes one item, got a batch of {wav.batch_size}")
        x, sample_rate = wav.unbatch()[0], wav.sample_rate
    else:
        x = wav
        if sample_rate is None:
            raise ValueError("sample_rate is required when saving a bare tensor")
    data = encode_audio(x, sample_rate, suffix)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(Path(path), write)
