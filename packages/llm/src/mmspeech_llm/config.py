"""LLM stage configs (config.json next to the weights)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmspeech_core.training import TrainConfig


@dataclass
class BackboneConfig:
    """Qwen2 shape. Defaults are Qwen2.5-0.5B's (CosyVoice2). ``pretrained`` (a local folder) wins over the shape."""

    pretrained: str | None = None
    hidden_size: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    intermediate_size: int = 4864
    rope_theta: float = 1_000_000.0
    max_positions: int = 32768
    attn_implementation: str = "sdpa"


@dataclass
class LLMModelConfig:
    speech_vocab: int = 6561  # FSQ codes; the head adds eos (= speech_vocab), fill (= speech_vocab + 2)
    text_vocab: int = 151_936  # must match the text tokenizer
    token_rate: float = 25.0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # learnable speaker encoder on reference log-mels
    spk_sample_rate: int = 24000
    spk_mels: int = 80
    spk_hidden: int = 256
    spk_layers: int = 4
    spk_heads: int = 4
    spk_dim: int = 192

    @property
    def eos(self) -> int:
        return self.speech_vocab

    @property
    def fill(self) -> int:
        return self.speech_vocab + 2

    @property
    def head_size(self) -> int:
        return self.speech_vocab + 3


@dataclass
class LayoutConfig:
    """Training sequence layouts: unistream, or bistream 5 text : 15 speech interleave (CosyVoice2)."""

    bistream_prob: float = 0.5
    text_chunk: int = 5
    speech_chunk: int = 15
    # bistream only where speech/text > this: each 5-text chunk needs its 15 speech tokens
    bistream_min_ratio: float = 3.0
    max_reference_s: float = 10.0  # speaker reference crop
    # extra training items, as a fraction of the utterances: two utterances of one speaker joined, prompt
    # first, with the prompt's own audio as the speaker reference. One-shot inference continues a prompt
    # (its transcript + the target text, then its speech tokens); without such items every training text
    # is a single utterance, and a small corpus never shows the LM a text that long or a speech prefix
    prompt_pairs: float = 0.0


@dataclass
class SamplingConfig:
    """Repetition-aware sampling (VALL-E 2 / CosyVoice2)."""

    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    temperature: float = 1.0  # 0 -> greedy
    min_len_ratio: float = 2.0  # speech tokens per text token before EOS is allowed
    max_len_ratio: float = 20.0

    def __post_init__(self) -> None:
        # a negative temperature would sample the least likely tokens; a top-p of 0 or top-k of 0 would
        # keep nothing but the top token without saying so
        checks = {
            "temperature >= 0": self.temperature >= 0,
            "0 < top_p <= 1": 0 < self.top_p <= 1,
            "top_k >= 1": self.top_k >= 1,
            "win_size >= 0": self.win_size >= 0,
            "0 <= min_len_ratio <= max_len_ratio": 0 <= self.min_len_ratio <= self.max_len_ratio,
        }
        bad = [rule for rule, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"sampling settings break {', '.join(bad)}: {self}")


@dataclass
class LLMConfig:
    model: LLMModelConfig = field(default_factory=LLMModelConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, max_frames=12000))


def tiny_config(text_vocab: int = 300, speech_vocab: int = 64) -> LLMConfig:
    """A tiny config for tests and the CPU quickstart."""
    return LLMConfig(
        model=LLMModelConfig(
            speech_vocab=speech_vocab,
            text_vocab=text_vocab,
            backbone=BackboneConfig(
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                num_kv_heads=2,
                intermediate_size=128,
                max_positions=2048,
            ),
            spk_hidden=32,
            spk_layers=1,
            spk_heads=2,
            spk_dim=16,
        )
    )


def small_config(text_vocab: int = 151_936) -> LLMConfig:
    """Qwen2.5-0.5B-sized (the default) — listed for the benchmark and `config --preset`."""
    return LLMConfig(model=LLMModelConfig(text_vocab=text_vocab))
