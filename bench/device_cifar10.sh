#!/usr/bin/env bash
# CIFAR-10 figures on a lent GPU machine (issues 3, 4, 8), in one call of the device tool:
#   run(command="bash bench/device_cifar10.sh", carry=[".whl", ".device"])
# .whl holds wheels of nir, nirtorch and norse (missing on the device image); .device holds the shared
# CIFAR-10 zips (train.zip, test.zip). Results land in $OUT (checkpoints of finished runs included, so a
# run cut off at the time limit still returns what it finished).
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/lasnn . || exit 1
export PYTHONPATH=/tmp/lasnn:/tmp/site PYTHONUNBUFFERED=1 LASNN_CACHE=/tmp/cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ -n "${SKIP_THROUGHPUT:-}" ] || timeout 90 python3 bench/train_throughput.py --config resnet19 --device cuda --batch-size 128 \
  > "$OUT/train_throughput_resnet19_cuda.txt" 2>&1
[ -n "${SKIP_THROUGHPUT:-}" ] || tail -n 30 "$OUT/train_throughput_resnet19_cuda.txt"
timeout "${LATENCY_SECONDS:-400}" python3 bench/latency_vs_accuracy.py --dataset cifar10 --data-root .device \
  --device cuda --arch vgg11 --width 0.5 --teacher-epochs "${TEACHER_EPOCHS:-15}" --widths 64,128,256 \
  --epochs "${STUDENT_EPOCHS:-6}" \
  --student-timesteps 1,2,4 --test-samples 2000 --work "$OUT/work" --out-dir "$OUT" 2>&1 \
  | grep -v -E "it/s\]|s/it\]" | tee "$OUT/latency.log" | tail -n 40
