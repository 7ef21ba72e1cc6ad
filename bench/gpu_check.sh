#!/usr/bin/env bash
# One command for the day a CUDA GPU is at hand (about 6-8 minutes on one H100/H200):
#
#     bash bench/gpu_check.sh [STEPS]
#
# 1. the CUDA-only tests (pytest -m cuda);
# 2. Mini, Medium and Large, each a short timed run with bf16 autocast, torch.compile and
#    SDPA's flash attention (what CUDA's SDPA picks for bf16 causal attention), one micro-batch
#    per step: tokens/s, MFU and peak memory from the run's own metrics.jsonl, plus the largest
#    micro-batch engine.plan estimates for this GPU's memory, checked by two eager steps at it;
# 3. with two or more GPUs, Mini again under torchrun on two processes (DDP).
# Then one table. Runs write to a temporary folder that is removed at the end.
set -uo pipefail

STEPS=${1:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA GPU visible to torch; this check needs one" >&2
    exit 2
fi
GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')
GPU_NAME=$($PY -c 'import torch; print(torch.cuda.get_device_name(0))')
GPU_GIB=$($PY -c 'import torch; print(round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))')
echo "== $GPUS x $GPU_NAME ($GPU_GIB GiB), torch $($PY -c 'import torch; print(torch.__version__)')"
echo "   flash SDPA enabled: $($PY -c 'import torch; print(torch.backends.cuda.flash_sdp_enabled())')"

echo "== CUDA-only tests"
$PY -m pytest -m cuda -q -p no:cacheprovider 2>&1 | tail -n 15
TESTS=${PIPESTATUS[0]}

# a short run that times steps: no evaluation, sample or checkpoint before the last step
SHORT=(--train.dtype=bfloat16 --train.grad_accum=1 --train.warmup_steps=5
       --train.eval_interval=100000 --train.eval_steps=1 --train.sample_interval=100000
       --train.sample_tokens=8 --checkpoint.interval=100000 --log.interval=5
       --data.cache_dir="$TMP/cache")

# median tokens/s, MFU and peak memory over the step records after compilation (step > 10)
summarise() {
    $PY - "$1" <<'EOF'
import json, statistics, sys
steps = [r for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "step"]
late = [r for r in steps if r["step"] > 10] or steps
if not late:
    print("no steps")
    sys.exit()
tps = statistics.median(r["tokens_per_s"] for r in late)
mfu = [r["mfu"] for r in late if r.get("mfu") is not None]
mfu = f"{100 * statistics.median(mfu):.1f}%" if mfu else "n/a"
print(f"{tps:,.0f} {mfu} {max(r['mem_gb'] for r in steps):.1f}")
EOF
}

largest_batch() {  # engine.plan's estimate for one GPU of this memory
    $PY -c "
from engine.contract import config, sizing
cfg = config.load('presets/$1.toml', ['--train.dtype=bfloat16'])
print(sizing.plan(cfg, 1, $GPU_GIB)['ddp']['max_batch_size'])"
}

ROWS=()
for preset in mini medium large; do
    echo "== $preset: $STEPS steps, bf16 + compile + flash attention"
    began=$SECONDS
    out="$TMP/$preset"
    if $PY -m engine.train "presets/$preset.toml" "${SHORT[@]}" --train.compile=true \
        --train.max_steps="$STEPS" --out_dir="$out" --name=run > "$TMP/$preset.log" 2>&1; then
        read -r tps mfu mem <<< "$(summarise "$out/run/metrics.jsonl")"
    else
        tail -n 5 "$TMP/$preset.log"
        tps=failed mfu=- mem=-
    fi
    batch=$(largest_batch "$preset")
    fits=no
    if [ "${batch:-0}" -gt 0 ] && $PY -m engine.train "presets/$preset.toml" "${SHORT[@]}" \
        --train.max_steps=2 --train.batch_size="$batch" --out_dir="$out-max" --name=run \
        > "$TMP/$preset-max.log" 2>&1; then
        fits=yes
    fi
    echo "   $tps tok/s, MFU $mfu, peak $mem GB; largest micro-batch $batch (ran: $fits) in $((SECONDS - began)) s"
    ROWS+=("$preset|1|$tps|$mfu|$mem|$batch ($fits)")
done

if [ "$GPUS" -ge 2 ]; then
    echo "== mini on 2 processes (DDP, torchrun)"
    out="$TMP/mini-ddp"
    if $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m engine.train \
        presets/mini.toml "${SHORT[@]}" --train.compile=true --train.max_steps="$STEPS" \
        --out_dir="$out" --name=run > "$TMP/mini-ddp.log" 2>&1; then
        read -r tps mfu mem <<< "$(summarise "$out/run/metrics.jsonl")"
    else
        tail -n 5 "$TMP/mini-ddp.log"
        tps=failed mfu=- mem=-
    fi
    ROWS+=("mini|2|$tps|$mfu|$mem|-")
fi

echo
echo "== $GPU_NAME; tests: $([ "$TESTS" -eq 0 ] && echo passed || echo FAILED)"
printf '%-8s %5s %14s %7s %10s %22s\n' preset GPUs "tokens/s" MFU "peak GB" "largest micro-batch"
for row in "${ROWS[@]}"; do
    IFS='|' read -r p g t m mem b <<< "$row"
    printf '%-8s %5s %14s %7s %10s %22s\n' "$p" "$g" "$t" "$m" "$mem" "$b"
done
exit "$TESTS"
