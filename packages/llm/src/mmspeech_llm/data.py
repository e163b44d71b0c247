"""LLM training data: manifest (text, speaker, audio) + extracted speech tokens -> layout sequences with a
speaker reference taken from another utterance of the same speaker."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from mmspeech_core import Waveform
from mmspeech_core.audio import read_audio
from mmspeech_core.data import ReferencePicker, Utterance, feature_length, feature_shards
from mmspeech_core.training import Batch

from .config import LLMConfig
from .layout import PaddedLayout, pad, training_sequence
from .layout import Sequence as LayoutSequence
from .text import TextTokenizer


class LLMDataset(torch.utils.data.Dataset):
    """Items: :class:`LLMItem` (layout sequence, reference audio at the speaker encoder's rate)."""

    def __init__(
        self,
        utts: Sequence[Utterance],
        tokens: Mapping[str, torch.Tensor],
        text_tokenizer: TextTokenizer,
        cfg: LLMConfig,
        fallback: str = "drop",
        seed: int = 0,
        max_self_fraction: float = 0.05,
    ) -> None:
        self.cfg = cfg
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
        self.picker = ReferencePicker([u.speaker for u in self.utts], fallback, seed, max_self_fraction)
        self.index = self.picker.usable
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> list[int]:
        return [len(self.text[i]) + self.n_speech[i] + 3 for i in self.index]

    def shards(self) -> list[int]:
        """The token shard of each item (streaming reads shard by shard)."""
        return feature_shards(self.tokens, [self.utts[i].id for i in self.index])

    def __getitem__(self, k: int) -> LLMItem:
        i = self.index[k]
        m, lay = self.cfg.model, self.cfg.layout
        seq = training_sequence(
            self.text[i],
            self.tokens[self.utts[i].id].long(),
            m.eos,
            m.fill,
            lay.bistream_prob,
            lay.bistream_min_ratio,
            lay.text_chunk,
            lay.speech_chunk,
            self.rng,
        )
        ref = read_audio(self.utts[self.picker(i)].audio, m.spk_sample_rate)
        crop = int(lay.max_reference_s * m.spk_sample_rate)
        if len(ref) > crop:
            start = self.rng.randrange(len(ref) - crop + 1)
            ref = ref[start : start + crop]
        return LLMItem(seq, ref)


@dataclass
class LLMItem:
    sequence: LayoutSequence  # the training layout of one utterance
    reference: torch.Tensor  # (T,) audio of another utterance of the same speaker


@dataclass
class LLMBatch(Batch):
    layout: PaddedLayout  # (B, L)
    reference: Waveform  # (B, T) speaker references


def collate(items: list[LLMItem], sample_rate: int) -> LLMBatch:
    return LLMBatch(
        pad([x.sequence for x in items]), Waveform.from_list([x.reference for x in items], sample_rate)
    )
