#!/bin/sh
# Resumable: rerun this script to continue from training_runs/universal-tails/checkpoint.pt.
exec .venv/bin/pyro-disco train --dim 32 --out training_runs/universal-tails --arch universal --dim-min 1 \
  --dim-power 0.5 --score-metric both --steps 300 --warmup 30 --n-max 4096 --lr 0.0001 --threads 1 \
  --eval-every 100 --mixture-components 10 --mixture-shrinkage 0.2 --mixture-split-init \
  --mixture-component-size dims --init-from discoformer-universal-mix10 --init-blend 0 \
  --heavy-tail-fraction 0.5
