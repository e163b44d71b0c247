"""What the discriminator buys the VAE rung: PESQ-wb / STOI of held-out resynthesis at each checkpoint.

    python benchmarks/vae_gan.py --out DIR --device cuda --speakers 96 --utterances 24 --gan-from 0.5
    uv run --no-sync python benchmarks/vae_gan.py --out DIR --size tiny --steps 40 --save-every 20  # CPU
    uv run --no-sync python benchmarks/vae_gan.py --score DIR      # score a run's saved audio (eval extra)

Builds the quickstart's eSpeak corpus (``--size``; ``--speakers`` / ``--utterances`` override its
numbers), trains that size's VAE on the training speakers with the discriminator joining after
``--gan-from`` of its steps (1: never, the control arm), keeps a checkpoint every ``--save-every`` steps,
and resynthesises (encode -> posterior mean -> decode, as the ladder's VAE rung does) the first
``--items`` held-out recordings with each: ``OUT/audio/ITEM.wav`` (the recording at the VAE's rate) and
``OUT/audio/step-NNNNNNNN/ITEM.wav``. Then, where the ``eval`` extra is installed, prints PESQ-wb and STOI
per checkpoint (the ladder's judges); elsewhere (a GPU machine without ``pesq``) ``--score OUT`` scores
the saved audio later on a machine that has it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import table  # noqa: E402


def train_arm(a: argparse.Namespace) -> None:
    from mmspeech_core import load_audio, save_audio
    from mmspeech_pipeline import recipe as q
    from mmspeech_pipeline.corpus import build_corpus
    from mmspeech_vae.model import DACVAE
    from mmspeech_vae.train import train

    size = q.SIZES[a.size]
    out = Path(a.out)
    corpus = build_corpus(
        out / "corpus", a.speakers or size.speakers, a.utterances or size.utterances, a.seed
    )
    steps = a.steps or size.steps["vae"]
    vcfg = q.vae_config(
        size,
        steps,
        a.gan_from,
        seed=a.seed,
        save_every=a.save_every,
        keep_checkpoints=steps // a.save_every + 1,
        time_budget_s=a.budget_s,
        num_workers=q.loader_workers(a.device),
    )
    t = time.perf_counter()
    _, history = train(vcfg, corpus.train, out / "run", device=a.device, resume=False)
    seconds = time.perf_counter() - t
    sr = vcfg.model.sample_rate
    audio = out / "audio"
    recordings = {u.id: load_audio(u.audio, sr) for _, u in corpus.test_pairs[: a.items]}
    for uid, wav in recordings.items():
        save_audio(audio / f"{uid}.wav", wav)
    for ckpt in sorted((out / "run").glob("checkpoint-*")):
        vae = DACVAE.from_pretrained(ckpt).to(a.device).eval()
        with torch.no_grad():
            for uid, wav in recordings.items():
                resynth = vae.decode(vae.encode(wav.to(a.device))).to("cpu")
                save_audio(audio / ckpt.name.replace("checkpoint", "step") / f"{uid}.wav", resynth)
    info = {
        "size": a.size,
        "steps": steps,
        "steps_done": len(history),
        "gan_from_step": vcfg.loss.disc_start_step,
        "train_s": round(seconds, 1),
        "device": a.device,
        "sample_rate": sr,
        "last": history[-1] if history else None,
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


def score(run: Path) -> None:
    from mmspeech_core import read_audio
    from mmspeech_pipeline.judges import QualityJudge, to_16k

    judge = QualityJudge()  # JudgeUnavailable without the eval extra
    info = json.loads((run / "run_info.json").read_text())
    audio, sr = run / "audio", info["sample_rate"]
    refs = {p.stem: to_16k(read_audio(p), sr) for p in sorted(audio.glob("*.wav"))}
    rows = []
    for d in sorted(audio.glob("step-*")):
        pesq, stoi = [], []
        for name, ref in refs.items():
            out = to_16k(read_audio(d / f"{name}.wav"), sr)
            pesq.append(judge.pesq_wb(ref, out))
            stoi.append(judge.stoi(ref, out))
        step = int(d.name.split("-")[1])
        gan = "yes" if step > info["gan_from_step"] else "no"
        rows.append([step, gan, sum(pesq) / len(pesq), sum(stoi) / len(stoi)])
    title = f"VAE rung, {run}: {len(refs)} held-out recordings, GAN from step {info['gan_from_step']}"
    table(
        f"{title} ({info['device']}, {info['train_s']} s of training)",
        ["step", "GAN", "PESQ-wb", "STOI"],
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="run folder (corpus, checkpoints, audio)")
    p.add_argument("--score", type=Path, help="only score this run folder's saved audio")
    p.add_argument("--size", default="small", choices=["tiny", "medium", "small"])
    p.add_argument("--speakers", type=int, help="voices (default: the size's)")
    p.add_argument("--utterances", type=int, help="utterances per voice (default: the size's)")
    p.add_argument("--steps", type=int, help="VAE steps (default: the size's)")
    p.add_argument("--gan-from", type=float, help="fraction of the steps before the GAN joins (1: never)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--budget-s", type=float, help="stop training after this many seconds")
    p.add_argument("--items", type=int, default=12, help="held-out recordings to resynthesise")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.score is not None:
        score(a.score)
        return
    if a.out is None:
        p.error("give --out (train) or --score (score a run)")
    train_arm(a)
    from mmspeech_pipeline.judges import JudgeUnavailable

    try:
        score(a.out)
    except JudgeUnavailable as e:  # the eval extra's judges: absent on a bare GPU machine
        print(f"not scored here ({e}); run: python benchmarks/vae_gan.py --score {a.out}")


if __name__ == "__main__":
    main()
