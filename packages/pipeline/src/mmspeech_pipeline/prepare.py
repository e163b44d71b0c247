"""Data preparation: a folder of recordings -> a JSONL manifest (id, audio, text, speaker)."""

from __future__ import annotations

import logging
from pathlib import Path

from mmspeech_core.audio import AudioError, audio_info
from mmspeech_core.data import Utterance, write_manifest

log = logging.getLogger(__name__)
AUDIO = {".wav", ".flac", ".ogg", ".mp3"}


def prepare(
    root: str | Path,
    out: str | Path,
    transcripts: str | Path | None = None,
    min_s: float = 0.5,
    max_s: float = 30.0,
) -> list[Utterance]:
    """Walk ``root`` for audio. Speaker = the parent folder's name. Text from ``transcripts`` (``id<TAB>text``
    lines) or a ``<stem>.txt`` / ``<stem>.lab`` beside the audio. Unreadable / too short / too long files are
    logged and left out (with a count), never silently."""
    root = Path(root)
    texts: dict[str, str] = {}
    if transcripts:
        for line in Path(transcripts).read_text().splitlines():
            if "\t" in line:
                k, v = line.split("\t", 1)
                texts[k.strip()] = v.strip()
    utts, skipped = [], 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in AUDIO:
            continue
        try:
            _, _, dur = audio_info(p)
        except AudioError as e:
            log.warning("skipping %s: %s", p, e)
            skipped += 1
            continue
        if not min_s <= dur <= max_s:
            log.warning("skipping %s: %.2f s is outside [%s, %s] s", p, dur, min_s, max_s)
            skipped += 1
            continue
        text = texts.get(p.stem)
        for ext in (".txt", ".lab"):
            if text is None and p.with_suffix(ext).is_file():
                text = p.with_suffix(ext).read_text().strip()
        speaker = p.parent.name if p.parent != root else None
        uid = f"{speaker}_{p.stem}" if speaker else p.stem
        utts.append(Utterance(uid, str(p.resolve()), text, speaker))
    if not utts:
        raise ValueError(f"no usable audio under {root}")
    if unlabelled := sum(u.speaker is None for u in utts):
        log.warning(
            "%d file(s) lie directly in %s and get no speaker label; the LM and the flow train only on "
            "utterances whose speaker has another one: put each speaker's files in ROOT/<speaker>/",
            unlabelled,
            root,
        )
    write_manifest(out, utts)
    log.info(
        "%d utterances -> %s (%d skipped, %d without text)",
        len(utts),
        out,
        skipped,
        sum(u.text is None for u in utts),
    )
    return utts
