import dataclasses

import pytest
import torch
from mmspeech_core import FlowPrompt, Latents, SpeakerEmbedding, SpeechTokens
from mmspeech_core.training import fast_train_config
from mmspeech_flow.config import FlowInferConfig, FlowLossConfig, FlowModelConfig, tiny_config
from mmspeech_flow.data import FlowBatch, FlowDataset, align, collate
from mmspeech_flow.infer import time_grid
from mmspeech_flow.losses import flow_matching_loss, immiscible_batch, immiscible_knn, masked_sq_dist
from mmspeech_flow.model import FlowModel
from mmspeech_flow.train import train


def _batch(ratio=2, lengths=(6, 4), c=8, vocab=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    toks = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    lats = [torch.randn(c, n * ratio, generator=g) for n in lengths]
    return FlowBatch(SpeechTokens.from_list(toks), Latents.from_list(lats), Latents.from_list(lats[::-1]))


def test_ratio_comes_from_config_and_is_validated():
    assert FlowModelConfig(token_rate=25, latent_rate=75).ratio == 3
    with pytest.raises(ValueError, match="whole number"):
        FlowModelConfig(token_rate=25, latent_rate=60)


@pytest.mark.parametrize("ratio", [2, 3])
def test_generate_shapes_and_padding(ratio):
    torch.manual_seed(0)
    m = FlowModel(tiny_config(latent_rate=25.0 * ratio)).eval()
    b = _batch(ratio)
    spk = m.embed_speaker(b.reference)
    assert spk.vectors.shape == (2, 16) and torch.allclose(spk.vectors.norm(dim=-1), torch.ones(2))
    out = m.generate(b.tokens, spk, seed=0, infer=FlowInferConfig(steps=3))
    assert out.data.shape == (2, 8, 6 * ratio) and out.lengths.tolist() == [6 * ratio, 4 * ratio]
    assert out.frame_rate == 25.0 * ratio
    assert out.data[1, :, 4 * ratio :].abs().sum() == 0


def test_batched_equals_unbatched():
    torch.manual_seed(0)
    m = FlowModel(tiny_config()).eval()
    b = _batch()
    spk = m.embed_speaker(b.reference)
    out = m.generate(b.tokens, spk, seed=[5, 9], infer=FlowInferConfig(steps=4))
    for i, s in enumerate([5, 9]):
        one = m.generate(
            b.tokens.select(i),
            SpeakerEmbedding(spk.vectors[i : i + 1]),
            seed=s,
            infer=FlowInferConfig(steps=4),
        )
        assert torch.allclose(one.data[0], out.unbatch()[i], atol=1e-5)
        # speaker embedding of a padded batch item equals its unpadded embedding
        alone = m.embed_speaker(b.reference.select(i))
        assert torch.allclose(alone.vectors[0], spk.vectors[i], atol=1e-5)


def test_chunk_mode_is_causal_beyond_lookahead():
    torch.manual_seed(0)
    cfg = tiny_config(chunk_size=4, lookahead=2)
    m = FlowModel(cfg).eval()
    toks = torch.randint(0, 64, (14,))
    spk = SpeakerEmbedding(torch.nn.functional.normalize(torch.randn(1, 16), dim=-1))
    full = m.generate(
        SpeechTokens.from_list([toks]), spk, seed=3, chunked=True, infer=FlowInferConfig(steps=3)
    )
    # chunk 0 (tokens 0..3) needs tokens up to 3 + lookahead = 5: a 6-token prefix gives the same frames
    pre = m.generate(
        SpeechTokens.from_list([toks[:6]]), spk, seed=3, chunked=True, infer=FlowInferConfig(steps=3)
    )
    r = cfg.model.ratio
    assert torch.allclose(full.data[0, :, : 4 * r], pre.data[0, :, : 4 * r], atol=1e-5)
    # while full attention lets later tokens change early frames
    f2 = m.generate(
        SpeechTokens.from_list([toks]), spk, seed=3, chunked=False, infer=FlowInferConfig(steps=3)
    )
    p2 = m.generate(
        SpeechTokens.from_list([toks[:6]]), spk, seed=3, chunked=False, infer=FlowInferConfig(steps=3)
    )
    assert not torch.allclose(f2.data[0, :, : 4 * r], p2.data[0, :, : 4 * r], atol=1e-4)


@pytest.mark.parametrize(
    "solver, cfg_rate, left_chunks", [("euler", 0.0, 0), ("rk4", 0.7, 0), ("midpoint", 0.7, 2)]
)
@pytest.mark.parametrize("prompt_len", [0, 6, 7])
def test_streamed_chunks_equal_the_offline_chunked_latents(solver, cfg_rate, left_chunks, prompt_len):
    """Issue 15: FlowStream computes only new chunks (cached keys/values) yet matches generate(chunked),
    also when chunks attend to a bounded number of earlier ones (left_chunks: the caches drop the rest)."""
    torch.manual_seed(0)
    cfg = tiny_config()
    m = FlowModel(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, left_chunks=left_chunks)))
    m = m.eval()
    for p in m.parameters():  # AdaLN-zero starts every block as identity: make the blocks do something
        if not p.abs().sum():
            p.data.normal_(0, 0.05)
    c = m.config.model
    tokens = torch.randint(0, c.vocab_size, (41,))
    spk = SpeakerEmbedding(torch.randn(1, c.spk_dim))
    prompt = None
    if prompt_len:
        prompt = FlowPrompt(
            SpeechTokens.from_list([torch.randint(0, c.vocab_size, (prompt_len,))]),
            Latents.from_list([torch.randn(c.latent_dim, prompt_len * c.ratio)]),
        )
    infer = FlowInferConfig(steps=4, solver=solver, cfg_rate=cfg_rate)
    offline = m.generate(SpeechTokens.from_list([tokens]), spk, prompt, infer, seed=3, chunked=True)
    stream = m.stream(spk, prompt, infer, seed=3)
    pieces = [stream.advance(tokens[:n]) for n in (1, 5, 6, 13, 30, 38)]
    pieces.append(stream.advance(tokens, last=True))
    assert sum(p.shape[-1] for p in pieces[:2]) == 0 or prompt_len  # nothing final before a whole chunk
    assert pieces[-1].shape[-1] > 0 and stream.done == len(tokens) + prompt_len
    streamed = torch.cat(pieces, dim=-1)
    assert streamed.shape == offline.unbatch()[0].shape
    assert torch.allclose(streamed, offline.unbatch()[0], atol=1e-5)
    unchunked = m.generate(SpeechTokens.from_list([tokens]), spk, prompt, infer, seed=3)
    assert not torch.allclose(streamed, unchunked.unbatch()[0], atol=1e-3)  # the test can tell them apart
    if left_chunks:  # the bound changes the output, and the caches keep only the window
        m.config.model.left_chunks = 0
        unbounded = m.generate(SpeechTokens.from_list([tokens]), spk, prompt, infer, seed=3, chunked=True)
        assert not torch.allclose(streamed, unbounded.unbatch()[0], atol=1e-3)
        window = left_chunks * c.chunk_size * c.ratio
        assert all(kv.kept <= window for evaluation in stream.state.estimator for kv in evaluation)
        assert all(kv.kept <= left_chunks * c.chunk_size for kv in stream.state.encoder.pre)
    with pytest.raises(ValueError, match="fixed-step"):
        m.stream(spk, prompt, FlowInferConfig(solver="dopri5"))


