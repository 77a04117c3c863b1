#!/usr/bin/env bash
# Build llama.cpp's CPU tools (llama-bench, llama-cli/llama-completion,
# llama-server) for benchmarking rfc against it.
#
# llama.cpp is NOT a dependency of rfc; this is a benchmarking aid only.
#
# The source is obtained without any network other than PyPI: the
# llama-cpp-python sdist vendors llama.cpp under vendor/llama.cpp.
#
# Usage: tools/build_llama_cpp.sh [BUILD_DIR]   (default /tmp/llama.cpp-build)
# Env:   LLAMA_CPP_PYTHON_VERSION  pin a llama-cpp-python version (optional)
#        JOBS                      parallel build jobs (default 2)
#        LLAMA_EXTRA_TARGETS       more cmake targets, e.g. "llama-quantize llama-imatrix
#                                  test-llama-archs" for the fixture tools in tools/fixtures/
#                                  (test-* targets here or in LLAMA_TARGETS switch LLAMA_BUILD_TESTS on)
#        LLAMA_PORTABLE=1          build for x86-64-v3 (AVX2, FMA, F16C; no AVX-512, no AMX)
#                                  into BUILD_DIR/build-portable instead of -march=native: the
#                                  test goldens (tools/fixtures/record_goldens.py) come from it,
#                                  so they do not depend on the machine that records them (and a
#                                  native build on an AMX machine here crashes on quantized models)
#        LLAMA_NOAMX=1             build for AVX-512 (F/BW/VL/VNNI/BF16) without AMX into
#                                  BUILD_DIR/build-noamx: on an AMX host the native build's AMX
#                                  matmul crashes (SIGSEGV in ggml_backend_amx_mul_mat) unless
#                                  weight repacking is off, which also turns off llama.cpp's
#                                  repacked x86 kernels; this build keeps those
#        LLAMA_TARGETS             the cmake targets to build instead of the benchmark tools
#
# Idempotent: the download, unpack, configure and build steps are skipped
# when their outputs already exist.
set -euo pipefail

BUILD_ROOT="${1:-/tmp/llama.cpp-build}"
JOBS="${JOBS:-2}"
DL_DIR="$BUILD_ROOT/sdist"
SRC_DIR="$BUILD_ROOT/src"          # the unpacked vendor/llama.cpp tree
BIN_BUILD="$BUILD_ROOT/build"      # cmake build dir
CPU_FLAGS=(-DGGML_NATIVE=ON)
if [[ -n "${LLAMA_PORTABLE:-}" ]]; then
    BIN_BUILD="$BUILD_ROOT/build-portable"
    CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
elif [[ -n "${LLAMA_NOAMX:-}" ]]; then
    BIN_BUILD="$BUILD_ROOT/build-noamx"
    CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON
               -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=OFF
               -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi

PIP="${PIP:-python3 -m pip}"
PKG="llama-cpp-python"
if [[ -n "${LLAMA_CPP_PYTHON_VERSION:-}" ]]; then
    PKG="llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
fi

log() { echo "[build_llama_cpp] $*" >&2; }

mkdir -p "$BUILD_ROOT" "$DL_DIR"

