#!/usr/bin/env bash
# Static checks of the deployment files: terraform fmt, then checkov over terraform/ and the
# Dockerfile with zero failed checks (skips only as inline "#checkov:skip=ID:reason" comments).
# Called from tests/run.sh. checkov pins boto3 and packaging versions that the project cannot use,
# so it gets a virtualenv of its own ($CHECKOV_VENV, default .venv-checkov).
set -euo pipefail
cd "$(dirname "$0")/../.."

CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
PYTHON=${PYTHON:-python3}

if command -v terraform >/dev/null 2>&1; then
  terraform fmt -check -recursive -diff terraform
elif [[ ${SKIP_TERRAFORM_FMT:-} == 1 ]]; then
  echo "checks.sh: terraform not on PATH; fmt skipped (SKIP_TERRAFORM_FMT=1)" >&2
else
  echo "checks.sh: terraform not on PATH (set SKIP_TERRAFORM_FMT=1 to skip the fmt check)" >&2
  exit 2
fi

if [[ $("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null) != "$CHECKOV_VERSION" ]]; then
  "$PYTHON" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/python" -m pip install -q --upgrade pip
  "$CHECKOV_VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION"
fi

# --skip-download: no Prisma Cloud look-ups (no network needed, no noise).
CHECKOV=("$CHECKOV_VENV/bin/checkov" --quiet --compact --skip-download)
"${CHECKOV[@]}" --framework terraform -d terraform
"${CHECKOV[@]}" --framework dockerfile -f Dockerfile
echo "checks.sh: terraform fmt and checkov passed"