@pytest.mark.parametrize("cfg_rate, left_chunks", [(0.0, 0), (0.7, 2)])
@pytest.mark.parametrize("prompt_len", [0, 7])
def test_a_batch_of_streams_equals_each_stream_and_a_row_that_ends_early_splits_off(
    cfg_rate, left_chunks, prompt_len
):
    """Issue 15: concurrent streams advance as one batch (rows), each row's latents equal its own offline
    chunk-causal generation; a row that ends first goes on alone (split) while the others continue."""
    torch.manual_seed(0)
    cfg = tiny_config()
    m = FlowModel(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, left_chunks=left_chunks)))
    m = m.eval()
    for p in m.parameters():
        if not p.abs().sum():
            p.data.normal_(0, 0.05)
    c = m.config.model
    tokens = torch.randint(0, c.vocab_size, (3, 41))
    ends = [41, 41, 29]  # row 2 ends first
    spk = SpeakerEmbedding(torch.randn(3, c.spk_dim))
    prompt = None
    if prompt_len:
        prompt = FlowPrompt(
            SpeechTokens.from_list([torch.randint(0, c.vocab_size, (prompt_len,)) for _ in range(3)]),
            Latents.from_list([torch.randn(c.latent_dim, prompt_len * c.ratio + i) for i in range(3)]),
        )
    infer = FlowInferConfig(steps=3, solver="midpoint", cfg_rate=cfg_rate)
    seeds = [3, 8, 5]
    stream = m.stream(spk, prompt, infer, seed=seeds)
    pieces: list[list[torch.Tensor]] = [[], [], []]
    for n in (1, 6, 13, 22):
        for i, x in enumerate(stream.advance(tokens[:, :n])):
            pieces[i].append(x)
    alone = stream.split([2])
    assert len(alone) == 1 and len(stream) == 2
    pieces[2].append(alone.advance(tokens[2, : ends[2]], last=True))
    for n in (30, 38):
        for i, x in enumerate(stream.advance(tokens[:2, :n])):
            pieces[i].append(x)
    for i, x in enumerate(stream.advance(tokens[:2], last=True)):
        pieces[i].append(x)
    for i in range(3):
        one = None
        if prompt is not None:
            one = FlowPrompt(
                SpeechTokens.from_list([prompt.tokens.unbatch()[i]]),
                Latents.from_list([prompt.latents.unbatch()[i]]),
            )
        row = SpeakerEmbedding(spk.vectors[i : i + 1])
        offline = m.generate(
            SpeechTokens.from_list([tokens[i, : ends[i]]]), row, one, infer, seed=seeds[i], chunked=True
        ).unbatch()[0]
        streamed = torch.cat(pieces[i], dim=-1)
        assert streamed.shape == offline.shape
        assert torch.allclose(streamed, offline, atol=1e-5), i
    with pytest.raises(ValueError, match="not distinct positions"):
        stream.split([2])
    with pytest.raises(ValueError, match="token rows"):
        stream.advance(tokens)
    if prompt is not None:
        uneven = FlowPrompt(
            SpeechTokens.from_list(
                [torch.zeros(prompt_len, dtype=torch.long), torch.zeros(prompt_len + 1, dtype=torch.long)]
            ),
            Latents.from_list([torch.randn(c.latent_dim, 2 * prompt_len * c.ratio)] * 2),
        )
        with pytest.raises(ValueError, match="same length"):
            m.stream(SpeakerEmbedding(spk.vectors[:2]), uneven, infer)


