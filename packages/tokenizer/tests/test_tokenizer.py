import dataclasses
import json

import pytest
import torch
from mmspeech_core import AudioError, CheckpointError, Waveform, load_audio, read_audio, save_audio
from mmspeech_core.data import Utterance, extract_features, load_shards, read_manifest
from mmspeech_core.training import fast_train_config
from mmspeech_tokenizer.cli import main
from mmspeech_tokenizer.config import S3Config, tiny_fsq_config
from mmspeech_tokenizer.infer import load_speech_tokenizer, sample_wavs
from mmspeech_tokenizer.model import FSQTokenizer, build_vocab, fsq_decode_codes, fsq_quantize
from mmspeech_tokenizer.s3 import S3SpeechTokenizer
from mmspeech_tokenizer.train import train

TINY = S3Config(n_audio_state=128, n_audio_head=2, n_audio_layer=1)
WAVS = sample_wavs()


@pytest.fixture(scope="module")
def s3():
    return S3SpeechTokenizer.random_init(TINY)


def test_real_wavs_give_25hz_tokens(s3):
    assert len(WAVS) == 2
    wav = load_audio(WAVS, 16000)
    out = s3.encode(wav)
    assert out.frame_rate == 25.0 and out.vocab_size == 6561
    for n, d in zip(out.lengths.tolist(), wav.durations().tolist()):
        assert abs(n - 25 * d) <= 1
    assert int(out.tokens.max()) < 6561 and int(out.tokens.min()) >= 0


def test_batched_equals_unbatched_and_any_rate(s3):
    wav = load_audio(WAVS, 16000)
    both = s3.encode(wav)
    for i in range(2):
        assert torch.equal(s3.encode(wav.select(i)).unbatch()[0], both.unbatch()[i])
    # 24 kHz input is resampled to 16 kHz first; token count follows duration
    w24 = load_audio(WAVS[:1], 24000)
    assert abs(int(s3.encode(w24).lengths[0]) - int(both.lengths[0])) <= 1


def test_long_audio_over_30s(s3):
    x = torch.cat([read_audio(WAVS[0], 16000)] * 9)  # ~37.8 s
    out = s3.encode(Waveform.from_list([x], 16000))
    assert abs(int(out.lengths[0]) - 25 * len(x) / 16000) <= 1


def test_too_short_audio_raises(s3):
    with pytest.raises(ValueError, match="too short"):
        s3.encode(Waveform.from_list([torch.zeros(100)], 16000))


def test_weights_round_trip_and_clear_errors(s3, tmp_path):
    s3.save_pretrained(tmp_path / "tok")
    # a folder saved with a non-default shape reloads with that shape
    re = S3SpeechTokenizer.from_pretrained(tmp_path / "tok")
    wav = load_audio(WAVS[:1], 16000)
    assert torch.equal(re.encode(wav).tokens, s3.encode(wav).tokens)
    # a converted .pt: the shape is read off the weights
    torch.save(s3.model.state_dict(), tmp_path / "tiny.pt")
    assert torch.equal(
        S3SpeechTokenizer.from_pretrained(tmp_path / "tiny.pt").encode(wav).tokens, s3.encode(wav).tokens
    )
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="S3Tokenizer v2"):
        S3SpeechTokenizer.from_pretrained(tmp_path / "other.pt")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="ONNX"):
        S3SpeechTokenizer.from_pretrained(tmp_path / "bad.onnx")
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        S3SpeechTokenizer.from_pretrained(tmp_path / "speech_tokenizer_v2.onnx")


