import dataclasses

import pytest
import torch
from mmspeech_core import Latents, SpeakerEmbedding, SpeechTokens
from mmspeech_core.training import fast_train_config
from mmspeech_flow.config import FlowInferConfig, tiny_config
from mmspeech_flow.data import FlowDataset
from mmspeech_flow.model import FlowModel
from mmspeech_flow.train import train

pytestmark = pytest.mark.gpu


def test_cuda_matches_cpu():
    torch.manual_seed(0)
    m = FlowModel(tiny_config()).eval()
    toks = SpeechTokens.from_list([torch.randint(0, 64, (12,)), torch.randint(0, 64, (7,))])
    ref = Latents.from_list([torch.randn(8, 30), torch.randn(8, 20)])
    inf = FlowInferConfig(steps=5)
    cpu = m.generate(toks, m.embed_speaker(ref), seed=0, infer=inf)
    g = m.to("cuda")
    gpu = g.generate(toks, g.embed_speaker(ref), seed=0, infer=inf)
    assert gpu.data.device.type == "cuda"
    assert torch.allclose(gpu.data.cpu(), cpu.data, atol=1e-3)
    for solver in ("midpoint", "rk4", "dopri5"):
        out = g.generate(
            toks, SpeakerEmbedding(torch.zeros(2, 16)), seed=0, infer=FlowInferConfig(solver=solver, steps=4)
        )
        assert torch.isfinite(out.data).all()


def test_bf16_amp_training_on_cuda(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tokens = {f"u{i}": torch.randint(0, 64, (10,), generator=g) for i in range(4)}
    latents = {k: torch.randn(8, 20, generator=g) for k in tokens}
    ds = FlowDataset(tokens, latents, 2, {k: "s" for k in tokens})
    cfg = tiny_config()
    cfg = dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, immiscible="batch", contrastive_lambda=0.05),
        train=fast_train_config(30, 1e-3, warmup_steps=2, amp="bf16", max_frames=1000),
    )
    model, hist = train(cfg, ds, tmp_path / "run", device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert hist[-1]["fm"] < hist[0]["fm"]
    FlowModel.from_pretrained(tmp_path / "run" / "checkpoint-00000030", device="cpu")


def test_cuda_stream_equals_offline_chunked():
    """Issue 15 on CUDA: the cached-KV stream (SDPA's fast kernels, no mask) matches generate(chunked)."""
    from mmspeech_flow.model import FlowPrompt

    torch.manual_seed(0)
    m = FlowModel(tiny_config()).eval()
    for p in m.parameters():  # AdaLN-zero starts every block as identity: make the blocks do something
        if not p.abs().sum():
            p.data.normal_(0, 0.05)
    m = m.to("cuda")
    c = m.config.model
    tokens = torch.randint(0, c.vocab_size, (41,))
    spk = SpeakerEmbedding(torch.randn(1, c.spk_dim))
    prompt = FlowPrompt(
        SpeechTokens.from_list([torch.randint(0, c.vocab_size, (7,))]),
        Latents.from_list([torch.randn(c.latent_dim, 7 * c.ratio)]),
    )
    infer = FlowInferConfig(steps=4, solver="midpoint", cfg_rate=0.7)
    offline = m.generate(SpeechTokens.from_list([tokens]), spk, prompt, infer, seed=3, chunked=True)
    stream = m.stream(spk, prompt, infer, seed=3)
    pieces = [stream.advance(tokens[:n]) for n in (5, 13, 30)] + [stream.advance(tokens, last=True)]
    streamed = torch.cat(pieces, dim=-1)
    assert streamed.device.type == "cuda"
    assert torch.allclose(streamed, offline.unbatch()[0], atol=1e-4)


def test_a_captured_first_call_equals_eager_and_interleaved_streams_keep_their_own_caches():
    """Issue 15: stream A's first chunk runs eagerly (a shape seen once), B's captures a CUDA graph, C's
    replays it, overwriting the buffers B's call left; yet B (copied out) continues to its offline
    latents, as A and C do, and each first chunk equals the eager path's."""
    torch.manual_seed(0)
    m = FlowModel(tiny_config()).eval()
    for p in m.parameters():
        if not p.abs().sum():
            p.data.normal_(0, 0.05)
    m = m.to("cuda")
    c = m.config.model
    tokens = torch.randint(0, c.vocab_size, (3, 23))
    spk = SpeakerEmbedding(torch.randn(3, c.spk_dim))
    infer = FlowInferConfig(steps=4, solver="euler", cfg_rate=0.7)
    eager_infer = dataclasses.replace(infer, cuda_graph=False)
    streams = [m.stream(SpeakerEmbedding(spk.vectors[i : i + 1]), None, infer, seed=i) for i in range(3)]
    pieces: list[list[torch.Tensor]] = [[], [], []]
    for n in (9, 17):
        for i in range(3):
            pieces[i].append(streams[i].advance(tokens[i, :n]))
    (call,) = m.graphs.calls.values()
    assert call.graph is not None  # captured at the second stream, replayed for the third
    for i in range(3):
        pieces[i].append(streams[i].advance(tokens[i], last=True))
        row = SpeakerEmbedding(spk.vectors[i : i + 1])
        offline = m.generate(SpeechTokens.from_list([tokens[i]]), row, None, infer, seed=i, chunked=True)
        assert torch.allclose(torch.cat(pieces[i], dim=-1), offline.unbatch()[0], atol=1e-4), i
        eager = m.stream(row, None, eager_infer, seed=i)
        assert torch.allclose(eager.advance(tokens[i, :9]), pieces[i][0], atol=1e-5), i
