#!/usr/bin/env bash
# Install the Debian packages given as arguments when they are missing (root or sudo needed only then).
# Says what it installs before doing it; installs nothing and says nothing when all are there.
set -euo pipefail
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "ensure-debs: installing missing Debian packages with apt-get: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "ensure-debs: installed ${missing[*]}"
