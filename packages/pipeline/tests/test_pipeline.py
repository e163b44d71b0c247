import dataclasses
import json
import math
import shlex
import shutil
import subprocess
import sys
import typing

import numpy as np
import pytest
import soundfile as sf
import torch
from mmspeech_core import CheckpointError, Waveform, read_audio, save_audio
from mmspeech_flow.model import FlowStream
from mmspeech_llm.decode import DecodeMode
from mmspeech_llm.text import TextError
from mmspeech_pipeline.bundle import write_bundle
from mmspeech_pipeline.cli import LM_DECODE, main
from mmspeech_pipeline.reference import ReferenceAudioError
from mmspeech_pipeline.text import split_sentences
from mmspeech_pipeline.tts import TTS, Voice, VoicePrompt
from mmspeech_tokenizer.infer import sample_wavs

TEXTS = ["hello there, this is a test.", "good morning to you all!", "how are you today?"]
REF = sample_wavs()[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_parts):
    tmp = tmp_path_factory.mktemp("parts")
    return write_bundle(tmp / "bundle", **make_parts(tmp))


@pytest.fixture(scope="module")
def tts(bundle):
    return TTS.from_pretrained(bundle, device="cpu")


def test_split_sentences():
    assert split_sentences("Hello there.  How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]
    assert split_sentences("你好。今天天气很好！") == ["你好。", "今天天气很好！"]  # CJK: no space needed
    long = "word, " * 100
    parts = split_sentences(long, max_chars=50)
    assert all(len(p) <= 50 for p in parts) and " ".join(parts).replace("  ", " ").count("word") == 100
    assert split_sentences("A! B! Hello world.") == ["A! B!", "Hello world."]  # tiny pieces join a neighbour
    with pytest.raises(TextError):
        split_sentences(" \n ")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Version 2.0.1 is out.", ["Version 2.0.1 is out."]),
        ("We meet at 10.30 a.m. on Monday.", ["We meet at 10.30 a.m. on Monday."]),
        ("Visit example.com today. It is new.", ["Visit example.com today.", "It is new."]),
        (
            "Mr. Smith met Dr. Jones, e.g. at home. Then they left.",
            ["Mr. Smith met Dr. Jones, e.g. at home.", "Then they left."],
        ),
        ('He said "Stop." Then he ran.', ['He said "Stop."', "Then he ran."]),
        (
            "Ｆｕｌｌ width stays.  Tabs\tand\nlines stay too.",
            ["Ｆｕｌｌ width stays.", "Tabs\tand\nlines stay too."],
        ),
    ],
)
def test_split_sentences_only_at_real_sentence_ends_and_never_rewrites(text, expected):
    """Review item 5."""
    parts = split_sentences(text)
    assert parts == expected
    assert all(p in text for p in parts)


def test_every_stage_satisfies_its_core_interface(tts):
    from mmspeech_core.stages import (
        LatentCodecStage,
        SpeechTokenizerStage,
        TextToTokensStage,
        TokensToLatentsStage,
    )
    from mmspeech_tokenizer.config import tiny_fsq_config
    from mmspeech_tokenizer.model import FSQTokenizer

    assert isinstance(tts.tokenizer, SpeechTokenizerStage)
    assert isinstance(FSQTokenizer(tiny_fsq_config(["", "a"])), SpeechTokenizerStage)
    assert isinstance(tts.vae, LatentCodecStage)
    assert isinstance(tts.llm, TextToTokensStage)
    assert isinstance(tts.flow, TokensToLatentsStage)


def test_zero_shot_deterministic_and_exact_length(tts):
    voice = tts.make_voice(REF)
    a = tts.synthesize("hello there. good morning.", voice=voice, seed=3)
    b = tts.synthesize("hello there. good morning.", voice=voice, seed=3)
    c = tts.synthesize("hello there. good morning.", voice=voice, seed=4)
    assert a.sample_rate == 24000 and a.batch_size == 1
    assert torch.equal(a.audio, b.audio) and not torch.equal(a.audio, c.audio)
    # two sentences: each a whole number of latent frames, joined by one 0.15 s pause
    assert (int(a.lengths[0]) - int(0.15 * 24000)) % tts.vae.hop == 0


def test_batch_equals_single(tts):
    voice = tts.make_voice(REF)
    batch = tts.synthesize_batch(["hello there.", "good morning to you all!"], [voice, voice], seed=5)
    for i, t in enumerate(["hello there.", "good morning to you all!"]):
        one = tts.synthesize_batch([t], [voice], seed=5 + 1000 * i)
        assert torch.allclose(one.unbatch()[0], batch.unbatch()[i], atol=1e-5)
    # explicit per-text seeds: the same texts in another order give the same audio per text
    swapped = tts.synthesize_batch(
        ["good morning to you all!", "hello there."], [voice, voice], seed=[1005, 5]
    )
    assert torch.allclose(swapped.unbatch()[1], batch.unbatch()[0], atol=1e-5)
    assert torch.allclose(swapped.unbatch()[0], batch.unbatch()[1], atol=1e-5)
    with pytest.raises(ValueError, match="seeds"):
        tts.synthesize_batch(["a b c"], [voice], seed=[1, 2])


def test_one_shot_prompt_is_not_in_output(tts):
    voice = tts.make_voice(REF, reference_text="hello there")
    assert voice.one_shot and voice.prompt is not None
    tokens = tts._tokens([torch.tensor(tts.text_tokenizer.encode("good morning."))], [voice], None, [0])
    lat = tts._latents(tokens, [voice], None, [0])
    assert lat.lengths.tolist() == [int(tokens.lengths[0]) * 2]  # prompt frames are cut
    wav = tts.synthesize("good morning.", voice=voice, seed=0)
    assert int(wav.lengths[0]) == int(tokens.lengths[0]) * 2 * tts.vae.hop
    with pytest.raises(ValueError, match="mix of one-shot"):
        tts.synthesize_batch(["a b c", "a b c"], [voice, tts.make_voice(REF)])


