#!/usr/bin/env bash
# F-SOUR's engine figures on a CUDA GPU, prepared for a lent device (issue 29). Not run by
# CI (no GPU). From the repository root:   bash tests/gpu_bench.sh [OUT_FOLDER]
# Writes, under OUT_FOLDER (default: $OUT, else gpu-bench/):
#   families.txt      route control on every family in bf16 (tests/gpu_families.py)
#   families-quantized.txt  the same with every --quantize mode (fp8, int8/int4 experts,
#                     bitsandbytes where installed; a mode that cannot run skips in one line)
#   bench.json/.txt   `bench --synthetic olmoe-real`: fast vs reference, one search at a time
#   dataset.json/.txt one at a time vs multi-prompt on the project's own prompts (a CSV
#                     written here: the benchmark CSVs are not carried to the device)
#   dataset-int8-experts.json, dataset-int4-experts.json  the same with integer experts
# (python tests/gpu_families.py --suite runs a shorter version of all this in one process.)
# Eager only: the engines have no compiled path yet. On a GPU the arithmetic is not exact
# (cuBLAS products are not row-invariant), so near-tie re-checks run as they did before.
set -euo pipefail
out="${1:-${OUT:-gpu-bench}}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
timeout 240 python tests/gpu_families.py | tee "$out/families.txt" || true
timeout 400 python tests/gpu_families.py --quantize all | tee "$out/families-quantized.txt" || true
timeout 300 python -m explorer bench --synthetic olmoe-real --prompts 2 --sizes 64,512 \
    --json > "$out/bench.json" || true
python - "$out/prompts.csv" <<'PY'
import csv, sys
from explorer.core.prompt_sets import HARMFUL_PROMPTS
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["goal", "target"])
    for p in HARMFUL_PROMPTS[:8]:
        w.writerow([p, "Sure, here is"])
PY
timeout 400 python -m explorer bench --synthetic olmoe-real --dataset "$out/prompts.csv" \
    --all-rows --limit 8 --count-products 0 --json > "$out/dataset.json" || true
for q in int8-experts int4-experts; do
    timeout 300 python -m explorer bench --synthetic olmoe-real --quantize "$q" \
        --dataset "$out/prompts.csv" --all-rows --limit 8 --count-products 0 --json \
        > "$out/dataset-$q.json" || true
done
for f in bench dataset dataset-int8-experts dataset-int4-experts; do
    python - "$out/$f.json" <<'PY' > "$out/$f.txt" || true
import json, sys
b = json.load(open(sys.argv[1]))
print(json.dumps(b, indent=1)[:4000])
PY
done
ls -l "$out"
