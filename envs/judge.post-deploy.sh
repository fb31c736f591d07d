#!/usr/bin/env bash
# Snakemake runs this inside the new environment, from the workflow's working directory:
# install the alignpro package (its dependencies come from the environment file).
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e .
