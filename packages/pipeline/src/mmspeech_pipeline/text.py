"""Long-text handling: split at sentence boundaries, then at commas / spaces if a sentence is still too long."""

from __future__ import annotations

import re

from mmspeech_llm.text import TextError, normalize_text

_SENT = re.compile(r"(?<=[.!?;。！？；…])\s*")
_CLAUSE = re.compile(r"(?<=[,:，、：])\s*")


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Normalise, split into sentences, merge tiny ones, break over-long ones; never returns an empty list."""
    text = normalize_text(text)
    pieces: list[str] = []
    for sent in (s.strip() for s in _SENT.split(text)):
        if not sent:
            continue
        while len(sent) > max_chars:  # break at the last clause/space boundary before max_chars
            cut = max((m.end() for m in _CLAUSE.finditer(sent[:max_chars])), default=0) or sent.rfind(
                " ", 0, max_chars
            )
            cut = cut if cut > 0 else max_chars
            pieces.append(sent[:cut].strip())
            sent = sent[cut:].strip()
        if sent:
            pieces.append(sent)
    merged: list[str] = []
    for p in pieces:  # a 1-2 character "sentence" is better spoken with its neighbour
        if merged and (len(p) < 3 or len(merged[-1]) < 3) and len(merged[-1]) + len(p) < max_chars:
            merged[-1] = f"{merged[-1]} {p}"
        else:
            merged.append(p)
    if not merged:
        raise TextError("text has nothing to speak")
    return merged
