#!/usr/bin/env bash
# The recorded GPU run of bench/train_throughput.py: every setup on the same data and card,
# most important first (a cut-short run still has them). Results: $OUT/results.jsonl, log
# $OUT/run.log. EXAMPLES sets the data file's size.
set -u
OUT=${OUT:-/tmp/r3-bench-out}
D=${D:-/tmp/r3b}
EXAMPLES=${EXAMPLES:-1500}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
B="python3 bench/train_throughput.py"

step() {  # name, seconds, "VAR=value ..." (the variant), then the bench's arguments
    local name=$1 limit=$2 vars=$3
    shift 3
    echo "== $name ($(date +%T)) $vars"
    env $vars timeout -k 5 "$limit" $B "$@" --json-out "$OUT/$name.json" > "/tmp/$name.log" 2>&1
    echo "== $name rc=$?"
    grep -v "it/s]" "/tmp/$name.log" | tail -n 25
    [ -f "$OUT/$name.json" ] && { cat "$OUT/$name.json" >> "$OUT/results.jsonl"; rm "$OUT/$name.json"; }
}

{
python3 - <<'EOF'
import torch, transformers, importlib.metadata as m
print({"torch": torch.__version__, "transformers": transformers.__version__,
       "gpu": torch.cuda.get_device_name(0)})
for p in ("pyarrow", "huggingface_hub", "triton", "liger_kernel", "trl", "datasets", "accelerate"):
    try: print(p, m.version(p.replace("_", "-")))
    except Exception as e: print(p, "missing", e)
import liger_kernel.transformers, torch.nn.attention.varlen as v
import inspect; print("varlen_attn", inspect.signature(v.varlen_attn))
EOF
echo "== prepare ($(date +%T))"
timeout 100 $B prepare --dir "$D" --examples "$EXAMPLES" 2>&1 | tail -n 2
step trainer_auto_cap24 200 "R3_GPU_MEMORY_GIB=24" trainer --dir "$D" --bare-steps 8
step trl_liger 150 "X=1" trl --dir "$D" --steps 25
echo "== gpu tests ($(date +%T))"
timeout 100 python3 -m pytest -q -rs tests/trainer/test_fast_path_gpu.py -p no:cacheprovider 2>&1 | tail -n 30
step trainer_ckpt_forced 120 "R3_ACTIVATION_CHECKPOINTING=true" trainer --dir "$D" --bare-only --bare-steps 10
step trainer_eager_liger_all 90 "R3_COMPILE=off R3_LIGER=all" trainer --dir "$D" --bare-only --bare-steps 10
step hf_users 100 "X=1" hf --dir "$D" --steps 12 --batch 4
step trainer_flex_compiled 150 "R3_ATTENTION=flex_attention" trainer --dir "$D" --bare-only --bare-steps 10
step trainer_compiled_liger_all 150 "R3_LIGER=all" trainer --dir "$D" --bare-only --bare-steps 10
} 2>&1 | tee "$OUT/run.log"
