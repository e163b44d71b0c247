import dataclasses
import random
import re

import numpy as np
import pytest
import torch
from mmspeech_core import LMPrompt, SpeakerEmbedding, SpeechTokens, Waveform, save_audio
from mmspeech_core.data import ReferencePicker, Utterance
from mmspeech_core.training import fast_train_config
from mmspeech_llm.config import SamplingConfig, tiny_config
from mmspeech_llm.data import LLMDataset, collate
from mmspeech_llm.infer import sample_step
from mmspeech_llm.layout import IGNORE, SPEECH, SPK, TEXT, bistream, unistream
from mmspeech_llm.model import SpeechLM, backbone_config_from_hf, with_sampling
from mmspeech_llm.text import TextError, TextTokenizer, normalize_text
from mmspeech_llm.train import train

GREEDY = SamplingConfig(temperature=0.0, min_len_ratio=0.0, max_len_ratio=20.0)


def test_unistream_layout():
    s = unistream(torch.tensor([7, 8]), torch.tensor([1, 2, 3]), eos=9)
    assert s.kind.tolist() == [0, SPK, TEXT, TEXT, 0, SPEECH, SPEECH, SPEECH]
    assert s.ids.tolist() == [0, 0, 7, 8, 1, 1, 2, 3]
    assert s.target.tolist() == [IGNORE] * 4 + [1, 2, 3, 9]


def test_bistream_layout():
    text, speech = torch.arange(100, 105), torch.arange(0, 8)
    s = bistream(text, speech, eos=50, fill=52, n_text=2, n_speech=3)
    # [sos spk] [t0 t1 s0 s1 s2] [t2 t3 s3 s4 s5] [t4 task s6 s7]
    assert s.ids.tolist() == [0, 0, 100, 101, 0, 1, 2, 102, 103, 3, 4, 5, 104, 1, 6, 7]
    assert s.target.tolist() == [IGNORE, IGNORE, IGNORE, 0, 1, 2, 52, IGNORE, 3, 4, 5, 52, IGNORE, 6, 7, 50]
    assert len(s.kind) == len(s.ids) == len(s.target)


@pytest.fixture(params=["torch", "numba"])
def sampler(request, monkeypatch):
    """Each CPU sampler in turn: torch's ops, and the compiled tail (``cpu_sampling``) where numba is
    installed. Every sampling test holds for both, so both draw the same tokens."""
    from mmspeech_llm import infer

    if request.param == "torch":
        monkeypatch.setattr(infer, "cpu_kernel", lambda: None)
    else:
        pytest.importorskip("numba")
        assert infer.cpu_kernel() is not None
    return request.param


def test_the_cpu_sampler_falls_back_to_torch_ops_without_numba_or_when_numba_cannot_build_it(
    monkeypatch, caplog
):
    """No numba: the torch ops, silently. A numba that cannot compile here (e.g. no writable cache
    directory): a warning, then the torch ops; sampling works either way."""
    import sys

    from mmspeech_llm import infer

    logits = torch.randn(3, 13)
    hist = torch.full((3, 10), -1)

    def draws() -> torch.Tensor:
        return sample_step(logits, hist, torch.rand(3), torch.rand(3), SamplingConfig(), 10)

    try:
        monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ModuleNotFoundError
        monkeypatch.delitem(sys.modules, "mmspeech_llm.cpu_sampling", raising=False)
        infer.cpu_kernel.cache_clear()
        with caplog.at_level("WARNING"):
            assert infer.cpu_kernel() is None
            assert draws().shape == (3,)
        assert caplog.text == ""
        monkeypatch.undo()
        pytest.importorskip("numba")
        from mmspeech_llm import cpu_sampling

        def cannot(*_):
            raise RuntimeError("cannot cache function '_draw_rows': no locator available")

        monkeypatch.setattr(cpu_sampling, "_draw_rows", cannot)
        infer.cpu_kernel.cache_clear()
        with caplog.at_level("WARNING"):
            assert infer.cpu_kernel() is None
            assert draws().shape == (3,)
        assert "cannot build the CPU sampler" in caplog.text and "no locator" in caplog.text
    finally:
        infer.cpu_kernel.cache_clear()