def _write_official_style_onnx(state, path):
    """An ONNX file laid out like the released speech_tokenizer_v2.onnx (initializer and node names that
    s3tokenizer's onnx2torch maps), holding small weights: the conversion path runs for real."""
    import onnx
    from onnx import helper, numpy_helper

    inits, nodes = [], []

    def init(name, t):
        inits.append(numpy_helper.from_array(t.detach().numpy().copy(), name))
        return name

    special = {
        "encoder.conv1.weight": "onnx::Conv_2216",
        "encoder.conv1.bias": "onnx::Conv_2217",
        "encoder.conv2.weight": "onnx::Conv_2218",
        "encoder.conv2.bias": "onnx::Conv_2219",
    }
    nodes.append(
        helper.make_node(
            "Conv",
            [
                "x",
                init(special["encoder.conv1.weight"], state["encoder.conv1.weight"]),
                init(special["encoder.conv1.bias"], state["encoder.conv1.bias"]),
            ],
            ["c1"],
            name="/conv1/Conv",
        )
    )
    nodes.append(
        helper.make_node(
            "Conv",
            [
                "c1",
                init(special["encoder.conv2.weight"], state["encoder.conv2.weight"]),
                init(special["encoder.conv2.bias"], state["encoder.conv2.bias"]),
            ],
            ["c2"],
            name="/conv2/Conv",
        )
    )
    w = state["quantizer._codebook.project_down.weight"]
    nodes.append(
        helper.make_node("MatMul", ["h", init("onnx::MatMul_2536", w.T)], ["q"], name="/quantizer/MatMul")
    )
    nodes.append(
        helper.make_node(
            "Add",
            [init("quantizer.project_in.bias", state["quantizer._codebook.project_down.bias"]), "q"],
            ["q2"],
            name="/quantizer/Add",
        )
    )
    for k, v in state.items():
        if not k.startswith("encoder.blocks."):
            continue
        mod, leaf = k[len("encoder.") :].rsplit(".", 1)  # e.g. blocks.0.attn.query, weight
        path_ = "/" + mod.replace(".mlp.", ".mlp.mlp.").replace(".", "/").replace(
            "blocks/", "blocks."
        ).replace("mlp/mlp/", "mlp/mlp.")
        if mod.endswith("_ln"):
            if leaf == "weight":
                nodes.append(
                    helper.make_node(
                        "LayerNormalization",
                        ["h", init(k, v), init(k[:-6] + "bias", state[k[:-6] + "bias"])],
                        ["o"],
                        name=path_ + "/LayerNormalization",
                    )
                )
        elif mod.endswith("fsmn_block"):
            nodes.append(helper.make_node("Conv", ["h", init(k, v)], ["o"], name=path_ + "/Conv"))
        elif leaf == "weight":
            nodes.append(helper.make_node("MatMul", ["h", init(k, v.T)], ["o"], name=path_ + "/MatMul"))
        else:
            nodes.append(helper.make_node("Add", [init(k, v), "o"], ["o2"], name=path_ + "/Add"))
    graph = helper.make_graph(nodes, "s3", [], [], initializer=inits)
    onnx.save(helper.make_model(graph), str(path))


def test_onnx_conversion_of_official_layout(s3, tmp_path):
    _write_official_style_onnx(s3.model.state_dict(), tmp_path / "speech_tokenizer_v2.onnx")
    conv = S3SpeechTokenizer.from_pretrained(tmp_path / "speech_tokenizer_v2.onnx")
    assert conv.config == TINY
    for k, v in s3.model.state_dict().items():
        assert torch.equal(conv.model.state_dict()[k], v), k
    assert (
        main(
            ["convert", "--onnx", str(tmp_path / "speech_tokenizer_v2.onnx"), "--out", str(tmp_path / "conv")]
        )
        == 0
    )
    wav = load_audio(WAVS, 16000)
    assert torch.equal(
        S3SpeechTokenizer.from_pretrained(tmp_path / "conv").encode(wav).tokens, s3.encode(wav).tokens
    )


