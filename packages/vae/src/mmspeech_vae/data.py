"""VAE training data: random fixed-length crops of 24 kHz mono audio from a manifest."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from mmspeech_core.audio import AudioError, read_audio
from mmspeech_core.data import EpochItems, Utterance

log = logging.getLogger(__name__)


class CropDataset(EpochItems, torch.utils.data.Dataset):
    """Each item is a (segment,) crop (a multiple of hop), zero-padded if the file is shorter.

    Audio is decoded lazily; files that fail to decode are logged and replaced by another random file
    (so one bad file never stops a long run), and counted in ``self.failures``. Crops and replacements are
    drawn per item and epoch (:class:`EpochItems`): a resumed run crops as an uninterrupted one.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        sample_rate: int,
        segment: int,
        seed: int = 0,
        random_crop: bool = True,
    ) -> None:
        if not utts:
            raise ValueError("empty manifest")
        self.utts, self.sr, self.segment = list(utts), sample_rate, segment
        self.seed = seed
        self.failures = 0
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = self.item_rng(i)
        for _ in range(10):
            try:
                x = read_audio(self.utts[i].audio, self.sr)
                break
            except AudioError as e:
                self.failures += 1
                log.warning("skipping %s: %s", self.utts[i].id, e)
                i = rng.randrange(len(self.utts))
        else:
            raise AudioError("10 unreadable files in a row: check the manifest")
        if len(x) >= self.segment:
            s = rng.randrange(len(x) - self.segment + 1) if self.random_crop else 0
            return x[s : s + self.segment]
        return torch.nn.functional.pad(x, (0, self.segment - len(x)))
