"""Long-text handling: split at sentence ends, then at clause marks / spaces if a sentence is still too long.

Every piece is a slice of the input: the splitter never rewrites characters (normalisation is the text
tokenizer's job, done once when a piece is encoded).
"""

from __future__ import annotations

import re

from mmspeech_llm.text import TextError

# Latin sentence ends count only before whitespace or the end ("2.0.1", "10.30", "example.com" stay whole);
# closing quotes / brackets after the mark belong to the sentence. CJK marks end a sentence as they stand.
_LATIN_END = re.compile(r"""[.!?;…]+["'”’)\]»]*(?=\s|$)""")
_CJK_END = re.compile(r"[。！？；…]+[”’」』）]*")
_LATIN_CLAUSE = re.compile(r"[,:]+(?=\s)")
_CJK_CLAUSE = re.compile(r"[，、：]")
_LAST_WORD = re.compile(r"(\S+)$")
# a period after these is not a sentence end (lower case, without their final period)
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "cf",
        "fig",
        "no",
        "vol",
        "approx",
        "dept",
        "est",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    ]
)


def _is_abbreviation(text: str, mark_start: int, mark: str) -> bool:
    if mark != ".":
        return False
    word = _LAST_WORD.search(text, 0, mark_start)
    if word is None:
        return False
    w = word.group(1).lstrip("\"'(“‘[«")
    return w.lower() in ABBREVIATIONS or (len(w) == 1 and w.isalpha() and w.isupper())  # initials: "J. Smith"


def _sentence_ends(text: str) -> list[int]:
    ends = [m.end() for m in _CJK_END.finditer(text)]
    ends += [m.end() for m in _LATIN_END.finditer(text) if not _is_abbreviation(text, m.start(), m.group())]
    return sorted(set(ends))


def _strip(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _break_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut an over-long span at its last clause mark, else its last space, before ``max_chars``."""
    out = []
    while end - start > max_chars:
        window = text[start : start + max_chars]
        cut = max((m.end() for p in (_LATIN_CLAUSE, _CJK_CLAUSE) for m in p.finditer(window)), default=0)
        cut = cut or window.rfind(" ") or max_chars
        cut = cut if cut > 0 else max_chars
        if (piece := _strip(text, start, start + cut)) is not None:
            out.append(piece)
        start += cut
        if (rest := _strip(text, start, end)) is None:
            return out
        start, end = rest
    out.append((start, end))
    return out


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Sentences of ``text`` (slices of it, at most ``max_chars`` each); a 1-2 character piece joins its
    neighbour. Raises :class:`TextError` when there is nothing to speak."""
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    spans: list[tuple[int, int]] = []
    start = 0
    for end in [*_sentence_ends(text), len(text)]:
        if (span := _strip(text, start, end)) is not None:
            spans += _break_long(text, *span, max_chars)
        start = end
    merged: list[tuple[int, int]] = []
    for s, e in spans:  # a 1-2 character "sentence" is better spoken with its neighbour
        if merged and (e - s < 3 or merged[-1][1] - merged[-1][0] < 3) and e - merged[-1][0] <= max_chars:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    if not merged:
        raise TextError("text has nothing to speak")
    return [text[s:e] for s, e in merged]
