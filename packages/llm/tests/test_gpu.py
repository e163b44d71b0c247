import pytest
import torch
from mmspeech_core import SpeakerEmbedding, Waveform
from mmspeech_llm.config import SamplingConfig, tiny_config
from mmspeech_llm.model import SpeechLM

pytestmark = pytest.mark.gpu


def test_cuda_batched_equals_unbatched_fp32_and_bf16():
    torch.manual_seed(0)
    m = SpeechLM(tiny_config()).to("cuda").eval()
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
