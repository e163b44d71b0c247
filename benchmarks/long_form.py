"""Long-form consistency: a ten-sentence paragraph, sentences independent versus each continuing the last.

    uv run --no-sync python benchmarks/long_form.py --bundle quickstart/bundle --reference quickstart/corpus/<a test wav>

Per sentence: speaker similarity (the eval extra's d-vector judge) to the reference and to the first
sentence, and speaking rate (speech seconds per text token). Prints the mean and spread of each, per mode.
Only meaningful with a trained bundle: with random weights both modes make noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import table  # noqa: E402

PARAGRAPH = (
    "The morning train was late again. Nobody on the platform seemed surprised. A man in a grey coat read "
    "his paper. Two children counted the pigeons near the stairs. The announcer apologised for the delay. "
    "Somewhere a dog barked twice. The sun came out from behind the clouds. A woman checked her watch and "
    "sighed. At last the train appeared around the bend. Everyone stepped forward at once."
)


def main() -> None:
    from mmspeech_pipeline.judges import SpeakerJudge, to_16k
    from mmspeech_pipeline.reference import load_reference
    from mmspeech_pipeline.text import split_sentences
    from mmspeech_pipeline.tts import TTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--reference", required=True, help="reference recording (zero-shot)")
    p.add_argument("--reference-text", default=None, help="its transcript (one-shot first sentence)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    a = p.parse_args()
    tts = TTS.from_pretrained(a.bundle, device=a.device)
    judge = SpeakerJudge()
    voice = tts.make_voice(a.reference, a.reference_text)
    ref = judge.embed(to_16k(load_reference(a.reference, None)))
    sentences = split_sentences(PARAGRAPH)
    rows = []
    for mode in ("independent", "continue"):
        jobs = tts.plan([PARAGRAPH], [voice], a.seed)
        wavs = (
            tts._continued(jobs, None, None, False) if mode == "continue" else tts.synthesize_sentences(jobs)
        )
        # the judge needs some audio: a sentence the LM cut to almost nothing scores as silence (padded)
        short = sum(len(w) < tts.sample_rate // 2 for w in wavs)
        embs = [
            judge.embed(
                to_16k(
                    torch.nn.functional.pad(w, (0, max(0, tts.sample_rate // 2 - len(w)))), tts.sample_rate
                )
            )
            for w in wavs
        ]
        to_ref = [float(e @ ref) for e in embs]
        to_first = [float(e @ embs[0]) for e in embs[1:]]
        rate = [len(w) / tts.sample_rate / len(j.ids) for w, j in zip(wavs, jobs)]
        rows.append(
            [
                mode,
                statistics.mean(to_ref),
                statistics.pstdev(to_ref),
                statistics.mean(to_first),
                statistics.pstdev(to_first),
                statistics.mean(rate) * 1000,
                statistics.pstdev(rate) / statistics.mean(rate),
                short,
            ]
        )
    table(
        f"{len(sentences)} sentences, {a.bundle}",
        ["mode", "SIM ref", "± sd", "SIM first", "± sd", "ms per text token", "rate CV", "< 0.5 s"],
        rows,
    )


if __name__ == "__main__":
    main()
