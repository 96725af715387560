#!/usr/bin/env bash
# Installs what the tests need (Debian and Python packages) and runs all checks:
# ruff, mypy --strict, the Python tests (real openssl, gpgsm, slapd, Postfix,
# Thunderbird) and the add-on's node tests. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(openssl gpgsm gnupg dirmngr slapd ldap-utils postfix xvfb thunderbird
              sqlite3 nodejs python3-venv zip libnss3-tools netcat-openbsd
              libnss3 libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1
              libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-xkb1
              libegl1 libgbm1 libfontconfig1 libxkbfile1 libxcomposite1 libxdamage1
              libxrandr2 libxtst6 libxshmfence1 libasound2 libdbus-1-3)
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Thunderbird 140 ESR beside the installed 153, so the add-on is tested on both.
  [ -x /var/cache/keypost-tb140/root/usr/lib/thunderbird/thunderbird ] ||
    bash tests/e2e/fetch-thunderbird-140.sh >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"; ruff check .
echo "== mypy --strict"; mypy core/keypost directory/keypost gateway/keypost host/keypost installer/keypost bench
if [ -d extension/tests ] && command -v node >/dev/null; then
  echo "== node --test"; node --test extension/tests/
fi
echo "== pytest"
set +e
pytest -q "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit $rc
