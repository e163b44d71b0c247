import dataclasses
import json
import os
import shlex
import subprocess
import sys

import torch
from mmspeech_core import save_audio
from mmspeech_core.config import save_config
from mmspeech_core.data import ShardWriter
from mmspeech_core.training import fast_train_config
from mmspeech_llm.config import tiny_config
from mmspeech_llm.model import SpeechLM
from mmspeech_llm.text import TextTokenizer

TEXTS = ["hello world", "good day", "hi there friend", "nice to meet you"]


def test_torchrun_two_rank_fsdp_trains_the_lm_on_streamed_shards_and_loads_on_one(tmp_path):
    """Issue 14: the LM on two CPU ranks (gloo) through the CLI under FSDP2 (gradient accumulation,
    activation checkpointing) with its token shards streamed: both ranks finish (equal batch counts),
    rank 0 saves plain weights that load in one process, trained and with the same parameter names."""
    g = torch.Generator().manual_seed(0)
    tw = ShardWriter(tmp_path / "tokens", 2)
    lines = []
    for i in range(8):
        save_audio(tmp_path / f"u{i}.wav", 0.1 * torch.randn(4800 + 400 * i, generator=g), 24000)
        tw.add(f"u{i}", torch.randint(0, 64, (8 + i,), generator=g))
        line = {"id": f"u{i}", "audio": f"u{i}.wav", "text": TEXTS[i % 4], "speaker": f"s{i % 2}"}
        lines.append(json.dumps(line))
    tw.flush()
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    tok = TextTokenizer.train_bpe(TEXTS, vocab_size=280, min_frequency=1)
    tok.save(tmp_path / "bpe")
    cfg = tiny_config(text_vocab=tok.vocab_size)
    train = fast_train_config(
        4, 1e-3, warmup_steps=1, parallel="fsdp", grad_accum=2, activation_checkpointing=True
    )
    save_config(dataclasses.replace(cfg, train=train), tmp_path / "llm.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537"]
    cmd += shlex.split(
        f"-m mmspeech_llm.cli train --config {tmp_path / 'llm.json'} --manifest {tmp_path / 'm.jsonl'} "
        f"--tokens {tmp_path / 'tokens'} --text-tokenizer {tmp_path / 'bpe'} --out {tmp_path / 'run'} "
        "--device cpu --val-fraction 0 --data stream"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-00000004"
    model = SpeechLM.from_pretrained(tmp_path / "run" / "checkpoint-00000004")  # one process, no FSDP
    fresh = SpeechLM(cfg).state_dict()
    weights = model.state_dict()
    assert set(weights) == set(fresh) and all(torch.isfinite(v).all() for v in weights.values())
    assert model.config.train.data == "stream" and model.config.train.parallel == "fsdp"