@pytest.mark.usefixtures("sampler")
def test_sampling_rules():
    v = 10  # speech vocab; head has eos=10, 11, fill=12
    logits = torch.full((1, 13), -10.0)
    logits[0, 10] = 10.0  # eos is the favourite
    logits[0, 12] = 20.0  # fill even more, but never sampled
    logits[0, 3] = 5.0
    hist = torch.full((1, 10), -1)
    cfg = SamplingConfig(top_k=1)
    assert (
        sample_step(logits, hist, torch.tensor([0.5]), torch.tensor([0.5]), cfg, v, allow_eos=True).item()
        == 10
    )
    assert (
        sample_step(logits, hist, torch.tensor([0.5]), torch.tensor([0.5]), cfg, v, allow_eos=False).item()
        == 3
    )
    # token 3 already in the window -> resample from the full distribution (u_full=0 -> lowest id with mass)
    hist[0, -1] = 3
    out = sample_step(logits, hist, torch.tensor([0.5]), torch.tensor([0.0]), cfg, v, allow_eos=False)
    assert out.item() == 0
    # top-k: with k=2 only the two best can come out of the nucleus
    logits2 = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0, 0, 0, 0, 0, 0, -1e9, -1e9, -1e9]])
    outs = {
        sample_step(
            logits2,
            torch.full((1, 0), -1),
            torch.rand(1),
            torch.rand(1),
            SamplingConfig(top_k=2, top_p=1.0),
            v,
        ).item()
        for _ in range(200)
    }
    assert outs == {1, 2}
    # vectorised over a batch: rows are independent
    lb = torch.stack([logits2[0], logits2[0].flip(0)])
    assert (
        sample_step(
            lb, torch.full((2, 0), -1), torch.zeros(2), torch.zeros(2), SamplingConfig(temperature=0), v
        ).tolist()[0]
        == 2
    )


@pytest.mark.usefixtures("sampler")
def test_repetition_fallback_never_repicks_the_repeated_token():
    """Review item 2: the fallback draws from the full distribution *without* the repeated token."""
    v = 10
    logits = torch.full((2000, 13), 0.0)
    logits[:, 4] = 8.0  # peaked: token 4 holds ~99.6 % of the mass
    hist = torch.full((2000, 10), -1)
    hist[:, -1] = 4
    g = torch.Generator().manual_seed(0)
    out = sample_step(
        logits, hist, torch.rand(2000, generator=g), torch.rand(2000, generator=g), SamplingConfig(), v
    )
    assert (out == 4).sum() == 0
    assert set(out.tolist()) <= set(range(11)) - {4}
    # a row whose only token with mass is the repeated one keeps it rather than sampling a zero-mass id
    only = torch.full((1, 13), float("-inf"))
    only[0, 4] = 0.0
    assert sample_step(only, hist[:1], torch.rand(1), torch.rand(1), SamplingConfig(), v, False).item() == 4


@pytest.mark.usefixtures("sampler")
def test_repetition_threshold_is_count_at_least_win_times_tau():
    """Review item 10: win 10, tau_r 0.25 -> 2.5, so 2 repeats stay with the nucleus and 3 fall back."""
    v = 10
    logits = torch.full((1, 13), -10.0)
    logits[0, 3] = 10.0
    cfg = SamplingConfig(top_k=1, tau_r=0.25)

    def draw(repeats: int) -> int:
        hist = torch.full((1, 10), -1)
        hist[0, :repeats] = 3
        return sample_step(logits, hist, torch.tensor([0.5]), torch.tensor([0.0]), cfg, v, False).item()

    assert draw(2) == 3  # round(2.5) == 2 would have fallen back here
    assert draw(3) != 3


def test_inverse_cdf_never_picks_a_zero_probability_token():
    from mmspeech_llm.infer import _inverse_cdf

    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    # u·total overshooting the last positive cdf entry (what float rounding of a parallel scan can do)
    assert _inverse_cdf(probs, torch.tensor([1.5, 1.5])).tolist() == [1, 1]
    assert _inverse_cdf(probs, torch.tensor([0.0, 0.0])).tolist() == [0, 1]
    assert _inverse_cdf(probs, torch.tensor([0.75, 0.3])).tolist() == [1, 1]


def test_text_normalisation_and_bpe(tmp_path):
    with pytest.raises(TextError, match="empty"):
        normalize_text("   ")
    with pytest.raises(TextError, match="U\\+0007"):
        normalize_text("hi\x07")
    with pytest.raises(TextError, match="empty"):
        normalize_text("\ufeff\u200b")  # nothing but invisible characters


@pytest.mark.parametrize(
    "text",
    ["\ufeffHello world", "Hello\u200b world", "Hello world\u00ad", "Hello world \U0001f468\u200d\U0001f469"],
)
def test_invisible_format_characters_are_stripped_not_refused(text):
    """Issue 11 item 9: BOM, zero-width space, soft hyphen, ZWJ inside an emoji sequence."""
    assert normalize_text(text).startswith("Hello world")
    assert not any(ch in normalize_text(text) for ch in "\ufeff\u200b\u00ad\u200d")


def test_bpe_round_trip(tmp_path):
    tok = TextTokenizer.train_bpe(
        ["hello world", "hello there", "world peace 你好"] * 5, vocab_size=300, min_frequency=1
    )
    ids = tok.encode("hello 你好 ünïcode")  # unseen characters still encode (byte level)
    assert tok.decode(ids) == "hello 你好 ünïcode"
    tok.save(tmp_path / "tok")
    assert TextTokenizer.from_pretrained(tmp_path / "tok").encode("hello world") == tok.encode("hello world")


