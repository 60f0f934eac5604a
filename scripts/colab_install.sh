#!/usr/bin/env bash
# Colab: install featuniv's pinned requirements and featuniv itself, keeping Colab's own torch (and its
# CUDA build): torch is dropped from the pins and constrained to the installed version instead.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version="$(python -c 'import importlib.metadata as m; print(m.version("torch"))')"
grep -v '^torch==' requirements.txt > /tmp/featuniv-requirements.txt
{ grep -v '^torch==' constraints.txt; echo "torch==${torch_version}"; } > /tmp/featuniv-constraints.txt
pip install -q -r /tmp/featuniv-requirements.txt -c /tmp/featuniv-constraints.txt
pip install -q --no-deps -r requirements-nodeps.txt
pip install -q --no-deps -e .
echo "featuniv installed (torch ${torch_version} kept)"
