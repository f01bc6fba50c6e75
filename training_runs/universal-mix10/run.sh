#!/bin/sh
# Resumable: rerun this script to continue from training_runs/universal-mix10/checkpoint.pt.
exec .venv/bin/pyro-disco train --dim 32 --out training_runs/universal-mix10 --arch universal --dim-min 1 \
  --dim-power 1.0 --score-metric both --steps 400 --n-max 4096 --lr 0.0001 --threads 1 --eval-every 200 \
  --mixture-components 10 --mixture-shrinkage 0.2 --mixture-split-init --mixture-component-size dims \
  --init-from discoformer-universal-mix --init-blend 0.25
