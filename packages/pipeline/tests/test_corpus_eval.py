"""The offline corpus, the judges and the evaluation ladder."""

import json
import shlex
import shutil

import numpy as np
import pytest
import torch
from mmspeech_core import read_audio
from mmspeech_core.data import read_manifest
from mmspeech_pipeline.bundle import write_bundle
from mmspeech_pipeline.cli import RUNGS as CLI_RUNGS
from mmspeech_pipeline.cli import main
from mmspeech_pipeline.corpus import build_corpus, make_sentences
from mmspeech_pipeline.evaluate import RUNGS, Judges, evaluate, read_eval_list
from mmspeech_pipeline.tts import TTS
from mmspeech_pipeline.voices import VARIANTS, Espeak, EspeakVoice, VoiceError, make_voices


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, build_corpus(out, speakers=6, utterances=3, seed=0, progress=False)


def test_corpus_is_deterministic_and_holds_out_speakers_and_sentences(corpus, tmp_path):
    out, split = corpus
    train_spk = {u.speaker for u in split.train}
    test_spk = {u.speaker for u in split.test}
    assert train_spk and len(test_spk) >= 2 and not train_spk & test_spk
    assert not {u.text for u in split.train} & {u.text for u in split.test}  # held-out sentences stay out
    assert len(read_manifest(out / "manifest.jsonl")) == 18 and len(
        read_manifest(out / "train.jsonl")
    ) == len(split.train)
    items = read_eval_list(out / "test.lst")
    assert len(items) == len(split.test) and all(i.target_wav and i.prompt_text for i in items)
    assert all(i.prompt_wav != i.target_wav for i in items)  # the prompt is another utterance
    speaker_of = {u.audio: u.speaker for u in split.test}
    assert all(speaker_of[i.prompt_wav] == speaker_of[i.target_wav] for i in items)
    # speakers take turns, so a --limit of one item per held-out speaker scores every held-out speaker
    assert {speaker_of[i.target_wav] for i in items[: len(test_spk)]} == test_spk
    again = build_corpus(tmp_path, speakers=6, utterances=3, seed=0, progress=False, workers=1)
    same = [(u.id, u.text, u.speaker) for u in split.train + split.test]
    assert [(u.id, u.text, u.speaker) for u in again.train + again.test] == same
    assert (tmp_path / "speakers.json").read_text() == (out / "speakers.json").read_text()
    # eSpeak's noise source cannot be seeded from outside: samples differ slightly, durations do not
    first = split.train[0]
    a, b = read_audio(first.audio), read_audio(tmp_path / "wavs" / first.speaker / f"{first.id}.wav")
    assert abs(len(a) - len(b)) < 24000 * 0.01


def test_voices_are_distinct_and_misspelled_ones_are_refused():
    voices = make_voices(50, seed=1)
    assert len({(v.language, v.variant) for v in voices}) == 50
    engine = Espeak.get()
    audio = engine.synthesize("Hello there.", voices[0])
    assert audio.dim() == 1 and len(audio) > engine.sample_rate // 4 and torch.isfinite(audio).all()
    with pytest.raises(VoiceError, match="variant 'f9'"):  # eSpeak itself would fall back silently
        engine.synthesize("Hello.", EspeakVoice("en-us", "f9", 50, 170))
    with pytest.raises(VoiceError, match="language 'en-xx'"):
        engine.synthesize("Hello.", EspeakVoice("en-xx", "f1", 50, 170))
    assert len(set(make_sentences(500, seed=2))) == 500


needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="needs CMU Flite (apt-get install flite); .ci/run installs it"
)


def test_espeak_voices_for_a_seed_are_the_ones_drawn_before_other_sources_existed():
    first = make_voices(4, seed=0)[:2]  # drawn by the code before flite was added
    assert first == [EspeakVoice("en-us-nyc", "m3", 57, 171), EspeakVoice("en-us-nyc", "caleb", 50, 190)]


