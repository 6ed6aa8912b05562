#!/usr/bin/env bash
# upx-ucl (for `optimize --upx unpack` and its tests) is only in bookworm-backports: add that source when needed.
set -euo pipefail
command -v upx >/dev/null 2>&1 && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy upx-ucl 2>/dev/null | grep -q "Candidate: [0-9]"; then
  . /etc/os-release
  echo "adding ${VERSION_CODENAME}-backports for upx-ucl"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$VERSION_CODENAME" | $sudo tee /etc/apt/sources.list.d/oci-optimizer-backports.sources >/dev/null
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends -t "$(. /etc/os-release; echo "${VERSION_CODENAME}")-backports" upx-ucl >/dev/null \
  || $sudo apt-get install -y -qq --no-install-recommends upx-ucl >/dev/null
