#!/usr/bin/env bash
# Every GPU check of the speed work in one run, sized for one device call (at most 9.8 minutes
# on an H200; each step has its own time limit, and each writes its results as it goes, so a
# step that runs out of time still leaves the others' results).
#
#   here:   make gpu-wheels               # PyHessian, curvlinops and their needs -> .whl/
#   there:  bash benchmarks/gpu.sh        # with .whl carried; results under $OUT
#
# Scale with N_VGG / N_RESNET / N_SMALL (examples), SPECTRUM_MODELS and DEVICE (a CPU dry
# run: DEVICE=cpu N_VGG=8 N_RESNET=8 N_SMALL=8 SPECTRUM_MODELS= bash benchmarks/gpu.sh).
set -uo pipefail
out=${OUT:-benchmarks/gpu-results}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$python" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
} > "$out/device.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, keep going
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "$name: exit $?" | tee -a "$out/steps.txt"
}
bench=("$python" benchmarks/bench.py --device "$device" --tf32)

# 1. the operators on the device against dense float64 references, each hvp mode, TF32
step tests 50 "$python" -m pytest -q -s tests/test_gpu.py
# 2. digits nets: modes, blocks, peers; a whole spectrum at the paper's settings with both
#    deflations (mlp), Krylov outliers, precision policies, torch.compile
step digits 120 "${bench[@]}" --models mlp,cnn --n 1437 --repeats 5 --peers \
  --spectrum-models "${SPECTRUM_MODELS-mlp}" \
  --outlier-models mlp,cnn --precision-models mlp --compile-models mlp \
  --compile-modes reverse-over-forward,forward-over-reverse,reverse-over-reverse \
  --out "$out/digits.json" --markdown "$out/digits.md"
# 3. VGG11 (ratios do not depend on N; the paper's 50,000 takes 2.5× longer): every
#    product, mode and block of 10, and the peers
step vgg11 120 "${bench[@]}" --models vgg11 --n "${N_VGG:-20000}" --batch-size 1000 --repeats 3 \
  --block-repeats 1 --peers --spectrum-models "" \
  --out "$out/vgg11.json" --markdown "$out/vgg11.md"
# 4. ResNet18 (ratios do not depend on N; blocks of 5 keep vmap's memory in bounds)
step resnet18 120 "${bench[@]}" --models resnet18 --n "${N_RESNET:-10000}" --batch-size 1000 \
  --repeats 3 --block-repeats 1 --block-size 5 --peers --spectrum-models "" \
  --out "$out/resnet18.json" --markdown "$out/resnet18.md"
# 5. VGG11 on fewer examples: Krylov outliers against a 1e-8 run, precision, compile
step vgg11-small 135 "${bench[@]}" --models vgg11 --n "${N_SMALL:-1000}" --batch-size 1000 \
  --repeats 3 --block-modes "" --spectrum-models "" --outlier-models vgg11 \
  --precision-models vgg11 --compile-models vgg11 --steps 64 \
  --out "$out/vgg11-small.json" --markdown "$out/vgg11-small.md"
# 6. float32 (no TF32) against float64 H v, G v, R v on a trained VGG11, hspec.curvature.loss against the
#    textbook logit forms (CPU, N = 32: 1.8e-3, one ReLU sign flip; benchmarks/README.md)
step product-precision 45 "$python" benchmarks/product_precision.py --model vgg11 --n 1000 \
  --device "$device"
cat "$out/steps.txt"