def test_sources_take_turns_and_a_missing_one_is_an_error(monkeypatch):
    import mmspeech_pipeline.voices as voices
    from mmspeech_pipeline.cli import VOICE_SOURCES

    assert VOICE_SOURCES == voices.SOURCES  # the CLI's copy (kept torch-free) matches
    monkeypatch.setattr(voices.shutil, "which", lambda name: None)
    assert voices.available_sources() == ("espeak",) == voices.resolve_sources(["auto", "espeak"])
    with pytest.raises(voices.SourceError, match="apt-get install flite"):
        voices.resolve_sources(["espeak", "flite"])  # asked for by name: never quietly left out
    with pytest.raises(ValueError, match="unknown voice source 'festival'"):
        voices.resolve_sources(["festival"])
    monkeypatch.setattr(voices.shutil, "which", lambda name: f"/usr/bin/{name}")  # drawing runs no engine
    assert voices.resolve_sources(["auto"]) == ("espeak", "flite")
    mixed = make_voices(40, seed=3, sources=["flite", "espeak"])
    kinds = [v.source for v in mixed]
    assert kinds[:32] == ["flite", "espeak"] * 16 and kinds[32:] == ["espeak"] * 8  # flite has 16 voices
    assert len(set(mixed)) == 40
    assert len({(v.voice, v.pitch or v.stretch) for v in mixed if isinstance(v, voices.FliteVoice)}) == 16
    with pytest.raises(ValueError, match="at most 16 distinct speakers"):
        make_voices(17, sources=["flite"])
    for v in mixed[:2]:
        assert voices.voice_from_dict({**voices.voice_to_dict(v), "split": "train"}) == v
    old = {"language": "en", "variant": "m1", "pitch": 50, "rate": 170, "split": "test"}  # no source key
    assert voices.voice_from_dict(old) == EspeakVoice("en", "m1", 50, 170)


@needs_flite
def test_flite_voices_are_checked_and_speak_the_same_samples_each_time():
    from mmspeech_pipeline.voices import Flite, FliteVoice, speak

    voice = FliteVoice("slt", 180, 1.0)
    audio = speak("Hello there.", voice)
    assert audio.dim() == 1 and len(audio) > 24000 // 4 and torch.isfinite(audio).all()
    assert audio.abs().max() > 0.05
    assert torch.equal(audio, speak("Hello there.", voice))  # a corpus rebuilds bit for bit
    assert not torch.equal(audio, speak("Hello there.", FliteVoice("slt", 220, 1.0)))  # the pitch is used
    assert len(speak("Hello there.", FliteVoice("slt", 180, 1.3))) > 1.15 * len(audio)  # and the stretch
    engine = Flite.get()
    with pytest.raises(VoiceError, match="unknown Flite voice 'sltt'"):  # flite would speak with kal
        engine.synthesize("Hello.", FliteVoice("sltt", 180, 1.0))
    with pytest.raises(VoiceError, match="unknown Flite voice 'kal'"):  # installed, but 8 kHz: not offered
        engine.synthesize("Hello.", FliteVoice("kal", 100, 1.0))
    with pytest.raises(VoiceError, match="pitch must be 0"):
        engine.synthesize("Hello.", FliteVoice("awb", 900, 1.0))


@needs_flite
def test_a_corpus_mixes_espeak_and_flite_voices(tmp_path, capsys):
    args = ["--speakers", "4", "--utterances", "2", "--seed", "1", "--sources", "espeak", "flite"]
    assert main(["corpus", "synth", "--out", str(tmp_path / "a"), *args]) == 0
    info = json.loads((tmp_path / "a" / "speakers.json").read_text())
    assert [v["source"] for v in info.values()] == ["espeak", "flite"] * 2
    again = build_corpus(tmp_path / "b", 4, 2, seed=1, progress=False, sources=("espeak", "flite"))
    assert (tmp_path / "b" / "speakers.json").read_text() == (tmp_path / "a" / "speakers.json").read_text()
    flite_utts = [u for u in again.train + again.test if info[u.speaker]["source"] == "flite"]
    assert len(flite_utts) == 4
    for u in flite_utts:
        a, b = read_audio(tmp_path / "a" / "wavs" / u.speaker / f"{u.id}.wav", 24000), read_audio(u.audio)
        assert a.numel() > 24000 // 2 and torch.equal(a, b)


