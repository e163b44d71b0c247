"""Shared fixtures: a tiny random-weight bundle (every stage, compatible shapes) built in seconds."""

import dataclasses

import pytest
import torch
from mmspeech_flow.config import tiny_config as flow_tiny
from mmspeech_flow.model import FlowModel
from mmspeech_llm.config import tiny_config as llm_tiny
from mmspeech_llm.model import SpeechLM
from mmspeech_llm.text import TextTokenizer
from mmspeech_tokenizer.config import S3Config
from mmspeech_tokenizer.s3 import S3SpeechTokenizer
from mmspeech_vae.config import tiny_config as vae_tiny
from mmspeech_vae.model import DACVAE

TEXTS = ["hello there, this is a test.", "good morning to you all!", "how are you today?"]


def _make_parts(tmp, flow_latent=8):
    torch.manual_seed(0)
    S3SpeechTokenizer.random_init(
        S3Config(n_audio_state=128, n_audio_head=2, n_audio_layer=1)
    ).save_pretrained(tmp / "tok")
    tt = TextTokenizer.train_bpe(TEXTS * 3, vocab_size=300, min_frequency=1)
    tt.save(tmp / "text")
    lcfg = llm_tiny(text_vocab=tt.vocab_size, speech_vocab=6561)
    lcfg = dataclasses.replace(
        lcfg, sampling=dataclasses.replace(lcfg.sampling, min_len_ratio=1.0, max_len_ratio=3.0)
    )
    SpeechLM(lcfg).save_pretrained(tmp / "llm")
    fcfg = flow_tiny(vocab_size=6561, latent_dim=flow_latent, spk_in_dim=flow_latent)
    fcfg = dataclasses.replace(fcfg, infer=dataclasses.replace(fcfg.infer, steps=3))
    FlowModel(fcfg).save_pretrained(tmp / "flow")
    DACVAE(vae_tiny()).save_pretrained(tmp / "vae")
    return dict(
        tokenizer=tmp / "tok",
        text_tokenizer=tmp / "text",
        llm=tmp / "llm",
        flow=tmp / "flow",
        vae=tmp / "vae",
    )


@pytest.fixture(scope="session")
def make_parts():
    """``make_parts(folder, flow_latent=8)`` -> dict of stage folders for ``write_bundle``."""
    return _make_parts