def test_voice_preset_round_trip(tts, tmp_path):
    voice = tts.make_voice(REF, reference_text="hello there")
    voice.save(tmp_path / "v.safetensors")
    loaded = Voice.load(tmp_path / "v.safetensors")
    assert torch.equal(
        tts.synthesize("good morning.", voice=loaded).audio,
        tts.synthesize("good morning.", voice=voice).audio,
    )
    save_audio(tmp_path / "x.wav", torch.zeros(10), 16000)
    with pytest.raises(CheckpointError):
        Voice.load(tmp_path / "x.wav")


def test_streaming_matches_offline_length_and_arrives_early(tts):
    voice = tts.make_voice(REF)
    text = "hello there, this is a test."
    chunks = list(tts.stream(text, voice, seed=2, chunk_tokens=4))
    offline = tts.synthesize(text, voice=voice, seed=2)
    assert sum(len(c.audio) for c in chunks) == int(offline.lengths[0])
    assert len(chunks) >= 2 and chunks[-1].final and not chunks[0].final
    assert chunks[0].elapsed_s < chunks[-1].elapsed_s
    assert [c.index for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("one_shot, frames", [(False, 100), (True, 100), (True, 101)])
def test_streamed_audio_equals_the_offline_decode_of_the_same_latents(tts, one_shot, frames):
    """Review items 1 and 8: every chunk is decoded with right context (no edge artefacts), and one-shot
    chunk boundaries agree with the flow for odd and even reference lengths."""
    ref = Waveform.from_list([read_audio(REF, 24000)[: frames * tts.vae.hop]], 24000)
    voice = tts.make_voice(ref, "a reference transcript" if one_shot else None)
    if one_shot:
        assert voice.prompt.latents.shape[-1] == len(voice.prompt.tokens) * tts.flow.config.model.ratio
    text = "hello there, this is a test."
    chunks = list(tts.stream(text, voice, seed=2, chunk_tokens=4))
    assert len(chunks) >= 3
    streamed = torch.cat([c.audio for c in chunks])
    tokens = tts._tokens([torch.tensor(tts.text_tokenizer.encode(text))], [voice], None, [2])
    latents = tts._latents(tokens, [voice], None, [2], chunked=True)
    offline = tts.vae.decode(latents).unbatch()[0]
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


@pytest.mark.parametrize("one_shot", [False, True])
def test_batched_streams_equal_single_streams(tts, one_shot, monkeypatch):
    """Issue 15: sentences streamed together (one LM batch, one VAE call per step) give each sentence the
    pieces it gets streamed alone, and each sentence ends when its own LM row ends."""
    refs = [read_audio(REF, 24000)[: n * tts.vae.hop] for n in (100, 101, 90)]
    voices = [
        tts.make_voice(Waveform.from_list([r], 24000), "a reference" if one_shot else None) for r in refs
    ]
    texts = ["hello there, this is a test.", "good morning!", "how are you today, my friend?"]
    jobs = [tts.plan([t], [v], seed=3 + i)[0] for i, (t, v) in enumerate(zip(texts, voices))]
    together: dict[int, list[torch.Tensor]] = {i: [] for i in range(3)}
    order, ended = [], set()
    rows = []  # rows of each flow call: sentences whose chunks line up advance as one batch
    advance = FlowStream.advance
    monkeypatch.setattr(
        FlowStream, "advance", lambda self, *a, **k: rows.append(len(self)) or advance(self, *a, **k)
    )
    for piece in tts.stream_sentences(jobs, chunk_tokens=4):
        assert piece.job not in ended  # nothing after a sentence's last piece
        ended |= {piece.job} if piece.last else set()
        together[piece.job].append(piece.audio)
        order.append((piece.job, piece.last))
    assert sorted(i for i, last in order if last) == [0, 1, 2]  # each sentence ends exactly once
    assert len(order) > 6 and len({i for i, _ in order[:3]}) > 1  # pieces of several sentences interleave
    # zero-shot: all three together; one-shot: the two 50-token prompts together, the 45-token one apart
    assert max(rows) == (2 if one_shot else 3) and rows.count(1) >= 3
    monkeypatch.undo()
    for i, job in enumerate(jobs):
        alone = list(tts.stream_sentence(job, chunk_tokens=4))
        assert [len(a) for a in together[i]] == [len(a) for a in alone]
        torch.testing.assert_close(torch.cat(together[i]), torch.cat(alone), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mix of one-shot"):
        other = tts.make_voice(REF, None if one_shot else "a reference")
        list(tts.stream_sentences([jobs[0], tts.plan(["hi there."], [other])[0]]))


def test_long_text_runs_in_bounded_batches_with_the_same_audio(tts, monkeypatch):
    """Issue 11 item 5: memory bounded by the batch, not the text; the batching never changes the audio."""
    voice = tts.make_voice(REF)
    text = " ".join(["hello there.", "good morning to you.", "how are you today?"] * 2)
    whole = tts.synthesize_batch([text], [voice], seed=1)
    sizes = []
    run = tts.synthesize_sentences
    monkeypatch.setattr(
        tts, "synthesize_sentences", lambda jobs, *a: sizes.append(len(jobs)) or run(jobs, *a)
    )
    pieces = tts.synthesize_batch([text], [voice], seed=1, max_batch_sentences=4)
    assert sizes == [4, 2]
    assert torch.equal(pieces.audio, whole.audio)
    with pytest.raises(TextError, match="limit is 20"):
        tts.synthesize_batch([text], [voice], max_chars=20)


def test_bad_inputs(tts, tmp_path):
    voice = tts.make_voice(REF)
    with pytest.raises(TextError, match="nothing to speak"):
        tts.synthesize("   ", voice=voice)
    with pytest.raises(TextError, match="unsupported"):
        tts.synthesize("hi\x00there", voice=voice)
    x = read_audio(REF, 24000)
    cases = {
        "silent.wav": (np.zeros(48000, dtype=np.float32), 24000, "silent"),
        "short.wav": (x[:6000].numpy(), 24000, "at least"),
        "long.wav": (np.tile(x.numpy(), 9), 24000, "trim"),
        "stereo.wav": (np.stack([x.numpy(), x.numpy()], 1), 24000, "channels"),
        "lowrate.wav": (x[::3].numpy(), 8000, "8000 Hz"),
    }
    for name, (data, sr, msg) in cases.items():
        sf.write(tmp_path / name, data, sr)
        with pytest.raises(ReferenceAudioError, match=msg):
            tts.make_voice(tmp_path / name)
    with pytest.raises(ReferenceAudioError, match="not found|cannot read"):
        tts.make_voice(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="reference recording or a voice"):
        tts.synthesize("hello")


def test_non_finite_references_voices_and_outputs_are_refused(tts, tmp_path, monkeypatch):
    """Issue 11 items 3 and 10: NaN/Inf never becomes a voice, a preset, or audio handed back."""
    x = read_audio(REF, 24000)[:48000].clone()
    x[100] = float("nan")
    with pytest.raises(ReferenceAudioError, match="NaN"):
        tts.make_voice(Waveform.from_list([x], 24000))
    sf.write(tmp_path / "nan.wav", x.numpy(), 24000, subtype="FLOAT")
    with pytest.raises(ReferenceAudioError, match="NaN"):
        tts.make_voice(tmp_path / "nan.wav")
    with pytest.raises(ReferenceAudioError, match="constant"):
        tts.make_voice(Waveform.from_list([torch.full((48000,), 0.3)], 24000))
    voice = tts.make_voice(REF, "a transcript")
    voice.save(tmp_path / "ok.safetensors")
    assert tts.load_voice(tmp_path / "ok.safetensors").one_shot
    from mmspeech_core.checkpoint import save_state_dict

    bad = {"llm_speaker": voice.llm_speaker * float("nan"), "flow_speaker": voice.flow_speaker}
    save_state_dict(bad, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="finite"):
        tts.load_voice(tmp_path / "nan.safetensors")
    wide = {"llm_speaker": torch.zeros(7), "flow_speaker": voice.flow_speaker}
    save_state_dict(wide, tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError, match="does not fit"):
        tts.load_voice(tmp_path / "wide.safetensors")
    nan_latents = tts._latents  # a model that diverged: its NaN audio must not be returned as speech

    def diverged(*a, **k):
        lat = nan_latents(*a, **k)
        return dataclasses.replace(lat, data=lat.data * float("nan"))

    monkeypatch.setattr(tts, "_latents", diverged)
    with pytest.raises(RuntimeError, match="non-finite"):
        tts.synthesize("hello there.", voice=tts.make_voice(REF), seed=0)


def test_bundle_errors(tmp_path, make_parts):
    parts = make_parts(tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        write_bundle(tmp_path / "b", **{k: v for k, v in parts.items() if k != "vae"})
    b = write_bundle(tmp_path / "b", **parts)
    (b / "pipeline.json").write_text(json.dumps({"format_version": 7}))
    with pytest.raises(CheckpointError, match="format version 7"):
        TTS.from_pretrained(b, device="cpu")
    # a flow for 16-channel latents does not fit an 8-channel VAE
    other = tmp_path / "other"
    other.mkdir()
    bad = make_parts(other, flow_latent=16)
    b2 = write_bundle(tmp_path / "b2", **{**parts, "flow": bad["flow"]})
    with pytest.raises(CheckpointError, match="do not fit"):
        TTS.from_pretrained(b2, device="cpu")


def test_bundle_never_deletes_what_it_was_not_asked_to_replace(tmp_path, make_parts):
    """Issue 11 items 1 and 6."""
    runs = tmp_path / "runs"
    runs.mkdir()
    parts = make_parts(runs)  # runs/tok, runs/llm, ... as in the README's layout
    (runs / "llm" / ".model.safetensors.x1.tmp").write_bytes(b"crash leftover")
    (runs / "llm" / "rng-r0.pt").write_bytes(b"state")
    with pytest.raises(CheckpointError, match="overlaps"):
        write_bundle(runs, **parts)
    with pytest.raises(CheckpointError, match="overlaps"):
        write_bundle(runs / "llm" / "bundle", **parts)
    assert sorted(p.name for p in runs.iterdir()) == sorted(["tok", "text", "llm", "flow", "vae"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a bundle"):
        write_bundle(tmp_path / "notes", **parts)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    b = write_bundle(tmp_path / "b", **parts)
    assert not (b / "llm" / ".model.safetensors.x1.tmp").exists() and not (b / "llm" / "rng-r0.pt").exists()
    with pytest.raises(CheckpointError, match="--overwrite"):
        write_bundle(b, **parts)

    def refuse(folder):
        raise CheckpointError("parts do not fit")

    with pytest.raises(CheckpointError, match="do not fit"):  # a failed check leaves the old bundle whole
        write_bundle(b, overwrite=True, check=refuse, **parts)
    assert (b / "pipeline.json").is_file() and not list(tmp_path.glob(".b.*"))
    write_bundle(b, overwrite=True, **parts)
    assert (b / "llm" / "model.safetensors").is_file()


def test_parts_from_another_training_run_are_refused(tmp_path, make_parts):
    """Issue 11 item 4: the LM and the flow record fingerprints of the parts they were trained against."""
    from mmspeech_flow.model import FlowModel
    from mmspeech_llm.model import SpeechLM
    from mmspeech_llm.text import TextTokenizer
    from mmspeech_vae.model import DACVAE

    parts = make_parts(tmp_path)
    text_tok = TextTokenizer.from_pretrained(parts["text_tokenizer"])
    other_tok = TextTokenizer.train_bpe(["another corpus entirely"] * 3, vocab_size=280, min_frequency=1)
    llm = SpeechLM.from_pretrained(parts["llm"])
    llm.trained_with = {"text_tokenizer": other_tok.fingerprint()}
    llm.save_pretrained(tmp_path / "llm_other")
    assert SpeechLM.from_pretrained(tmp_path / "llm_other").trained_with == llm.trained_with
    mixed = {**parts, "llm": tmp_path / "llm_other"}
    check = lambda folder: TTS.from_pretrained(folder, device="cpu")  # noqa: E731 (as `mmspeech bundle`)
    with pytest.raises(CheckpointError, match="trained with text_tokenizer"):
        write_bundle(tmp_path / "b", check=check, **mixed)
    assert not (tmp_path / "b").exists()
    write_bundle(tmp_path / "b", allow_part_mismatch=True, **mixed)  # explicit override, recorded
    TTS.from_pretrained(tmp_path / "b", device="cpu")
    # matching provenance loads; a re-saved copy of the same tokenizer keeps its fingerprint
    llm.trained_with = {"text_tokenizer": text_tok.fingerprint()}
    llm.save_pretrained(tmp_path / "llm_ok")
    flow = FlowModel.from_pretrained(parts["flow"])
    flow.trained_with = {"vae": DACVAE.from_pretrained(parts["vae"]).fingerprint()}
    flow.save_pretrained(tmp_path / "flow_ok")
    text_tok.save(tmp_path / "text_copy")
    ok = {
        **parts,
        "llm": tmp_path / "llm_ok",
        "flow": tmp_path / "flow_ok",
        "text_tokenizer": tmp_path / "text_copy",
    }
    TTS.from_pretrained(write_bundle(tmp_path / "b_ok", **ok), device="cpu")


def test_corrupt_bundle_files_raise_checkpoint_errors(tmp_path, make_parts):
    """Issue 11 item 10."""
    b = write_bundle(tmp_path / "b", **make_parts(tmp_path))
    for text, msg in [("{not json", "corrupted"), ("[1, 2]", "JSON object")]:
        (b / "pipeline.json").write_text(text)
        with pytest.raises(CheckpointError, match=msg):
            TTS.from_pretrained(b, device="cpu")
    (b / "pipeline.json").write_text(json.dumps({"format_version": 1}))
    (b / "text_tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        TTS.from_pretrained(b, device="cpu")


def mmspeech(command: str) -> int:
    return main(shlex.split(command))


def test_cli_synthesize_voice_prepare_evaluate(bundle, tmp_path):
    out, voice = tmp_path / "o.wav", tmp_path / "v.safetensors"
    assert (
        mmspeech(
            f"synthesize --bundle {bundle} --reference {REF} --text 'hello there.' --out {out} --device cpu"
        )
        == 0
    )
    assert sf.info(out).samplerate == 24000
    assert mmspeech(f"voice --bundle {bundle} --reference {REF} --out {voice} --device cpu") == 0
    out2 = tmp_path / "o2.wav"
    assert (
        mmspeech(
            f"synthesize --bundle {bundle} --voice {voice} --text 'hello there.' --out {out2} --device cpu"
        )
        == 0
    )
    assert np.array_equal(sf.read(out)[0], sf.read(out2)[0])
    assert (
        mmspeech(
            f"synthesize --bundle {bundle} --voice {voice} --text 'hi there.' --out {tmp_path / 'o.flac'}"
        )
        == 0
    )
    assert sf.info(tmp_path / "o.flac").format == "FLAC"  # the suffix names the format
    # --temperature overrides the bundle's sampling: 0 decodes greedily, as the API does when asked
    greedy = tmp_path / "greedy.wav"
    command = (
        f"synthesize --bundle {bundle} --voice {voice} --text 'hello there.' --temperature 0 --out {greedy}"
    )
    assert mmspeech(command) == 0
    tts = TTS.from_pretrained(bundle, device="cpu")
    assert not np.array_equal(sf.read(out)[0], sf.read(greedy)[0])  # else it could be ignored unseen
    greedy_sampling = dataclasses.replace(tts.llm.config.sampling, temperature=0.0)
    want = tts.synthesize_batch(["hello there."], [tts.load_voice(voice)], seed=0, sampling=greedy_sampling)
    assert np.allclose(sf.read(greedy)[0], want.unbatch()[0].numpy(), atol=1e-4)
    with pytest.raises(SystemExit):
        mmspeech(f"synthesize --bundle {bundle} --voice {voice} --text hi --temperature -1 --out {greedy}")
    # --lm-decode reaches the LM: a static cache decodes the same tokens on the CPU; CUDA graphs need a GPU
    static = tmp_path / "static.wav"
    command = f"synthesize --bundle {bundle} --voice {voice} --text 'hello there.' --lm-decode static --out {static}"
    assert mmspeech(command) == 0
    assert np.array_equal(sf.read(out2)[0], sf.read(static)[0])
    assert mmspeech(command.replace("static", "cuda_graph") + " --device cpu") != 0
    with pytest.raises(SystemExit):
        mmspeech(command.replace("static", "fast"))
    assert typing.get_args(DecodeMode) == LM_DECODE  # the CLI's choices, spelled out for a fast --help
    # prepare: speaker from folder names, text from .txt, bad and too-short files logged and skipped
    corpus = tmp_path / "corpus"
    for spk in ("alice", "bob"):
        (corpus / spk).mkdir(parents=True)
        save_audio(corpus / spk / "u1.wav", read_audio(REF, 16000), 16000)
        (corpus / spk / "u1.txt").write_text("hello there")
    save_audio(corpus / "bob" / "tiny.wav", torch.zeros(100), 16000)
    (corpus / "bob" / "broken.wav").write_bytes(b"xx")
    assert main(["prepare", "--root", str(corpus), "--out", str(tmp_path / "m.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["id"], r["speaker"], r["text"]) for r in rows] == [
        ("alice_u1", "alice", "hello there"),
        ("bob_u1", "bob", "hello there"),
    ]
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"id": "t1", "text": "good morning.", "audio": str(REF)}) + "\n"
    )
    assert (
        mmspeech(
            f"evaluate --bundle {bundle} --list {tmp_path / 'test.jsonl'} --out {tmp_path / 'ev'} --rungs zero_shot"
        )
        == 0
    )
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    zero_shot = summary["rungs"]["zero_shot"]
    assert zero_shot["n"] == 1 and zero_shot["rtf"] > 0


def test_cli_user_errors_are_one_line_and_exit_2(bundle, tmp_path, capsys):
    """Issue 11 item 11."""
    sf.write(tmp_path / "silent.wav", np.zeros(48000, dtype=np.float32), 24000)
    (tmp_path / "taken.wav").write_bytes(b"mine")
    voice = tmp_path / "v.safetensors"
    mmspeech(f"voice --bundle {bundle} --reference {REF} --out {voice}")
    capsys.readouterr()
    cases = {
        f"synthesize --bundle {bundle} --reference {tmp_path / 'silent.wav'} --text hi --out {tmp_path / 'a.wav'}": "silent",
        f"synthesize --bundle {bundle} --voice {voice} --reference-text hi --text hi --out {tmp_path / 'a.wav'}": "--reference-text goes with --reference",
        f"synthesize --bundle {bundle} --voice {voice} --text hi --out {tmp_path / 'a.xyz'}": "cannot write .xyz",
        f"synthesize --bundle {bundle} --voice {voice} --text hi --out {tmp_path / 'taken.wav'}": "--overwrite",
        f"synthesize --bundle {tmp_path / 'nope'} --voice {voice} --text hi --out {tmp_path / 'a.wav'}": "bundle folder not found",
        f"serve --bundle {bundle} --voices {tmp_path / 'none'}": "--voices folder not found",
    }
    for command, message in cases.items():
        assert mmspeech(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (tmp_path / "taken.wav").read_bytes() == b"mine"
    with pytest.raises(SystemExit) as e:  # argparse: --reference and --voice together
        mmspeech(
            f"synthesize --bundle {bundle} --voice {voice} --reference {REF} --text hi --out {tmp_path / 'b.wav'}"
        )
    assert e.value.code == 2
    with pytest.raises(ReferenceAudioError):  # --debug keeps the traceback
        mmspeech(
            f"--debug synthesize --bundle {bundle} --reference {tmp_path / 'silent.wav'} --text hi --out {tmp_path / 'c.wav'}"
        )


def test_cli_help_is_fast_and_imports_no_torch():
    code = "import sys, mmspeech_pipeline.cli as c; c.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_the_quickstarts_cli_offers_what_the_recipe_knows():
    # the parser spells the choices out (importing the recipe would import torch): they must stay its
    from mmspeech_pipeline import recipe
    from mmspeech_pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["quickstart"]
    choices = {a.dest: a.choices for a in sub._actions if a.choices}
    assert sorted(choices["size"]) == sorted(recipe.SIZES)
    assert list(choices["precision"]) == list(recipe.PRECISIONS)
    assert sub.get_default("precision") == recipe.DEFAULT_PRECISION == "bf16"
    assert sub.get_default("size") == "tiny"


def test_quickstart_fast(tmp_path, monkeypatch):
    from mmspeech_core.data import load_shards, read_manifest
    from mmspeech_pipeline import recipe
    from mmspeech_pipeline.quickstart import SIZES, run_quickstart
    from mmspeech_vae.infer import latent_stats

    # a temperature other than the library's, to see that the size's decoding settings reach the bundle
    monkeypatch.setitem(SIZES, "tiny", dataclasses.replace(SIZES["tiny"], llm_temperature=0.5))
    # this corpus's held-out set is small enough to be scored whole: half of it, to see the rest not extracted
    monkeypatch.setattr(recipe, "scored_on", lambda test: test[::2])
    # one training at a time: the side-by-side processes run the same jobs (their own test), ~20 s slower;
    # in the default precision, bf16 (fp32 where the hardware lacks it); no ladder: it has its own tests
    report = run_quickstart(tmp_path / "qs", fast=True, evaluate_items=0, jobs=1)
    for name in (
        "zero_shot.wav",
        "one_shot.wav",
        "streamed.wav",
        "report.md",
        "report.json",
        "losses.png",
        "spectrograms.png",
    ):
        assert (tmp_path / "qs" / name).is_file(), name
    assert sf.info(tmp_path / "qs" / "zero_shot.wav").samplerate == 24000
    first, last = report["loss_first_last"]["flow"]
    assert last < first
    # the LM and the flow are scored on the held-out speakers five times, the last at their last step
    for stage in ("llm", "flow"):
        held = report["held_out_losses"][stage]
        assert [s for s, _ in held] == [len(report["losses"][stage]) * k // 5 for k in range(1, 6)]
        assert all(math.isfinite(v) and v > 0 for _, v in held)
    assert "held-out loss" in (tmp_path / "qs" / "report.md").read_text()
    assert (
        report["corpus"]["sources"] == ["espeak"]
        and "eSpeak NG voices" in (tmp_path / "qs" / "report.md").read_text()
    )
    assert report["outputs"]["stream_first_chunk_latency_s"] > 0
    tts = TTS.from_pretrained(tmp_path / "qs" / "bundle", device="cpu")
    assert tts.sample_rate == 24000
    # the quickstart's decoding settings travel with the weights
    assert tts.llm.config.sampling.temperature == 0.5 and tts.flow.config.infer.cfg_rate == 1.5
    # every training was asked for the quickstart's default precision, but the tokenizer's: fp32 whatever
    assert report["precision"] == "bf16"
    assert tts.llm.config.train.amp == tts.flow.config.train.amp == tts.vae.config.train.amp == "bf16"
    assert tts.tokenizer.config.train.amp == "none"
    assert report["corpus"]["train"] > 0 and report["corpus"]["test"] > 0 and report["ladder"] is None
    assert report["jobs"] == 1 and report["wall_s"] >= report["seconds"]["trainings"]
    assert all(f"train_{s}" in report["seconds"] for s in ("tokenizer", "vae", "llm", "flow"))
    # features of what the trainings read only; the flow normalises by the training speech's statistics
    train, test = (read_manifest(tmp_path / "qs" / f"corpus/{s}.jsonl") for s in ("train", "test"))
    read = sorted(u.id for u in train + test[::2])
    assert all(sorted(load_shards(tmp_path / "qs" / "features" / k)) == read for k in ("tokens", "latents"))
    train_stats = latent_stats(tmp_path / "qs" / "features/latents", ids=[u.id for u in train])
    assert tts.flow.config.model.latent_mean == train_stats["mean"]


def test_an_interrupted_quickstart_run_again_continues_it_and_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    """Run again on its folder, a quickstart stopped in its flow training keeps the corpus and the finished
    trainings, resumes the flow from its latest checkpoint, and ends with the weights and loss curve of a
    run never stopped; other settings, or files it did not record, stop it before anything runs."""
    from mmspeech_flow.model import FlowModel
    from mmspeech_pipeline import quickstart, recipe
    from mmspeech_pipeline.corpus import load_corpus
    from safetensors.torch import load_file

    whole = quickstart.run_quickstart(tmp_path / "whole", fast=True, evaluate_items=0, jobs=1)

    class Stopped(Exception):
        pass

    steps, loss = [], FlowModel.training_loss

    def stopped_at_step_10(self, batch):
        if self.training:
            steps.append(1)
            if len(steps) == 10:  # the flow's 10th step: its checkpoint of step 9 is the latest
                raise Stopped
        return loss(self, batch)

    def the_same_corpus(out, *_, **__):
        # built again, eSpeak NG's audio would differ once an earlier test has run it in this process (see
        # build_corpus); the corpus is not what this test is about
        shutil.copytree(tmp_path / "whole/corpus", out)
        return load_corpus(out)

    with monkeypatch.context() as m:
        m.setattr(FlowModel, "training_loss", stopped_at_step_10)
        m.setattr(quickstart, "build_corpus", the_same_corpus)
        with pytest.raises(Stopped):
            quickstart.run_quickstart(tmp_path / "cut", fast=True, evaluate_items=0, jobs=1)
    cut = tmp_path / "cut"
    assert (cut / "runs/flow/latest").read_text().strip() == "checkpoint-00000009"
    assert not recipe.result_path(cut, "flow").exists()

    def never(*_, **__):
        raise AssertionError("run again although done")

    with monkeypatch.context() as m:  # done is done: not one of these runs again
        m.setattr(quickstart, "build_corpus", never)
        for stage in ("tokenizer", "vae", "llm"):
            m.setitem(recipe.JOBS, stage, never)
        again = quickstart.run_quickstart(cut, fast=True, evaluate_items=0, jobs=1)
    assert again["continued"] == ["corpus", "tokenizer", "vae", "llm"] and whole["continued"] == []
    for curves in ("losses", "held_out_losses"):  # the flow's whole, from its first step
        assert again[curves].keys() == whole[curves].keys()
        for name, curve in whole[curves].items():
            assert np.allclose(again[curves][name], curve, rtol=0, atol=1e-6), name
    a, b = (
        load_file(recipe.last_checkpoint(d / "runs/flow") / "model.safetensors")
        for d in (tmp_path / "whole", cut)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "continued an earlier run of this folder" in (cut / "report.md").read_text()

    with pytest.raises(ValueError, match="seed differ"):  # another seed would train something else
        quickstart.run_quickstart(cut, fast=True, seed=1, evaluate_items=0, jobs=1)
    assert whole["precision"] == "bf16"  # the default
    # another precision would train otherwise: the message says what the folder holds, to continue it
    with pytest.raises(ValueError, match="precision differ: precision 'bf16' there, 'fp32' now"):
        quickstart.run_quickstart(cut, fast=True, evaluate_items=0, jobs=1, precision="fp32")
    (tmp_path / "old/runs").mkdir(parents=True)  # no quickstart recorded it: neither continued nor removed
    for resume in (True, False):
        with pytest.raises(ValueError, match="holds runs but no quickstart.json"):
            quickstart.run_quickstart(tmp_path / "old", fast=True, evaluate_items=0, jobs=1, resume=resume)
    assert (tmp_path / "old/runs").is_dir()

    def stop(*_, **__):
        raise Stopped

    with monkeypatch.context() as m, pytest.raises(Stopped):  # --no-resume: its outputs go, then it starts
        m.setattr(quickstart, "build_corpus", stop)
        (cut / "notes.txt").write_text("mine")
        quickstart.run_quickstart(cut, fast=True, evaluate_items=0, jobs=1, resume=False)
    assert sorted(p.name for p in cut.iterdir()) == ["notes.txt", "quickstart.json"]


def test_a_quickstart_stopped_with_ctrl_c_says_how_to_continue(tmp_path, monkeypatch, capsys):
    from mmspeech_pipeline import quickstart

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(quickstart, "run_quickstart", interrupted)
    assert mmspeech(f"quickstart --out {tmp_path / 'qs'}") == 130
    assert "run the same command again to continue" in capsys.readouterr().err


def test_error_rate_ignores_case_and_punctuation_like_seed_tts_eval():
    """Review item 9."""
    from mmspeech_pipeline.evaluate import error_rate

    assert error_rate("Hello, how are you today?", "Hello how are you today") == 0.0
    assert error_rate("I have 25 apples.", "i have twenty-five apples") == 0.0  # English number normaliser
    assert error_rate("The cat sat down.", "the cat down") == pytest.approx(0.25)
    assert error_rate("the cat", "") == 1.0
    assert error_rate("你好，世界。", "你好世界", unit="char", lang="zh") == 0.0
    with pytest.raises(ValueError, match="nothing to score"):
        error_rate("?!", "hello")


def test_a_quickstart_with_an_unknown_voice_source_stops_before_it_starts(tmp_path):
    from mmspeech_pipeline.quickstart import run_quickstart

    with pytest.raises(ValueError, match="unknown voice source 'festival'"):
        run_quickstart(tmp_path / "qs", sources=["espeak", "festival"])
    with pytest.raises(ValueError, match="jobs must be 1"):
        run_quickstart(tmp_path / "qs", jobs=3)
    assert not (tmp_path / "qs").exists()


def test_trainings_side_by_side_train_what_they_train_one_after_another(tmp_path):
    """The quickstart's four trainings as two processes at a time (each job reads what the jobs it needs
    wrote) give the losses and weights of the same jobs run one after another in this process, on as many
    threads: the schedule changes when a job runs, never what it trains."""
    from mmspeech_pipeline.corpus import build_corpus
    from mmspeech_pipeline.recipe import SIZES, STAGES, last_checkpoint, train_all
    from safetensors.torch import load_file

    size = dataclasses.replace(
        SIZES["tiny"], speakers=4, utterances=3, steps={"tokenizer": 6, "vae": 6, "llm": 5, "flow": 5}
    )
    build_corpus(tmp_path / "one/corpus", 4, 3, seed=0, progress=False)
    shutil.copytree(tmp_path / "one/corpus", tmp_path / "two/corpus")
    one = train_all(tmp_path / "one", size, "cpu", jobs=1, threads=1)
    two = train_all(tmp_path / "two", size, "cpu", jobs=2, threads=1)
    assert list(one) == list(two) == list(STAGES)
    for stage in STAGES:
        assert one[stage].losses == two[stage].losses and one[stage].held_out == two[stage].held_out
        assert f"train_{stage}" in two[stage].seconds
    assert [len(c) for c in two["llm"].held_out["llm"]] == [2] * 5  # [step, loss], five times
    for run in ("tokenizer", "vae", "llm", "flow"):
        a, b = (
            load_file(last_checkpoint(tmp_path / x / "runs" / run) / "model.safetensors")
            for x in ("one", "two")
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
    with pytest.raises(ValueError, match="jobs must be 1"):
        train_all(tmp_path / "one", size, "cpu", jobs=3)


@pytest.mark.parametrize(
    "code, error",
    [
        ("raise SystemExit(3)", " failed \\(exit code 3"),
        ("pass", "'s process ended without writing its result"),
    ],
)
def test_a_failed_side_by_side_job_stops_the_other_and_says_which(tmp_path, monkeypatch, code, error):
    from mmspeech_pipeline import recipe

    started = {}

    def start(job, row):  # the tokenizer's process ends at once; the VAE's would run for a minute
        run = code if job.stage == "tokenizer" else "import time; time.sleep(60)"
        started[job.stage] = subprocess.Popen([sys.executable, "-c", run])
        return started[job.stage]

    monkeypatch.setattr(recipe, "_start", start)
    with pytest.raises(RuntimeError, match=f"the tokenizer training{error}"):
        recipe.train_all(tmp_path, recipe.SIZES["tiny"], "cpu", jobs=2)
    assert set(started) == {"tokenizer", "vae"} and started["vae"].poll() is not None  # stopped, not left


def test_the_trainings_precision_is_bf16_unless_asked_for_fp32_and_the_tokenizers_always_fp32():
    from mmspeech_pipeline import recipe

    assert {s: recipe.precision_amp("fp32", s) for s in recipe.STAGES} == dict.fromkeys(recipe.STAGES, "none")
    bf16 = {s: recipe.precision_amp("bf16", s) for s in recipe.STAGES}
    assert bf16 == {"tokenizer": "none", "vae": "bf16", "llm": "bf16", "flow": "bf16"}
    with pytest.raises(ValueError, match="precision must be one of"):
        recipe.precision_amp("fp16", "llm")
    with pytest.raises(ValueError, match="precision must be one of"):
        recipe.train_all("/nonexistent", recipe.SIZES["tiny"], "cpu", precision="fp16")


def test_a_quickstart_budget_passes_what_a_stage_leaves_to_the_later_ones():
    from mmspeech_pipeline.recipe import stage_budget

    steps = {"tokenizer": 900, "vae": 1500, "llm": 500, "flow": 600}
    assert stage_budget(350.0, steps, "tokenizer", []) == pytest.approx(90.0)  # 350 x 900 / 3500
    # the tokenizer used 60 of its 90 s: the 290 s left are shared by the three stages after it
    assert stage_budget(350.0, steps, "vae", [60.0]) == pytest.approx(290 * 1500 / 2600)
    assert stage_budget(350.0, steps, "flow", [60.0, 150.0, 80.0]) == pytest.approx(
        60.0
    )  # the last: all left
    assert stage_budget(350.0, steps, "flow", [200.0, 200.0, 80.0]) == 1.0  # overspent: still a second


def test_the_ladder_shows_the_median_wer_and_counts_whisper_running_away():
    """One looping transcript decides a small sample's mean WER: the summary gives the median beside it
    and counts the items whose transcript has over twice the words said."""
    from mmspeech_pipeline.evaluate import error_rate, ladder_table, runaway, summarize

    ref = "the cat sat on the mat"
    assert not runaway(ref, "the cat sat on a mat by the door and")  # 10 words for 6: a mishearing
    assert runaway(ref, "current " * 13)  # 13 for 6: a loop
    hyps = ["the cat sat on the mat", "a cat sat on the mat", "current " * 60]
    rows = [
        {"id": str(i), "rung": "zero_shot", "wer": error_rate(ref, h), "runaway": runaway(ref, h)}
        for i, h in enumerate(hyps)
    ]
    rows.append({"id": "0", "rung": "ground_truth", "wer": 0.0, "runaway": False})
    summary = summarize(rows)["rungs"]
    assert summary["zero_shot"]["wer"] == pytest.approx((0 + 1 / 6 + 10) / 3)
    assert summary["zero_shot"]["wer_median"] == pytest.approx(1 / 6)
    assert summary["zero_shot"]["runaway"] == 1 and summary["ground_truth"]["runaway"] == 0
    table = ladder_table({"rungs": summary})
    assert "| zero_shot | 3 | 3.389 | 0.167 | 1 |" in table and "runaway:" in table


def test_the_ladder_gives_each_rungs_wer_relative_to_the_recordings_with_a_paired_interval():
    from mmspeech_pipeline.evaluate import ladder_table, summarize, wer_ratio

    truth = [0.2, 0.4, 0.1, 0.3, 0.5, 0.2, 0.3, 0.4]
    rows = [{"id": str(i), "rung": "ground_truth", "wer": w} for i, w in enumerate(truth)]
    rows += [{"id": str(i), "rung": "vae", "wer": w} for i, w in enumerate(truth)]  # as the recordings
    rows += [{"id": str(i), "rung": "zero_shot", "wer": 2 * w} for i, w in enumerate(truth)]  # twice
    rows += [
        {"id": str(i), "rung": "one_shot", "wer": w + (0.6 if i == 0 else 0)} for i, w in enumerate(truth)
    ]
    rows.append({"id": "9", "rung": "one_shot", "wer": 5.0})  # no recording of its own: left out
    rows.append({"id": "10", "rung": "ground_truth", "wer": 12.0, "runaway": True})  # Whisper looping
    rows.append({"id": "10", "rung": "one_shot", "wer": 0.1})  # so its pair is left out
    rows.append({"id": "1", "rung": "streamed", "wer": 11.0, "runaway": True})  # and this one
    assert wer_ratio(rows, "vae") == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert wer_ratio(rows, "zero_shot") == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))
    ratio, low, high = wer_ratio(rows, "one_shot")  # one item 0.6 worse: (2.4 + 0.6) / 2.4
    assert ratio == pytest.approx(1.25) and 1.0 <= low < 1.25 < high and wer_ratio(rows, "one_shot")[1] == low
    assert wer_ratio(rows, "streamed") is None and wer_ratio(rows, "oracle_flow") is None
    assert (
        wer_ratio(
            [{"id": "0", "rung": "ground_truth", "wer": 0.0}, {"id": "0", "rung": "vae", "wer": 1.0}], "vae"
        )
        is None
    )
    summary = summarize(rows)["rungs"]
    assert "wer_ratio" not in summary["ground_truth"] and summary["zero_shot"]["wer_ratio"] == pytest.approx(
        2.0
    )
    table = ladder_table({"rungs": summary})
    assert "| zero_shot | 8 | 0.600 | 0.600 | 2.00 (2.00-2.00) |" in table and "paired bootstrap" in table


def test_compare_pairs_two_runs_per_item_and_rung(tmp_path, capsys):
    from mmspeech_pipeline.evaluate import compare_runs

    def run(name, vae_shift, dnsmos, looped=(), extra=()):
        rows = [{"id": str(i), "rung": "ground_truth", "wer": 0.1 * i} for i in range(8)]
        rows += [
            {"id": str(i), "rung": "vae", "wer": 0.1 * i + vae_shift, "dnsmos": dnsmos[i % 2]}
            for i in range(8)
        ]
        for r in rows:
            r["runaway"] = (r["rung"], r["id"]) in looped
        rows += list(extra)
        (tmp_path / name).mkdir()
        (tmp_path / name / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return rows

    # Whisper looped in one run on recording 3 (out of the recordings' WER pairs) and on item 5's VAE audio
    # (out of the VAE's WER pairs, not its DNSMOS ones); item 8 is in one run only: not paired
    base = run("a", 0.0, (2.0, 3.0), looped={("ground_truth", "3"), ("vae", "5")})
    cand = run("b", -0.2, (2.5, 2.5), extra=[{"id": "8", "rung": "vae", "wer": 9.0}])
    got = {(r["rung"], r["metric"]): r for r in compare_runs(base, cand)}
    assert set(got) == {("ground_truth", "wer"), ("vae", "wer"), ("vae", "dnsmos")}
    assert got["ground_truth", "wer"]["n"] == 7 and got["ground_truth", "wer"]["diff"] == 0
    wer = got["vae", "wer"]
    assert wer["n"] == 7 and wer["diff"] == pytest.approx(-0.2)
    assert wer["diff_low"] == pytest.approx(-0.2) and wer["diff_high"] == pytest.approx(-0.2)  # every item
    mos = got["vae", "dnsmos"]  # +0.5 on half the items, -0.5 on the other: no change, a wide interval
    assert (
        mos["n"] == 8 and mos["diff"] == pytest.approx(0) and mos["diff_low"] < -0.1 < 0.1 < mos["diff_high"]
    )
    with pytest.raises(ValueError, match="share no scored item"):
        compare_runs(base, [dict(r, id="x" + r["id"]) for r in cand])
    argv = ["compare", "--baseline", str(tmp_path / "a"), "--candidate", str(tmp_path / "b")]
    assert main([*argv, "--json", str(tmp_path / "c.json")]) == 0
    assert "| vae | wer | 7 | 0.329 | 0.129 | -0.200 (-0.200 to -0.200) |" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "c.json").read_text())) == 3
    assert main(["compare", "--baseline", str(tmp_path), "--candidate", str(tmp_path / "b")]) != 0
    assert "rows.jsonl not found" in capsys.readouterr().err


def test_long_form_continuation_prompts_each_sentence_with_the_one_before(tts):
    """Issue 15: 'continue' conditions sentence k on sentence k-1 (its text, tokens and latents); the first
    sentence is the independent one, and the result is batch invariant."""
    voice = tts.make_voice(REF)
    para = "hello there. good morning to you. how are you today?"
    ind = tts.synthesize(para, voice=voice, seed=4)
    cont = tts.synthesize(para, voice=voice, seed=4, long_form="continue")
    first = tts.synthesize("hello there.", voice=voice, seed=4).audio.shape[-1]
    # sentence 1 has no predecessor (equal up to batching's float noise); the later ones heard it
    assert torch.allclose(cont.audio[..., :first], ind.audio[..., :first], atol=1e-5)
    assert cont.audio.shape != ind.audio.shape or not torch.allclose(cont.audio, ind.audio, atol=1e-3)
    # by hand: sentence 2 is one-shot with sentence 1 as the prompt
    jobs = tts.plan([para], [voice], 4)
    _, tokens, latents = tts._run_sentences(jobs[:1], None, None)
    p1 = VoicePrompt(jobs[0].ids, tokens.unbatch()[0], latents.unbatch()[0])
    j2 = dataclasses.replace(jobs[1], voice=dataclasses.replace(voice, prompt=p1))
    (w2,) = tts.synthesize_sentences([j2])
    pause = len(tts.pause())
    assert torch.allclose(cont.audio[0, first + pause : first + pause + len(w2)], w2, atol=1e-5)
    both = tts.synthesize_batch(
        [para, "good morning to you. fine."], [voice, voice], seed=[4, 9], long_form="continue"
    )
    a, b = both.unbatch()[0], cont.unbatch()[0]
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="long_form"):
        tts.synthesize(para, voice=voice, long_form="chained")
