import pytest
import torch
from mmspeech_core import SpeakerEmbedding, Waveform
from mmspeech_llm.config import SamplingConfig, tiny_config
from mmspeech_llm.layout import inference_prefix, pad
from mmspeech_llm.model import SpeechLM

pytestmark = pytest.mark.gpu


def _model():
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).to("cuda").eval()
    with torch.no_grad():
        m.head.weight.mul_(
            30.0
        )  # peaked distributions, as a trained model has: GPU noise cannot flip a choice
    return m


def test_cuda_padded_batch_logits_match_single():
    # GPU kernels differ by batch shape, so compare numbers (not sampled tokens) between padded and alone
    m = _model()
    spk = m.embed_speaker(Waveform.from_list([torch.randn(24000), torch.randn(16000)], 24000))
    texts = [torch.randint(0, 300, (6,)), torch.randint(0, 300, (3,))]
    with torch.no_grad():
        b = pad([inference_prefix(t) for t in texts], left=True).to("cuda")
        both = m.head(m._hidden(m.embed(b.kind, b.ids, spk.vectors), b.mask)[:, -1])
        for i, t in enumerate(texts):
            one = pad([inference_prefix(t)], left=True).to("cuda")
            alone = m.head(m._hidden(m.embed(one.kind, one.ids, spk.vectors[i : i + 1]), one.mask)[:, -1])
            assert torch.allclose(both[i], alone[0], atol=1e-3, rtol=1e-4)


def test_cuda_batched_equals_unbatched_and_bf16_lengths():
    m = _model()
    spk = m.embed_speaker(Waveform.from_list([torch.randn(24000), torch.randn(16000)], 24000))
    texts = [torch.randint(0, 300, (6,)), torch.randint(0, 300, (3,))]
    s = SamplingConfig(min_len_ratio=1.0, max_len_ratio=4.0)
    batched = m.generate(texts, spk, sampling=s, seed=1)
    for i in range(2):
        one = m.generate([texts[i]], SpeakerEmbedding(spk.vectors[i : i + 1]), sampling=s, seed=1 + i)
        assert one.unbatch()[0].tolist() == batched.unbatch()[i].tolist()
    mb = m.to(torch.bfloat16)
    out = mb.generate(texts, SpeakerEmbedding(spk.vectors.bfloat16()), sampling=s, seed=1)
    for n, t in zip(out.lengths.tolist(), texts):
        assert len(t) <= n <= 4 * len(t)
        assert int(out.tokens.max()) < 64


def test_cuda_graph_decoder_matches_dynamic():
    m = _model()
    spk = m.embed_speaker(Waveform.from_list([torch.randn(24000), torch.randn(16000)], 24000))
    texts = [torch.randint(0, 300, (6,)), torch.randint(0, 300, (3,))]
    s = SamplingConfig(min_len_ratio=1.0, max_len_ratio=4.0)
    ref = m.generate(texts, spk, sampling=s, seed=3)
    for mode in ("static", "cuda_graph", "compiled"):
        out = m.generate(texts, spk, sampling=s, seed=3, decode=mode)
        assert [x.tolist() for x in out.unbatch()] == [x.tolist() for x in ref.unbatch()], mode


def test_a_captured_graph_serves_later_requests():
    """The second and third requests of one shape replay the first request's graph (no new capture) and
    still give the dynamic decoder's tokens; compiled likewise."""
    m = _model()
    spk = m.embed_speaker(Waveform.from_list([torch.randn(24000), torch.randn(16000)], 24000))
    s = SamplingConfig(min_len_ratio=1.0, max_len_ratio=4.0)
    for mode in ("cuda_graph", "compiled"):
        graphs = []
        for seed, lengths in enumerate(((6, 3), (4, 5), (2, 7))):
            texts = [torch.randint(0, 300, (n,)) for n in lengths]
            ref = m.generate(texts, spk, sampling=s, seed=seed)
            out = m.generate(texts, spk, sampling=s, seed=seed, decode=mode)
            assert [x.tolist() for x in out.unbatch()] == [x.tolist() for x in ref.unbatch()], (mode, seed)
            (dec,) = [d for k, d in m.decoders.free.items() if k[0] == mode]
            graphs.append(dec.graph)
        assert graphs[0] is not None and all(g is graphs[0] for g in graphs), mode
