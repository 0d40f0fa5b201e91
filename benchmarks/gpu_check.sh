#!/usr/bin/env bash
# One-GPU check, under 10 minutes: updates/s of TD3+BC and CQL, with and without C4, at fp32 / bf16-mixed /
# 16-mixed, torch.compile on and off, against the plain PyTorch loop; then a 2-GPU DDP smoke run if two GPUs exist.
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: benchmarks/results/gpu)
# Needs a CUDA build of torch and `pip install -e .` in the active environment. Prints one table (and writes JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch.cuda.is_available() is False: install a CUDA build of torch on a machine with a GPU")
print(f"# GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}")
PY
python benchmarks/throughput.py --device cuda --modes lean --no-d3rlpy --precision 32-true,bf16-mixed,16-mixed \
    --compile --penalties cross_cov,cross_cov+penalty_sketch=16+penalty_next_action=policy,weighted_cross_cov --steps 1000 --cql-steps 300 --warmup 50 --repeats 2 \
    --refit-repeats 1 --json "$out/throughput_gpu.json" | tee "$out/throughput_gpu.txt"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    echo "# DDP smoke: TD3+BC + C4 on 2 GPUs, 300 updates"
    python train.py fit --config configs/td3bc_c4.yaml --trainer.accelerator gpu --trainer.devices 2 \
        --trainer.strategy ddp --trainer.max_steps 300 --data.steps_per_epoch 100 \
        --trainer.default_root_dir "$out/ddp_smoke" --trainer.enable_progress_bar false 2>&1 | tail -5
    echo "# DDP smoke: exit $?"
else
    echo "# DDP smoke: skipped (one GPU)"
fi
