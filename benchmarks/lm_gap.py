"""Where a quickstart LM's held-out gap comes from: unseen voices, unseen sentences, or both.

    uv run --no-sync python benchmarks/lm_gap.py --quickstart quickstart [--items 64]

Teacher-forced LM loss (the trainer's own, no sampling) on four sets of a quickstart's eSpeak corpus:
training voices saying training sentences (what it trained on), held-out voices saying held-out
sentences (its held-out loss), and the two mixed sets, which the corpus lacks and this script synthesises
with the same eSpeak voices and tokenises with the run's tokenizer. A loss that rises only with unseen
sentences points at the text side; only with unseen voices, at the speaker side; with any unseen pairing
(both mixed sets as high as the held-out set) the LM memorised whole utterances. Each set has ``--items``
utterances from at most a quarter as many voices (each voice's reference is another of its utterances).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import table  # noqa: E402


def by_voice(utts: list, items: int) -> list:
    """``items`` utterances of at most ``items // 4`` voices, the voices taking turns."""
    from mmspeech_pipeline.voices import take_turns

    groups: dict[str, list] = {}
    for u in utts:
        if u.speaker in groups or len(groups) < items // 4:
            groups.setdefault(u.speaker, []).append(u)
    return take_turns(list(groups.values()))[:items]


def synthesise(qs: Path, work: Path, voices: list[str], sentences: list[str], name: str, items: int) -> list:
    """``items`` new utterances: the voices (at most ``items // 4``) in turn, each saying a drawn sentence,
    made as the corpus makes its own (:func:`mmspeech_pipeline.corpus._speak_all`)."""
    from mmspeech_core.data import Utterance
    from mmspeech_pipeline.corpus import _speak_all
    from mmspeech_pipeline.voices import voice_from_dict

    info = json.loads((qs / "corpus/speakers.json").read_text())
    rng, voices = random.Random(0), voices[: max(1, items // 4)]
    utts = []
    for k in range(items):
        spk, text = voices[k % len(voices)], rng.choice(sentences)
        utts.append(Utterance(f"{name}_{k:04d}", str(work / name / f"{name}_{k:04d}.wav"), text, spk))
    voice = {s: voice_from_dict(info[s]) for s in voices}
    _speak_all([(u.audio, u.text or "", voice[u.speaker or ""]) for u in utts])
    return utts


def loss(model, utts: list, tokens, text_tokenizer) -> float:
    """Teacher-forced loss over the utterances, weighted by their target tokens."""
    from mmspeech_llm.data import LLMDataset, collate

    cfg = model.config
    cfg = dataclasses.replace(
        cfg, layout=dataclasses.replace(cfg.layout, prompt_pairs=0.0, bistream_prob=0.0)
    )
    ds = LLMDataset(utts, {u.id: tokens[u.id] for u in utts}, text_tokenizer, cfg)
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(ds), 16):
            batch = collate([ds[k] for k in range(i, min(i + 16, len(ds)))])
            n = float((batch.layout.target != -100).sum())
            total, count = total + float(model.training_loss(batch)["loss"]) * n, count + n
    return total / count


def main() -> None:
    from mmspeech_core.data import extract_features, load_shards, read_manifest
    from mmspeech_pipeline.tts import TTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quickstart", required=True, help="a quickstart's --out folder")
    p.add_argument("--items", type=int, default=64, help="utterances per set")
    p.add_argument("--work", default=None, help="where the mixed sets go (default: QUICKSTART/lm_gap)")
    a = p.parse_args()
    qs = Path(a.quickstart)
    work = Path(a.work) if a.work else qs / "lm_gap"
    train, test = read_manifest(qs / "corpus/train.jsonl"), read_manifest(qs / "corpus/test.jsonl")
    train_voices, test_voices = sorted({u.speaker for u in train}), sorted({u.speaker for u in test})
    train_text, test_text = sorted({u.text for u in train}), sorted({u.text for u in test})
    mixed = {
        "training voices, held-out sentences": synthesise(
            qs, work, train_voices, test_text, "tv_hs", a.items
        ),
        "held-out voices, training sentences": synthesise(
            qs, work, test_voices, train_text, "hv_ts", a.items
        ),
    }
    tts = TTS.from_pretrained(qs / "bundle")
    extract_features(tts.tokenizer, [u for s in mixed.values() for u in s], work / "tokens", batch_size=8)
    corpus_tokens, mixed_tokens = load_shards(qs / "features/tokens"), load_shards(work / "tokens")
    sets = {
        "training voices, training sentences": (by_voice(train, a.items), corpus_tokens),
        **{name: (utts, mixed_tokens) for name, utts in mixed.items()},
        "held-out voices, held-out sentences": (by_voice(test, a.items), corpus_tokens),
    }
    rows = [
        [name, len(utts), loss(tts.llm, utts, toks, tts.text_tokenizer)]
        for name, (utts, toks) in sets.items()
    ]
    table(f"teacher-forced LM loss, {qs}", ["set", "utterances", "loss"], rows)


if __name__ == "__main__":
    main()
