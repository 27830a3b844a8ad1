#!/usr/bin/env bash
# Reproduces the bundled default model: the `mixed` synthetic scenario (4 sites, one
# T2-less, one FLAIR-less, one T1-only and one whole-lesion-only site), 16 cases per
# site at 2 mm, then U-Harmony DynUNet training on the CPU (both cores, ~45 min; site
# rows trained as shared + offset, the default). The hardest sites (hospital-b: small
# deep lesions on 4 mm slices, no FLAIR; hospital-d: T1 only) are drawn twice as often
# as the others.
#   scripts/train_default_model.sh [WORK_DIR] [STEPS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/uharmony-default}
steps=${2:-4500}
out=${3:-Resources/Models/uharmony-default-v5}
mkdir -p "$work"
.venv/bin/uharmony synth --scenario mixed --out "$work/mixed" --cases-per-site 16 --spacing 2 --seed 7 --overwrite
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} .venv/bin/uharmony train --data "$work/mixed" --out "$out" \
  --steps "$steps" --patch 64 --spacing 2 --val-every $((steps / 4)) --seed 7 --channel-dropout 0.25 \
  --site-weight hospital-b=2 --site-weight hospital-d=2