def test_speaker_encoder_ignores_padding():
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).eval()
    a, b = torch.randn(24000), torch.randn(9000)
    both = m.embed_speaker(Waveform.from_list([a, b], 24000)).vectors
    alone = m.embed_speaker(Waveform.from_list([b], 24000)).vectors
    assert torch.allclose(both[1], alone[0], atol=1e-5)
    # 16 kHz input is resampled to the encoder's rate
    assert m.embed_speaker(Waveform.from_list([a[:16000]], 16000)).vectors.shape == (1, 16)


def test_batched_equals_unbatched_and_lengths():
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).eval()
    spk = SpeakerEmbedding(torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))
    texts = [torch.randint(0, 300, (n,)) for n in (6, 2, 4)]
    for sampling, seed in [(GREEDY, None), (SamplingConfig(min_len_ratio=1.0, max_len_ratio=5.0), 11)]:
        batched = m.generate(texts, spk, sampling=sampling, seed=seed)
        for i, t in enumerate(texts):
            one = m.generate(
                [t],
                SpeakerEmbedding(spk.vectors[i : i + 1]),
                sampling=sampling,
                seed=None if seed is None else seed + i,
            )
            assert one.unbatch()[0].tolist() == batched.unbatch()[i].tolist()
    # min / max length ratios
    out = m.generate(texts, spk, sampling=SamplingConfig(min_len_ratio=2.0, max_len_ratio=3.0), seed=0)
    for n, t in zip(out.lengths.tolist(), texts):
        assert 2 * len(t) <= n <= 3 * len(t)
    assert int(out.tokens.max()) < 64


def test_a_window_of_zero_turns_repetition_aware_sampling_off():
    # a head that always prefers token 5: with no window nothing counts as a repeat, so it is drawn every step
    # (a window that grew to one token after the first step would count it and resample from the rest)
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).eval()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
        m.head.bias[5] = 30.0
    spk = SpeakerEmbedding(torch.nn.functional.normalize(torch.randn(1, 16), dim=-1))
    s = SamplingConfig(win_size=0, min_len_ratio=4.0, max_len_ratio=4.0)
    out = m.generate([torch.randint(0, 300, (5,))], spk, sampling=s, seed=0)
    assert out.unbatch()[0].tolist() == [5] * 20
    with_window = m.generate(
        [torch.randint(0, 300, (5,))], spk, sampling=dataclasses.replace(s, win_size=4), seed=0
    )
    assert with_window.unbatch()[0].tolist() != [5] * 20  # the window does resample repeats


def test_static_cache_decoder_matches_dynamic():
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).eval()
    spk = SpeakerEmbedding(torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))
    texts = [torch.randint(0, 300, (n,)) for n in (6, 2, 4)]
    pt = [torch.randint(0, 300, (3,)) for _ in range(3)]
    ps = SpeechTokens.from_list([torch.randint(0, 64, (n,)) for n in (5, 1, 3)])
    for sampling, seed in [(GREEDY, None), (SamplingConfig(min_len_ratio=1.0, max_len_ratio=5.0), 7)]:
        for prompt in [None, LMPrompt(pt, ps)]:
            a = m.generate(texts, spk, prompt, sampling=sampling, seed=seed)
            b = m.generate(texts, spk, prompt, sampling=sampling, seed=seed, decode="static")
            assert [x.tolist() for x in a.unbatch()] == [x.tolist() for x in b.unbatch()]
    with pytest.raises(ValueError, match="CUDA"):
        m.generate(texts[:1], SpeakerEmbedding(spk.vectors[:1]), decode="cuda_graph")
    with pytest.raises(ValueError, match="decode mode"):
        m.generate(texts[:1], SpeakerEmbedding(spk.vectors[:1]), decode="fast")  # type: ignore[arg-type]


