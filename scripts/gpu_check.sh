#!/bin/bash
# deepr's GPU checks in one run, on a host prepared as docs/gpu.md describes
# (onnxruntime-gpu staged from .ortgpu0..N, extra wheels in .whl). From the project root:
#
#     bash scripts/gpu_check.sh [RESULTS_DIR]
#
# 1. the `gpu`-marked tests (CUDA vs CPU: Grad-CAM at batch 128, served classification
#    under dynamic batching and in shared memory, the character graphs); with SUITE=1 also the
#    whole suite on the CUDA provider (DEEPR_TEST_DEVICE=cuda);
# 2. Grad-CAM heatmaps with TF32 on and off (scripts/gradcam_tf32.py);
# 3. `deepr bench` on the CUDA provider: resnet50 (224x224), the VGG16 base (150x150) and
#    resnet50's uint8 pixel graph (BENCH_MODELS),
#    in-process onnxruntime vs the gRPC server under tritonclient, tensors in the
#    message and in system shared memory;
# 4. the cost of a new batch size on CUDA (scripts/shape_cost.py);
# 5. dynamic batching with runs padded to fixed sizes (--pad-batches) against without.
set -u
results="${1:-${OUT:-gpu-results}}"
mkdir -p "$results"
export PYTHONUNBUFFERED=1 DEEPR_HOME=/tmp/deepr-home
source .ortgpu0/activate.sh || exit 1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="${PYTHONPATH}:/tmp/site:$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$results/device.txt"
python3 -c "import torch, onnxruntime, grpc; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, 'grpcio', grpc.__version__)" | tee -a "$results/device.txt"

# Graphs exported beforehand (scripts/export_gpu_graphs.py) where this host's torch cannot.
if [ -d .gpu-graphs ]; then export DEEPR_GPU_GRAPHS="$PWD/.gpu-graphs"; tf32_args="--onnx .gpu-graphs/catsdogs_convnet_gradcam.onnx"; fi
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py tests/exporters/test_gradcam.py 2>&1 | tee "$results/gpu-tests.log" | tail -15
# SUITE=1: the whole suite with the code under test on the CUDA provider (several minutes).
if [ "${SUITE:-0}" = 1 ]; then
  DEEPR_TEST_DEVICE=cuda timeout "${SUITE_TIMEOUT:-420}" python3 -m pytest -q -p no:cacheprovider \
    --junitxml "$results/suite-cuda.xml" 2>&1 | tee "$results/suite-cuda.log" | tail -25
fi
timeout 120 python3 scripts/gradcam_tf32.py ${tf32_args:-} --out "$results/gradcam_tf32.json" 2>&1 | tail -4
models=""; for m in ${BENCH_MODELS:-resnet50 vgg16 resnet50_uint8}; do models="$models --model $m"; done
timeout "${BENCH_TIMEOUT:-420}" python3 -m deepr bench --device cuda $models \
  --cells "${BENCH_CELLS:-1x1,1x64,32x1,32x8,256x1,256x4}" --seconds "${BENCH_SECONDS:-3}" --warmup 1 \
  --client-processes 4 --shared-memory ${BENCH_ARGS:-} --out "$results/bench_cuda.json" 2>&1 | grep -v " INFO "
# 4. what a new batch size costs on CUDA (first run at each size against later runs).
timeout 150 python3 scripts/shape_cost.py --model resnet50 --device cuda --sizes 1-64 --out "$results/shape_cost.json" 2>&1 | grep -v " INFO " | tail -8
# 5. merged runs padded to fixed, warmed sizes (NAME_padded) beside the plain model.
timeout 200 python3 -m deepr bench --device cuda --model resnet50 --cells 1x64,32x8 --pad-batches --seconds 3 --warmup 1 \
  --client-processes 4 --out "$results/bench_padding.json" 2>&1 | grep -v " INFO "