@pytest.mark.parametrize("prompt_len", [0, 6])
def test_first_calls_through_the_graph_buffers_equal_offline_and_streams_do_not_share_caches(prompt_len):
    """Issue 15: a stream's first call runs through a captured CUDA graph on a GPU, from the second
    stream of its shape on; on the CPU the same buffers and copies run uncaptured (``graphs.on_cpu``).
    Streams of one shape share one entry, yet interleaved they each equal their offline latents (each
    keeps its own copy of the caches), and the buffered call equals the eager one."""
    torch.manual_seed(0)
    m = FlowModel(tiny_config()).eval()
    for p in m.parameters():
        if not p.abs().sum():
            p.data.normal_(0, 0.05)
    m.graphs.on_cpu = True
    c = m.config.model
    tokens = torch.randint(0, c.vocab_size, (3, 23))
    spk = SpeakerEmbedding(torch.randn(3, c.spk_dim))
    prompts = [None] * 3
    if prompt_len:
        prompts = [
            FlowPrompt(
                SpeechTokens.from_list([torch.randint(0, c.vocab_size, (prompt_len,))]),
                Latents.from_list([torch.randn(c.latent_dim, prompt_len * c.ratio)]),
            )
            for _ in range(3)
        ]
    infer = FlowInferConfig(steps=3, solver="midpoint", cfg_rate=0.7)
    rows = [SpeakerEmbedding(spk.vectors[i : i + 1]) for i in range(3)]
    streams = [m.stream(rows[i], prompts[i], infer, seed=i) for i in range(3)]
    pieces: list[list[torch.Tensor]] = [[], [], []]
    pieces[0].append(streams[0].advance(tokens[0, :9]))
    assert not m.graphs.calls and pieces[0][0].shape[-1] > 0  # a shape seen once runs eagerly
    for i in (1, 2):  # the second stream of the shape captures it, the third replays it
        pieces[i].append(streams[i].advance(tokens[i, :9]))
    assert len(m.graphs.calls) == 1
    for n in (17, 23):  # then each continues from its own caches, interleaved
        for i in range(3):
            pieces[i].append(streams[i].advance(tokens[i, :n], last=n == 23))
    for i in range(3):
        offline = m.generate(
            SpeechTokens.from_list([tokens[i]]), rows[i], prompts[i], infer, seed=i, chunked=True
        )
        assert torch.allclose(torch.cat(pieces[i], dim=-1), offline.unbatch()[0], atol=1e-5), i
    eager = m.stream(rows[2], prompts[2], dataclasses.replace(infer, cuda_graph=False), seed=2)
    assert torch.equal(eager.advance(tokens[2, :9]), pieces[2][0])
    short = m.stream(rows[0], prompts[0], infer, seed=0)  # a first call that is also the last: eager
    short.advance(tokens[0, :5], last=True)
    assert len(m.graphs.calls) == 1 and len(m.graphs.seen) == 1
    m.float()  # new parameter tensors: graphs captured on the old ones are dropped
    assert not m.graphs.calls and not m.graphs.seen and m.graphs.on_cpu


