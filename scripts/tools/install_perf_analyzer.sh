#!/bin/sh
# perf_analyzer, NVIDIA's load generator for Triton's protocol, ships inside the tritonclient
# wheel (`perf_analyzer` on the venv's PATH) but links two libraries the wheel leaves out:
#   libb64.so.0d      Debian's libb64-0d
#   libcudart.so.12   the nvidia-cuda-runtime-cu12 wheel (loaded even on a machine without a GPU)
# This installs both and prints the LD_LIBRARY_PATH that perf_analyzer needs; the benchmark
# scripts/benchmarks/bench_perf_analyzer.py sets it by itself.
#
#   sh scripts/tools/install_perf_analyzer.sh            # with the python on PATH (the venv's)
#   PYTHON=.venv/bin/python sh scripts/tools/install_perf_analyzer.sh
set -eu
PYTHON=${PYTHON:-python}

if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get install -y libb64-0d >/dev/null || {
        $SUDO apt-get update >/dev/null && $SUDO apt-get install -y libb64-0d >/dev/null
    }
fi
"$PYTHON" -m pip install --quiet 'tritonclient[grpc,http]>=2.41,<2.42' nvidia-cuda-runtime-cu12

LIB=$("$PYTHON" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')
BIN=$(dirname "$(command -v "$PYTHON")")/perf_analyzer
LD_LIBRARY_PATH="$LIB" "$BIN" --version >/dev/null 2>&1 || LD_LIBRARY_PATH="$LIB" "$BIN" --help >/dev/null 2>&1 || {
    echo "perf_analyzer does not start; its missing libraries:" >&2
    LD_LIBRARY_PATH="$LIB" ldd "$BIN" | grep 'not found' >&2
    exit 1
}
echo "perf_analyzer is ready: LD_LIBRARY_PATH=$LIB $BIN -m MODEL -u HOST:PORT"
