#!/usr/bin/env bash
# One GPU session (about 8 minutes on one H200) for the checks a CPU cannot make. Run it from the repository root:
#     bash benchmarks/gpu_check.sh              # with the built .venv, or with python3 where torch is installed
#     DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # the same plumbing on the CPU, to check this script
# Results go to $OUT (default /tmp/gpu_check): summary.txt, env.txt and gpu_check.tgz (each step's log, the run
# folders without weights, the samples); a failing step does not stop the
# next, each has its own time limit (cut to what is left of BUDGET, default 540 s), most important first:
#   1. the MM-DiT training step, mmflow eager and compiled vs diffusers eager, bf16, sizes B and L
#      (benchmarks/gpu.sh: samples/s, peak memory, model FLOPs utilisation)
#   2. the CUDA-only tests (flash SDPA, xformers when installed, the MM-DiT in bf16 on CUDA)
#   3. shapes_t2i trained 30 steps on CUDA (bf16 autocast, train.compile auto = compiled there; the first step holds
#      the compile, over 65 s with a cold inductor cache on the H200), then sampled eager and compiled
# (train.sharding fsdp2 needs 2+ processes and NCCL refuses two on one GPU: one GPU cannot check the sharding;
# accelerate's FSDP plugins are refused with an EMA: README, "Sharded training".)
# Where the venv cannot travel (a lent machine takes 64 MiB of working tree), wheels of the packages missing
# there may be carried in .whl/ (installed into /tmp/site) and a folder put first on PYTHONPATH by the caller;
# benchmarks/gpu_carry.sh prepares both (and says what the stand-in for the MiniLM wheel is).
set -u
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-/tmp/gpu_check_runs}   # run folders; what matters of them is packed into $OUT/gpu_check.tgz at the end
rm -rf "$RUNS"; mkdir -p "$OUT" "$RUNS"
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # mmflow from this checkout, installed or not
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$RUNS/wheels.log" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
MM="$PY -m mmflow"
STEPS=30; WARM=5; [ -n "${QUICK:-}" ] && STEPS=4 && WARM=1
command -v nvidia-smi > /dev/null && nvidia-smi > "$RUNS/nvidia-smi.txt" 2>&1
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())" > "$OUT/env.txt" 2>&1
# each step runs under its own limit, cut to what is left of BUDGET seconds so the whole ends in time
DEADLINE=$(( $(date +%s) + ${BUDGET:-540} ))
step() { local name=$1 limit=$2; shift 2; local t0=$(date +%s); local left=$(( DEADLINE - t0 ))
         if [ "$left" -lt 15 ]; then echo "$name skipped: out of time" | tee -a "$OUT/summary.txt"; return; fi
         [ "$left" -lt "$limit" ] && limit=$left
         timeout "$limit" "$@" > "$RUNS/$name.log" 2>&1; local rc=$?
         echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
         [ "$rc" = 0 ] || tail -n 8 "$RUNS/$name.log"; }

if [ "$DEVICE" = cuda ]; then
    step mmdit_step 300 env OUT="$RUNS/mmdit" PY="$PY" bash benchmarks/gpu.sh
    step cuda_tests 60 $PY -m pytest -q -rs -p no:cacheprovider tests/models/test_attention.py \
        tests/models/test_mmdit.py -k "cuda or CUDA or flash or xformers"
fi
[ -f data/shapes/train/metadata.jsonl ] || $PY -m mmflow.data.shapes --out data/shapes/train --split train > /dev/null
[ -f data/shapes/test/metadata.jsonl ] || $PY -m mmflow.data.shapes --out data/shapes/test --split test > /dev/null
SHORT="data.use_cache=off train.device=$DEVICE train.max_steps=$STEPS train.warmup_steps=$WARM train.checkpoint_every=$STEPS
       train.validate_every=$STEPS train.log_every=10 eval.num_samples=16"
step t2i 150 $MM train recipes/shapes_t2i.yaml --run-dir "$RUNS/t2i" $SHORT
step t2i_sample 40 $MM sample "$RUNS/t2i" --device "$DEVICE" --no-compile --prompt "a green star in the centre" \
    --out "$RUNS/t2i_samples" num_samples=2
[ "$DEVICE" = cuda ] && step t2i_sample_compiled 150 $MM sample "$RUNS/t2i" --device cuda --compile \
    --prompt "a green star in the centre" --out "$RUNS/t2i_samples_compiled" num_samples=2
# the lent machine returns at most 8 files: summary.txt and env.txt stay loose, the rest goes into one archive
tar czf "$OUT/gpu_check.tgz" -C "$RUNS" --exclude "*.safetensors" --exclude "*.pt" --exclude "*.bin" . 2> /dev/null
cat "$OUT/summary.txt"; grep -h -v "^W[0-9]" "$RUNS"/mmdit/*.log 2> /dev/null | grep -E "samples/s|size|MFU|mmflow|diffusers" | tail -n 20
