"""Tokenizer features (Whisper-style log-mels at 16 kHz) and CTC training data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from mmspeech_core import Waveform
from mmspeech_core.audio import audio_info, read_audio
from mmspeech_core.data import Utterance
from mmspeech_core.training import Batch
from s3tokenizer.utils import log_mel_spectrogram

SAMPLE_RATE = 16000


def log_mels(
    wav: Waveform, n_mels: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveform (any rate) -> (B, n_mels, T) padded log-mels at 100 Hz and (B,) lengths.

    Computed per item: the mel clamp (max − 8) is relative to each item's own maximum, so a padded batch
    item gets exactly the features it would get alone.
    """
    if bool((wav.durations() < 0.04).any()):
        raise ValueError("audio too short to tokenize: needs at least 40 ms")
    wav = wav.resample(SAMPLE_RATE)
    mels = [log_mel_spectrogram(x.to(device), n_mels=n_mels) for x in wav.unbatch()]
    lengths = torch.tensor([m.shape[-1] for m in mels], device=device)
    out = torch.zeros(len(mels), n_mels, int(lengths.max()), device=device)
    for i, m in enumerate(mels):
        out[i, :, : m.shape[-1]] = m
    return out, lengths


class CTCDataset(torch.utils.data.Dataset):
    """(mel (n_mels, T), labels (S,)) per transcribed utterance; characters outside ``vocab`` are an error.

    ``cache``: keep each item after its first read. Reading, resampling and the log-mel cost ~7 ms an
    utterance on a CPU core, ~70 % of a small model's training step (measured: the quickstart's tokenizer);
    with a cache only the first epoch pays. Memory: ~50 KB per second of audio; each loader worker process
    keeps its own copy, so use it with few or no workers on a corpus that fits in memory."""

    def __init__(self, utts: Sequence[Utterance], vocab: list[str], n_mels: int, cache: bool = False) -> None:
        self.index = {ch: i for i, ch in enumerate(vocab) if ch}
        self.utts = [u for u in utts if u.text]
        if not self.utts:
            raise ValueError("no transcribed utterance in the manifest")
        for u in self.utts:
            unknown = sorted(set(u.text or "") - set(self.index))
            if unknown:
                raise ValueError(f"{u.id}: characters {unknown} are not in the CTC vocabulary")
        self.n_mels = n_mels
        self._cache: dict[int, CTCItem] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.utts)

    def lengths(self) -> list[int]:
        return [int(audio_info(u.audio)[2] * 100) for u in self.utts]

    def __getitem__(self, i: int) -> CTCItem:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        u = self.utts[i]
        mel, _ = log_mels(Waveform.from_list([read_audio(u.audio, SAMPLE_RATE)], SAMPLE_RATE), self.n_mels)
        item = CTCItem(mel[0], torch.tensor([self.index[c] for c in u.text or ""], dtype=torch.long))
        if self._cache is not None:
            self._cache[i] = item
        return item


@dataclass
class CTCItem:
    mel: torch.Tensor  # (n_mels, T)
    labels: torch.Tensor  # (S,) character ids (0 is the CTC blank)


@dataclass
class CTCBatch(Batch):
    mel: torch.Tensor  # (B, n_mels, T), zero-padded
    mel_lengths: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B, S), padded with 0
    label_lengths: torch.Tensor  # (B,)


def collate(items: list[CTCItem]) -> CTCBatch:
    mel_len = torch.tensor([x.mel.shape[-1] for x in items])
    lab_len = torch.tensor([len(x.labels) for x in items])
    mel = torch.zeros(len(items), items[0].mel.shape[0], int(mel_len.max()))
    labels = torch.zeros(len(items), int(lab_len.max()), dtype=torch.long)
    for i, x in enumerate(items):
        mel[i, :, : x.mel.shape[-1]] = x.mel
        labels[i, : len(x.labels)] = x.labels
    return CTCBatch(mel, mel_len, labels, lab_len)
