"""LM sequence layouts. A sequence is (kind, id, target) per position:

kind SPECIAL (id SOS or TASK), SPK (the speaker vector slot), TEXT (text-vocab id), SPEECH (speech-head id).
Targets are speech-head ids or IGNORE.

- unistream  [sos, spk, text…, task, speech…]            targets: task→s0, s_i→s_{i+1}, s_last→eos
- bistream   [sos, spk, (5 text, 15 speech)…, rest text, task, rest speech]
             the last text of a chunk predicts its first speech token, the 15th speech predicts ``fill``
             ("more text, please"); the tail is unistream.
- inference  [sos, spk, prompt text + text…, task, prompt speech…] (no targets)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from mmspeech_core.training import Batch

SPECIAL, SPK, TEXT, SPEECH = 0, 1, 2, 3
SOS, TASK = 0, 1
IGNORE = -100


@dataclass
class Sequence:
    kind: torch.Tensor  # (L,) long
    ids: torch.Tensor  # (L,) long
    target: torch.Tensor  # (L,) long, IGNORE where nothing is predicted

    def __len__(self) -> int:
        return len(self.kind)


def _cat(parts: list[tuple[int, torch.Tensor | list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    kinds, ids = [], []
    for k, x in parts:
        x = torch.as_tensor(x, dtype=torch.long)
        kinds.append(torch.full((len(x),), k, dtype=torch.long))
        ids.append(x)
    return torch.cat(kinds), torch.cat(ids)


def _ignore(n: int) -> torch.Tensor:
    return torch.full((n,), IGNORE, dtype=torch.long)


def unistream(text: torch.Tensor, speech: torch.Tensor, eos: int) -> Sequence:
    kind, ids = _cat([(SPECIAL, [SOS]), (SPK, [0]), (TEXT, text), (SPECIAL, [TASK]), (SPEECH, speech)])
    target = torch.cat([_ignore(2 + len(text)), speech.long(), torch.tensor([eos])])
    return Sequence(kind, ids, target)


def bistream(
    text: torch.Tensor, speech: torch.Tensor, eos: int, fill: int, n_text: int = 5, n_speech: int = 15
) -> Sequence:
    parts: list[tuple[int, torch.Tensor | list[int]]] = [(SPECIAL, [SOS]), (SPK, [0])]
    targets = [_ignore(2)]
    j = 0
    while (j + 1) * n_text <= len(text) and (j + 1) * n_speech <= len(speech):
        t = text[j * n_text : (j + 1) * n_text]
        s = speech[j * n_speech : (j + 1) * n_speech]
        parts += [(TEXT, t), (SPEECH, s)]
        targets += [_ignore(n_text - 1), s.long(), torch.tensor([fill])]
        j += 1
    rest_t, rest_s = text[j * n_text :], speech[j * n_speech :]
    parts += [(TEXT, rest_t), (SPECIAL, [TASK]), (SPEECH, rest_s)]
    targets += [_ignore(len(rest_t)), rest_s.long(), torch.tensor([eos])]
    kind, ids = _cat(parts)
    return Sequence(kind, ids, torch.cat(targets))


def training_sequence(
    text: torch.Tensor,
    speech: torch.Tensor,
    eos: int,
    fill: int,
    bistream_prob: float,
    min_ratio: float,
    n_text: int = 5,
    n_speech: int = 15,
    rng: random.Random | None = None,
) -> Sequence:
    """Unistream, or bistream with probability ``bistream_prob`` when speech/text > ``min_ratio``."""
    rng = rng or random.Random()
    if len(text) and len(speech) / len(text) > min_ratio and rng.random() < bistream_prob:
        return bistream(text, speech, eos, fill, n_text, n_speech)
    return unistream(text, speech, eos)


def inference_prefix(text: torch.Tensor, prompt_speech: torch.Tensor | None = None) -> Sequence:
    ps = prompt_speech if prompt_speech is not None else torch.zeros(0, dtype=torch.long)
    kind, ids = _cat([(SPECIAL, [SOS]), (SPK, [0]), (TEXT, text), (SPECIAL, [TASK]), (SPEECH, ps)])
    return Sequence(kind, ids, _ignore(len(kind)))


@dataclass
class PaddedLayout(Batch):
    """A batch of layout sequences padded to (B, L)."""

    kind: torch.Tensor  # (B, L) position kinds (SPECIAL / SPK / TEXT / SPEECH)
    ids: torch.Tensor  # (B, L) ids within their kind's vocabulary
    target: torch.Tensor  # (B, L) next-token targets, IGNORE where nothing is predicted
    mask: torch.Tensor  # (B, L) bool, True on real positions


def pad(seqs: list[Sequence], left: bool = False) -> PaddedLayout:
    """Pad to (B, L). ``left=True`` for decoding (every prefix ends at the last column)."""
    b, n = len(seqs), max(len(s) for s in seqs)
    out = PaddedLayout(
        kind=torch.full((b, n), SPECIAL, dtype=torch.long),
        ids=torch.zeros((b, n), dtype=torch.long),
        target=torch.full((b, n), IGNORE, dtype=torch.long),
        mask=torch.zeros((b, n), dtype=torch.bool),
    )
    for i, s in enumerate(seqs):
        sl = slice(n - len(s), n) if left else slice(0, len(s))
        out.kind[i, sl], out.ids[i, sl], out.target[i, sl] = s.kind, s.ids, s.target
        out.mask[i, sl] = True
    return out
