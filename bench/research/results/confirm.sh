#!/bin/bash
# the shortlist on all 303 probes (length on the first 60), three seeds; then the two-fact check
set -x
. /work/main/.venv/bin/activate
export PYTHONPATH=/tmp/loc25 OMP_NUM_THREADS=1 LORACHAT_CACHE=/tmp/loc25-cache
C=anchor_tokens=32+anchor_loss=kl+anchor_weight=1+anchor_every=2+anchors=2
python -m bench.research.smol_locality --probes 303 --length 60 --seeds 0,1,2 --gate --methods $C --json bench/research/results/confirm.jsonl
python -m bench.research.smol_locality --probes 303 --length 60 --seeds 0,1,2 --methods plain,defaults --json bench/research/results/confirm.jsonl
python -m bench.research.smol_locality --probes 303 --two-fact --seeds 0 --methods plain,defaults,$C --json bench/research/results/twofact.jsonl
