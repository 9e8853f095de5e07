#!/usr/bin/env bash
# Creates the TRL engine's venv: torch, transformers, trl, accelerate and datasets from PyPI, plus
# this repository's `hone_trl` package, then prints the versions `hone check` will report.
#
#   python/setup-venv.sh            # into ${XDG_CACHE_HOME:-~/.cache}/hone/trl-venv
#   python/setup-venv.sh DIR        # into DIR
#   PYTHON=python3.12 python/setup-venv.sh
#
# PyPI's Linux torch wheel brings its CUDA libraries: expect about 6 GB on disk (see README).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/trl-venv}"
python="${PYTHON:-python3}"

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "hone_trl needs Python 3.10 or newer")'
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet \
  "torch>=2.4" "transformers>=5.0" "trl>=1.16,<2" "accelerate>=1.0" "datasets>=3.0" "peft>=0.17" "pytest>=7"
# Not editable: the venv keeps working if the checkout moves. Re-run after changing python/.
"$venv/bin/python" -m pip install --quiet "$here"
"$venv/bin/python" -m hone_trl --versions
echo "TRL engine venv ready: $venv/bin/python"
