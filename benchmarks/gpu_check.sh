#!/bin/sh
# The GPU figures of issue 10, as one short script for a lent GPU (about 5 minutes on an H200):
# the peak forward rate, the loss-stage rate and its ratio, the unlearning step against a bare step,
# bf16 autocast, channels_last and torch.compile (inductor) against fp32 (rate and top-10 agreement), and the attribution speed with the fast
# profile. Writes into $OUT (or benchmarks/results/gpu) and prints everything.
set -e
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python benchmarks/throughput.py --large 50000 --precision bf16 --memory-format channels_last --compile inductor --out "$out/throughput.json" | tee "$out/throughput.txt"
python benchmarks/attribution_speed.py --queries 5 --compare-fast --out "$out/attribution_speed.json" | tee "$out/attribution_speed.txt"
# An SD-1.5-sized text-conditional latent model (random weights, 1,000 captioned 512x512 images): one
# attribution's stage times and peak GPU memory
python benchmarks/text_latent_speed.py --sd15 --items 1000 --out "$out/sd15.json" | tee "$out/sd15.txt"
