import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import s3tokenizer
import torch
from mmspeech_core import Latents, Waveform, read_audio, save_audio
from mmspeech_core.data import Utterance, extract_features, load_shards, read_manifest
from mmspeech_core.training import fast_train_config
from mmspeech_vae.config import VAEModelConfig, tiny_config
from mmspeech_vae.infer import latent_stats
from mmspeech_vae.losses import kl_weight, phase_loss
from mmspeech_vae.model import DACVAE
from mmspeech_vae.train import train

ASSETS = Path(s3tokenizer.__file__).parent / "assets"
WAVS = sorted(ASSETS.glob("*.wav"))


def _tiny_model(**kw):
    cfg = tiny_config()
    return DACVAE(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **kw)))


@pytest.mark.parametrize("rates", [(2, 4, 6, 10), (2, 4, 5, 8)])  # hop 480 (50 Hz) and 320 (75 Hz)
def test_exact_lengths_for_any_hop(rates):
    torch.manual_seed(0)
    m = _tiny_model(encoder_rates=rates, decoder_rates=rates[::-1]).eval()
    hop = m.hop
    assert m.frame_rate == 24000 / hop
    wav = Waveform.from_list([torch.randn(5 * 24000), torch.randn(hop * 7 + 1)], 24000)
    lat = m.encode(wav)
    assert lat.lengths.tolist() == [5 * 24000 // hop, 8] and lat.channels == 8
    out = m.decode(lat)
    assert out.lengths.tolist() == [5 * 24000, 8 * hop]  # frames × hop exactly (dac alone loses samples)
    assert out.audio.shape == (2, 5 * 24000)


SPECTRAL = dict(encoder="mel", decoder="istft")
SUBFRAMES = dict(SPECTRAL, spectral_subframes=4)  # four STFT frames per latent frame
KINDS = pytest.mark.parametrize("kind", [{}, SPECTRAL, SUBFRAMES], ids=["dac", "spectral", "subframes"])


@KINDS
def test_batched_equals_unbatched_and_resampling(kind):
    torch.manual_seed(0)
    m = _tiny_model(**kind).eval()
    if kind == SUBFRAMES:  # window 4 × 120 samples; the encoder reads a latent frame's four mel frames
        assert (m.decoder.n_fft, m.decoder.stft_hop, m.encoder.inp.in_channels) == (480, 120, 4 * 80)
        assert m.decoder.head.out_features == 4 * 482  # log-magnitude and phase of 241 bins, per STFT frame
    a, b = torch.randn(24000), torch.randn(9000)
    both = m.encode(Waveform.from_list([a, b], 24000))
    alone = m.encode(Waveform.from_list([b], 24000))
    assert torch.allclose(both.unbatch()[1], alone.unbatch()[0], atol=1e-5)
    dec = m.decode(both)
    assert torch.allclose(dec.unbatch()[1], m.decode(alone).unbatch()[0], atol=1e-5)
    sixteen = m.encode(Waveform.from_list([a[:16000]], 16000))  # resampled to 24 kHz first
    assert sixteen.lengths.tolist() == [50]


def test_bad_inputs():
    m = _tiny_model().eval()
    with pytest.raises(ValueError, match="channels"):
        m.decode(Latents.from_list([torch.zeros(3, 4)]))
    with pytest.raises(ValueError, match="Hz"):
        m.decode(Latents.from_list([torch.zeros(8, 4)], frame_rate=75))
    with pytest.raises(ValueError, match="same product"):
        VAEModelConfig(encoder_rates=(2, 4), decoder_rates=(4, 4))
    with pytest.raises(ValueError, match="multiple of hop"):
        m.posterior(torch.zeros(1, 100))


def test_kl_is_the_gaussian_kl_and_warms_up():
    m = _tiny_model()
    out = m(torch.randn(2, 4800))
    mean, logvar = out["mean"], out["logvar"]
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).mean()
    assert torch.allclose(out["kl"], ref, atol=1e-5)
    lc = tiny_config().loss
    assert kl_weight(0, lc) == lc.kl_start and kl_weight(10**6, lc) == lc.kl_weight
    assert lc.kl_start < kl_weight(lc.kl_warmup_steps // 2, lc) < lc.kl_weight


def test_phase_loss_compares_phase_differences_not_magnitude_or_offset():
    torch.manual_seed(0)
    t = torch.arange(9600) / 24000
    voice = sum(torch.sin(2 * torch.pi * 150 * k * t + k) / k for k in range(1, 20))[None]  # 150 Hz harmonics
    windows = (480, 960)
    assert phase_loss(voice, voice, windows) < 1e-3
    assert phase_loss(0.3 * voice, voice, windows) < 1e-3  # louder or softer: same phase
    assert phase_loss(-voice, voice, windows) < 1e-3  # a constant phase offset is not heard
    # the same magnitudes with each harmonic's phase drifting: what a made-up phase sounds like
    drift = sum(torch.sin(2 * torch.pi * 150 * k * t + k + 40 * k * t**2) / k for k in range(1, 20))[None]
    noise = torch.randn_like(voice)
    assert phase_loss(drift, voice, windows) > 0.05 and phase_loss(noise, voice, windows) > 0.3
    silent = torch.zeros_like(voice, requires_grad=True)  # no phase at all: bounded loss, finite gradient
    loss = phase_loss(silent, voice, windows)
    loss.backward()
    assert 0.9 < float(loss.detach()) <= 1.0 and torch.isfinite(silent.grad).all()


def test_snake_alpha_keeps_dac_init():
    # the seed re-initialised Snake alpha with Xavier; dac initialises it to ones
    m = _tiny_model()
    alphas = [p for n, p in m.named_parameters() if n.endswith("alpha")]
    assert alphas and all(torch.equal(a, torch.ones_like(a)) for a in alphas)


def test_convs_start_as_dacs_do():
    """Review item 11: dac's init_weights as DAC() applies it (zero conv biases; trunc-normal weights that
    weight norm then recomputes)."""
    m = _tiny_model()
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv1d) and c.bias is not None]
    assert convs and all(torch.count_nonzero(c.bias) == 0 for c in convs)


