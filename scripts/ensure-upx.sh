#!/usr/bin/env bash
# upx-ucl (for `optimize --upx unpack` and its tests) is only in bookworm-backports on Debian 12: when no apt
# source offers it, add that suite as an apt source, and say so (the file to delete to undo it), then install it.
set -euo pipefail
command -v upx >/dev/null 2>&1 && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
backports="${VERSION_CODENAME}-backports"
if ! apt-cache policy upx-ucl 2>/dev/null | grep -q "Candidate: [0-9]"; then
  source_file=/etc/apt/sources.list.d/oci-optimizer-backports.sources
  echo "ensure-upx: adding an apt source: ${backports} from deb.debian.org in ${source_file}" \
    "(upx-ucl is only there; delete the file to remove it)"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$backports" | $sudo tee "$source_file" >/dev/null
  $sudo apt-get update -qq
fi
echo "ensure-upx: installing the Debian package upx-ucl with apt-get"
$sudo apt-get install -y -qq --no-install-recommends -t "$backports" upx-ucl >/dev/null \
  || $sudo apt-get install -y -qq --no-install-recommends upx-ucl >/dev/null