def test_judges_hear_espeak_and_tell_speakers_apart(corpus):
    pytest.importorskip("faster_whisper")
    out, split = corpus
    judges = Judges.load()
    assert judges.asr is not None and judges.speaker is not None and judges.quality is not None
    from mmspeech_pipeline.evaluate import error_rate
    from mmspeech_pipeline.judges import to_16k

    by_spk = {}
    for u in split.train:
        by_spk.setdefault(u.speaker, []).append(to_16k(read_audio(u.audio, 24000), 24000))
    (a1, a2, *_), (b1, *_) = list(by_spk.values())[:2]
    same, different = judges.speaker.similarity(a1, a2), judges.speaker.similarity(a1, b1)
    assert same > different
    audio = {u.id: to_16k(read_audio(u.audio, 24000), 24000) for u in split.train}
    wer = np.mean([error_rate(u.text, judges.asr.transcribe(audio[u.id])) for u in split.train])
    assert wer < 0.7  # measured 0.37 here: Whisper tiny.en is a rough judge of eSpeak, not a deaf one
    silence = np.zeros(32000, dtype=np.float32)
    assert judges.quality.dnsmos(audio[split.train[0].id]) > judges.quality.dnsmos(silence + 1e-4)


def test_ladder_scores_every_rung_on_a_bundle(corpus, tmp_path, make_parts):
    out, _ = corpus
    tts = TTS.from_pretrained(write_bundle(tmp_path / "b", **make_parts(tmp_path)), device="cpu")
    summary = evaluate(
        tts, out / "test.lst", tmp_path / "eval", Judges(None, None, None), limit=2, progress=False
    )
    assert list(summary["rungs"]) == list(RUNGS) and all(v["n"] == 2 for v in summary["rungs"].values())
    assert "rtf" in summary["rungs"]["zero_shot"] and "rtf" not in summary["rungs"]["ground_truth"]
    for rung in RUNGS:
        assert len(list((tmp_path / "eval" / rung).glob("*.wav"))) == 2
    assert "| zero_shot | 2 |" in (tmp_path / "eval" / "summary.md").read_text()
    assert tuple(CLI_RUNGS) == RUNGS  # the CLI's copy (kept torch-free) matches


def test_an_interrupted_evaluation_resumes_where_it_stopped(corpus, tmp_path, make_parts, monkeypatch):
    out, _ = corpus
    tts = TTS.from_pretrained(write_bundle(tmp_path / "b", **make_parts(tmp_path)), device="cpu")
    lst, judges, rungs = out / "test.lst", Judges(None, None, None), ["ground_truth", "zero_shot", "one_shot"]

    def rows(folder):  # but for the timings
        return [
            {k: v for k, v in json.loads(line).items() if k != "rtf"}
            for line in (folder / "rows.jsonl").read_text().splitlines()
        ]

    whole = evaluate(tts, lst, tmp_path / "whole", judges, rungs, limit=3, progress=False)
    assert len(rows(tmp_path / "whole")) == 9
    # a run stopped inside its third item: two items whole, the third's first row and half of its second
    evaluate(tts, lst, tmp_path / "cut", judges, rungs, limit=2, progress=False)
    third = (tmp_path / "whole" / "rows.jsonl").read_text().splitlines()[6:8]
    with (tmp_path / "cut" / "rows.jsonl").open("a") as f:
        f.write(third[0] + "\n" + third[1][:20])
    voices = []
    monkeypatch.setattr(tts, "make_voice", lambda *a: voices.append(a) or TTS.make_voice(tts, *a))
    resumed = evaluate(tts, lst, tmp_path / "cut", judges, rungs, limit=3, progress=False, resume=True)
    assert len(voices) == 2  # the third item's two voices: the first two were not synthesised again
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")
    assert resumed["rungs"].keys() == whole["rungs"].keys()
    assert all(resumed["rungs"][r]["n"] == 3 for r in rungs)
    voices.clear()  # resuming a finished run scores nothing; a smaller limit summarises its first items
    first = evaluate(tts, lst, tmp_path / "cut", judges, rungs, limit=1, progress=False, resume=True)
    assert first["rungs"]["zero_shot"]["n"] == 1
    assert not voices and len(rows(tmp_path / "cut")) == 9
    with pytest.raises(ValueError, match="other settings"):
        evaluate(tts, lst, tmp_path / "cut", judges, ["zero_shot"], limit=3, progress=False, resume=True)
    evaluate(tts, lst, tmp_path / "cut", judges, ["zero_shot"], limit=1, progress=False)  # starts again
    assert [r["rung"] for r in rows(tmp_path / "cut")] == ["zero_shot"]
    (tmp_path / "cut" / "run.json").unlink()  # rows it cannot check are not thrown away
    with pytest.raises(ValueError, match="no run.json"):
        evaluate(tts, lst, tmp_path / "cut", judges, ["zero_shot"], limit=1, progress=False, resume=True)
    assert len(rows(tmp_path / "cut")) == 1


