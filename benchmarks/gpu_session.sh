#!/usr/bin/env bash
# Every GPU check of the project in one prepared run, most important first, each under its own time
# limit, cut to what is left of BUDGET seconds (default 570, inside a 10-minute slot; a GPU machine is
# often lent for minutes only); a check with under 60 s left is skipped and says so in the log.
#   bash benchmarks/gpu_session.sh OUT_DIR [WHEEL_DIR]
#   SKIP="sd15 sdxl quickstart sd3" bash benchmarks/gpu_session.sh OUT_DIR   # a second slot: the checks after them
# Checks, in order (key, limit): sd15 200 s, sdxl 150 s, quickstart 80 s, sd3 180 s, flux 300 s, large_image
# 110 s, toymodel 200 s, channels_last (what is left). One 10-minute slot reaches about sd3; a second slot with
# SKIP="sd15 sdxl quickstart sd3" runs the rest.
# WHEEL_DIR (optional): wheels to install first (diffusers, jsonargparse and its [signatures] extra on a
# machine that has torch, transformers, lightning and accelerate only; benchmarks/README.md).
# Writes to OUT_DIR: log.txt (everything printed), gpu_sd15.json, gpu_sdxl.json, gpu_sd3.json, gpu_flux.json,
# large_image.json, quickstart.tgz,
# toymodel_gpu.tgz (the fine-tuned toy model's exports) and train_metrics.csv.
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [WHEEL_DIR]}
mkdir -p "$out"
log="$out/log.txt"
start=$(date +%s)
say() { echo "== [$(( $(date +%s) - start )) s] $*" | tee -a "$log"; }
budget=${BUDGET:-570}
left() { echo $(( budget - ($(date +%s) - start) )); }
skipped() {  # skipped KEY LIMIT NAME: true (and logged) when KEY is in $SKIP or under 60 s of the budget is left
    case " ${SKIP:-} " in *" $1 "*) say "$3: skipped (SKIP)"; return 0;; esac
    [ "$(left)" -lt 60 ] && { say "$3: skipped ($(left) s of the budget left)"; return 0; }
    return 1
}
step() {  # step KEY SECONDS NAME COMMAND...: run COMMAND under a time limit (cut to what is left), output to the log
    local key=$1 limit=$2 name=$3; shift 3
    skipped "$key" "$limit" "$name" && return 0
    [ "$limit" -gt "$(( $(left) - 10 ))" ] && limit=$(( $(left) - 10 ))
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
step sd15 200 "gpu_sd15 fp16 bf16" python3 -m benchmarks.gpu_sd15 --max-seconds 140 --json "$out/gpu_sd15.json"

# 2. SDXL-size networks at 1024 px, fp16: ours per stage with peak memory (docs/sdxl.md has the estimate).
step sdxl 150 "gpu_sd15 sdxl fp16" python3 -m benchmarks.gpu_sd15 --model sdxl --max-seconds 100 --json "$out/gpu_sdxl.json"

# 3. The framework as a user runs it, on the GPU (16-mixed by default there): the quickstart.
qs=/tmp/quickstart_gpu
step quickstart 80 "quickstart on the GPU" python3 -m framework fit --config experiments/quickstart.yaml \
    --model.init_args.output_dir "$qs" --trainer.logger.init_args.save_dir "$qs"
[ -d "$qs" ] && tar czf "$out/quickstart.tgz" -C /tmp quickstart_gpu 2>>"$log"

# 4-5. The flow families' whole default edit at 1024 px in bf16, ours per stage with peak memory (docs/flow.md):
# SD3 medium (weights 15 GiB), then FLUX.1-dev (35 GiB; the longest build and edit, so last of the models).
# --max-seconds stops starting runs 50-60 s before the limit, so an edit under way can finish.
step sd3 180 "gpu_sd15 sd3 bf16" python3 -m benchmarks.gpu_sd15 --model sd3 --max-seconds 120 --json "$out/gpu_sd3.json"
step flux 300 "gpu_sd15 flux bf16" python3 -m benchmarks.gpu_sd15 --model flux \
    --max-seconds $(( $(left) < 300 ? $(left) - 70 : 240 )) --json "$out/gpu_flux.json"

# 6. A 1024 px edit's peak memory with and without attention slicing / VAE tiling.
step large_image 110 "large_image 1024 px" python3 -m benchmarks.large_image --size 1024 --variants both off --timeout 95 --json "$out/large_image.json"

# 7. The toy model's stage 2 continued on the GPU from the bundled weights.
step toymodel 200 "toy model fine-tune" python3 -m framework.toy.model fit --config experiments/toyworld/finetune_diffusion_gpu.yaml \
    --trainer.max_time 00:00:02:20 --trainer.enable_progress_bar false
[ -d outputs/toymodel/gpu ] && tar czf "$out/toymodel_gpu.tgz" -C outputs/toymodel gpu 2>>"$log"
find outputs/toymodel/gpu_run -name metrics.csv -exec cp {} "$out/train_metrics.csv" \; 2>>"$log"

# 8. With what is left: channels_last on the whole edit.
step channels_last 600 "gpu_sd15 fp16 channels_last" python3 -m benchmarks.gpu_sd15 --dtypes fp16 --channels-last \
    --no-stages --repeats 2 --max-seconds $(( $(left) - 40 ))
say "done"
