#!/usr/bin/env bash
# Wheels for benchmarks/gpu_session.sh on a GPU machine that reaches no registry: the packages our stages
# import that its image lacks, or holds too old (transformers 5.17 there on 2026-11-27: the CUDA-graph
# decoder needs >= 5.24), at the versions uv.lock pins, for CPython 3.12 on x86-64 Linux, into .whl/
# (ignored by git: name it in the device call's carry). Pure-Python packages published only as sdists are
# built here. Run from the repository root:
#
#   bash benchmarks/gpu_wheels.sh          # then: OUT=... bash benchmarks/gpu_session.sh there, .whl carried
set -eu
DEST=${DEST:-.whl}
PKGS="descript-audio-codec descript-audiotools argbind docstring-parser flatten-dict julius ffmpy
importlib-resources markdown2 pyloudnorm pystoi randomname fire termcolor torch-stoi librosa audioread soxr
pooch platformdirs decorator soundfile cffi pycparser espeakng-loader s3tokenizer fastapi starlette
opentelemetry-api pydantic pydantic-core annotated-types typing-inspection uvicorn python-multipart
ipython asttokens executing ipython-pygments-lexers jedi matplotlib-inline parso pexpect prompt-toolkit
ptyprocess pure-eval stack-data traitlets wcwidth transformers huggingface-hub tokenizers safetensors
regex httpx2 httpcore2 truststore jiwer rapidfuzz click"
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # a wheel left from an older pin beside the new one fails the install there (seen: librosa)
grep -qsx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
# uv.lock's pins whose markers hold on the GPU machine (CPython 3.12, x86-64 Linux), as name==version
pins=$(uv export --frozen --all-packages --all-extras --no-dev --no-hashes --no-emit-workspace --format requirements.txt |
  python3 -c '
import sys
from pip._vendor.packaging.requirements import Requirement
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
for line in sys.stdin:
    if line[:1].isalnum():
        r = Requirement(line.strip())
        if r.marker is None or r.marker.evaluate(env):
            print(f"{r.name}{r.specifier}")
')
for name in $PKGS; do
  spec=$(printf '%s\n' "$pins" | grep -i "^${name}==" || true)
  [ -n "$spec" ] || { echo "not pinned for CPython 3.12 in uv.lock, skipped: $name" >&2; continue; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "$spec" 2>/dev/null ||
    python3 -m pip wheel -q --no-deps -w "$DEST" "$spec"  # an sdist only: pure Python, built here
done
echo "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
