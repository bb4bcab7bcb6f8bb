#!/usr/bin/env bash
# Every figure of RESULTS.md, in one go (2 threads; ~40 min on the 2-core dev box, half of it the offline hf baseline).
# Usage: bash benchmarks/run_all.sh [STEP...]   steps: linear roofline batch offline latency serve
# Results land in benchmarks/results/*.json and benchmarks/*.png; logs in benchmarks/results/*.log.
set -u
cd "$(dirname "$0")/.."
NS=".venv/bin/nanoserve"
OUT=benchmarks/results
mkdir -p "$OUT"
MODEL="--random-model qwen2.5-0.5b"
export THP_MEM_ALLOC_ENABLE=1   # huge pages for torch's CPU allocator (REFERENCES.md: +15% read bandwidth)
# A dedicated benchmark box: OpenMP threads spin between parallel regions instead of sleeping
# (nanoserve's own default is PASSIVE, which suits a shared machine). Applies to every backend alike.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE}
steps="${*:-linear roofline batch latency serve offline}"

run() {  # run NAME CMD...: log with a timestamp and the load average, never stop the whole script
  local name=$1; shift
  echo "=== $name $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/$name.log"
  echo "+ $*" | tee -a "$OUT/$name.log"
  timeout 2400 "$@" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/$name.log"
}

for step in $steps; do
case $step in
linear)
  run linear $NS bench linear --num-cpu-threads 2 --repeats 10 --save-result $OUT/linear.json ;;
roofline)
  run roofline $NS bench roofline $MODEL --num-cpu-threads 2 --batch-sizes 1,8,32 --input-len 128 \
    --output-len 16 --prefill-len 512 --save-result $OUT/roofline.json ;;
batch)  # the issue's table: prompt 128, 128 output tokens, N requests at once, greedy
  for n in 1 8 32; do
    run batch$n $NS bench throughput $MODEL --num-cpu-threads 2 --num-prompts $n --input-len 128 --output-len 128 \
      --backend nanoserve,hf-batched --hf-batch-size $n --profile --save-result $OUT/batch$n.json
  done
  for n in 1 32; do  # the engine with plain F.linear instead of cpu_linear's fast paths
    run batch$n-torch $NS bench throughput $MODEL --num-cpu-threads 2 --num-prompts $n --input-len 128 \
      --output-len 128 --backend nanoserve --cpu-linear torch --profile --save-result $OUT/batch$n-torch.json
  done ;;
offline)  # the issue's 64 requests: input uniform in [64, 512], output uniform in [16, 256] (~20 min: hf is slow)
  run offline $NS bench throughput $MODEL --num-cpu-threads 2 --num-prompts ${OFFLINE_N:-64} --input-len 288 \
    --input-range-ratio 0.7778 --output-len 136 --output-range-ratio 0.8823 --backend nanoserve,hf,hf-batched \
    --hf-batch-size 16 --profile --save-result $OUT/offline.json ;;
latency)
  run latency $NS bench latency $MODEL --num-cpu-threads 2 --backend nanoserve,hf --input-lens 32,128,512,1024 \
    --output-len 16 --num-iters 2 --plot benchmarks/latency.png --save-result $OUT/latency.json ;;
serve)  # the demo model behind `nanoserve serve`: start-up time, then 500 streamed requests
  port=8765
  t0=$(date +%s.%N)
  $NS serve --port $port --log-level warning > $OUT/server.log 2>&1 &
  pid=$!
  until curl -sf localhost:$port/health > /dev/null; do sleep 0.05; done
  t1=$(date +%s.%N)
  echo "serve start-up (launch -> /health 200): $(echo "$t1 - $t0" | bc) s" | tee $OUT/serve-startup.log
  run serve $NS bench serve --base-url http://127.0.0.1:$port --tokenizer models/toy-assistant \
    --num-prompts ${SERVE_N:-500} --input-len 32 --output-len 32 --range-ratio 0.5 --request-rate ${RATE:-8} \
    --goodput ttft:500 tpot:100 --disable-tqdm --save-result $OUT/serve.json
  kill $pid; wait $pid ;;
esac
done
