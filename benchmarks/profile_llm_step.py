"""Where a decode step of the LM spends its time (CUDA): top operators by self CUDA/CPU time.

python benchmarks/profile_llm_step.py --device cuda [--size tiny|0.5B]
"""

from __future__ import annotations

import argparse

import torch
from mmspeech_core import SpeakerEmbedding
from mmspeech_llm.config import SamplingConfig, small_config, tiny_config
from mmspeech_llm.model import SpeechLM
from run import lm_dtype
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=["tiny", "0.5B"], default="0.5B")
    p.add_argument("--tokens", type=int, default=64)
    a = p.parse_args()
    cfg = small_config() if a.size == "0.5B" else tiny_config()
    dtype = lm_dtype(a.device)
    m = SpeechLM(cfg).to(a.device, dtype).eval()
    spk = SpeakerEmbedding(torch.randn(1, cfg.model.spk_dim, device=a.device, dtype=dtype))
    text = [torch.randint(0, cfg.model.text_vocab, (8,))]
    s = SamplingConfig(min_len_ratio=a.tokens / 8, max_len_ratio=a.tokens / 8)
    m.generate(text, spk, sampling=s, seed=0)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        m.generate(text, spk, sampling=s, seed=0)
    key = "self_cuda_time_total" if a.device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
