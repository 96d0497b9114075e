#!/usr/bin/env bash
# The CUDA check (benchmarks/gpu_check.py): correctness of the fused loss against float64,
# memory and time vs plain and Liger, cache-teacher, a tiny LM training run and DDP over NCCL,
# each section in its own process under its own timeout (at most 8 minutes in all), then one
# Markdown table.
#
#   bash benchmarks/gpu_check.sh [--out PATH]             # CUDA: benchmarks/results/gpu.md
#   bash benchmarks/gpu_check.sh --dry-run [--out PATH]   # CPU, small shapes (< 60 s)
#
# Python: $PYTHON, else the repository's .venv/bin/python, else `python`; it needs torch and
# torchkd's dependencies (transformers, tokenizers, safetensors), nothing from the internet.
# This checkout's torchkd is used (PYTHONPATH is prepended to). liger-kernel is optional: for
# its rows on a machine without internet, `pip install --no-deps --target DIR liger-kernel`
# elsewhere, copy DIR over and run with PYTHONPATH=DIR.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dry=()
out=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=(--dry-run) ;;
        --out) out=(--out "$2"); shift ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--out PATH]" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ ${#dry[@]} -eq 0 ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || {
        echo "gpu_check: no CUDA device; run with --dry-run for the CPU check" >&2
        exit 2
    }
elif [ ${#out[@]} -eq 0 ]; then
    out=(--out "$(mktemp -d)/gpu.md")
fi
work="$(mktemp -d)"
command="bash benchmarks/gpu_check.sh${dry[*]:+ ${dry[*]}}"
# section:seconds; 120 + 135 + 60 + 90 + 60 = 465 s (cold torch.compile included), the
# CUDA probe and the report a few more
for entry in correctness:120 memory:135 cache:60 train:90 ddp:60; do
    name="${entry%%:*}"
    limit="${entry##*:}"
    echo "$limit" > "$work/$name.limit"
    echo "== $name (at most $limit s)"
    timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/gpu_check.py --section "$name" \
        --work "$work" "${dry[@]}" > "$work/$name.log" 2>&1
    echo $? > "$work/$name.rc"
    tail -n 3 "$work/$name.log"
done
"$PYTHON" benchmarks/gpu_check.py --report --work "$work" --command "$command" \
    "${dry[@]}" "${out[@]}"
