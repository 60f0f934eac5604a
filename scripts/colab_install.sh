#!/usr/bin/env bash
# Colab: install what the notebooks need beyond Colab's own packages, then featuniv itself.
#   bash scripts/colab_install.sh          requirements.txt's [notebooks] section, at its exact pins
#   bash scripts/colab_install.sh --gguf   ... and the [gguf] section with SmolLM2 (the smollm-gemma profile)
# Colab's own torch, numpy, pandas, Jupyter stack and the rest of the [runtime] section are not pinned
# over: they stay as Colab ships them. Nothing for the tests ([development]) is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
section() { awk -v name="[$1]" '/^# \[/ { on = ($2 == name) } on && /^[A-Za-z]/' requirements.txt; }
sections=(notebooks)
case "${1:-}" in
  --gguf) sections+=(gguf) ;;
  "") ;;
  *) echo "usage: bash scripts/colab_install.sh [--gguf]" >&2; exit 2 ;;
esac
pip install -q $(for s in "${sections[@]}"; do section "$s"; done)
if [[ " ${sections[*]} " == *" gguf "* ]]; then
  pip install -q --no-deps -r requirements-nodeps.txt
fi
pip install -q --no-deps -e .
echo "featuniv installed (${sections[*]}); torch $(python -c 'import torch; print(torch.__version__)'), numpy $(python -c 'import numpy; print(numpy.__version__)')"