def test_static_decoders_are_kept_between_requests_and_give_the_same_tokens():
    """A static decoder (its cache, and on a GPU its captured graph) serves request after request of one
    batch size and capacity bucket; each request's tokens equal a fresh dynamic decode's, including after a
    stream that was left unfinished and while two streams of one shape run at once."""
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).eval()
    spk = SpeakerEmbedding(torch.nn.functional.normalize(torch.randn(2, 16), dim=-1))
    s = SamplingConfig(min_len_ratio=2.5, max_len_ratio=5.0)  # no row ends in its first 4 steps
    requests = [
        [torch.randint(0, 300, (n,)), torch.randint(0, 300, (k,))] for n, k in ((6, 2), (4, 5), (3, 3))
    ]
    first = None
    for seed, texts in enumerate(requests):
        ref = m.generate(texts, spk, sampling=s, seed=seed)
        out = m.generate(texts, spk, sampling=s, seed=seed, decode="static")
        assert [x.tolist() for x in out.unbatch()] == [x.tolist() for x in ref.unbatch()]
        (dec,) = m.decoders.free.values()  # one shape, one decoder, handed back after each request
        assert first is None or dec is first
        first = dec
    # a stream stopped early hands its decoder back when closed; two live streams never share one
    a = m.stream(requests[0], spk, sampling=s, seed=0, decode="static")
    next(a)
    assert not m.decoders.free
    b = list(m.stream(requests[1], spk, sampling=s, seed=1, decode="static"))
    rest = [next(a)[0] for _ in range(3)]
    ref_a = m.generate(requests[0], spk, sampling=s, seed=0)
    assert torch.stack(rest, 1).tolist() == [x[1:4].tolist() for x in ref_a.unbatch()]
    assert len(b) >= 1
    a.close()
    assert len(m.decoders.free) == 1
    # a request that needs more positions gets a decoder of the next capacity bucket
    long = SamplingConfig(min_len_ratio=60.0, max_len_ratio=60.0)
    m.generate(requests[0], spk, sampling=long, seed=0, decode="static")
    assert sorted(key[2] for key in m.decoders.free) == [256, 512]
    # moving or casting the model makes new parameter tensors: decoders made on the old ones are dropped,
    # and the next request gets a fresh one that decodes as before
    m.float()
    assert not m.decoders.free
    again = m.generate(requests[2], spk, sampling=s, seed=2, decode="static")
    assert [x.tolist() for x in again.unbatch()] == [
        x.tolist() for x in m.generate(requests[2], spk, sampling=s, seed=2).unbatch()
    ]


def test_bad_inputs():
    m = SpeechLM(tiny_config()).eval()
    spk = SpeakerEmbedding(torch.zeros(1, 16))
    with pytest.raises(ValueError, match="no tokens"):
        m.generate([torch.zeros(0, dtype=torch.long)], spk)
    with pytest.raises(ValueError, match="tokenizer match"):
        m.generate([torch.tensor([5000])], spk)
    with pytest.raises(ValueError, match="prompt batch size 2"):
        prompt = LMPrompt([torch.tensor([1])] * 2, SpeechTokens.from_list([torch.tensor([1])] * 2))
        m.generate([torch.tensor([1])], spk, prompt)


def test_reference_picker_never_leaks():
    picker = ReferencePicker(["a", "a", "b", "b", "b", "c", None], fallback="self", max_self_fraction=0.5)
    rng = random.Random(0)
    for i in range(5):
        j = picker(i, rng)
        assert j != i and picker.speakers[j] == picker.speakers[i]
    assert picker(5, rng) == 5 and picker(6, rng) == 6 and picker.single == [5, 6] and picker.num_self == 2
    drop = ReferencePicker(["a", "a", "c"], fallback="drop")
    assert list(drop.usable) == [0, 1]


def test_reference_leakage_is_refused_by_default():
    """Review item 7: default drop; no labels, or > 5 % self-referenced, fails unless accepted explicitly."""
    from mmspeech_core.data import SpeakerReferenceError

    assert list(ReferencePicker(["a", "a", "c"]).usable) == [0, 1]  # default: drop
    for fallback in ("drop", "self"):
        with pytest.raises(SpeakerReferenceError, match="has a speaker label.*'speaker' field"):
            ReferencePicker([None] * 4, fallback=fallback)
    with pytest.raises(SpeakerReferenceError, match="1 of 3 utterances .33%"):
        ReferencePicker(["a", "a", "c"], fallback="self")
    with pytest.raises(SpeakerReferenceError, match="nothing is left"):
        ReferencePicker(["a", "b"], fallback="drop")
    assert ReferencePicker([None] * 4, fallback="self", max_self_fraction=1.0).num_self == 4  # opted in


def _corpus(tmp_path, n=4):
    g = torch.Generator().manual_seed(0)
    utts, tokens = [], {}
    for i in range(n):
        p = tmp_path / f"u{i}.wav"
        save_audio(p, 0.1 * torch.randn(4800 + 800 * i, generator=g), 24000)
        utts.append(
            Utterance(
                f"u{i}",
                str(p),
                text=["hello world", "good day", "hi there friend", "nice"][i % 4],
                speaker=f"s{i % 2}",
            )
        )
        tokens[f"u{i}"] = torch.randint(0, 64, (8 + 2 * i,), generator=g)
    return utts, tokens


