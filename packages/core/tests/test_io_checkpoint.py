import json
from dataclasses import dataclass, field

import pytest
import torch
from mmspeech_core import AudioError, CheckpointError, ConfigError, PretrainedMixin, Waveform
from mmspeech_core.audio import load_audio, read_audio, save_audio
from mmspeech_core.config import config_from_dict, config_to_dict, load_config, save_config
from mmspeech_core.data import (
    LengthBatchSampler,
    ManifestError,
    ShardStream,
    ShardWriter,
    Utterance,
    holdout,
    load_shards,
    read_manifest,
    run_extraction,
    split_utterances,
)


@dataclass
class Inner:
    width: int = 4
    rates: tuple[int, ...] = (2, 3)


@dataclass
class TinyConfig:
    dim: int = 3
    name: str = "x"
    scale: float = 1.0
    inner: Inner = field(default_factory=Inner)
    opt: int | None = None


class Tiny(torch.nn.Module, PretrainedMixin):
    checkpoint_kind = "tiny"
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.lin = torch.nn.Linear(config.dim, config.inner.width)


def test_config_round_trip_and_strictness(tmp_path):
    cfg = TinyConfig(dim=5, inner=Inner(width=7, rates=(1, 2, 3)), opt=3)
    save_config(cfg, tmp_path / "c.json")
    assert load_config(TinyConfig, tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="unknown keys"):
        config_from_dict(TinyConfig, {"dimm": 3})
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict(TinyConfig, {"dim": "3"})
    with pytest.raises(ConfigError, match="inner.width"):
        config_from_dict(TinyConfig, {"inner": {"width": 1.5}})
    assert config_from_dict(TinyConfig, {"scale": 2}).scale == 2.0
    assert config_to_dict(cfg)["inner"]["rates"] == (1, 2, 3)


def test_checkpoint_round_trip(tmp_path):
    m = Tiny(TinyConfig(dim=3))
    m.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "meta.json",
        "model.safetensors",
    ]
    m2 = Tiny.from_pretrained(tmp_path / "ck")
    assert m2.config == m.config
    assert torch.equal(m2.lin.weight, m.lin.weight)
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_checkpoint_errors(tmp_path):
    d = tmp_path / "ck"
    Tiny(TinyConfig()).save_pretrained(d)
    # corrupted weights
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupted"):
        Tiny.from_pretrained(d)
    # wrong kind
    Tiny(TinyConfig()).save_pretrained(d)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "kind": "vae"}))
    with pytest.raises(CheckpointError, match="'vae' stage"):
        Tiny.from_pretrained(d)
    # future format version
    (d / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        Tiny.from_pretrained(d)
    (d / "meta.json").write_text(json.dumps(meta))
    # config that does not match the weights
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "dim": 9}))
    with pytest.raises(CheckpointError, match="does not match its config"):
        Tiny.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        Tiny.from_pretrained(d)
    with pytest.raises(CheckpointError, match="not found"):
        Tiny.from_pretrained(tmp_path / "nope")


def test_audio_round_trip_and_errors(tmp_path):
    x = 0.5 * torch.sin(torch.linspace(0, 2000, 24000))
    save_audio(tmp_path / "a.wav", x, 24000)
    y = read_audio(tmp_path / "a.wav")
    assert y.shape == (24000,) and torch.allclose(x, y, atol=1e-4)
    w = load_audio([tmp_path / "a.wav", tmp_path / "a.wav"], 16000)
    assert isinstance(w, Waveform) and w.audio.shape == (2, 16000) and w.sample_rate == 16000
    with pytest.raises(ValueError, match="one item"):
        save_audio(tmp_path / "b.wav", w)
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="cannot decode"):
        read_audio(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "missing.wav")


