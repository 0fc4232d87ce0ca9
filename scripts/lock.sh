#!/usr/bin/env bash
# Write requirements/serving.lock (the image) and requirements/dev.lock (CI, scripts/setup.sh): every package
# pinned to the version installed in .venv (what the tests last passed with) with the hashes of its PyPI files,
# so that `pip install --require-hashes` refuses anything else. torch is left out (installed first, by version,
# from the local CPU wheel or PyTorch's CPU index); its own dependencies are in. Run after changing a dependency
# in pyproject.toml and installing it: `bash scripts/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m pip install -q uv
tested=$(mktemp)
trap 'rm -f "$tested"' EXIT
$PY -m pip list --format=freeze --exclude-editable 2>/dev/null | grep -v -e '^torch==' -e '^uv==' >"$tested"
echo "torch==$($PY -c 'import torch; print(torch.__version__)')" >>"$tested"
for extra in serving dev; do
  sources=(pyproject.toml)
  [ "$extra" = dev ] && sources+=(clients/python/pyproject.toml)
  .venv/bin/uv pip compile -q "${sources[@]}" --extra "$extra" -c "$tested" --generate-hashes \
    --no-emit-package torch --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --index-url https://pypi.org/simple --find-links "${PIP_FIND_LINKS:-/opt/wheels}" \
    --no-header --annotation-style line -o "requirements/$extra.lock"
  sed -i -e "s|-c $tested, ||" -e "s|, -c $tested||" -e "\\|# via -c $tested\$|d" "requirements/$extra.lock"
  { echo "# $extra: written by scripts/lock.sh from .venv's versions; install with pip --require-hashes --no-deps"
    cat "requirements/$extra.lock"; } >"requirements/$extra.lock.new"
  mv "requirements/$extra.lock.new" "requirements/$extra.lock"
done
echo "lock: $(grep -c '==' requirements/serving.lock) packages for the image, $(grep -c '==' requirements/dev.lock) for CI"