def test_extract_cli_sharded_resumable_and_logs_bad_audio(s3, tmp_path):
    s3.save_pretrained(tmp_path / "tok")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....")
    lines = [{"id": w.stem, "audio": str(w)} for w in WAVS] + [{"id": "bad", "audio": "bad.wav"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    args = [
        "extract",
        "--model",
        str(tmp_path / "tok"),
        "--manifest",
        str(tmp_path / "m.jsonl"),
        "--output-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--shard-size",
        "1",
    ]
    assert main(args) == 0
    assert main(args + ["--strict"]) == 1  # the bad file is still failing, and strict says so
    feats = load_shards(tmp_path / "out")
    assert sorted(feats) == sorted(w.stem for w in WAVS)
    assert len(list((tmp_path / "out").glob("shard-*.safetensors"))) == 2
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors-r0.jsonl").read_text().splitlines()]
    assert {e["id"] for e in errors} == {"bad"}
    stats = extract_features(
        load_speech_tokenizer(str(tmp_path / "tok")), read_manifest(tmp_path / "m.jsonl"), tmp_path / "out"
    )
    assert stats["skipped"] == 2 and stats["done"] == 0


def test_fsq_quantiser_matches_s3_index_and_passes_gradients():
    h = torch.randn(5, 7, 8, requires_grad=True)
    q, codes = fsq_quantize(h)
    assert set(q.detach().unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert int(codes.min()) >= 0 and int(codes.max()) < 3**8
    assert torch.equal(fsq_decode_codes(codes, 8), q.detach())
    # same formula as s3tokenizer's FSQCodebook.encode
    ref = ((torch.tanh(h) * 0.9990000128746033).round() + 1) @ (3.0 ** torch.arange(8))
    assert torch.equal(codes, ref.long())
    q.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0  # straight-through


def test_fsq_tokenizer_ctc_loss_falls_and_encodes(tmp_path):
    torch.manual_seed(0)
    utts = [Utterance(w.stem, str(w), text=t) for w, t in zip(WAVS, ["abcab", "cabba"])]
    cfg = tiny_fsq_config(build_vocab([u.text for u in utts]))
    assert cfg.train.amp == "none"  # fp32 unless asked: its bf16 tokens read worse zero-shot
    cfg = dataclasses.replace(
        cfg,
        train=fast_train_config(40, 2e-3, warmup_steps=5, max_frames=10_000),
    )
    model, hist = train(cfg, utts, tmp_path / "run", device="cpu", val_utts=utts[:1], cache_features=True)
    assert "val/loss" in hist[-1]
    assert sum(h["loss"] for h in hist[-5:]) / 5 < 0.5 * sum(h["loss"] for h in hist[:5]) / 5
    wav = load_audio(WAVS, 16000)
    toks = model.eval().encode(wav)
    assert toks.vocab_size == 6561 and abs(int(toks.lengths[0]) - 25 * float(wav.durations()[0])) <= 1
    # the extract CLI reads an FSQ folder too
    re = load_speech_tokenizer(str(tmp_path / "run" / "checkpoint-00000040"))
    assert isinstance(re, FSQTokenizer) and torch.equal(re.encode(wav).tokens, toks.tokens)


def test_ctc_rejects_unknown_characters(tmp_path):
    save_audio(tmp_path / "a.wav", torch.zeros(1600), 16000)
    from mmspeech_tokenizer.data import CTCDataset

    with pytest.raises(ValueError, match="not in the CTC vocabulary"):
        CTCDataset([Utterance("a", str(tmp_path / "a.wav"), text="xyz")], ["", "x"], 128)


def test_a_cached_ctc_dataset_serves_the_same_items_without_reading_again(tmp_path):
    from mmspeech_tokenizer.data import CTCDataset

    save_audio(tmp_path / "a.wav", 0.1 * torch.randn(8000), 16000)
    utts = [Utterance("a", str(tmp_path / "a.wav"), text="ab")]
    cached, plain = CTCDataset(utts, ["", "a", "b"], 128, cache=True), CTCDataset(utts, ["", "a", "b"], 128)
    first = cached[0]
    assert torch.equal(first.mel, plain[0].mel) and torch.equal(first.labels, plain[0].labels)
    (tmp_path / "a.wav").unlink()
    assert cached[0] is first  # served from memory: the file is gone
    with pytest.raises(AudioError, match="not found"):
        plain[0]
