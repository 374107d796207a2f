#!/usr/bin/env bash
# GPU check: the tests marked gpu, then the trace benchmark on a randomly initialised
# Llama-style model of about 1.1B parameters at 4,096 tokens, printing throughput.
#
# Needs only a CUDA machine with torch, transformers, pandas, pyarrow and pytest installed;
# it installs and downloads nothing and runs SPINAL from this checkout. About 2-4 minutes on
# one data-centre GPU (an estimate; the benchmark prints the measured times).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

"$python" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_adapters.py

timeout 280 "$python" benchmarks/bench_trace.py --preset 1b --device cuda --scales 1