def test_one_shot_prompt_is_cut_from_output():
    torch.manual_seed(0)
    m = FlowModel(tiny_config()).eval()
    b = _batch()
    spk = m.embed_speaker(b.reference)
    pt = SpeechTokens.from_list([torch.randint(0, 64, (3,)), torch.randint(0, 64, (5,))])
    pl = Latents.from_list([torch.randn(8, 7), torch.randn(8, 10)])  # item 0 has one latent frame too many
    out = m.generate(b.tokens, spk, FlowPrompt(pt, pl), seed=0, infer=FlowInferConfig(steps=2))
    assert out.lengths.tolist() == [12, 8]
    with pytest.raises(ValueError, match="2 token sequences for 1 latent"):
        FlowPrompt(pt, Latents.from_list([torch.randn(8, 7)]))


def test_bad_inputs_raise():
    m = FlowModel(tiny_config()).eval()
    spk = SpeakerEmbedding(torch.zeros(1, 16))
    with pytest.raises(ValueError, match="25.0 Hz"):
        m.generate(SpeechTokens.from_list([torch.tensor([1, 2])], frame_rate=50), spk)
    with pytest.raises(ValueError, match="token ids"):
        m.generate(SpeechTokens.from_list([torch.tensor([1, 999])]), spk)
    with pytest.raises(ValueError, match="speaker vectors"):
        m.generate(SpeechTokens.from_list([torch.tensor([1]), torch.tensor([2])]), spk)
    with pytest.raises(ValueError, match="channels"):
        m.embed_speaker(Latents.from_list([torch.zeros(3, 5)]))


