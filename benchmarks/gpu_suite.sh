#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one run (under 10 minutes on an H100/H200):
#   1. throughput, dojo vs plain HF: Qwen3-0.6B at seq 2048 and 4096, Qwen3-4B at 2048 (random weights from the
#      real configs): tokens/s, MFU, NVML peak memory, the VRAM estimate beside each peak
#   2. packed attention: dojo with sdpa (dense 4-D mask) vs flex_attention (document BlockMask), 0.6B, 2048/4096
#   3. regional torch.compile of the decoder layers: dojo with and without, 0.6B at 2048
#   4. Qwen3-4B with paged 8-bit AdamW + Liger + checkpointing: peak against the old system's 18.6 GB
#   5. the gpu-marked tests
# then benchmarks/gpu_report.py turns the JSON lines into markdown (OUT/report.md).
#
#   benchmarks/gpu_suite.sh [--cpu-smoke] [OUT]      # OUT: default $OUT if set (the device machine), else
#                                                      # benchmarks/gpu-results
#
# It needs torch, transformers and accelerate (plus what model/ imports at module level: safetensors, numpy,
# pyyaml); liger-kernel, bitsandbytes, flash-attn, prefect, datasets, pandera, pytest and nvidia-ml-py are
# optional: a step that needs a missing one is skipped and named in OUT/status.txt. $DOJO_WHEELS (a folder of
# wheels) is installed first with --no-index --no-deps when set. $PYTHON picks the interpreter (default python).
# --cpu-smoke runs every step at tiny sizes on the CPU (the built-in tiny model, seq 256, 2 timed steps) to check
# the suite end to end where no GPU is lent; CUDA-only steps then say so instead of running.
set -u
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; shift; fi
OUT_DIR="${1:-${OUT:-benchmarks/gpu-results}}"
PY="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
STATUS="$OUT_DIR/status.txt"
: > "$STATUS"
rm -f "$OUT_DIR"/*.jsonl
note() { echo "$*" | tee -a "$STATUS"; }
have() { "$PY" -c "import $1" >/dev/null 2>&1; }
started=$(date +%s)

note "gpu_suite $(date -u +%Y-%m-%dT%H:%MZ) mode=$([ $SMOKE = 1 ] && echo cpu-smoke || echo gpu) python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && note "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
if [ -n "${DOJO_WHEELS:-}" ] && ls "$DOJO_WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps "$DOJO_WHEELS"/*.whl && note "installed wheels from $DOJO_WHEELS" \
    || note "could not install the wheels in $DOJO_WHEELS"
fi
missing=""
for m in torch transformers accelerate peft liger_kernel bitsandbytes flash_attn pynvml pytest datasets pandera prefect; do
  if have "$m"; then note "have $m"; else note "missing $m"; missing="$missing $m"; fi
done
for m in torch transformers accelerate; do
  case " $missing " in *" $m "*) note "cannot run anything without $m"; exit 2;; esac
done
CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$SMOKE" = 0 ] && [ "$CUDA" = 0 ]; then note "no CUDA device: use --cpu-smoke"; exit 2; fi

if [ "$SMOKE" = 1 ]; then
  SMALL=tiny; BIG=tiny; S1=256; S2=512; FAST="--steps 2 --warmup 1 --threads 1"; SLOW="$FAST"
else
  SMALL=qwen3-0.6b; BIG=qwen3-4b; S1=2048; S2=4096; FAST="--steps 15 --warmup 3"; SLOW="--steps 8 --warmup 3"
fi

# bench NAME JSONL LIMIT_S ARGS...: one train_throughput.py run, its table in OUT/NAME.md, results appended to JSONL
bench() {
  local name=$1 jsonl=$2 limit=$3; shift 3
  note "run $name: train_throughput.py $*"
  timeout "$limit" "$PY" benchmarks/train_throughput.py "$@" --json "$OUT_DIR/$jsonl" \
    > "$OUT_DIR/$name.md" 2> "$OUT_DIR/$name.err"
  local rc=$?
  [ $rc = 0 ] || note "  $name: exit $rc (timeout = 124; see $name.err)"
}

# 1. dojo vs plain HF
bench throughput_small throughput.jsonl 240 --model $SMALL --seq $S1 --seq $S2 $FAST
bench throughput_big throughput.jsonl 200 --model $BIG --seq $S1 $SLOW

# 2. packed attention
if [ "$CUDA" = 1 ]; then
  for attn in sdpa flex_attention; do
    bench "attention_$attn" attention.jsonl 180 --model $SMALL --seq $S1 --seq $S2 $FAST --skip-baseline --attn $attn
  done
else
  bench attention_sdpa attention.jsonl 120 --model $SMALL --seq $S1 $FAST --skip-baseline --attn sdpa
  note "not run: flex_attention training (CUDA only: torch has no flex backward on CPU)"
fi

# 3. regional compile
if [ "$CUDA" = 1 ]; then
  bench compile_off compile.jsonl 120 --model $SMALL --seq $S1 $FAST --skip-baseline
  bench compile_on compile.jsonl 240 --model $SMALL --seq $S1 $FAST --skip-baseline --compile
else
  note "not run: compile (measured on GPU only; on this CPU the compile alone takes minutes)"
fi

# 4. Qwen3-4B within the old system's memory
if [ "$CUDA" = 1 ] && have liger_kernel && have bitsandbytes; then
  bench memory_4b memory_4b.jsonl 200 --model $BIG --seq $S1 $SLOW --skip-baseline \
    --optimizer paged_adamw_8bit --liger on --checkpointing on
else
  note "not run: Qwen3-4B + paged 8-bit AdamW + Liger + checkpointing (needs CUDA, liger-kernel and bitsandbytes)"
fi

# 5. the gpu-marked tests
if have pytest && have datasets && have pandera; then
  note "run gpu tests: pytest -m gpu tests/test_gpu.py"
  timeout 240 "$PY" -m pytest -q -m gpu tests/test_gpu.py > "$OUT_DIR/gpu_tests.txt" 2>&1
  note "  gpu tests: exit $? — $(tail -1 "$OUT_DIR/gpu_tests.txt")"
else
  note "not run: gpu-marked tests (need pytest, datasets and pandera:$missing)"
fi

"$PY" benchmarks/gpu_report.py "$OUT_DIR" > "$OUT_DIR/report.md"
note "done in $(( $(date +%s) - started )) s; report: $OUT_DIR/report.md"
