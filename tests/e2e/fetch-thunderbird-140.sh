#!/usr/bin/env bash
# Unpacks Debian's Thunderbird 140 ESR next to the installed 153 so tests/e2e runs on both.
# Needs apt (bookworm main carries 140.x); the result lives in /var/cache/keypost-tb140.
set -euo pipefail
dest=${1:-/var/cache/keypost-tb140}
mkdir -p "$dest"
cd "$dest"
version=$(apt-cache madison thunderbird | awk '$3 ~ /^1:140\./ {print $3; exit}')
[ -n "$version" ] || { echo "no thunderbird 1:140.* in the apt sources" >&2; exit 1; }
rm -f thunderbird_*.deb
apt-get download "thunderbird=$version"
rm -rf root
dpkg -x thunderbird_*.deb root
root/usr/lib/thunderbird/thunderbird --version