def test_solvers_agree_as_steps_grow():
    torch.manual_seed(0)
    m = FlowModel(tiny_config()).eval()
    b = _batch()
    spk = m.embed_speaker(b.reference)
    ref = m.generate(b.tokens, spk, seed=1, infer=FlowInferConfig(solver="rk4", steps=64)).data

    def err(solver, steps):
        x = m.generate(b.tokens, spk, seed=1, infer=FlowInferConfig(solver=solver, steps=steps)).data
        return (x - ref).abs().max().item()

    assert err("euler", 32) < err("euler", 4)
    assert err("midpoint", 16) < err("euler", 16)
    assert err("rk4", 16) < 1e-3
    calls = []
    hook = m.estimator.register_forward_hook(lambda *_: calls.append(1))
    d = m.generate(b.tokens, spk, seed=1, infer=FlowInferConfig(solver="dopri5", rtol=1e-6, atol=1e-6))
    hook.remove()
    assert (d.data - ref).abs().max().item() < 1e-3 and len(calls) > 6  # adaptive: more calls than 6


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_fixed_step_solvers_equal_torchdiffeqs_bit_for_bit(solver, schedule):
    """Our host-sync-free loop (what a CUDA graph can capture) does torchdiffeq's arithmetic exactly, so
    its t, dt and stage order are right: any slip in an inner time or a coefficient shows."""
    from mmspeech_flow.infer import fixed_steps
    from torchdiffeq import odeint

    g = torch.Generator().manual_seed(0)
    a, x0 = 0.5 * torch.randn(6, 6, generator=g), torch.randn(3, 6, generator=g)
    seen = []

    def v(x, t):
        seen.append(t.shape)
        return torch.tanh(x @ a) * (1 + t) + t**2  # depends on t non-linearly

    ref = odeint(lambda t, x: v(x, t.reshape(1)), x0, time_grid(7, schedule), method=solver)[-1]
    seen.clear()
    assert torch.equal(fixed_steps(v, x0, solver, 7, schedule), ref)
    assert set(seen) == {torch.Size([1])} and len(seen) == 7 * {"euler": 1, "midpoint": 2, "rk4": 4}[solver]


def test_time_grid():
    g = time_grid(10, "cosine")
    assert g[0] == 0 and abs(g[-1] - 1) < 1e-6 and len(g) == 11
    assert (g[1] - g[0]) < (g[-1] - g[-2])  # small steps near the noise end
    with pytest.raises(ValueError):
        time_grid(0, "linear")


def test_immiscible_batch_assignment_reduces_cost_and_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 10)
    mask = torch.ones(6, 10, dtype=torch.bool)
    mask[0, 5:] = False
    noise = torch.randn(6, 4, 10)
    # brute-force masked distances match the vectorised formula
    d = masked_sq_dist(x, noise, mask)
    brute = torch.stack(
        [torch.stack([(((x[i] - noise[j]) ** 2) * mask[i]).sum() for j in range(6)]) for i in range(6)]
    )
    assert torch.allclose(d, brute, atol=1e-4)
    out = immiscible_batch(x, noise, mask)
    assert sorted(map(tuple, out.flatten(1).tolist())) == sorted(
        map(tuple, noise.flatten(1).tolist())
    )  # a permutation

    def cost(n):
        return masked_sq_dist(x, n, mask).diagonal().clamp_min(0).sqrt().sum()

    assert cost(out) <= cost(noise) + 1e-5
    # padding must not matter: garbage in x's padded frames leaves the assignment unchanged
    x2 = x.clone()
    x2[0, :, 5:] = 100.0
    assert torch.equal(immiscible_batch(x2, noise, mask), out)