def test_clips_are_dacs_and_come_from_the_config(tmp_path, monkeypatch):
    """Review item 11: generator 1e3 (train.grad_clip), discriminator 10 (loss.disc_grad_clip)."""
    from mmspeech_vae.config import VAEConfig

    assert VAEConfig().train.grad_clip == 1e3 and VAEConfig().loss.disc_grad_clip == 10.0
    seen = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        seen.append(max_norm)
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    save_audio(tmp_path / "clip.wav", read_audio(WAVS[0], 24000)[:9600], 24000)
    cfg = _cfg(1, disc_start_step=0, segment_s=0.4, disc_grad_clip=7.0)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_clip=123.0))
    train(cfg, [Utterance("a", str(tmp_path / "clip.wav"))], tmp_path / "run", device="cpu")
    assert sorted(seen) == [7.0, 123.0]


def _cfg(steps, **loss):
    cfg = tiny_config()
    return dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, **loss),
        train=fast_train_config(steps, 2e-3, betas=(0.8, 0.99), warmup_steps=2, max_batch=2),
    )


def test_overfit_one_clip_then_resume_with_gan(tmp_path):
    torch.manual_seed(0)
    clip = read_audio(WAVS[0], 24000)[:9600]  # 0.4 s of real speech
    save_audio(tmp_path / "clip.wav", clip, 24000)
    utts = [Utterance("a", str(tmp_path / "clip.wav"))]
    cfg = _cfg(60, disc_start_step=10**6, segment_s=0.4)  # reconstruction only: fast and deterministic
    model, hist = train(cfg, utts, tmp_path / "run", device="cpu", val_utts=utts)
    assert hist[-1]["val/mel"] < hist[0]["mel"] and "val/kl" in hist[-1]
    first, last = hist[0]["mel"], sum(h["mel"] for h in hist[-5:]) / 5
    assert last < 0.6 * first
    assert "disc" not in hist[0]
    # GAN phase: resume from step 60 with the discriminator on, and its state is checkpointed
    cfg2 = _cfg(63, disc_start_step=0, segment_s=0.4)
    model2, hist2 = train(cfg2, utts, tmp_path / "run", device="cpu")
    assert len(hist2) == 63 and hist2[:60] == hist  # the whole run's metrics, the resumed steps included
    assert all("disc" in h and "adv" in h for h in hist2[60:])
    state = torch.load(tmp_path / "run" / "checkpoint-00000063" / "train_state.pt", weights_only=False)
    assert "discriminator" in state and state["step"] == 63
    re = DACVAE.from_pretrained(tmp_path / "run" / "checkpoint-00000063")
    assert torch.equal(re.state_dict()["encoder.block.0.bias"], model2.state_dict()["encoder.block.0.bias"])


def test_the_spectral_vae_learns_saves_and_loads(tmp_path):
    """The spectral encoder / decoder (here with two STFT frames per latent frame and the phase loss):
    reconstruction improves, and the config's choice of encoder and decoder travels with the weights (a
    reload decodes the same samples)."""
    torch.manual_seed(0)
    clip = read_audio(WAVS[0], 24000)[:9600]
    save_audio(tmp_path / "clip.wav", clip, 24000)
    utts = [Utterance("a", str(tmp_path / "clip.wav"))]
    cfg = _cfg(40, disc_start_step=10**6, segment_s=0.4, phase_weight=8.0)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **SPECTRAL, spectral_subframes=2))
    model, hist = train(cfg, utts, tmp_path / "run", device="cpu")
    first, last = hist[0]["mel"], sum(h["mel"] for h in hist[-5:]) / 5
    assert last < 0.6 * first
    assert all(0 <= h["phase"] <= 1 for h in hist)  # trained with the phase loss, which stays in range
    re = DACVAE.from_pretrained(tmp_path / "run" / "checkpoint-00000040").eval()
    m = re.config.model
    assert (m.encoder, m.decoder, m.spectral_subframes) == ("mel", "istft", 2)
    lat = model.eval().encode(Waveform.from_list([clip], 24000))
    torch.testing.assert_close(re.decode(lat).audio, model.decode(lat).audio, atol=0, rtol=0)
    with pytest.raises(ValueError, match="decoder must be"):
        VAEModelConfig(decoder="vocos")
    with pytest.raises(ValueError, match="divide hop 480"):
        VAEModelConfig(spectral_subframes=7)


