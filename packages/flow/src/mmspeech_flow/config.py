"""Flow-matching stage configs (serialised as config.json next to the weights)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmspeech_core.training import TrainConfig


@dataclass
class FlowModelConfig:
    vocab_size: int = 6561  # FSQ codes of S3Tokenizer v2
    token_rate: float = 25.0  # Hz
    latent_rate: float = 50.0  # Hz; latent_rate / token_rate must be an integer (the upsampling ratio)
    latent_dim: int = 64  # VAE latent channels
    spk_in_dim: int = 64  # features the flow's speaker encoder reads (the VAE latents of a reference)
    spk_dim: int = 192
    spk_layers: int = 2
    dim: int = 512
    heads: int = 8
    ff_mult: int = 4
    encoder_layers: int = 6  # at token rate
    encoder_post_layers: int = 4  # at latent rate, after upsampling
    estimator_layers: int = 12  # DiT blocks
    lookahead: int = 3  # future tokens the encoder sees (a right-context conv), held back when streaming
    chunk_size: int = 25  # tokens per streaming chunk
    # chunk-causal attention reaches back this many chunks (0: to the start): with a bound, a streamed
    # chunk costs the same wherever it is and the caches stay bounded (a model attribute: train with it)
    left_chunks: int = 0
    dropout: float = 0.0
    # per-channel latent statistics (``mmspeech-vae stats``): the flow works on (x - mean) / std; empty = as is
    latent_mean: list[float] = field(default_factory=list)
    latent_std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if bool(self.latent_mean) != bool(self.latent_std):
            raise ValueError("give latent_mean and latent_std together")
        if self.latent_mean and not len(self.latent_mean) == len(self.latent_std) == self.latent_dim:
            raise ValueError(f"latent_mean / latent_std need {self.latent_dim} values each")
        if any(s <= 0 for s in self.latent_std):
            raise ValueError("latent_std values must be positive")
        if self.left_chunks < 0:
            raise ValueError(f"left_chunks must be >= 0 (0: no bound), got {self.left_chunks}")
        r = self.latent_rate / self.token_rate
        if r < 1 or abs(r - round(r)) > 1e-6:
            raise ValueError(
                f"latent_rate / token_rate must be a whole number >= 1, got {self.latent_rate}/{self.token_rate}"
            )

    @property
    def ratio(self) -> int:
        """Latent frames per token."""
        return int(round(self.latent_rate / self.token_rate))


@dataclass
class FlowLossConfig:
    """Training objective. ``t_schedule`` is how training draws t: ``uniform`` (the default since 0.2, as
    in CosyVoice2, which dropped a cosine-warped training t as a bug); the cosine warp belongs to the
    inference time grid (:attr:`FlowInferConfig.schedule`)."""

    sigma_min: float = 1e-6
    t_schedule: Literal["uniform", "cosine"] = "uniform"
    cfg_dropout: float = 0.2  # probability of dropping every condition (for classifier-free guidance)
    prompt_prob: float = 0.5  # probability an item gets a prompt prefix (masked from the loss)
    prompt_max_ratio: float = 0.3
    immiscible: Literal["none", "batch", "knn"] = "none"  # noise-data assignment
    knn_k: int = 4
    contrastive_lambda: float = 0.0  # ΔFM weight; 0.05 in the paper, 0 disables
    chunk_prob: float = 0.5  # probability a batch trains with chunk-causal masks (streaming)


@dataclass
class FlowInferConfig:
    solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "euler"
    steps: int = 10  # fixed-step solvers
    schedule: Literal["cosine", "linear"] = "cosine"
    cfg_rate: float = 0.7
    rtol: float = 1e-5  # dopri5
    atol: float = 1e-5
    # on a CUDA model, a stream's first call (the first chunk) is captured as a CUDA graph once per shape
    # and replayed after (mmspeech_flow.graph): base flow, H200, 26 ms instead of 125 ms eagerly
    cuda_graph: bool = True


@dataclass
class FlowConfig:
    model: FlowModelConfig = field(default_factory=FlowModelConfig)
    loss: FlowLossConfig = field(default_factory=FlowLossConfig)
    infer: FlowInferConfig = field(default_factory=FlowInferConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, max_frames=20000))


def tiny_config(**model_overrides: object) -> FlowConfig:
    """A few-thousand-parameter config for tests and the CPU quickstart."""
    m: dict[str, object] = dict(
        vocab_size=64,
        latent_dim=8,
        spk_in_dim=8,
        spk_dim=16,
        spk_layers=1,
        dim=32,
        heads=2,
        ff_mult=2,
        encoder_layers=1,
        encoder_post_layers=1,
        estimator_layers=2,
        chunk_size=4,
    )
    m.update(model_overrides)
    return FlowConfig(model=FlowModelConfig(**m))  # type: ignore[arg-type]