def test_immiscible_knn_picks_nearest_of_k():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 10)
    mask = torch.ones(8, 10, dtype=torch.bool)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    near = immiscible_knn(x, mask, k=8, generator=g1)
    plain = torch.randn(8, 1, 4, 10, generator=g2)[:, 0]  # what k=1 would give
    assert ((x - near) ** 2).sum() < ((x - plain) ** 2).sum()


def test_loss_masks_prompt_and_padding_and_contrastive_sign():
    torch.manual_seed(0)
    m = FlowModel(tiny_config())
    b = _batch()
    x1, valid = b.latents.data, b.latents.mask()
    mu = m.encoder(b.tokens.tokens, b.tokens.lengths, False)
    spk = torch.randn(2, 16)
    cfg = FlowLossConfig(prompt_prob=0.0, cfg_dropout=0.0)
    torch.manual_seed(1)
    base = flow_matching_loss(m.estimator, x1, valid, mu, spk, cfg)
    x1b = x1.clone()
    x1b[1, :, 8:] = 1e3  # padding frames of item 1
    torch.manual_seed(1)
    assert torch.allclose(flow_matching_loss(m.estimator, x1b, valid, mu, spk, cfg)["loss"], base["loss"])
    torch.manual_seed(1)
    c = flow_matching_loss(m.estimator, x1, valid, mu, spk, dataclasses.replace(cfg, contrastive_lambda=0.05))
    assert torch.allclose(c["loss"], c["fm"] - 0.05 * c["contrastive"]) and c["contrastive"] > 0
    for imm in ("batch", "knn"):
        out = flow_matching_loss(m.estimator, x1, valid, mu, spk, dataclasses.replace(cfg, immiscible=imm))
        assert torch.isfinite(out["loss"])


def test_align_trims_to_ratio():
    tok, lat = align(torch.arange(10), torch.zeros(4, 19), 2)
    assert len(tok) == 9 and lat.shape == (4, 18)


def test_dataset_from_extracted_folders_reads_lazily_and_casts_on_the_device(tmp_path):
    """Issue 14: the dataset holds ids and lengths only; latents stay float16 until Batch.to."""
    from mmspeech_core.data import ShardWriter, Utterance

    g = torch.Generator().manual_seed(0)
    tokens = {f"u{i}": torch.randint(0, 64, (4 + i,), generator=g) for i in range(6)}
    latents = {k: torch.randn(8, 2 * len(v) + 1, generator=g) for k, v in tokens.items()}
    for name, feats in (("tok", tokens), ("lat", latents)):
        w = ShardWriter(tmp_path / name, shard_size=4)
        for k, v in feats.items():
            w.add(k, v)
        w.flush()
    utts = [Utterance(k, "x.wav", speaker="ab"[i % 2]) for i, k in enumerate(tokens)]
    lazy, _ = FlowDataset.from_dirs(str(tmp_path / "tok"), str(tmp_path / "lat"), 2, utts)
    eager = FlowDataset(tokens, latents, 2, {u.id: u.speaker for u in utts})
    assert lazy.lengths() == eager.lengths() and lazy.ids == eager.ids
    assert not hasattr(lazy, "items")  # nothing read up front
    for k in range(len(lazy)):
        a, b = lazy[k], eager[k]
        assert torch.equal(a.tokens, b.tokens) and a.tokens.dtype == torch.long
        assert a.latents.dtype == torch.float16 and torch.allclose(a.latents.float(), b.latents, atol=4e-3)
    batch = collate([lazy[0], lazy[1]], 25.0, 50.0).to("cpu")
    assert batch.latents.data.dtype == torch.float32 and batch.reference.data.dtype == torch.float32
    assert batch.tokens.tokens.dtype == torch.long


