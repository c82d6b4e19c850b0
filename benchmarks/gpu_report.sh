#!/usr/bin/env bash
# Issue #5's GPU half in one command, for a machine with an NVIDIA GPU and a Python that has torch,
# torchvision, onnx and onnxruntime (ROS is not needed; TensorRT rows appear where `tensorrt` imports).
# It runs the GPU tests, the TensorRT fp32/fp16 build-time, timing and label check (bench_tensorrt.py), then
# the paper-style timings: model-only and end to end (uint8 frame in, label out), PyTorch, TensorRT and (with
# onnxruntime-gpu) ONNX Runtime CUDA, fp32 and fp16, at 640x360 and 1024x2048, with the demo weights; then the
# pipeline with its device-side pre/post-processing (bench_gpu_pipeline.py) and, where rclpy imports, the
# whole node: stamp -> published label latency at 30 Hz and fps.
#
#   bash benchmarks/gpu_report.sh [OUT_DIR]          # default OUT_DIR: $OUT, else ./gpu_report
#   PYTHON=.venv/bin/python bash benchmarks/gpu_report.sh
#
# Writes gpu.txt (nvidia-smi), tests.txt, bench_tensorrt.{txt,json}, bench_model*.{txt,json}, bench*.{txt,json},
# bench_gpu_pipeline.{txt,json}, bench_gpu_node.{txt,json} into OUT_DIR and exits non-zero if a test or the
# fp16-vs-fp32 label check failed. The paper's reference: 161 fps at 640x360 (GTX 1080 Ti, fp32, model only).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_report}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$out/gpu.txt"
"$py" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null | tee -a "$out/gpu.txt" \
    || echo "tensorrt: not importable (TensorRT rows are skipped)" | tee -a "$out/gpu.txt"

# GPU tests (marked gpu) + the CPU check of the fp16 tolerance on trained weights
"$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" test/test_engines.py test/test_checkpoint.py \
    test/test_train.py test/test_pipeline.py -m "gpu" 2>&1 | tee "$out/tests.txt" || status=1
"$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" test/test_engines.py -k fp16_numerics 2>&1 \
    | tee -a "$out/tests.txt" || status=1
# the strongly typed TensorRT path: fp16 ONNX checks, every TensorRT name the package uses looked up in the
# installed tensorrt (skipped, with the reason, where it does not import), ONNX Runtime CUDA on the fp16 file
"$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" test/test_tensorrt.py 2>&1 \
    | tee -a "$out/tests.txt" || status=1

# model-only forward, the paper's way (synchronised, 200 timed after warm-up), eager fp32 and fp16
"$py" benchmarks/bench_model.py --cuda --no-cpu --height 360 --width 640 --cuda-runs 200 \
    --json "$out/bench_model.json" 2>&1 | tee "$out/bench_model.txt" || status=1
"$py" benchmarks/bench_model.py --cuda --no-cpu --height 1024 --width 2048 --cuda-runs 200 \
    --json "$out/bench_model_1024x2048.json" 2>&1 | tee -a "$out/bench_model.txt" || status=1

# TensorRT fp32 and fp16 engines (strongly typed, from the fp32 and fp16 ONNX files): build time, model time
# (fp16/fp32 ratio from one round-robin run) and fp16 labels vs fp32 on the GPU; exits 1 below 99 %. The plans
# land in $out/cache, where the 360x640 rows of `liteseg bench` below find them.
backends=pytorch
if "$py" -c "import tensorrt" 2>/dev/null; then
    backends=pytorch,tensorrt
    "$py" benchmarks/bench_tensorrt.py --size 360x640 --cache-dir "$out/cache" --rebuild \
        --json "$out/bench_tensorrt.json" 2>&1 | tee "$out/bench_tensorrt.txt" || status=1
fi
"$py" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
    2>/dev/null && backends=$backends,onnxruntime

# engines: model-only and end to end per backend x precision x size
for size in 360x640 1024x2048; do  # end-to-end rows feed a uint8 frame of the network size
    "$py" -m liteseg_ros.cli bench --weights liteseg_ros/data/liteseg_demo_mobilenetv2.pt --device cuda \
        --backends "$backends" --precisions fp32,fp16 --size "$size" --image-size "$size" \
        --warmup 20 --iters 200 --cache-dir "$out/cache" --json "$out/bench_$size.json" 2>&1 \
        | tee -a "$out/bench.txt" || status=1
done
rm -rf "$out/cache"

# the pipeline on the GPU: uint8 frame in -> label out, torch stages (pre/post-processing on the device)
# against numpy stages, label only and every output, 640x360 and 1920x1080 cameras, 360x640 network
"$py" benchmarks/bench_gpu_pipeline.py --mode pipeline --device cuda --cameras 640x360,1920x1080 \
    --json "$out/bench_gpu_pipeline.json" 2>&1 | tee "$out/bench_gpu_pipeline.txt" || status=1
# the whole node over DDS (needs rclpy): stamp -> published label latency at 30 Hz and the node's fps
# (goals: >= 1610 fps at 640x360, i.e. 10x the paper's 161; <= 5 ms stamp-to-publish at 30 Hz)
if "$py" -c "import rclpy, liteseg_ros.msg" 2>/dev/null; then
    "$py" benchmarks/bench_gpu_pipeline.py --mode node --device cuda --cameras 640x360,1920x1080 \
        --rate 30 --seconds 5 --json "$out/bench_gpu_node.json" 2>&1 | tee "$out/bench_gpu_node.txt" || status=1
else
    echo "rclpy or liteseg_ros.msg not importable: node latency/fps skipped (run scripts/setup_venv.sh)" \
        | tee "$out/bench_gpu_node.txt"
fi
exit $status
