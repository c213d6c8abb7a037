#!/usr/bin/env bash
# Builds the VM image for `cargo xtask vm-test`: Debian 12 (minbase) with systemd as PID 1,
# pure cgroup v2, a user `corral` (uid 1000) with linger, and a oneshot unit that runs the
# payload from the 9p share and powers off.
#
# Usage: build-image.sh OUTDIR
# Writes OUTDIR/{root.img,vmlinuz,initrd.img}. xtask keys the cache on this file's contents,
# so any change here (the package list included) builds a new image.
set -euo pipefail

out=${1:?usage: build-image.sh OUTDIR}
mirror=${CORRAL_VM_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# slurmctld, slurmd, slurm-client, munge: the Slurm tests (tests/slurm_vm.rs) start a cluster
# of their own; the packages' services are masked below.
packages=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,udev,kmod,procps,linux-image-amd64,slurmctld,slurmd,slurm-client,munge
image_size=4G

[ "$(id -u)" = 0 ] || { echo "build-image: needs root (debootstrap, chroot)" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d /var/tmp/corral-vm-build.XXXXXX)
root=$work/root
cleanup() {
  set +e
  # debootstrap mounts proc/sys in the chroot; never delete through a mount.
  findmnt -rn -o TARGET | grep -F "$root/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "build-image: debootstrap $suite ($packages)"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

echo corral-vm >"$root/etc/hostname"
cat >"$root/etc/fstab" <<'FSTAB'
/dev/vda  /          ext4  rw,noatime  0 1
share     /mnt/share 9p    trans=virtio,version=9p2000.L,msize=524288,access=any,nofail  0 0
FSTAB
mkdir -p "$root/mnt/share"
printf '9p\n9pnet_virtio\n' >"$root/etc/modules-load.d/9p.conf"
# Pure cgroup v2 is bookworm's default; say it anyway (the kernel command line says it too).
chroot "$root" passwd -d root >/dev/null
chroot "$root" useradd --create-home --uid 1000 --shell /bin/bash corral
mkdir -p "$root/var/lib/systemd/linger"
touch "$root/var/lib/systemd/linger/corral"

cat >"$root/etc/systemd/system/corral-vm-payload.service" <<'UNIT'
[Unit]
Description=corral VM test payload (from the 9p share)
Requires=mnt-share.mount
After=mnt-share.mount user@1000.service multi-user.target
Wants=user@1000.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh /mnt/share/guest-run.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable corral-vm-payload.service >/dev/null 2>&1
# Nothing that waits on a network or a clock at boot.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  fstrim.timer systemd-networkd-wait-online.service >/dev/null 2>&1 || true
# An IPv4 address besides loopback (a dummy interface, through systemd-networkd): the VM has
# no network, and Slurm resolves even 127.0.0.1 with getaddrinfo(AI_ADDRCONFIG), which
# returns nothing while no non-loopback address is configured.
cat >"$root/etc/systemd/network/corral0.netdev" <<'NETDEV'
[NetDev]
Name=corral0
Kind=dummy
NETDEV
cat >"$root/etc/systemd/network/corral0.network" <<'NETWORK'
[Match]
Name=corral0

[Network]
Address=10.254.254.1/24
NETWORK
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
# Slurm's and munge's own services stay down: tests/slurm_vm.rs starts a cluster of its own
# (scripts/slurm/start.sh) and stops it.
chroot "$root" systemctl mask munge.service slurmd.service slurmctld.service >/dev/null
chroot "$root" apt-get clean

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
echo "build-image: mkfs.ext4 -d ($image_size)"
mkfs.ext4 -q -L corral-root -d "$root" "$work/root.img" "$image_size"

for f in root.img vmlinuz initrd.img; do mv "$work/$f" "$out/$f"; done
echo "build-image: done"
