#!/usr/bin/env bash
# Every GPU check of the project in one prepared run, most important first, each under its own time
# limit so the whole stays inside a 10-minute slot (a GPU machine is often lent for minutes only).
#   bash benchmarks/gpu_session.sh OUT_DIR [WHEEL_DIR]
# WHEEL_DIR (optional): wheels to install first (diffusers, jsonargparse and its [signatures] extra on a
# machine that has torch, transformers, lightning and accelerate only; benchmarks/README.md).
# Writes to OUT_DIR: log.txt (everything printed), gpu_sd15.json, large_image.json, quickstart.tgz,
# toymodel_gpu.tgz (the fine-tuned toy model's exports) and train_metrics.csv.
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [WHEEL_DIR]}
mkdir -p "$out"
log="$out/log.txt"
start=$(date +%s)
say() { echo "== [$(( $(date +%s) - start )) s] $*" | tee -a "$log"; }
step() {  # step SECONDS NAME COMMAND...: run COMMAND under a time limit, appending its output to the log
    local limit=$1 name=$2; shift 2
    say "$name (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    say "$name: exit $?"
}
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error HF_HUB_OFFLINE=1 WANDB_MODE=offline

if [ -n "${2:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$2"/*.whl \
        >>"$log" 2>&1 || { say "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$log" 2>&1
python3 -c "import torch, diffusers, transformers, lightning; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)" >>"$log" 2>&1

# 1. Issue 6's headline: the paper-setting edit at 512 px, fp16 then bf16, per stage, against DiffEdit.
step 200 "gpu_sd15 fp16 bf16" python3 -m benchmarks.gpu_sd15 --max-seconds 140 --json "$out/gpu_sd15.json"

# 2. The framework as a user runs it, on the GPU (16-mixed by default there): the quickstart.
qs=/tmp/quickstart_gpu
step 80 "quickstart on the GPU" python3 -m framework fit --config experiments/quickstart.yaml \
    --model.init_args.output_dir "$qs" --trainer.logger.init_args.save_dir "$qs"
tar czf "$out/quickstart.tgz" -C /tmp quickstart_gpu 2>>"$log"

# 3. A 1024 px edit's peak memory with and without attention slicing / VAE tiling.
step 110 "large_image 1024 px" python3 -m benchmarks.large_image --size 1024 --variants both off --timeout 95 --json "$out/large_image.json"

# 4. The toy model's stage 2 continued on the GPU from the bundled weights.
step 200 "toy model fine-tune" python3 -m framework.toy.model fit --config experiments/toyworld/finetune_diffusion_gpu.yaml \
    --trainer.max_time 00:00:02:20 --trainer.enable_progress_bar false
[ -d outputs/toymodel/gpu ] && tar czf "$out/toymodel_gpu.tgz" -C outputs/toymodel gpu 2>>"$log"
find outputs/toymodel/gpu_run -name metrics.csv -exec cp {} "$out/train_metrics.csv" \; 2>>"$log"

# 5. With what is left: channels_last on the whole edit.
left=$(( 570 - ($(date +%s) - start) ))
if [ "$left" -gt 60 ]; then
    step $(( left - 10 )) "gpu_sd15 fp16 channels_last" python3 -m benchmarks.gpu_sd15 --dtypes fp16 --channels-last \
        --no-stages --repeats 2 --max-seconds $(( left - 40 ))
fi
say "done"
