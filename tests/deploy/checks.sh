#!/usr/bin/env bash
# Static checks of the deployment files: terraform fmt, then checkov over terraform/ and the
# Dockerfile with zero failed checks (skips only as inline "#checkov:skip=ID:reason" comments).
# Called from tests/run.sh. checkov pins boto3 and packaging versions that the project cannot use,
# so it gets a virtualenv of its own ($CHECKOV_VENV, default .venv-checkov).
#
# A tool that cannot be had is skipped with its reason, printed and appended to the file
# $OPTIONAL_TOOLS_REPORT (tests/run.sh prints them all in one line at the end): terraform, which
# no package registry reachable here ships, always; checkov only outside CI (under CI=true a
# checkov that does not install fails the run).
set -euo pipefail
cd "$(dirname "$0")/../.."

CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
PYTHON=${PYTHON:-python3}

skipped() {
  echo "checks.sh: $1" >&2
  if [[ -n ${OPTIONAL_TOOLS_REPORT:-} ]]; then
    echo "$1" >>"$OPTIONAL_TOOLS_REPORT"
  fi
}

ran=()
if [[ ${SKIP_TERRAFORM_FMT:-} == 1 ]]; then
  skipped "terraform fmt skipped (SKIP_TERRAFORM_FMT=1)"
elif command -v terraform >/dev/null 2>&1; then
  terraform fmt -check -recursive -diff terraform
  ran+=("terraform fmt")
else
  skipped "terraform fmt skipped (terraform not on PATH; no package registry here ships it)"
fi

checkov_ready() {
  [[ $("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null) == "$CHECKOV_VERSION" ]]
}
if ! checkov_ready; then
  "$PYTHON" -m venv "$CHECKOV_VENV" &&
    "$CHECKOV_VENV/bin/python" -m pip install -q --upgrade pip &&
    "$CHECKOV_VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION" || true
fi
if checkov_ready; then
  # --skip-download: no Prisma Cloud look-ups (no network needed, no noise).
  CHECKOV=("$CHECKOV_VENV/bin/checkov" --quiet --compact --skip-download)
  "${CHECKOV[@]}" --framework terraform -d terraform
  "${CHECKOV[@]}" --framework dockerfile -f Dockerfile
  ran+=(checkov)
elif [[ -n ${CI:-} ]]; then
  echo "checks.sh: checkov==$CHECKOV_VERSION did not install (under CI a failure)" >&2
  exit 1
else
  skipped "checkov skipped (checkov==$CHECKOV_VERSION did not install into $CHECKOV_VENV)"
fi
if ((${#ran[@]})); then
  echo "checks.sh: passed: ${ran[*]}"
fi
