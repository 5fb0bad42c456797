#!/usr/bin/env bash
# Every GPU measurement the open issues ask for (about ten minutes on an H200, not yet timed: on the
# lent machine run it as two calls, PARTS=train,memory,demo then PARTS=sampling,finetune):
#   1. training step: latte eager / compiled / full `latte train` step against diffusers and the
#      official recipe, Latte-XL/2, 5 clips of 16x32x32x4 (issue 14);
#   2. memory: the full `latte train` step of Latte-XL/2 at 32 clips per GPU with activation
#      checkpointing (issue 14);
#   3. the built-in demo (`latte train`'s preset): steps/s of the CPU recipe, the GPU recipe and
#      the GPU recipe compiled (issue 14);
#   4. sampling: videos/s and time for 2048 videos with DDPM-250, DDIM-50, DPM-Solver++-20 (ODE and
#      SDE), with and without PAB, eager, plus I3D/Inception throughput (issue 15);
#   5. fine-tuning: step time and memory of full, temporal-only and LoRA for Latte-1 at 512 px (issue 16).
# Output goes to $OUT (or ./gpu-checks) as one log per part (PART.log), and setup.log for what is missing.
#   bash benchmarks/gpu_checks.sh            # CUDA: the sizes above
#   bash benchmarks/gpu_checks.sh --smoke    # CPU: the same commands on tiny sizes, to check the script
#   PARTS=sampling,finetune bash benchmarks/gpu_checks.sh   # some parts only (train, memory, demo, sampling, finetune)
# Wheels in .whl/ (benchmarks/gpu_wheels.sh, for a machine without a package index) are installed
# into a temporary folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
rm -f "$out/setup.log"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
case "${1:-}" in
  ""|--smoke) ;;
  *) echo "usage: bash benchmarks/gpu_checks.sh [--smoke]  (no other arguments; see the comment at its top)" >&2; exit 2 ;;
esac
parts=${PARTS:-train,memory,demo,sampling,finetune}
for name in ${parts//,/ }; do
  case $name in train|memory|demo|sampling|finetune) ;; *) echo "PARTS: unknown part $name" >&2; exit 2 ;; esac
done
if [ "${1:-}" = "--smoke" ]; then
  train=(--model Latte-T/2 --batch 1 --steps 1 --warmup 1 --frames 4 --size 8 --device cpu)
  sample=(--model Latte-T/2 --frames 4 --size 8 --batch 2 --rows ddim:4,dpm-solver:4,dpm-solver-sde:4 --cache none,pab --device cpu)
  finetune=(--model Latte-T/2 --frames 4 --size 8 --steps 1)
  memory=(--model Latte-T/2 --batch 2 --steps 1 --warmup 1 --frames 4 --size 8 --device cpu)
  demo=(--steps 10 --log-every 5 --device cpu --rows cpu-recipe,preset)
  eval_clips=0
else
  train=(--model Latte-XL/2 --batch 5 --compile)
  sample=(--device cuda --model Latte-XL/2 --batch 8 --vae --rows ddpm:250,ddim:50,dpm-solver:20,dpm-solver-sde:20
          --cache "none,pab,pab:spatial=3@50-950;temporal=6@50-950")
  finetune=(--gpu)
  memory=(--model Latte-XL/2 --batch 32 --steps 3 --warmup 1)
  demo=(--steps 400 --log-every 100)
  eval_clips=64
fi
note() { echo "$*" | tee -a "$out/setup.log"; }  # what the setup found, also kept in $out/setup.log
if compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d)
  for wheel in .whl/*.whl; do  # one at a time: a wheel this Python refuses costs only what needs it
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$wheel" \
      || note "wheel not installed: $wheel"
  done
  export PYTHONPATH=$PYTHONPATH:$site
fi
# what each part needs, named up front (in one process: torch loads once) so that a missing package
# reads as such rather than as a failed row
preflight='
import importlib
for name in ("torch", "diffusers", "av", "mlxtend", "scipy", "peft", "yaml"):
    try:
        importlib.import_module(name)
    except Exception:
        print(f"missing: python3 cannot import {name}")
try:
    from latte.cli import build_parser
    build_parser()  # imports every command module, as `latte --help` does
except Exception as error:
    print(f"the latte command line does not load: {type(error).__name__}: {error}".splitlines()[0])
'
missing=$(python3 -c "$preflight" 2>/dev/null)
[ -z "$missing" ] || note "$missing"
detectors="from latte.metrics import i3d, inception; i3d.i3d_weights_path(); inception.inception_weights_path()"
if [ "$eval_clips" != 0 ] && ! why=$(python3 -c "$detectors" 2>&1); then
  note "FVD/FID feature throughput skipped: $(echo "$why" | tail -n 1)"
  eval_clips=0
fi
status=0
part() {  # part NAME COMMAND...: runs COMMAND when $parts names NAME, its output also in $out/NAME.log
  local name=$1
  shift
  [[ ",$parts," == *",$name,"* ]] || return 0
  "$@" 2>&1 | tee "$out/$name.log" || status=1
}
part train python3 benchmarks/train_speed.py "${train[@]}"
part memory python3 benchmarks/train_speed.py "${memory[@]}" --grad-checkpointing --rows train
part demo python3 benchmarks/demo_speed.py "${demo[@]}"
part sampling python3 benchmarks/sampling_speed.py "${sample[@]}" --eval-clips "$eval_clips"
part finetune python3 benchmarks/finetune_speed.py "${finetune[@]}"
exit $status
