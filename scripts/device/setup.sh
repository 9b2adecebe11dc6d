# Source on the GPU machine (repository root): installs the carried wheels and vlsdk into /tmp/site
# and rebuilds ../shared/data from the carried .pack. The image's torch, numpy, matplotlib,
# scikit-image, onnxruntime and peft are used as they are.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . || return 1
mkdir -p ../shared && python3 scripts/device_data.py unpack .pack ../shared/data || return 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
# use `python3 -m vlsdk ...` there: the console script is not on PATH
