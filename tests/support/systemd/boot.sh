#!/bin/sh
# Boot one scenario container (harness.py runs this under `unshare --mount --propagation private`,
# inside cgroups it created; the mounts below therefore vanish with the container).
#
#     boot.sh BASE_ROOT WORK MACHINE APT_ARCHIVES
#
# BASE_ROOT     the cached Debian root file system (read-only lower layer: never modified)
# WORK          this run's directory: env (SCENARIO, DETACH, INSTALL, NL, BURST: becomes
#               /etc/nl-test/env), handler.sh (the action: support.recorder's), example/ (the
#               checkout's example configuration -> /opt/nl-test/example), src/ + wheels/
#               (INSTALL=venv) or deb/ (INSTALL=deb), upper/ + ovl/ (the overlay's writable layer),
#               root/ (mount point), results/ (-> /results)
#               baseline-reader.sh (benchmarks/'s shell reader: scenario latency)
# APT_ARCHIVES  apt's archive cache of this release, kept on the host (INSTALL=deb)
# The project is installed as a user would, in a chroot before the boot:
#   venv  pip, into the venv /opt/notify-launcher/venv, offline (--no-index: the wheels beside it);
#   deb   `apt-get install ./notify-launcher_*_all.deb` against the release's own archive (the root
#         has only Debian's sources); what it pulled in goes to results/deb-installed.txt.
# Then systemd boots in the container (--private-network: offline) and nl-scenario.service runs
# scenario.sh (beside this file), which powers the container off at its end.
set -eu
base=$1 work=$2 machine=$3 archives=$4
here=$(dirname "$(readlink -f "$0")")
root=$work/root
. "$work/env"
mkdir -p "$work/upper" "$work/ovl" "$root" "$work/results"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$root"
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        chroot "$root" "$@" >> "$work/results/install.log" 2>&1
}
failed() {
    echo "boot.sh: $1 failed:"
    tail -30 "$work/results/install.log"
    exit 1
}

case $INSTALL in
venv)
    cp -r "$work/src" "$root/opt/notify-launcher/src"
    cp -r "$work/wheels" "$root/opt/notify-launcher/wheels"
    in_root /opt/notify-launcher/venv/bin/pip install --disable-pip-version-check --no-index \
        --find-links /opt/notify-launcher/wheels --no-build-isolation /opt/notify-launcher/src \
        || failed "pip install"
    ;;
deb)
    mount --bind "$archives" "$root/var/cache/apt/archives"
    mount -t proc proc "$root/proc"
    cp "$work"/deb/*.deb "$root/tmp/"
    # as the README says: apt install ./dist/notify-launcher_*_all.deb (Recommends too, as by default);
    # then each package it pulled in, its installed version, and where apt has that version from
    in_root sh -c '
        dpkg-query -W -f "\${Package}\n" | sort > /tmp/before
        apt-get install -y /tmp/notify-launcher_*_all.deb || exit 1
        for pkg in $(dpkg-query -W -f "\${Package}\n" | sort | comm -13 /tmp/before -); do
            echo "pulled $pkg $(dpkg-query -W -f "\${Version}" "$pkg")"
            apt-cache madison "$pkg"
        done > /tmp/deb-installed.txt' || failed "apt-get install ./notify-launcher_*_all.deb"
    cp "$root/tmp/deb-installed.txt" "$work/results/"
    umount "$root/proc" "$root/var/cache/apt/archives"
    ;;
*)
    echo "boot.sh: unknown INSTALL=$INSTALL"
    exit 1
    ;;
esac

install -d -m 0755 "$root/opt/nl-test" "$root/etc/nl-test"
install -m 0755 "$here/scenario.sh" "$work/handler.sh" "$work/baseline-reader.sh" "$root/opt/nl-test/"
install -m 0644 "$here/keepalived-script.conf" "$here/keepalived-serve.conf" \
    "$here/notify-launcher-serve.service" "$root/opt/nl-test/"
install -m 0644 "$here/nl-scenario.service" "$root/etc/systemd/system/"
ln -sf /etc/systemd/system/nl-scenario.service "$root/etc/systemd/system/multi-user.target.wants/"
install -m 0644 "$work/env" "$root/etc/nl-test/env"
cp -r "$work/example" "$root/opt/nl-test/example"

exec systemd-nspawn --directory="$root" --machine="$machine" --boot --register=no --keep-unit \
    --private-network --bind="$work/results:/results" --console=read-only \
    systemd.log_color=0 systemd.show_status=1
