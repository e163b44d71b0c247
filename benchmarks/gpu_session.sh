#!/usr/bin/env bash
# Every GPU check of one short device lease, in one prepared run: the gpu-marked tests (TESTS=0: not), the
# small quickstart recipe on the GPU (RECIPE_MINUTES=0: not), and the GPU benchmarks: time to first audio
# with the LM's default decoder and again compiled (COMPILED=0: not; FA_STREAMS=1: no 8-stream rows), the
# per-chunk streaming cost (STREAMING=0: not), LM decode speed in bf16 (LLM_DECODE=0: not) and float32
# (LLM_FP32=0: not); with VAE_GAN=1 the small VAE with and without its discriminator (benchmarks/vae_gan.py,
# two arms side by side, their audio to $OUT/vae_gan for scoring where pesq is installed); with EXTRA=1 the
# LM step profile and FSDP2 vs DDP.
#
#   OUT=/some/folder bash benchmarks/gpu_session.sh
#
# Needs only python3 with torch; missing Python packages are installed from wheels in .whl/ if present
# (`bash benchmarks/gpu_wheels.sh` here fetches them; carry .whl).
# Each part has a time cap; logs go to $OUT/logs.tgz after every part, the recipe's bundle and report to
# $OUT/qs_small.tgz.part-* (cat them together, then tar xzf).
set -u
OUT=${OUT:-/tmp/gpu_session}
LOG=/tmp/gpu_session_logs
mkdir -p "$OUT" "$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
PYTHONPATH=/tmp/site:$(printf '%s:' "$PWD"/packages/*/src)
export PYTHONPATH
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
save_logs() { tar czf "$OUT/logs.tgz" -C "$LOG" .; }
part() {  # part NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2
  shift 2
  stamp "start $name (cap ${cap} s)"
  timeout -k 5 "$cap" "$@" >"$LOG/$name.log" 2>&1
  stamp "end $name: exit $?"
  tr '\r' '\n' <"$LOG/$name.log" | grep -v '^\s*$' | tail -n 22 | cut -c1-220
  save_logs
}
nvidia-smi -L
python3 -c "import torch, transformers, dac, soundfile, espeakng_loader, fastapi, mmspeech_pipeline.serve as s; print('torch', torch.__version__, 'transformers', transformers.__version__)" || exit 1

tests() {
  [ "${TESTS:-1}" = 0 ] && return
  part gpu_tests "${TESTS_CAP:-150}" python3 -m pytest packages/*/tests/test_gpu.py -m gpu -v -p no:cacheprovider
}
if [ "${RECIPE_MINUTES:-3.5}" = 0 ]; then  # RECIPE_MINUTES=0: no recipe
  tests
else  # the recipe trains in the background while the gpu tests (correctness only, no timings) share the GPU
  (timeout -k 5 "${RECIPE_CAP:-310}" python3 -m mmspeech_pipeline.cli quickstart --size small --device cuda \
    --minutes "${RECIPE_MINUTES:-3.5}" --eval-items 0 --out /tmp/qs >"$LOG/recipe.log" 2>&1; echo "exit $?" >>"$LOG/recipe.log") &
  recipe=$!
  tests
  wait $recipe
  stamp "recipe: $(tail -n 1 "$LOG/recipe.log")"
  tr '\r' '\n' <"$LOG/recipe.log" | grep -v 'it/s\|s/it\|^\s*$' | tail -n 40 | cut -c1-220
  (cd /tmp/qs && tar czf - bundle report.md report.json ./*.png ./*.wav voices corpus/speakers.json corpus/test.lst) |
    split -b 15m - "$OUT/qs_small.tgz.part-"
  save_logs
fi

# timed benchmarks, alone on the GPU (BENCHMARKS=0 skips them)
[ "${BENCHMARKS:-1}" = 0 ] && { stamp done; exit 0; }
modes=auto
[ "${COMPILED:-1}" = 1 ] && modes="auto compiled"  # compiled: in process, then again in the server's process
# shellcheck disable=SC2086  # $modes: one word per mode
part first_audio "${FIRST_AUDIO_CAP:-400}" python3 benchmarks/first_audio.py --preset base --device cuda \
  --repeat 3 --streams "${FA_STREAMS:-8}" --lm-decode $modes
[ "${STREAMING:-1}" = 1 ] && part streaming 60 python3 benchmarks/streaming.py --device cuda --rerun-every 0
if [ "${VAE_GAN:-0}" = 1 ]; then  # both arms train at once: each alone leaves the GPU mostly idle
  vae_arm() {  # vae_arm NAME GAN_FROM
    python3 benchmarks/vae_gan.py --out "/tmp/vae_gan/$1" --size small --speakers 96 --utterances 24 \
      --steps "${VAE_STEPS:-3000}" --gan-from "$2" --budget-s "${VAE_BUDGET:-170}" --device cuda
  }
  part vae_gan "${VAE_CAP:-240}" bash -c "$(declare -f vae_arm); vae_arm gan 0.5 & vae_arm nogan 1.0; wait"
  (cd /tmp/vae_gan && tar czf "$OUT/vae_gan.tgz" ./*/audio ./*/run_info.json)
fi
[ "${LLM_DECODE:-1}" = 1 ] &&
  part llm_decode 120 python3 benchmarks/run.py --device cuda --full --only llm --llm-modes static cuda_graph compiled
# float32: whether `compiled` keeps cuda_graph's sampled tokens where rounding is finer, and at what speed
[ "${LLM_FP32:-1}" = 1 ] &&
  part llm_decode_fp32 120 python3 benchmarks/run.py --device cuda --full --only llm --llm-modes cuda_graph compiled --llm-dtype float32
if [ "${EXTRA:-0}" = 1 ]; then  # measured before, unchanged since: only on request
  part llm_profile 40 python3 benchmarks/profile_llm_step.py --device cuda --size 0.5B --tokens 32
  part fsdp_ddp 75 python3 benchmarks/fsdp_ddp.py --device cuda --steps 5 --warmup 2
fi
stamp done
