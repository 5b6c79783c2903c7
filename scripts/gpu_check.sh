#!/usr/bin/env bash
# GPU check (a few minutes): install the CUDA build of the jax this checkout already uses, run the
# tests that exercise the training program on the GPU, then the benchmark up to the largest seed
# count that fits in its memory, and print one table.
#
#   bash scripts/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#
# Needs an NVIDIA GPU with a CUDA 12 driver, and network access for the one `pip install` (skipped
# when jax already sees a GPU). Nothing here is CPU-specific: the library runs unchanged.
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
say() { printf '\n== %s\n' "$*" >&2; }

say "jax with CUDA"
if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  "$PY" -m pip install --quiet -e ".[test]"
  JAX_VERSION="$("$PY" -c 'import jax; print(jax.__version__)')"
  "$PY" -m pip install --quiet "jax[cuda12]==${JAX_VERSION}"
fi
"$PY" - <<'EOF' >&2
import jax
assert jax.default_backend() == "gpu", f"no GPU visible to jax: {jax.devices()}"
print(jax.__version__, jax.devices())
EOF

# Each benchmark case runs in its own process: let every one grow its memory as it needs, so a seed
# count that does not fit fails on its own and its peak memory is its own.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

say "tests on the GPU"
# float32 matmuls in full float32 (not TF32), as the tests' tolerances assume; the 4-device test
# needs XLA CPU devices and is left to the CPU suite.
JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_shuffle.py tests/test_train.py tests/test_model.py tests/test_losses.py \
  tests/test_optim.py tests/test_benchmark.py -k "not one_and_four_devices" >&2 \
  || echo "some tests failed on the GPU (see above); the benchmark runs anyway" >&2

say "benchmark (seed counts past the memory show as errors)"
OUT="$(mktemp -d)/gpu_benchmark.json"
"$PY" scripts/benchmark.py --no-torch --repeats 1 --timeout 600 \
  --seeds 1,256,4096,65536,262144,1048576 --out "$OUT"
echo "JSON: $OUT" >&2
