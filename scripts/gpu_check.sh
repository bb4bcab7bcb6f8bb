#!/usr/bin/env bash
# Issue 19's GPU check in one call, within 8 minutes on one GPU with no network (the lent H200):
#   1. the engine's tests on CUDA (test files that pick device "auto" run on the GPU; test_cuda_smoke.py
#      is the GPU-only one) and the attention/Triton kernel tests, at most PYTEST_S seconds;
#   2. benchmarks/gpu_check.py: greedy equivalence with transformers (fp32 identical, bf16 agreement),
#      then decode (batch 1, 8, 64) and 4,096-token prefill on random Qwen2.5-0.5B- and Llama-3.1-8B-
#      shaped bf16 models, nanoserve (CUDA graphs on and off) vs transformers, with the planner's H200
#      roofline (MBU, MFU).
# Needs torch (CUDA), transformers, safetensors, tokenizers, numpy, tqdm; installs and downloads nothing.
# Everything goes to $OUT (default ./gpu_check_out): env.txt, pytest.txt, pytest.xml, gpu_check.log,
# gpu_check.json, gpu_check.md.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python3}
PYTEST_S=${PYTEST_S:-110}
BENCH_S=${BENCH_S:-330}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# The native CPU kernels are never used on CUDA; skip their one-minute compile in the test fixtures.
export NANOSERVE_DISABLE_NATIVE_KERNELS=1 NANOSERVE_DISABLE_NATIVE_LINEAR=1
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

{
  date; nvidia-smi || true
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-'); \
print('transformers', transformers.__version__)"
  $PY -c "import triton; print('triton', triton.__version__)" || true
  git log -1 --oneline 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

tests=(tests/engine/test_cuda_smoke.py tests/engine/test_cuda_graph.py tests/engine/test_sampler.py
       tests/engine/test_llm_engine.py tests/engine/test_kv_cache_dtype.py tests/model/test_attention.py)
for f in tests/model/test_triton*.py tests/model/attention/test_triton*.py; do [ -e "$f" ] && tests+=("$f"); done
echo "== pytest (${PYTEST_S}s max): ${tests[*]}"
timeout "$PYTEST_S" $PY -m pytest -q -p no:cacheprovider -rfEs --junitxml="$OUT/pytest.xml" "${tests[@]}" \
  > "$OUT/pytest.txt" 2>&1
echo "pytest exit $? (124: timed out)"; tail -n 25 "$OUT/pytest.txt"

echo "== benchmarks/gpu_check.py (${BENCH_S}s max)"
timeout "$BENCH_S" $PY benchmarks/gpu_check.py --out "$OUT" --budget-s $((BENCH_S - 70)) > "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $?"; grep '\[gpu_check' "$OUT/gpu_check.log" | tail -n 40
cat "$OUT/gpu_check.md" 2>/dev/null
