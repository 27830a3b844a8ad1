#!/usr/bin/env bash
# Reproduces the bundled default model: the MR-physics `clinics` scenario (the four
# `protocols` hospitals, whose field strength and sequences differ, under BraTS channel
# names flair/t1/t1ce/t2; the older 1.5 T site gives no contrast agent, so it has no t1ce),
# 16 cases per site at 2 mm, then U-Harmony DynUNet training with the library's defaults
# (cubic restore, site rows as shared + offset) on the CPU (both cores: 0.65 s/step, about
# 45 min for 4000 steps). Afterwards benchmarks/default_model.py sets the unfamiliar-case
# threshold on development cases (--calibrate) and writes docs/results/default_model.json.
#   scripts/train_default_model.sh [WORK_DIR] [STEPS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/uharmony-default}
steps=${2:-4000}
out=${3:-Resources/Models/uharmony-default-v6}
mkdir -p "$work"
.venv/bin/uharmony synth --scenario clinics --out "$work/clinics" --cases-per-site 16 --spacing 2 --seed 7 --overwrite
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} .venv/bin/uharmony train --data "$work/clinics" --out "$out" \
  --steps "$steps" --patch 64 --spacing 2 --val-every $((steps / 4)) --seed 7 --channel-dropout 0.25