def test_evaluate_cli_with_the_judges(corpus, tmp_path, make_parts):
    pytest.importorskip("faster_whisper")
    out, _ = corpus
    bundle = write_bundle(tmp_path / "b", **make_parts(tmp_path))
    command = f"evaluate --bundle {bundle} --list {out / 'test.lst'} --out {tmp_path / 'ev'} --rungs ground_truth vae --limit 1"
    assert main(shlex.split(command)) == 0
    rows = (tmp_path / "ev" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all('"wer"' in r and '"sim"' in r and '"dnsmos"' in r for r in rows)
    assert '"sim_other"' in rows[0]  # the recording against another held-out speaker's prompt
    assert '"pesq"' in rows[1] and '"stoi"' in rows[1]  # the VAE rung is compared with the recording


def test_every_variant_speaks_the_same_samples_in_every_fresh_process():
    """A corpus is rebuilt bit for bit only if each voice variant is: eSpeak NG's breath noise (variants f2,
    f3, f5) and victor's voicing draw from a source that differs from process to process, so they are not
    offered. Two fresh processes speak one sentence in every variant; the samples must agree."""
    import subprocess
    import sys

    code = (
        "import hashlib\n"
        "from mmspeech_pipeline.voices import VARIANTS, Espeak, EspeakVoice\n"
        "e = Espeak.get()\n"
        "for v in VARIANTS:\n"
        "    a = e.synthesize('The green camera was repaired.', EspeakVoice('en-us', v, 50, 170)).numpy()\n"
        "    print(v, hashlib.sha1(a.tobytes()).hexdigest())\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
        for _ in range(2)
    ]
    first, second = (dict(line.split() for line in r.stdout.splitlines()) for r in runs)
    assert len(first) == len(VARIANTS)
    assert [v for v in first if first[v] != second[v]] == []


def test_worker_processes_build_the_same_corpus(corpus, tmp_path):
    """Synthesis in forked workers (a fresh process: one that has started eSpeak NG cannot fork them) says
    the same sentences in the same voices as the one-process build, and the audio is bit-identical with 1
    or 2 workers (eSpeak NG's state carries over between utterances: each speaker has a fresh process)."""
    import subprocess
    import sys

    code = (
        "from mmspeech_pipeline.corpus import build_corpus\n"
        "for w in (1, 2):\n"
        f"    build_corpus({str(tmp_path)!r} + f'/w{{w}}', speakers=6, utterances=3, seed=0, progress=False, workers=w)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    out, _ = corpus
    rows = [(u.id, u.text, u.speaker) for u in read_manifest(tmp_path / "w2" / "manifest.jsonl")]
    assert rows == [(u.id, u.text, u.speaker) for u in read_manifest(out / "manifest.jsonl")]
    for i, _, s in rows:
        one, two = (read_audio(tmp_path / w / "wavs" / s / f"{i}.wav") for w in ("w1", "w2"))
        assert two.numel() > 2400 and torch.equal(one, two)