def test_fp16_amp_is_refused(tmp_path):
    cfg = _cfg(1)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp="fp16"))
    with pytest.raises(ValueError, match="bf16"):
        train(cfg, [Utterance("a", str(WAVS[0]))], tmp_path / "run", device="cpu")


def test_extract_and_stats(tmp_path):
    torch.manual_seed(0)
    m = _tiny_model().eval()
    m.save_pretrained(tmp_path / "vae")
    (tmp_path / "bad.wav").write_bytes(b"nope")
    lines = [json.dumps({"id": w.stem, "audio": str(w)}) for w in WAVS] + [
        json.dumps({"id": "bad", "audio": "bad.wav"})
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    from mmspeech_vae.cli import main

    command = f"extract --model {tmp_path / 'vae'} --manifest {tmp_path / 'm.jsonl'} --output-dir {tmp_path / 'lat'} --device cpu"
    assert main(shlex.split(command)) == 0
    feats = load_shards(tmp_path / "lat")
    assert sorted(feats) == sorted(w.stem for w in WAVS)
    for w in WAVS:
        n = len(read_audio(w, 24000))
        assert feats[w.stem].shape == (8, -(-n // 480))
    assert "bad" in (tmp_path / "lat" / "errors-r0.jsonl").read_text()
    s = latent_stats(tmp_path / "lat", tmp_path / "stats.json")
    assert len(s["mean"]) == 8 and json.loads((tmp_path / "stats.json").read_text())["frames"][0] == sum(
        f.shape[-1] for f in feats.values()
    )
    # of some items only (a training split): theirs, from the CLI too; an id without latents is an error
    one = WAVS[0].stem
    (tmp_path / "one.jsonl").write_text(json.dumps({"id": one, "audio": str(WAVS[0])}) + "\n")
    command = f"stats --latents {tmp_path / 'lat'} --out {tmp_path / 'one.json'} --manifest {tmp_path / 'one.jsonl'}"
    assert main(shlex.split(command)) == 0
    s1 = json.loads((tmp_path / "one.json").read_text())
    x = feats[one].double()
    mean, std = (torch.tensor(s1[k], dtype=torch.float64) for k in ("mean", "std"))
    assert (
        s1["frames"] == [x.shape[-1]] and torch.allclose(mean, x.mean(-1)) and torch.allclose(std, x.std(-1))
    )
    with pytest.raises(ValueError, match="1 of the 2 ids"):
        latent_stats(tmp_path / "lat", ids=[one, "bad"])
    # resumable: a second run does nothing new
    stats = extract_features(m, read_manifest(tmp_path / "m.jsonl"), tmp_path / "lat")
    assert stats["done"] == 0 and stats["skipped"] == 2


@KINDS
def test_a_batch_of_different_lengths_decodes_in_a_few_calls_as_if_alone(kind):
    """Issue 17 item 3: one padded call (plus one call for the tails of the shorter items, and one per
    length under 2 × context) instead of one call per distinct length; padding never reaches an item.
    For the spectral decoder too: its context counts the frames its STFT windows span."""
    torch.manual_seed(0)
    m = _tiny_model(**kind).eval()
    if kind:  # the blocks start near the identity: make them matter, so a short context would show
        for p in m.decoder.parameters():
            p.data.normal_(0, 0.3)
    ctx, c = m.decoder_context, m.config.model.latent_dim
    # four STFT frames a latent frame: its larger head's float rounding reaches 1.7e-6 on samples of ~0.7
    rtol = 1e-5 if kind == SUBFRAMES else 0.0
    lens = [2 * ctx + 10, 2 * ctx + 1, 5, 2 * ctx + 10, 2 * ctx, 2 * ctx + 4, 2 * ctx - 3]
    lat = Latents.from_list([torch.randn(c, n) for n in lens], m.frame_rate)
    calls = []
    hook = m.decoder.register_forward_hook(lambda *_: calls.append(1))
    out = m.decode(lat)
    hook.remove()
    assert len(calls) == 4  # padded batch, the 2·ctx tails (3 items), the 5- and 2·ctx−3-frame items alone
    for i, n in enumerate(lens):
        alone = m.decode(Latents.from_list([lat.data[i, :, :n]], m.frame_rate)).unbatch()[0]
        assert out.unbatch()[i].shape == alone.shape == (n * m.hop,)
        torch.testing.assert_close(out.unbatch()[i], alone, atol=1e-6, rtol=rtol)
