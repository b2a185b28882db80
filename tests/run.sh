#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run all checks and tests.
# This is the README's test command; .ci/run calls it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real clients (tests/clients) or use for checks.
APT_PACKAGES=(curl wget aria2 ffmpeg chromium chromium-driver docker-compose nginx wrk)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

VENV=${VENV:-.venv}
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test,dev]'

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
# terraform fmt and checkov (in a virtualenv of its own) over terraform/ and the Dockerfile.
bash tests/deploy/checks.sh
# pytest exits 5 when it collects no test: that is a failure here too.
"$VENV/bin/pytest" "$@"
