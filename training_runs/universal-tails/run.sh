#!/bin/sh
# Resumable: rerun this script to continue from training_runs/universal-tails/checkpoint.pt.
# Phase 1 (steps 1-300): --steps 300 --heavy-tail-fraction 0.5 (the rest as below).
# Phase 2 (steps 301-400, this command): --steps 400 --heavy-tail-fraction 0.2.
exec .venv/bin/pyro-disco train --dim 32 --out training_runs/universal-tails --arch universal --dim-min 1 \
  --dim-power 0.5 --score-metric both --steps 400 --warmup 30 --n-max 4096 --lr 0.0001 --threads 1 \
  --eval-every 100 --mixture-components 10 --mixture-shrinkage 0.2 --mixture-split-init \
  --mixture-component-size dims --init-from discoformer-universal-mix10 --init-blend 0 \
  --heavy-tail-fraction 0.2
