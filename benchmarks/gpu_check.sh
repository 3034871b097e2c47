#!/usr/bin/env bash
# One short GPU session (under 5 minutes on one H200) for the checks a CPU cannot make. Run it through the
# device tool from the repository root with the built venv carried:  bash benchmarks/gpu_check.sh
# Results go to $OUT (default /tmp/gpu_check): each step's log; a failing step does not stop the next.
#   1. the CUDA-only tests (attention backends, MM-DiT on CUDA)
#   2. a 30-step shapes_t2v run on CUDA with bf16 autocast, then sampling from it (trainer + pipeline on GPU)
#   3. FSDP FULL_SHARD through accelerate on 1 GPU (the wrap policy, EMA and export under FSDP: README says
#      unverified) with the shortened shapes_t2i recipe
#   4. MM-DiT training step mmflow vs diffusers on CUDA, bf16
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
MM=${MM:-.venv/bin/mmflow}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step() { local name=$1; shift; local t0=$(date +%s); timeout "${LIMIT:-150}" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
         echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"; }

step cuda_tests $PY -m pytest -q -rs tests/models/test_attention.py tests/models/test_mmdit.py -k "cuda or CUDA or flash or xformers"
[ -f data/shapes_video/train/metadata.jsonl ] || $PY -m mmflow.data.shapes_video --out data/shapes_video/train --split train --n 200 > /dev/null
[ -f data/shapes_video/test/metadata.jsonl ] || $PY -m mmflow.data.shapes_video --out data/shapes_video/test --split test > /dev/null
step t2v_cuda $MM train recipes/shapes_t2v.yaml --run-dir "$OUT/t2v" data.use_cache=off train.device=cuda \
    train.max_steps=30 train.warmup_steps=5 train.checkpoint_every=30 train.validate_every=30 train.log_every=10 eval.num_samples=32
step t2v_sample $MM sample "$OUT/t2v" --device cuda --prompt "a red star moving up on a white background" --num-frames 17 --out "$OUT/t2v_samples" num_samples=2
[ -f data/shapes/train/metadata.jsonl ] || $PY -m mmflow.data.shapes --out data/shapes/train --split train > /dev/null
[ -f data/shapes/test/metadata.jsonl ] || $PY -m mmflow.data.shapes --out data/shapes/test --split test > /dev/null
step fsdp_1gpu .venv/bin/accelerate launch --config_file recipes/accelerate/fsdp_8gpu.yaml --num_processes 1 -m mmflow train \
    recipes/shapes_t2i.yaml --run-dir "$OUT/fsdp" data.use_cache=off train.device=cuda train.max_steps=20 train.warmup_steps=2 \
    train.checkpoint_every=10 train.validate_every=20 eval.num_samples=16
step fsdp_sample $MM sample "$OUT/fsdp" --device cuda --prompt "a green star in the centre" --out "$OUT/fsdp_samples" num_samples=2
step mmdit_step $PY benchmarks/mmdit_step.py --device cuda --dtype bfloat16 --repeats 5
cat "$OUT/summary.txt"
