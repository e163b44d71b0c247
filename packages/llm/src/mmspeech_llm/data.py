"""LLM training data: manifest (text, speaker, audio) + extracted speech tokens -> layout sequences with a
speaker reference taken from another utterance of the same speaker, as the speaker encoder's log-mels."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from mmspeech_core.audio import read_audio
from mmspeech_core.data import EpochItems, ReferencePicker, Utterance, feature_length, feature_shards
from mmspeech_core.nn import LogMel
from mmspeech_core.training import Batch
from torch.nn.utils.rnn import pad_sequence

from .config import LLMConfig, LLMModelConfig
from .layout import PaddedLayout, pad, training_sequence
from .layout import Sequence as LayoutSequence
from .text import TextTokenizer


def reference_mel(m: LLMModelConfig) -> LogMel:
    """The speaker encoder's fixed front end: the model applies it to reference audio at inference, the
    dataset to training references (in loader workers, and once per utterance with a cache)."""
    return LogMel(m.spk_sample_rate, n_mels=m.spk_mels)


class LLMDataset(EpochItems, torch.utils.data.Dataset):
    """Items: :class:`LLMItem` (layout sequence, the reference's log-mels, cropped to
    ``layout.max_reference_s``).

    ``cache_references``: keep each utterance's log-mels after their first use, so only the first use reads
    and transforms it. Measured on the quickstart's LM (tiny, 500 steps, 2 CPU cores): 176 s when the model
    took the references' audio, 145 s with the log-mels made here, 114 s with the cache. Memory: ~32 KB per
    second of audio (80 mels × 100 frames/s × 4 bytes); each loader worker keeps its own copy."""

    def __init__(
        self,
        utts: Sequence[Utterance],
        tokens: Mapping[str, torch.Tensor],
        text_tokenizer: TextTokenizer,
        cfg: LLMConfig,
        fallback: str = "drop",
        seed: int = 0,
        max_self_fraction: float = 0.05,
        cache_references: bool = False,
    ) -> None:
        self.cfg = cfg
        self.mel = reference_mel(cfg.model)
        self._mels: dict[int, torch.Tensor] | None = {} if cache_references else None
        self.tokens = tokens  # read per item (a lazy FeatureStore keeps only the index in memory)
        self.utts, self.text, self.n_speech = [], [], []
        missing = 0
        for u in utts:
            if u.id not in tokens or not u.text:
                missing += 1
                continue
            self.utts.append(u)
            self.text.append(torch.tensor(text_tokenizer.encode(u.text), dtype=torch.long))
            self.n_speech.append(feature_length(tokens, u.id))
        if not self.utts:
            raise ValueError("no utterance has both a transcript and extracted tokens")
        if max(int(t.max()) for t in self.text) >= cfg.model.text_vocab:
            raise ValueError("text tokenizer vocabulary is larger than model.text_vocab")
        self.missing = missing
        self.picker = ReferencePicker([u.speaker for u in self.utts], fallback, max_self_fraction)
        self.index = self.picker.usable
        self.pairs = self._pairs(cfg.layout.prompt_pairs, seed)
        self.seed = seed  # each item's layout, reference and crop (:class:`EpochItems`)

    def _pairs(self, fraction: float, seed: int) -> list[tuple[int, int]]:
        """``(prompt, target)`` utterance pairs of one speaker, ``fraction`` × the items, drawn once."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"layout.prompt_pairs must lie in [0, 1], got {fraction}")
        by_speaker: dict[str | None, list[int]] = {}
        for i in self.index:
            by_speaker.setdefault(self.utts[i].speaker, []).append(i)
        targets = [i for i in self.index if len(by_speaker[self.utts[i].speaker]) > 1]
        rng = random.Random(seed + 1)
        chosen = rng.sample(targets, min(round(fraction * len(self.index)), len(targets)))
        return [(rng.choice([j for j in by_speaker[self.utts[i].speaker] if j != i]), i) for i in chosen]

    def __len__(self) -> int:
        return len(self.index) + len(self.pairs)

    def _parts(self, k: int) -> list[int]:
        """The utterances item ``k`` joins: one, or a pair's prompt then target."""
        return [self.index[k]] if k < len(self.index) else list(self.pairs[k - len(self.index)])

    def lengths(self) -> list[int]:
        return [
            sum(len(self.text[i]) + self.n_speech[i] for i in self._parts(k)) + 3 for k in range(len(self))
        ]

    def shards(self) -> list[int]:
        """The token shard of each item (a pair's target's; streaming reads shard by shard)."""
        return feature_shards(self.tokens, [self.utts[self._parts(k)[-1]].id for k in range(len(self))])

    def __getitem__(self, k: int) -> LLMItem:
        parts = self._parts(k)
        m, lay = self.cfg.model, self.cfg.layout
        rng = self.item_rng(k)
        seq = training_sequence(
            torch.cat([self.text[i] for i in parts]),
            torch.cat([self.tokens[self.utts[i].id].long() for i in parts]),
            m.eos,
            m.fill,
            lay.bistream_prob,
            lay.bistream_min_ratio,
            lay.text_chunk,
            lay.speech_chunk,
            rng,
        )
        # a pair's reference is its prompt's own audio, as a one-shot voice's is
        mel = self._reference(parts[0] if len(parts) > 1 else self.picker(parts[0], rng))
        crop = int(lay.max_reference_s * m.spk_sample_rate) // self.mel.hop + 1  # frames
        if mel.shape[-1] > crop:
            start = rng.randrange(mel.shape[-1] - crop + 1)
            mel = mel[:, start : start + crop]
        return LLMItem(seq, mel)

    @torch.no_grad()
    def _reference(self, j: int) -> torch.Tensor:
        """(n_mels, frames) log-mels of utterance ``j``, whole."""
        if self._mels is not None and j in self._mels:
            return self._mels[j]
        audio = read_audio(self.utts[j].audio, self.cfg.model.spk_sample_rate)
        mel = self.mel(audio[None])[0]
        if self._mels is not None:
            self._mels[j] = mel
        return mel


@dataclass
class LLMItem:
    sequence: LayoutSequence  # the training layout of one utterance
    reference: torch.Tensor  # (n_mels, frames) log-mels of another utterance of the same speaker


@dataclass
class LLMBatch(Batch):
    layout: PaddedLayout  # (B, L)
    reference: torch.Tensor  # (B, n_mels, frames) speaker references' log-mels, zero-padded
    reference_frames: torch.Tensor  # (B,)


def collate(items: list[LLMItem]) -> LLMBatch:
    frames = torch.tensor([x.reference.shape[-1] for x in items])
    mels = pad_sequence([x.reference.T for x in items], batch_first=True).transpose(1, 2)  # (B, n_mels, T)
    return LLMBatch(pad([x.sequence for x in items]), mels, frames)