def test_dataset_uses_other_utterance_as_reference(tmp_path):
    utts, tokens = _corpus(tmp_path)
    tok = TextTokenizer.train_bpe([u.text for u in utts], vocab_size=280, min_frequency=1)
    ds = LLMDataset(utts, tokens, tok, tiny_config())
    frames = lambda samples: samples // 240 + 1  # noqa: E731 - the reference log-mel's hop at 24 kHz
    for k in range(len(ds)):
        ref = ds[k].reference
        assert ref.shape[0] == 80
        assert ref.shape[1] != frames(4800 + 800 * k)  # the reference is the other utterance of the speaker
        assert ref.shape[1] == frames(4800 + 800 * ((k + 2) % 4))


def test_an_items_layout_reference_and_crop_depend_on_the_item_and_the_epoch_alone(tmp_path):
    """A resumed run reads the items in another order than an uninterrupted one (it skips what it trained
    on): each item draws its layout, reference and crop from (seed, epoch, item) alone."""
    utts, tokens = _corpus(tmp_path, n=8)  # four utterances a speaker: three candidate references each
    tok = TextTokenizer.train_bpe([u.text for u in utts], vocab_size=280, min_frequency=1)
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, layout=dataclasses.replace(cfg.layout, max_reference_s=0.1))  # crops
    ds = LLMDataset(utts, tokens, tok, cfg, seed=3)

    def item(k: int) -> tuple[torch.Tensor, ...]:
        return ds[k].sequence.kind, ds[k].sequence.ids, ds[k].reference

    def same(a, b) -> bool:
        return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))

    first = [item(k) for k in range(len(ds))]
    backward = [item(k) for k in reversed(range(len(ds)))]
    assert all(same(a, b) for a, b in zip(first, backward[::-1]))
    ds.set_epoch(1)
    assert not all(same(a, b) for a, b in zip(first, [item(k) for k in range(len(ds))]))


def test_prompt_pairs_join_two_utterances_of_a_speaker_as_one_shot_inference_does(tmp_path):
    """layout.prompt_pairs adds items made as one-shot inference makes its prefix: a prompt utterance's text
    then the target's, its speech tokens then the target's, and the prompt's own audio as the reference."""
    utts, tokens = _corpus(tmp_path, n=8)
    tok = TextTokenizer.train_bpe([u.text for u in utts], vocab_size=280, min_frequency=1)
    cfg = tiny_config()
    cfg = dataclasses.replace(
        cfg, layout=dataclasses.replace(cfg.layout, bistream_prob=0.0, prompt_pairs=0.5)
    )
    ds = LLMDataset(utts, tokens, tok, cfg)
    singles = len(ds.index)
    assert len(ds) == singles + 4 and len(ds.lengths()) == len(ds)
    assert LLMDataset(utts, tokens, tok, cfg).pairs == ds.pairs  # drawn once, from the seed
    for k, (j, i) in enumerate(ds.pairs):
        assert j != i and utts[j].speaker == utts[i].speaker
        item = ds[singles + k]
        speech = item.sequence.ids[item.sequence.kind == SPEECH]
        assert speech.tolist() == tokens[utts[j].id].tolist() + tokens[utts[i].id].tolist()
        assert (
            item.sequence.ids[item.sequence.kind == TEXT].tolist()
            == ds.text[j].tolist() + ds.text[i].tolist()
        )
        assert len(item.sequence.kind) == ds.lengths()[singles + k]
        assert item.reference.shape[1] == (4800 + 800 * j) // 240 + 1  # the prompt's own audio
    # a speaker with one utterance (kept as its own reference) cannot be a pair: fewer pairs, no error
    alone = dataclasses.replace(utts[0], id="solo", speaker="s9")
    everything = dataclasses.replace(cfg, layout=dataclasses.replace(cfg.layout, prompt_pairs=1.0))
    ds = LLMDataset(
        [*utts, alone], {**tokens, "solo": tokens["u0"]}, tok, everything, "self", max_self_fraction=1.0
    )
    assert len(ds.index) == 9 and len(ds.pairs) == 8
    bad = dataclasses.replace(cfg, layout=dataclasses.replace(cfg.layout, prompt_pairs=1.5))
    with pytest.raises(ValueError, match="prompt_pairs"):
        LLMDataset(utts, tokens, tok, bad)


