#!/bin/bash
# deepr's GPU checks, on a host prepared as docs/gpu.md describes (onnxruntime-gpu staged
# from .ortgpu0..N, extra wheels in .whl). From the project root:
#
#     STEPS="tests tf32 shape sizes profile" bash scripts/tools/gpu_check.sh RESULTS_DIR
#
# Steps (STEPS picks and orders them; the default is every step but suite):
#   tests    the `gpu`-marked tests (CUDA vs CPU: Grad-CAM at batch 128, served
#            classification under dynamic batching and in shared memory, the character graphs)
#   suite    the whole suite with the code under test on CUDA (DEEPR_TEST_DEVICE=cuda)
#   tf32     Grad-CAM heatmaps with TF32 on and off (scripts/benchmarks/gradcam_tf32.py)
#   bench    `deepr bench` on CUDA: resnet50 (224x224), the VGG16 base (150x150) and
#            resnet50's uint8 pixel graph (BENCH_MODELS), in-process onnxruntime vs the gRPC
#            server under tritonclient, tensors in the message and in system shared memory
#   shape    the cost of a new batch size on CUDA (scripts/benchmarks/shape_cost.py)
#   encoded  resnet50 served as float32, uint8 pixels and JPEG files, decode cost per picture
#            (scripts/benchmarks/bench_encoded.py --device cuda)
#   sizes    merged runs at the sizes warmed at load against free sizes (--free-batch-sizes)
#   profile  `deepr export resnet50 --profile-batches` on CUDA (rows/s per batch size and
#            instance count), then `deepr bench` of the profiled model
# One command may run for at most 10 minutes on the lent machine: run the steps over two or
# three calls (docs/gpu.md gives a split); each call activates onnxruntime-gpu again, which
# is quick once the first has unpacked it.
set -u
results="${1:-${OUT:-gpu-results}}"
mkdir -p "$results"
export PYTHONUNBUFFERED=1 DEEPR_HOME=/tmp/deepr-home
source .ortgpu0/activate.sh || exit 1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="${PYTHONPATH:-}:/tmp/site:$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$results/device.txt"
python3 -c "import torch, onnxruntime, grpc; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, 'grpcio', grpc.__version__)" | tee -a "$results/device.txt"

# Graphs exported beforehand (scripts/tools/export_gpu_graphs.py) where this host's torch cannot.
if [ -d .gpu-graphs ]; then export DEEPR_GPU_GRAPHS="$PWD/.gpu-graphs"; tf32_args="--onnx .gpu-graphs/catsdogs_convnet_gradcam.onnx"; fi

for step in ${STEPS:-tests tf32 bench shape sizes profile}; do
  echo "=== $step"
  case "$step" in
    tests)
      timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py tests/exporters/test_gradcam.py 2>&1 \
        | tee "$results/gpu-tests.log" | tail -15 ;;
    suite)
      DEEPR_TEST_DEVICE=cuda timeout "${SUITE_TIMEOUT:-540}" python3 -m pytest -q -p no:cacheprovider \
        --junitxml "$results/suite-cuda.xml" 2>&1 | tee "$results/suite-cuda.log" | tail -25 ;;
    tf32)
      timeout 120 python3 scripts/benchmarks/gradcam_tf32.py ${tf32_args:-} --out "$results/gradcam_tf32.json" 2>&1 | tail -4 ;;
    bench)
      models=""; for m in ${BENCH_MODELS:-resnet50 vgg16 resnet50_uint8}; do models="$models --model $m"; done
      timeout "${BENCH_TIMEOUT:-500}" python3 -m deepr bench --device cuda $models \
        --cells "${BENCH_CELLS:-1x1,1x64,32x1,32x8,256x1,256x4}" --seconds "${BENCH_SECONDS:-2}" \
        --client-processes 4 --shared-memory ${BENCH_ARGS:-} --out "$results/bench_cuda.json" 2>&1 | grep -v " INFO " ;;
    encoded)
      timeout 420 python3 scripts/benchmarks/bench_encoded.py --device cuda --model resnet50 --seconds 5 \
        --out "$results/bench_encoded.json" 2>&1 | tee "$results/bench_encoded.log" | tail -20 ;;
    shape)
      timeout 150 python3 scripts/benchmarks/shape_cost.py --model resnet50 --device cuda --sizes 1-64 --out "$results/shape_cost.json" 2>&1 \
        | grep -v " INFO " | tail -8 ;;
    sizes)
      timeout 200 python3 -m deepr bench --device cuda --model resnet50 --cells 1x64,32x8 --free-batch-sizes --seconds 3 \
        --client-processes 4 --out "$results/bench_sizes.json" 2>&1 | grep -v " INFO " ;;
    profile)
      timeout 120 python3 -m deepr export resnet50 --repository /tmp/profiled --profile-batches 2>&1 | grep -v " INFO " \
        | tee "$results/profile_resnet50.txt"
      timeout 200 python3 -m deepr bench --device cuda --repository /tmp/profiled --model resnet50 --cells 1x64,32x8 --seconds 3 \
        --client-processes 4 --out "$results/bench_profiled.json" 2>&1 | grep -v " INFO " ;;
    *)
      echo "unknown step $step (tests suite tf32 bench encoded shape sizes profile)"; exit 2 ;;
  esac
done
