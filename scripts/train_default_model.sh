#!/usr/bin/env bash
# Reproduces the bundled default model: the `mixed` synthetic scenario (4 sites, one
# T2-less, one FLAIR-less, one T1-only and one whole-lesion-only site), 10 cases per
# site at 2 mm, then U-Harmony DynUNet training on the CPU.
#   scripts/train_default_model.sh [WORK_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/uharmony-default}
steps=${2:-800}
mkdir -p "$work"
.venv/bin/uharmony synth --scenario mixed --out "$work/mixed" --cases-per-site 10 --spacing 2 --seed 7 --overwrite
.venv/bin/uharmony train --data "$work/mixed" --out Resources/Models/uharmony-default-v1 \
  --steps "$steps" --patch 64 --spacing 2 --val-every $((steps / 3)) --seed 7