def test_training_references_embed_as_inference_embeds_their_audio_and_a_cache_changes_nothing(tmp_path):
    """The dataset computes the references' log-mels (in loader workers, once with a cache); the speaker
    vector a training batch gets must be the one inference gets from the same audio."""
    from mmspeech_core import read_audio

    utts, tokens = _corpus(tmp_path)
    tok = TextTokenizer.train_bpe([u.text for u in utts], vocab_size=280, min_frequency=1)
    cfg = tiny_config()
    torch.manual_seed(0)
    m = SpeechLM(cfg).eval()
    plain = LLMDataset(utts, tokens, tok, cfg, seed=3)
    cached = LLMDataset(utts, tokens, tok, cfg, seed=3, cache_references=True)
    batch = collate([plain[k] for k in range(len(plain))])
    assert batch.reference.shape == (4, 80, int(batch.reference_frames.max()))
    for _ in range(2):  # the second round is served from the cache
        again = collate([cached[k] for k in range(len(cached))])
        assert torch.equal(again.reference, batch.reference)
        assert torch.equal(again.reference_frames, batch.reference_frames)
    # each speaker has two utterances: an item's reference is the other one, whatever the draw
    audio = [read_audio(utts[plain.picker(i, random.Random(0))].audio, 24000) for i in plain.index]
    with torch.no_grad():
        trained = m.embed_reference_mels(batch.reference, batch.reference_frames).vectors
        inferred = m.embed_speaker(Waveform.from_list(audio, 24000)).vectors
    assert torch.allclose(trained, inferred, atol=1e-5)