def test_an_items_reference_depends_on_the_item_and_the_epoch_alone():
    """A resumed run, loader workers and ranks read the items in other orders: each item's reference is drawn
    from (seed, epoch, item) alone, so it is the same whatever was read before, and drawn anew each epoch
    (the training loader's set_epoch passes the epoch on)."""
    from mmspeech_core.training import DistInfo, train_loader

    g = torch.Generator().manual_seed(0)
    tokens = {f"u{i}": torch.randint(0, 64, (4,), generator=g) for i in range(8)}
    latents = {k: torch.randn(8, 8, generator=g) for k in tokens}
    ds = FlowDataset(tokens, latents, 2, {k: "a" for k in tokens})
    forward = [ds[k].reference for k in range(len(ds))]
    backward = [ds[k].reference for k in reversed(range(len(ds)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    _, set_epoch = train_loader(ds, list, fast_train_config(1, 1e-3), DistInfo())
    set_epoch(1)
    assert ds.epoch == 1 and any(not torch.equal(a, ds[k].reference) for k, a in enumerate(forward))
    other_seed = FlowDataset(tokens, latents, 2, {k: "a" for k in tokens}, seed=1)
    assert any(not torch.equal(a, other_seed[k].reference) for k, a in enumerate(forward))


def _overfit_cfg(steps, data="map", **loss):
    cfg = tiny_config()
    return dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, cfg_dropout=0.0, prompt_prob=0.0, **loss),
        train=fast_train_config(steps, 3e-3, warmup_steps=5, max_frames=1000, data=data),
    )


@pytest.mark.parametrize(
    "data, loss",
    [("map", dict()), ("map", dict(immiscible="batch", contrastive_lambda=0.05)), ("stream", dict())],
)
def test_training_overfits_a_tiny_set_and_resumes(tmp_path, data, loss):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tokens = {f"u{i}": torch.randint(0, 64, (6,), generator=g) for i in range(2)}
    # latents a deterministic function of tokens, so the flow can learn them
    table = torch.randn(64, 8, generator=g)
    latents = {k: table[v].T.repeat_interleave(2, dim=1) for k, v in tokens.items()}
    ds = FlowDataset(tokens, latents, ratio=2, speakers={"u0": "a", "u1": "a"})
    cfg = _overfit_cfg(150, data, **loss)
    model, hist = train(cfg, ds, tmp_path / "run", device="cpu", val_dataset=ds)
    assert "val/fm" in hist[-1] and hist[-1]["val/fm"] < 0.5 * hist[0]["fm"]  # validated at the last step
    first, last = sum(h["fm"] for h in hist[:10]) / 10, sum(h["fm"] for h in hist[-10:]) / 10
    assert last < 0.5 * first
    model.eval()
    batch = collate([ds[0], ds[1]], 25.0, 50.0)
    spk = model.embed_speaker(batch.reference)
    out = model.generate(batch.tokens, spk, seed=0, infer=FlowInferConfig(steps=10, cfg_rate=0.0))
    err = ((out.data - batch.latents.data) ** 2).mean() / (batch.latents.data**2).mean()
    assert err < 0.3
    # resume: a second call with more steps continues from the saved step, not from zero
    reloaded = FlowModel.from_pretrained(tmp_path / "run" / "checkpoint-00000150")
    assert torch.equal(
        reloaded.state_dict()["estimator.out.weight"], model.state_dict()["estimator.out.weight"]
    )
    _, hist2 = train(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=155)),
        ds,
        tmp_path / "run",
        device="cpu",
    )
    assert len(hist2) == 155 and hist2[:150] == hist  # the whole run's metrics, the 150 resumed included


def test_training_draws_t_uniformly_by_default():
    """Review item 6: uniform t in training (CosyVoice2); the cosine warp is for the inference grid only."""
    from mmspeech_flow.config import FlowLossConfig
    from mmspeech_flow.losses import sample_t

    torch.manual_seed(0)
    t = sample_t(200_000, FlowLossConfig().t_schedule, torch.device("cpu"))
    assert abs(t.mean().item() - 0.5) < 0.005  # the cosine warp's mean is 1 - 2/π ≈ 0.363
    assert abs((t < 0.25).float().mean().item() - 0.25) < 0.005
