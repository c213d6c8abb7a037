#!/usr/bin/env bash
# Installs what `cargo xtask vm-test` needs on the host, only what is missing:
# debootstrap, mkfs.ext4 (e2fsprogs), qemu-system-x86_64.
#
# qemu-system-x86 must match the installed qemu-utils/qemu-system-common. When qemu-utils
# comes from bookworm-backports (bookworm's qemu-system-x86 would make apt remove it), the
# matching qemu-system-x86 is taken from bookworm-backports through a temporary sources file
# and a temporary lists directory: the machine's apt sources and lists stay as they were.
set -euo pipefail

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
have_qemu=1
command -v qemu-system-x86_64 >/dev/null || have_qemu=0
if [ ${#need[@]} -eq 0 ] && [ $have_qemu -eq 1 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "host-deps: missing ${need[*]} ${have_qemu/1/} qemu-system-x86; run as root to install" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# `apt-get update` only when the lists cannot install it: an update also prunes the lists of
# suites the sources no longer name.
install() {
  apt-get install -y -qq --no-install-recommends "$@" \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; }
}
if [ ${#need[@]} -gt 0 ]; then
  install "${need[@]}"
fi
[ $have_qemu -eq 1 ] && exit 0

utils=$(dpkg-query -W -f='${Status} ${Version}' qemu-utils 2>/dev/null || true)
case "$utils" in
  "install ok installed "*bpo*)
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    tmp=$(mktemp -d /tmp/corral-vm-apt.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/parts"
    cat >"$tmp/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security $codename-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename-backports main
SRC
    apt_tmp=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
      -o "Dir::State::Lists=$tmp/lists")
    echo "host-deps: qemu-utils is from backports ($utils); qemu-system-x86 from $codename-backports"
    apt-get "${apt_tmp[@]}" update -qq
    apt-get "${apt_tmp[@]}" install -y -qq --no-install-recommends -t "$codename-backports" qemu-system-x86
    ;;
  *)
    install qemu-system-x86
    ;;
esac
command -v qemu-system-x86_64 >/dev/null
