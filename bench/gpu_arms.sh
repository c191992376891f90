#!/usr/bin/env bash
# Issue 14's figures in ONE device-tool call: the forward, encode_suite + DB (last / max / top), the compiled
# path's feature-set agreement with the model-card baseline and its noise floor.
#
#   bash ../shared/gpu/prepare.sh                      # here: the wheels the device machine lacks -> .gpu/
#   device run: command "bash bench/gpu_arms.sh", carry [".gpu"], timeout_s 600
#
# Writes env.txt, arms.txt and arms.jsonl under $OUT, then (PROBE=1, the default) bench/gpu_probe.py's
# probe.txt, probe.jsonl and profile.txt: the model-card baseline's own noise floor, the compiled forward on
# shapes it has not run and on shapes it has, its kernel profile, and the same with torch's own sdpa choice.
# Extra arguments go to bench/encode_arms.py (e.g. --device cpu --tiny for a dry run here; PROBE_ARGS=
# "--device cpu --tiny" for the probe).
set -u
cd "$(dirname "$0")/.."
if command -v nvidia-smi > /dev/null && compgen -G ".gpu/whl/*.whl" > /dev/null; then  # on the device machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu/site .gpu/whl/*.whl || exit 3
  export PYTHONPATH=$PWD/.gpu/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false QSCOPE_EVAL_CACHE=$PWD/.gpu/cache
PY=${PY:-python3}
O=${OUT:-.gpu/out}; mkdir -p "$O"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi") | tee "$O/env.txt"
$PY bench/encode_arms.py --out "$O" --budget-s "${BUDGET_S:-330}" \
  --only "padded auto eager" "padded auto+compile" "packed varlen auto eager" "packed varlen auto+compile" \
  --steps "suite last best" "suite last default" "suite max" "suite top" "noise today" "noise best" "vs baseline best" \
          "vs baseline today" "encode_texts last" "encode_texts last host in turn" "suite last best host in turn" \
          "suite max host in turn" "suite top host in turn" "suite max with syncs" "suite top with syncs" \
          "noise max best" "noise top best" "suite max bf16 SAE" "suite top bf16 SAE" "max bf16 vs tf32" "top bf16 vs tf32" \
          "$@" 2>&1 | tee "$O/arms.txt"
if [ "${PROBE:-1}" = 1 ]; then
  $PY bench/gpu_probe.py --out "$O" --sections floors compiled profile "compiled fidelity" split varlen pooling cudnn ${PROBE_ARGS:-} \
    2>&1 | tee "$O/probe.txt"
fi