def test_under_cpu_autocast_every_attention_of_the_lm_computes_in_fp32(tmp_path, monkeypatch):
    """bf16 training on a CPU: the backbone's attention (its rotary embedding hands over q and k in fp32, v in
    bf16) and the speaker encoder's run in fp32, where SDPA's backward is fast; the loss is fp32's within
    bf16 rounding. Saved, the backbone's attention is still plain "sdpa"."""
    import torch.nn.functional as F

    utts, tokens = _corpus(tmp_path)
    tok = TextTokenizer.train_bpe([u.text for u in utts], vocab_size=280, min_frequency=1)
    cfg = tiny_config(text_vocab=tok.vocab_size)
    torch.manual_seed(0)
    m = SpeechLM(cfg)
    batch = collate([LLMDataset(utts, tokens, tok, cfg)[k] for k in range(2)])
    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append({q.dtype, k.dtype, v.dtype})
        return sdpa(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    fp32 = m.training_loss(batch)["loss"]
    calls = len(seen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = m.training_loss(batch)["loss"]
    assert len(seen) == 2 * calls and calls >= cfg.model.backbone.num_layers + 1  # + the speaker encoder
    assert all(dtypes == {torch.float32} for dtypes in seen)
    assert torch.isclose(bf16.float(), fp32, rtol=2e-2)
    m.save_pretrained(tmp_path / "saved")
    assert SpeechLM.from_pretrained(tmp_path / "saved").config.model.backbone.attn_implementation == "sdpa"


def _overfit_setup(tmp_path, steps, **train_overrides):
    """The two-utterance corpus, its BPE, a unistream tiny config and the dataset."""
    torch.manual_seed(0)
    utts, tokens = _corpus(tmp_path)
    tok = TextTokenizer.train_bpe([u.text for u in utts], vocab_size=280, min_frequency=1)
    cfg = tiny_config(text_vocab=tok.vocab_size)
    settings = {"warmup_steps": 10, "max_frames": 10_000} | train_overrides
    cfg = dataclasses.replace(
        cfg,
        layout=dataclasses.replace(cfg.layout, bistream_prob=0.0),
        train=fast_train_config(steps, 3e-3, **settings),
    )
    return cfg, LLMDataset(utts, tokens, tok, cfg)


def test_overfit_tiny_batch_and_checkpoint(tmp_path):
    cfg, ds = _overfit_setup(tmp_path, 150)
    model, hist = train(cfg, ds, tmp_path / "run", device="cpu", val_dataset=ds)
    assert hist[-1]["loss"] < 0.2 * hist[0]["loss"]
    assert hist[-1]["val/loss"] < 0.2 * hist[0]["loss"] and "val/acc" in hist[-1]
    model.eval()
    batch = collate([ds[k] for k in range(len(ds))])
    spk = model.embed_reference_mels(batch.reference, batch.reference_frames)
    texts = [ds.text[i] for i in ds.index]
    out = model.generate(texts, spk, sampling=GREEDY)
    for k, i in enumerate(ds.index):
        assert out.unbatch()[k].tolist() == ds.tokens[ds.utts[i].id].tolist()
    re = SpeechLM.from_pretrained(tmp_path / "run" / "checkpoint-00000150")
    assert (
        re.generate(texts[:1], SpeakerEmbedding(spk.vectors[:1]), sampling=GREEDY).unbatch()[0].tolist()
        == ds.tokens[ds.utts[ds.index[0]].id].tolist()
    )
    # one-shot: prompt text + prompt speech continue the same way
    i0, i1 = ds.index[0], ds.index[1]
    os_out = model.generate(
        [ds.text[i1]],
        SpeakerEmbedding(spk.vectors[1:2]),
        prompt=LMPrompt([ds.text[i0]], SpeechTokens.from_list([ds.tokens[ds.utts[i0].id]])),
        sampling=dataclasses.replace(GREEDY, min_len_ratio=1.0, max_len_ratio=2.0),
    )
    # min/max lengths count the target text only, not the prompt text
    assert len(ds.text[i1]) <= os_out.lengths[0] <= 2 * len(ds.text[i1])


def test_load_backbone_from_local_hf_folder(tmp_path):
    from mmspeech_llm.model import qwen2_config
    from transformers import Qwen2Model

    cfg = tiny_config()
    hf = Qwen2Model(qwen2_config(cfg.model.backbone, cfg.model.text_vocab))
    hf.save_pretrained(tmp_path / "qwen")
    b, vocab = backbone_config_from_hf(tmp_path / "qwen")
    assert vocab == 300 and b.hidden_size == 64 and b.num_kv_heads == 2
    m = SpeechLM(cfg)
    m.load_backbone(tmp_path / "qwen")
    assert torch.equal(m.backbone.embed_tokens.weight, hf.embed_tokens.weight)


def test_stream_yields_the_same_tokens_as_generate():
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).eval()
    spk = SpeakerEmbedding(torch.nn.functional.normalize(torch.randn(1, 16), dim=-1))
    t = [torch.randint(0, 300, (4,))]
    streamed = [int(tok[0]) for tok, alive in m.stream(t, spk, sampling=GREEDY) if alive[0]]
    assert streamed == m.generate(t, spk, sampling=GREEDY).unbatch()[0].tolist()
    assert with_sampling(m.config, top_k=3).sampling.top_k == 3


def _sort_based_nucleus(logits, u, cfg, speech_vocab, allow_eos=True):
    """The sampler before topk (sorts the whole vocabulary): the reference the fast path must match."""
    from mmspeech_llm.infer import _inverse_cdf

    logits = logits.clone()
    logits[:, speech_vocab + 1 :] = float("-inf")
    logits[:, speech_vocab].masked_fill_(~torch.as_tensor(allow_eos), float("-inf"))
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    sp, si = probs.sort(-1, descending=True)
    rank = torch.arange(logits.shape[1])[None]
    keep = (rank < min(cfg.top_k, logits.shape[1])) & ((sp.cumsum(-1) - sp) < cfg.top_p)
    return si.gather(-1, _inverse_cdf(sp * keep, u)[:, None]).squeeze(-1)


@pytest.mark.usefixtures("sampler")
def test_topk_sampling_draws_what_sorting_the_vocabulary_drew():
    """Issue 17 item 1: same tokens for the same uniforms (12,600 draws; batch 1, 4, 16; temperature 1 and
    0.5; EOS allowed, barred, or barred on some rows), and the caller's logits left as they were."""
    g = torch.Generator().manual_seed(0)
    for cfg in (SamplingConfig(), SamplingConfig(temperature=0.5)):
        for b in (1, 4, 16):
            for i in range(100):
                logits = torch.randn(b, 6564, generator=g) * 3
                logits[:, 6561] += 6  # EOS often among the candidates, so barring it changes draws
                before = logits.clone()
                logits.requires_grad_(i % 5 == 0)  # a caller's logits may be part of a graph
                u = torch.rand(b, generator=g)
                allow = (True, False, torch.rand(b, generator=g) < 0.5)[i % 3]
                empty = torch.full((b, 0), -1)
                fast = sample_step(logits, empty, u, torch.rand(b, generator=g), cfg, 6561, allow)
                assert torch.equal(fast, _sort_based_nucleus(logits, u, cfg, 6561, allow))
                assert torch.equal(logits, before)


def _every_row_fallback(logits, history, u, u_full, cfg, speech_vocab):
    """The sampler before the CPU drew the fallback only for repeating rows: every row's, then a choice."""
    from mmspeech_llm.infer import _inverse_cdf

    nucleus = _sort_based_nucleus(logits, u, cfg, speech_vocab)
    masked = logits.clone()
    masked[:, speech_vocab + 1 :] = float("-inf")
    probs = torch.softmax(masked / cfg.temperature, dim=-1)
    too_often = (history == nucleus[:, None]).sum(-1) >= history.shape[1] * cfg.tau_r
    rest = probs.scatter(-1, nucleus[:, None], 0.0)
    rest = torch.where(rest.sum(-1, keepdim=True) > 0, rest, probs)
    return torch.where(too_often, _inverse_cdf(rest, u_full), nucleus)


@pytest.mark.usefixtures("sampler")
def test_the_fallback_drawn_only_for_repeating_rows_draws_what_every_rows_fallback_drew():
    """Issue 17 item 1: on the CPU the full-distribution draw is made only for the rows whose nucleus token
    repeats; the tokens are those of drawing it for every row (1,900 draws, batch 1, 3, 15, about half of
    the rows repeating)."""
    g = torch.Generator().manual_seed(1)
    cfg = SamplingConfig()
    repeated = 0
    for b in (1, 3, 15):
        for _ in range(100):
            logits = torch.randn(b, 6564, generator=g) * 3
            u, u_full = torch.rand(b, generator=g), torch.rand(b, generator=g)
            # a window of likely tokens: the nucleus token is often in it
            likely = logits[:, :6561].topk(8, dim=-1).indices
            history = likely.gather(-1, torch.randint(0, 8, (b, cfg.win_size), generator=g))
            want = _every_row_fallback(logits, history, u, u_full, cfg, 6561)
            nucleus = _sort_based_nucleus(logits, u, cfg, 6561)
            repeated += int((want != nucleus).sum())
            assert torch.equal(sample_step(logits, history, u, u_full, cfg, 6561), want)
    assert 0.3 * 1900 < repeated < 0.9 * 1900  # both paths taken, often


def _degenerate_rows(v: int) -> list[torch.Tensor]:
    """Rows a softmax rarely or never makes, each with its own trap for a top-k."""
    rising = torch.arange(v, dtype=torch.float32) / v  # every id an insertion for a one-pass scan
    tied = torch.zeros(v)
    tied[::3] = 0.5  # more tied maxima than k, in every block
    one_hot = torch.zeros(v)
    one_hot[-1] = 1.0  # the only mass in the tail block
    return [rising, tied, one_hot, torch.zeros(v)]


def test_the_compiled_top_k_keeps_the_k_most_probable_ids_with_ties_lower_id_first():
    """Issue 17 item 1: the compiled sampler's top-k (a threshold from the maxima of 64-id blocks, then only
    the ids at or above it) keeps exactly the k most probable ids, most probable first and equal ones lower
    id first, on flat, peaked, tied and degenerate rows of lengths around the block size; rows with a NaN or
    a negative number (-0 too) keep what the one-pass scan keeps."""
    pytest.importorskip("numba")
    from mmspeech_llm import cpu_sampling as cs

    def top_k(p: torch.Tensor, k: int, scan: bool = False) -> tuple[list[int], np.ndarray]:
        cand_p, cand_i = np.empty(k, np.float32), np.empty(k, np.int64)
        if scan:
            cs._scan_top_k(p.numpy(), cand_p, cand_i)
        else:
            cs._top_k(p.numpy(), cand_p, cand_i, np.empty(len(p) // cs._BLOCK + 1, np.int32))
        return cand_i.tolist(), cand_p

    g = torch.Generator().manual_seed(2)
    for v in (6561, 6562, 6592, 1600, 1599, 30):
        rows = [torch.softmax(s * torch.randn(v, generator=g), -1) for s in (0.1, 1, 3, 10)]
        rows.append((torch.rand(v, generator=g) * 50).round() / 50)  # exact ties everywhere
        for p in rows + _degenerate_rows(v):
            for k in {1, 7, 25, min(64, v)}:
                want = np.lexsort((np.arange(v), -p.numpy()))[:k]  # by probability, then by id
                ids, probs = top_k(p, k)
                assert ids == want.tolist() and np.array_equal(probs, p.numpy()[want]), (v, k)
        for where, value in ((3, float("nan")), (v - 1, float("nan")), (7, -0.0), (v // 2, -1.0)):
            p = rows[1].clone()
            p[where] = value
            assert top_k(p, 25)[0] == top_k(p, 25, scan=True)[0]


def test_fsdp_on_one_process_trains_the_lm_and_saves_plain_weights(tmp_path):
    """Issue 14: the LM under FSDP2 (Qwen2 decoder layers and speaker blocks as units, activation
    checkpointing, its tokens streamed) learns like under DDP and saves weights that load without FSDP."""
    cfg, ds = _overfit_setup(
        tmp_path, 30, warmup_steps=5, parallel="fsdp", activation_checkpointing=True, data="stream"
    )
    try:
        _, hist = train(cfg, ds, tmp_path / "run", device="cpu", val_dataset=ds)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"] and "val/loss" in hist[-1]
    re = SpeechLM.from_pretrained(tmp_path / "run" / "checkpoint-00000030")
    assert set(re.state_dict()) == set(SpeechLM(cfg).state_dict())


@pytest.mark.parametrize(
    ("settings", "rule"),
    [
        ({"temperature": -0.5}, "temperature >= 0"),
        ({"top_p": 0.0}, "0 < top_p <= 1"),
        ({"top_p": 1.5}, "0 < top_p <= 1"),
        ({"top_k": 0}, "top_k >= 1"),
        ({"win_size": -1}, "win_size >= 0"),
        ({"min_len_ratio": 5.0, "max_len_ratio": 4.0}, "0 <= min_len_ratio <= max_len_ratio"),
    ],
)
def test_sampling_settings_that_would_misbehave_are_refused(settings, rule):
    with pytest.raises(ValueError, match=f"sampling settings break {re.escape(rule)}"):
        SamplingConfig(**settings)
