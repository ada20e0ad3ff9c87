#!/usr/bin/env bash
# One device call for everything GPU: the gpu-marked tests, the conformance report on the GPU
# default (gpt-oss-like) configuration, and the benchmarks. Outputs land in ${OUT:-out}/.
# Usage (device tool): bash benchmarks/gpu_session.sh [quant|tests|verify|peers|memcheck|bench|all] (quant: the
# quantizer tests only; memcheck: --memcheck on the planted kernel and on each implementation at the gpt-oss shape); each stage alone
# fits one 10-minute device call (tests ~8 min on an H100), "all" may not.
set -uo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-out}"
mkdir -p "$out"
what="${1:-all}"
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || rocm-smi --showproductname 2>/dev/null
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
rc=0
# pytest-xdist from wheels/ (pip download pytest-xdist execnet --no-deps -d wheels) where the machine lacks it
python -c "import xdist" 2>/dev/null || { [[ -d wheels ]] && pip install -q --no-index --find-links wheels pytest-xdist; }
workers=$(python -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
if [[ $what == quant || $what == tests || $what == all ]]; then
  tests=$([[ $what == quant ]] && echo "tests/kernels/test_quant.py tests/kernels/test_numerics.py" || echo tests/kernels)
  python -m pytest $tests -m gpu -q -p no:cacheprovider $workers --tb=short 2>&1 | grep -v '^seed:' | tee "$out/gpu_tests_$what.log" | tail -40 || rc=1
fi
if [[ $what == verify || $what == all ]]; then
  # a GPU run computes its references on the GPU (moe_ref.products); BLAS threads for the host steps
  OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 \
    python -m moe_oracle --out "$out/verify" 2>&1 | tee "$out/verify.log" | tail -30 || rc=1
fi
if [[ $what == peers || $what == all ]]; then
  # peers carried in wheels/ (see README "What the oracle reports on peers"): AITER's Triton files (wheels/aiter),
  # triton_kernels (wheels/tk), the ecosystem's libraries' files (wheels/site: torchao, amd-quark, sglang, vllm,
  # flashinfer) and binary wheels they import (wheels/*.whl, e.g. apache-tvm-ffi for FlashInfer)
  export MOE_ORACLE_AITER_PATH="${MOE_ORACLE_AITER_PATH:-wheels/aiter}" MOE_ORACLE_TRITON_KERNELS_PATH="${MOE_ORACLE_TRITON_KERNELS_PATH:-wheels/tk}"
  ls wheels/*.whl >/dev/null 2>&1 && pip install -q --no-index --no-deps --target /tmp/peer-site wheels/*.whl
  # the ecosystem table on the GPU: every library's MXFP4 functions on the device
  PYTHONPATH="/tmp/peer-site:wheels/site:${PYTHONPATH:-}" timeout "${ECOSYSTEM_S:-240}" python -m moe_oracle.ecosystem \
    --device cuda --json "$out/ecosystem.json" > "$out/ecosystem.md" 2> "$out/ecosystem.err"; echo "ecosystem: exit $?"
  tail -5 "$out/ecosystem.err"
  # real shapes with partial tiles and guard bands (config): gpt-oss (K % 128 = 64), DeepSeek-V3, E = 60
  for impl in ${PEER_IMPLS:-aiter-triton triton-kernels}; do
    timeout "${PEER_S:-200}" python -m moe_oracle --impl $impl --config benchmarks/peers_gpu.json --out "/tmp/peers/$impl" \
      > "$out/$impl.log" 2>&1; echo "$impl: exit $?"; tail -40 "$out/$impl.log"
    cp "/tmp/peers/$impl/report.md" "$out/$impl.report.md" 2>/dev/null  # the device returns 8 files at most
  done
fi
if [[ $what == memcheck ]]; then
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer
  python -m pytest tests/oracle/test_memcheck.py -m gpu -q -p no:cacheprovider --tb=short 2>&1 | tail -15 || rc=1
  # each implementation at the gpt-oss shape (K % 128 = 64) under memcheck
  export MOE_ORACLE_AITER_PATH="${MOE_ORACLE_AITER_PATH:-wheels/aiter}" MOE_ORACLE_TRITON_KERNELS_PATH="${MOE_ORACLE_TRITON_KERNELS_PATH:-wheels/tk}"
  for impl in ${MEMCHECK_IMPLS:-aiter-triton triton-kernels ours}; do
    timeout "${MEMCHECK_S:-240}" python -m moe_oracle --impl $impl --config benchmarks/peers_gpu_gptoss.json \
      --only moe --memcheck --out "$out/mc_$impl" > "$out/mc_$impl.log" 2>&1; echo "$impl --memcheck: exit $?"
    grep -A8 "^memcheck" "$out/mc_$impl.log"; grep -E "passed|failed" "$out/mc_$impl.log" | tail -2
  done
fi
if [[ $what == bench || $what == all ]]; then
  export MOE_ORACLE_TRITON_KERNELS_PATH="${MOE_ORACLE_TRITON_KERNELS_PATH:-wheels/tk}"  # the peer, where carried
  python -m benchmarks.bench_quant --json "$out/bench_quant.json" 2>&1 | tee "$out/bench_quant.log" || rc=1
  python -m benchmarks.bench_moe --json "$out/bench_moe.json" 2>&1 | tee "$out/bench_moe.log" || rc=1
fi
exit $rc
