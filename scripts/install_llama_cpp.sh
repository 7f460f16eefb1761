#!/usr/bin/env bash
# Install llama-cpp-python (the real llama.cpp runtime the slow GGUF tests check exports in) into the venv.
#
# Built from its sdist with the flags in shared/RESOURCES.md: the default native build enables AMX on this CPU and
# segfaults on any prompt longer than one token. The build takes ~9 minutes on 2 cores, so the wheel is cached in
# $SLM_WHEEL_CACHE (default ~/.cache/slm/wheels) and later runs install it in seconds.
#
# usage: scripts/install_llama_cpp.sh [PYTHON]      (default .venv/bin/python)
set -euo pipefail
PY=${1:-.venv/bin/python}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${SLM_WHEEL_CACHE:-$HOME/.cache/slm/wheels}

if "$PY" -c "import llama_cpp" 2>/dev/null; then
  exit 0
fi
mkdir -p "$CACHE"
wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION from its sdist (~9 min on 2 cores; cached in $CACHE)" >&2
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  "$PY" -m pip wheel -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$CACHE"
  wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -n1)
fi
# its runtime deps (numpy, jinja2, diskcache, typing-extensions) come from the index as usual
"$PY" -m pip install -q "$wheel"