def test_manifest_and_resumable_extraction(tmp_path):
    save_audio(tmp_path / "a.wav", torch.zeros(800), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    lines = [{"id": f"u{i}", "audio": "a.wav", "text": "hi"} for i in range(5)] + [
        {"id": "bad", "audio": "bad.wav"}
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    utts = read_manifest(tmp_path / "m.jsonl")
    assert [u.id for u in utts] == ["u0", "u1", "u2", "u3", "u4", "bad"]
    assert utts[0].audio == str(tmp_path / "a.wav")

    calls = []

    def process(batch):
        calls.append(len(batch))
        return [torch.tensor([len(x)]) for x in batch]

    out = tmp_path / "out"
    stats = run_extraction(utts, lambda u: read_audio(u.audio), process, out, batch_size=2, shard_size=2)
    assert stats == {"done": 5, "skipped": 0, "failed": 1}
    assert "bad" in (out / "errors-r0.jsonl").read_text()
    feats = load_shards(out)
    assert sorted(feats) == ["u0", "u1", "u2", "u3", "u4"] and feats["u0"].tolist() == [800]
    # resume: nothing left to do but the failed one
    calls.clear()
    stats = run_extraction(utts, lambda u: read_audio(u.audio), process, out, batch_size=2, shard_size=2)
    assert stats == {"done": 0, "skipped": 5, "failed": 1} and calls == []

    (tmp_path / "dup.jsonl").write_text('{"id": "a", "audio": "x"}\n{"id": "a", "audio": "y"}\n')
    with pytest.raises(ManifestError, match="duplicate"):
        read_manifest(tmp_path / "dup.jsonl")
    (tmp_path / "wav.scp").write_text("k1 a.wav\n")
    assert read_manifest(tmp_path / "wav.scp")[0].id == "k1"


def test_torn_index_line_is_redone_and_failures_are_recorded_once(tmp_path, caplog):
    """Issue 11 item 7."""
    from mmspeech_core.data import ShardIndexError

    save_audio(tmp_path / "a.wav", torch.zeros(800), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    utts = [Utterance(f"u{i}", str(tmp_path / "a.wav")) for i in range(4)] + [
        Utterance("bad", str(tmp_path / "bad.wav"))
    ]

    def process(batch):
        return [torch.tensor([len(x)]) for x in batch]

    def extract():
        return run_extraction(utts, lambda u: read_audio(u.audio), process, out, batch_size=2, shard_size=2)

    out = tmp_path / "out"
    extract()
    index = out / "index-r0.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(lines[:-1]) + lines[-1][:9])  # killed while writing the last line
    assert ShardWriter.done_ids(out) == {"u0", "u1", "u2"}
    assert "incomplete last line" in caplog.text
    stats = extract()  # the torn id is extracted again, the index stays readable
    assert stats["done"] == 1 and ShardWriter.done_ids(out) == {"u0", "u1", "u2", "u3"}
    assert sorted(load_shards(out)) == ["u0", "u1", "u2", "u3"]
    assert [json.loads(x)["id"] for x in (out / "errors-r0.jsonl").read_text().splitlines()] == ["bad"]
    index.write_text('{"id": "u0", "shard": "x"}\nnot json\n{"id": "u1", "shard": "x"}\n')
    with pytest.raises(ShardIndexError, match="index-r0.jsonl:2"):
        load_shards(out)


def test_extraction_retries_failed_batch_item_by_item(tmp_path):
    save_audio(tmp_path / "a.wav", torch.zeros(100), 16000)
    (tmp_path / "m.scp").write_text("\n".join(f"u{i} a.wav" for i in range(4)))
    utts = read_manifest(tmp_path / "m.scp")

    def process(batch):
        if len(batch) > 1:
            raise RuntimeError("boom")
        return [torch.zeros(1)]

    stats = run_extraction(utts, lambda u: read_audio(u.audio), process, tmp_path / "o", batch_size=4)
    assert stats["done"] == 4


def test_length_batch_sampler_respects_budget_and_ranks():
    lengths = [5, 50, 7, 60, 8, 45, 6, 55, 9]
    s = LengthBatchSampler(lengths, max_frames=120, shuffle=True, seed=1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 120
    r0 = list(LengthBatchSampler(lengths, 120, rank=0, world_size=2))
    r1 = list(LengthBatchSampler(lengths, 120, rank=1, world_size=2))
    assert len(r0) == len(r1)
    assert set(i for b in r0 + r1 for i in b) == set(range(len(lengths)))


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_stream_reads_whole_shards_gives_ranks_equal_batches_and_resumes_exactly(workers):
    """Issue 14, streaming mode: each rank reads whole shards through a bounded buffer, every item of the
    epoch is read, batches keep the frame budget, ranks get equal counts, and a resumed epoch continues
    with exactly the batches not yet trained on."""
    lengths = [1 + (7 * i) % 5 for i in range(60)]
    shards = [i // 6 for i in range(60)]  # ten shards of six items

    def batches(rank=0, world=2, start=0, epoch=1, workers=workers):
        s = ShardStream(list(range(60)), shards, lengths, torch.tensor, 8, 3, 4, 1, rank, world, workers)
        s.set_epoch(epoch)
        s.set_start(start)
        loader = torch.utils.data.DataLoader(s, batch_size=None, num_workers=workers)
        return [b.tolist() for b in loader]

    r0, r1 = batches(0), batches(1)
    assert len(r0) == len(r1) > 0
    assert all(max(lengths[i] for i in b) * len(b) <= 8 and len(b) <= 3 for b in r0 + r1)
    assert {i for b in r0 + r1 for i in b} == set(range(60))  # nothing lost
    assert not {shards[i] for b in r0 for i in b} & {shards[i] for b in r1 for i in b}  # whole shards
    assert batches(0, start=5) == r0[5:]
    assert batches(0, epoch=2) != r0  # a new order each epoch
    one = batches(world=1, workers=0)
    first_window, n = [], 0
    while n < 4:  # the first 4 items out of the buffer were among the first 8 read: at most 2 shards
        first_window += one.pop(0)
        n = len(first_window)
    assert len({shards[i] for i in first_window}) <= 2
    with pytest.raises(ValueError, match="loader worker"):
        s = ShardStream(list(range(60)), shards, lengths, torch.tensor, 8, num_workers=workers)
        next(iter(torch.utils.data.DataLoader(s, batch_size=None, num_workers=1 if workers else 2)))


def test_holdout_is_deterministic_and_stable_under_growth():
    ids = [f"utt{i}" for i in range(2000)]
    train, val = holdout(ids, 0.1)
    assert sorted(train + val) == sorted(ids) and not set(train) & set(val)
    assert 120 < len(val) < 280
    assert holdout(ids, 0.1) == (train, val)
    # adding utterances never moves an existing one across the split
    _, val2 = holdout(ids + [f"new{i}" for i in range(500)], 0.1)
    assert set(val) <= set(val2)
    assert holdout(ids, 0.0)[1] == []
    with pytest.raises(ValueError):
        holdout(ids, 1.0)
    tr, va = split_utterances([Utterance(i, "x.wav") for i in ids[:50]], 0.0)
    assert len(tr) == 50 and va is None


def test_trainer_validation_is_reproducible(tmp_path):
    from mmspeech_core.training import TrainConfig, Trainer

    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_loss(self, batch):
            return {"loss": (self.w * batch + torch.rand(())).mean()}  # random, as flow losses are

    t = Trainer(Noisy(), TrainConfig(amp="none"), tmp_path)
    val = [torch.ones(3), torch.zeros(3)]
    a, b = t.evaluate(val), t.evaluate(val)
    assert a == b  # losses that draw random numbers still compare across evaluations


def test_extraction_records_its_model_and_refuses_to_mix_two(tmp_path):
    """Issue 11 item 4: a feature folder knows which model made it."""
    from mmspeech_core.data import extract_features, features_fingerprint

    save_audio(tmp_path / "a.wav", torch.zeros(1600), 16000)
    utts = [Utterance("u0", str(tmp_path / "a.wav"))]

    class Encoder:
        sample_rate = 16000

        def __init__(self, fp):
            self.fp = fp

        def fingerprint(self):
            return self.fp

        def encode(self, wav):
            from mmspeech_core import SpeechTokens

            return SpeechTokens.from_list([torch.zeros(2, dtype=torch.long)], 25.0)

    extract_features(Encoder("abc"), utts, tmp_path / "out")
    assert features_fingerprint(tmp_path / "out") == "abc"
    with pytest.raises(ValueError, match="another model"):
        extract_features(Encoder("xyz"), utts, tmp_path / "out")


def _write_features(out, n=7, shard_size=3, **kw):
    g = torch.Generator().manual_seed(0)
    feats = {
        f"u{i}": (
            torch.randint(0, 6561, (5 + i,), generator=g),
            torch.randn(4, 10 + 2 * i, generator=g),
        )
        for i in range(n)
    }
    tok, lat = ShardWriter(out / "tok", shard_size, **kw), ShardWriter(out / "lat", shard_size, **kw)
    for k, (t, x) in feats.items():
        tok.add(k, t)
        lat.add(k, x)
    tok.flush()
    lat.flush()
    return feats


def test_feature_store_reads_lazily_from_compact_shards(tmp_path):
    """Issue 14: only the index is in memory; tokens are int16, latents float16; shapes without reading."""
    import pickle

    from mmspeech_core.data import FeatureStore

    feats = _write_features(tmp_path)
    tok, lat = FeatureStore(tmp_path / "tok", max_open=1), FeatureStore(tmp_path / "lat", max_open=1)
    assert len(tok) == 7 and "u3" in tok and "nope" not in tok and sorted(tok) == sorted(feats)
    assert json.loads((tmp_path / "lat/index-r0.jsonl").read_text().splitlines()[1])["shape"] == [4, 12]
    for k, (t, x) in feats.items():
        assert tok.length(k) == len(t) and lat.shape(k) == tuple(x.shape)
        assert tok[k].dtype == torch.int16 and torch.equal(tok[k].long(), t)
        assert lat[k].dtype == torch.float16 and torch.allclose(lat[k].float(), x, atol=2e-3, rtol=1e-3)
        assert len(lat._open) <= 1  # bounded open shards however many are read
    clone = pickle.loads(pickle.dumps(lat))  # DataLoader workers: no open files travel
    assert not clone._open and torch.equal(clone["u6"], lat["u6"])
    # folders written before the index had shapes: shapes come from the shard headers
    index = tmp_path / "lat/index-r0.jsonl"
    index.write_text(
        "".join(
            json.dumps({k: v for k, v in json.loads(x).items() if k != "shape"}) + "\n"
            for x in index.read_text().splitlines()
        )
    )
    assert FeatureStore(tmp_path / "lat").shape("u5") == (4, 20)
    exact = _write_features(tmp_path / "f32", float_dtype=torch.float32)
    assert torch.equal(load_shards(tmp_path / "f32/lat")["u2"], exact["u2"][1])
    (tmp_path / "lat" / sorted(p.name for p in (tmp_path / "lat").glob("shard-*"))[0]).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="missing or corrupted"):
        FeatureStore(tmp_path / "lat")["u0"]


def test_compact_picks_the_narrowest_integer_type():
    from mmspeech_core.data import compact

    assert compact(torch.tensor([0, 6560])).dtype == torch.int16
    assert compact(torch.tensor([0, 70_000])).dtype == torch.int32
    assert compact(torch.tensor([0, 2**40])).dtype == torch.int64
    assert compact(torch.tensor([], dtype=torch.long)).dtype == torch.int16
    assert compact(torch.randn(3), torch.bfloat16).dtype == torch.bfloat16


def test_resample_keeps_its_kernel_and_gives_torchaudios_samples_bit_for_bit():
    """The kernel is built once per rate pair, dtype and device; every output equals torchaudio's functional
    resample (which builds it on every call), for batched shapes and both float dtypes."""
    import torchaudio.functional as AF
    from mmspeech_core.audio import _resampler, resample

    g = torch.Generator().manual_seed(0)
    _resampler.cache_clear()
    for orig, new in [(22050, 24000), (24000, 16000), (44100, 16000), (8000, 22050)]:
        for shape in [(int(1.3 * orig),), (2, 3, 777)]:
            for dtype in (torch.float32, torch.float64):
                x = torch.randn(*shape, generator=g, dtype=dtype)
                y = resample(x, orig, new)
                assert y.dtype == dtype and y.shape[:-1] == x.shape[:-1]
                assert torch.equal(y, AF.resample(x, orig, new))
    assert _resampler.cache_info().currsize == 8  # 4 rate pairs x 2 dtypes: one kernel each
    x = torch.randn(100, generator=g)
    assert resample(x, 16000, 16000) is x