# 1. Download the sdist (PyPI only).
shopt -s nullglob
sdists=("$DL_DIR"/llama_cpp_python-*.tar.gz "$DL_DIR"/llama-cpp-python-*.tar.gz)
if (( ${#sdists[@]} == 0 )); then
    log "downloading $PKG sdist from PyPI into $DL_DIR"
    $PIP download --no-binary :all: --no-deps "$PKG" -d "$DL_DIR"
    sdists=("$DL_DIR"/llama_cpp_python-*.tar.gz "$DL_DIR"/llama-cpp-python-*.tar.gz)
else
    log "sdist already present: ${sdists[0]}"
fi
if (( ${#sdists[@]} == 0 )); then
    log "error: no llama-cpp-python sdist found in $DL_DIR"; exit 1
fi
SDIST="${sdists[0]}"

# 2. Unpack vendor/llama.cpp.
if [[ ! -f "$SRC_DIR/CMakeLists.txt" ]]; then
    log "unpacking $SDIST"
    tmp="$BUILD_ROOT/unpack.tmp"
    rm -rf "$tmp" "$SRC_DIR"
    mkdir -p "$tmp"
    tar -xzf "$SDIST" -C "$tmp"
    vendor=("$tmp"/*/vendor/llama.cpp)
    if (( ${#vendor[@]} == 0 )) || [[ ! -f "${vendor[0]}/CMakeLists.txt" ]]; then
        log "error: $SDIST has no vendor/llama.cpp"; exit 1
    fi
    mv "${vendor[0]}" "$SRC_DIR"
    rm -rf "$tmp"
else
    log "source already unpacked: $SRC_DIR"
fi

# 3. Configure. LLAMA_USE_PREBUILT_UI=OFF stops llama-server's build from trying
#    to download its web UI from Hugging Face (no network but PyPI here); the
#    server is built without the embedded UI, which the benchmarks don't need.
BUILD_TESTS=OFF
[[ " ${LLAMA_TARGETS:-} ${LLAMA_EXTRA_TARGETS:-} " == *" test-"* ]] && BUILD_TESTS=ON
if [[ -f "$BIN_BUILD/CMakeCache.txt" ]] && ! grep -q "^LLAMA_BUILD_TESTS:BOOL=$BUILD_TESTS" "$BIN_BUILD/CMakeCache.txt" \
        && [[ $BUILD_TESTS == ON ]]; then
    log "reconfiguring $BIN_BUILD with LLAMA_BUILD_TESTS=ON"
    cmake -S "$SRC_DIR" -B "$BIN_BUILD" -DLLAMA_BUILD_TESTS=ON
fi
if [[ ! -f "$BIN_BUILD/CMakeCache.txt" ]]; then
    log "configuring in $BIN_BUILD"
    cmake -S "$SRC_DIR" -B "$BIN_BUILD" \
        -DCMAKE_BUILD_TYPE=Release \
        "${CPU_FLAGS[@]}" \
        -DGGML_OPENMP=ON \
        -DLLAMA_CURL=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=$BUILD_TESTS
else
    log "already configured: $BIN_BUILD"
fi

# 4. Build the tools. Pick llama-cli and/or llama-completion, whichever exist
#    as targets in this llama.cpp version.
if [[ -n "${LLAMA_TARGETS:-}" ]]; then
    read -r -a targets <<<"$LLAMA_TARGETS"
    targets+=(${LLAMA_EXTRA_TARGETS:-})
else
    targets=(llama-bench llama-server ${LLAMA_EXTRA_TARGETS:-})
    help_out="$(cmake --build "$BIN_BUILD" --target help 2>/dev/null || true)"
    for t in llama-cli llama-completion; do
        if grep -Eq "(^|[ .])$t(:|$| )" <<<"$help_out"; then
            targets+=("$t")
        fi
    done
    if [[ " ${targets[*]} " != *" llama-cli "* && " ${targets[*]} " != *" llama-completion "* ]]; then
        # Could not introspect (e.g. generator without 'help'); try llama-cli.
        targets+=(llama-cli)
    fi
fi

missing=()
for t in "${targets[@]}"; do
    [[ -x "$BIN_BUILD/bin/$t" ]] || missing+=("$t")
done
if (( ${#missing[@]} > 0 )); then
    log "building: ${missing[*]} (-j$JOBS)"
    cmake --build "$BIN_BUILD" --config Release -j "$JOBS" --target "${missing[@]}"
else
    log "all binaries already built"
fi

# 5. Record which llama.cpp this is (an sdist build has no git commit; llama-bench reports
#    "unknown"): rfc bench prints this file's line beside the binaries.
echo "vendored in $(basename "$SDIST" .tar.gz)" > "$BIN_BUILD/bin/LLAMA_CPP_VERSION"

# 6. Report.
for t in "${targets[@]}"; do
    if [[ -x "$BIN_BUILD/bin/$t" ]]; then
        echo "$BIN_BUILD/bin/$t"
    else
        log "error: $t was not built"; exit 1
    fi
done
