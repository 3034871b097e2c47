#!/usr/bin/env bash
# MM-DiT training step on one GPU in bf16 (under 5 minutes on one H200): mmflow eager vs mmflow compiled
# (train.compile's torch.compile, inductor) vs diffusers' SD3Transformer2DModel eager, same weights, at the
# B and L sizes of benchmarks/mmdit_step.py. Prints per size: samples/s of each, the ratios to diffusers,
# torch.cuda.max_memory_allocated during one step (MiB: weights + gradients + activations) and model FLOPs
# utilisation. Run from the repository root with the built venv:
#     bash benchmarks/gpu.sh                # CUDA, bf16, sizes B and L; logs in $OUT (default /tmp/gpu_mmdit)
#     bash benchmarks/gpu.sh --tiny         # the same Python on the CPU at size tiny: checks the script (~1 min)
# MFU = samples/s * model FLOPs per sample / peak FLOP/s, with PEAK_TFLOPS the chip's dense bf16 peak
# (H100/H200 SXM: 989; set PEAK_TFLOPS for another chip). Model FLOPs of one training sample (forward + backward,
# i.e. 3 forwards), as benchmarks/mmdit_step.py's train_flops_per_sample computes them:
#     6 * (P_x * N_x + P_c * N_c)  +  12 * depth * N^2 * D
# N_x latent tokens (32*32), N_c text tokens (B 77, L 154), N = N_x + N_c (joint attention), D the hidden width,
# P_x / P_c the latent / text streams' block parameters without the adaLN modulation (each weight acts on its own
# stream's tokens: 2 FLOPs per weight per token forward, 4 backward); the second term is attention's QK^T and AV
# (2 N^2 D FLOPs each per layer forward, x3 with the backward). B: 693 GFLOP per sample, L: 2536.
# Measured on an H200, 2026-12-04 (BENCHMARKS.md): B 204 / 370 / 179 samples/s, L 110 / 158 / 94.
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/gpu_mmdit}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
mkdir -p "$OUT"
if [ "${1:-}" = "--tiny" ]; then
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $PY benchmarks/mmdit_step.py --device cpu --tiny --peak-tflops 1 \
        2>&1 | tee "$OUT/tiny.log"
    exit "${PIPESTATUS[0]}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
# one process per size, each under a time limit (B 110 s, L 180 s: 290 s in all), so a failure or timeout at L
# still leaves B's row; batch 16, median of 7 steps after an untimed warm-up (it holds the compile, ~1 min at L)
for size in B L; do
    t0=$(date +%s)
    limit=110; [ "$size" = L ] && limit=180
    timeout "$limit" $PY benchmarks/mmdit_step.py --device cuda --dtype bfloat16 --sizes "$size" --batch 16 \
        --repeats 7 --peak-tflops "$PEAK_TFLOPS" > "$OUT/$size.log" 2>&1
    echo "size $size rc=$? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
    grep -v "^W[0-9]" "$OUT/$size.log" | tail -3
done
