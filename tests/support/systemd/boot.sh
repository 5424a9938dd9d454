#!/bin/sh
# Boot one scenario container (harness.py runs this under `unshare --mount --propagation private`,
# inside cgroups it created; the overlay mount below therefore vanishes with the container).
#
#     boot.sh BASE_ROOT WORK MACHINE SCENARIO DETACH
#
# BASE_ROOT  the cached Debian root file system (read-only lower layer: never modified)
# WORK       this run's directory: src/ (the project to install), wheels/ (its dependencies),
#            handler.sh (the action: support.recorder's), upper/ + ovl/ (the overlay's writable
#            layer), root/ (mount point), results/ (-> /results)
# The project is installed as a user would: pip, into the venv /opt/notify-launcher/venv, offline
# (the container has no network: --private-network).  Then systemd boots in the container and
# nl-scenario.service runs scenario.sh (beside this file), which powers the container off at its end.
set -eu
base=$1 work=$2 machine=$3 scenario=$4 detach=$5
here=$(dirname "$(readlink -f "$0")")
root=$work/root
mkdir -p "$work/upper" "$work/ovl" "$root" "$work/results"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$root"

cp -r "$work/src" "$root/opt/notify-launcher/src"
cp -r "$work/wheels" "$root/opt/notify-launcher/wheels"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    chroot "$root" /opt/notify-launcher/venv/bin/pip install --disable-pip-version-check --no-index \
    --find-links /opt/notify-launcher/wheels --no-build-isolation /opt/notify-launcher/src \
    > "$work/results/pip.log" 2>&1 || { echo "boot.sh: pip install failed:"; tail -20 "$work/results/pip.log"; exit 1; }

install -d -m 0755 "$root/opt/nl-test" "$root/etc/nl-test"
install -m 0755 "$here/scenario.sh" "$work/handler.sh" "$root/opt/nl-test/"
install -m 0644 "$here/keepalived-script.conf" "$here/keepalived-serve.conf" \
    "$here/notify-launcher-serve.service" "$root/opt/nl-test/"
install -m 0644 "$here/nl-scenario.service" "$root/etc/systemd/system/"
ln -sf /etc/systemd/system/nl-scenario.service "$root/etc/systemd/system/multi-user.target.wants/"
printf 'SCENARIO=%s\nDETACH=%s\n' "$scenario" "$detach" > "$root/etc/nl-test/env"

exec systemd-nspawn --directory="$root" --machine="$machine" --boot --register=no --keep-unit \
    --private-network --bind="$work/results:/results" --console=read-only \
    systemd.log_color=0 systemd.show_status=1
