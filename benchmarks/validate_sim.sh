#!/usr/bin/env bash
# Simulated vs measured (issue #15 item 2), in one go: calibrate each model once, then for each workload
# simulate it with that model's profile and replay it on the real engine (python -m nanoserve.sim.validate),
# plus one online row through `nanoserve serve` + `nanoserve bench serve` against `nanoserve simulate`.
# THREADS threads (default 2); ~10 min on the 2-core dev box. Results: benchmarks/results/sim/*.json, a
# table on stdout.
# Usage: [OUT=DIR] [THREADS=N] bash benchmarks/validate_sim.sh [STEP...]
#   steps: calibrate (= calibrate-toy calibrate-qwen) toy qwen serve table; by default each model is
#   calibrated right before its rows (this shared box's step times drift by 10-20% within minutes), in
#   three passes over its points (each point keeps the median of its passes)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NS="$PY -m nanoserve.cli"
OUT=${OUT:-benchmarks/results/sim}
mkdir -p "$OUT"
export THP_MEM_ALLOC_ENABLE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE}
T="--num-cpu-threads ${THREADS:-2}"
TOY="--model models/toy-assistant"
QWEN="--random-model qwen2.5-0.5b"
steps="${*:-calibrate-toy toy calibrate-qwen qwen serve table}"
steps=" $steps "; steps="${steps// calibrate / calibrate-toy calibrate-qwen }"

row() {  # row NAME MODEL_FLAGS... : one workload, simulated and replayed
  local name=$1; shift
  echo "=== $name $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m nanoserve.sim.validate $T --label "$name" --save-result "$OUT/$name.json" "$@"
}

for step in $steps; do
case $step in
calibrate-toy)
  $NS bench calibrate $TOY $T --decode-batches 1,2,4,8,16,32,128,256 --contexts 32,104 \
    --prefill-tokens 8,16,32,64,96 --prefill-batches 1,8,32 --repeats 4 --passes 3 -o $OUT/profile-toy.json ;;
calibrate-qwen)
  $NS bench calibrate $QWEN $T --decode-batches 1,2,4,8,16,32 --contexts 64,512 --prefill-tokens 16,64,256,1024 \
    --prefill-batches 1,8,32 --repeats 2 --passes 3 -o $OUT/profile-qwen.json ;;
toy)
  row toy-light $TOY --profile $OUT/profile-toy.json --num-prompts 200 --input-len 32 --output-len 32 \
    --range-ratio 0.5 --request-rate 20
  row toy-saturation $TOY --profile $OUT/profile-toy.json --num-prompts 256 --input-len 32 --output-len 64
  row toy-preempt $TOY --profile $OUT/profile-toy.json --num-prompts 128 --input-len 32 --output-len 64 \
    --num-gpu-blocks-override 40 ;;
qwen)
  row qwen-light $QWEN --profile $OUT/profile-qwen.json --num-prompts 16 --input-len 64 --output-len 16 \
    --request-rate 0.5
  row qwen-saturation $QWEN --profile $OUT/profile-qwen.json --num-prompts 32 --input-len 64 --output-len 32
  row qwen-preempt $QWEN --profile $OUT/profile-qwen.json --num-prompts 16 --input-len 64 --output-len 64 \
    --num-gpu-blocks-override 24 ;;
serve)  # the demo model online: HTTP, streaming and detokenization in the measured figure
  # The server runs one core fewer torch threads (its default: a core for the HTTP front end), so its
  # engine is calibrated at that count; a light probe (40 requests at 4/s) then measures what the front
  # end adds (python -m nanoserve.sim.frontend) before the validated row (200 at 20/s) is sent.
  st=$(( ${THREADS:-2} > 1 ? ${THREADS:-2} - 1 : 1 ))
  $NS bench calibrate $TOY --num-cpu-threads $st --decode-batches 1,2,4,8,16,32,128,256 --contexts 32,104 \
    --prefill-tokens 8,16,32,64,96 --prefill-batches 1,8,32 --repeats 4 --passes 3 -o $OUT/profile-toy-serve.json
  port=8766
  $NS serve $TOY --num-cpu-threads $st --port $port --num-gpu-blocks-override 2048 --log-level warning \
    > $OUT/server.log 2>&1 &
  pid=$!
  until curl -sf localhost:$port/health > /dev/null; do sleep 0.1; done
  probe="--num-prompts 40 --input-len 32 --output-len 32 --range-ratio 0.5 --request-rate 4 --seed 1"
  wl="--num-prompts 200 --input-len 32 --output-len 32 --range-ratio 0.5 --request-rate 20 --seed 0"
  $NS bench serve --base-url http://127.0.0.1:$port --tokenizer models/toy-assistant $probe --disable-tqdm \
    --save-result $OUT/serve-probe.json
  $NS bench serve --base-url http://127.0.0.1:$port --tokenizer models/toy-assistant $wl --disable-tqdm \
    --save-result $OUT/serve-toy-light.json
  kill $pid; wait $pid
  sim="$NS simulate --profile $OUT/profile-toy-serve.json --num-gpu-blocks-override 2048 --max-model-len 128"
  $sim $probe --json > $OUT/serve-probe-sim.json
  fe=$($PY -m nanoserve.sim.frontend $OUT/serve-probe.json $OUT/serve-probe-sim.json)
  echo "front end: $fe"
  $sim $wl $fe --json > $OUT/serve-toy-light-sim.json ;;
table)
  $PY benchmarks/sim_table.py $OUT ;;
esac
done
