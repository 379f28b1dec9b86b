#!/bin/sh
# PID 1 of the test guest (the initramfs is built by tests/common/vm.rs):
# loads the modules for virtio-blk and ext4, waits for the disks, then runs
# the command agent on the second serial port (the first is the console).
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" || echo "snapfs-guest: insmod $m failed"
done
# virtio-blk probes its disks asynchronously after insmod returns.
want=$(cat /disks.count)
i=0
while [ "$(ls /dev/vd? 2>/dev/null | wc -l)" -lt "$want" ] && [ "$i" -lt 200 ]; do
    sleep 0.1
    i=$((i + 1))
done
# Raw: the host sends one line per command and reads output byte for byte.
stty -F /dev/ttyS1 raw -echo
echo "snapfs-guest: agent on ttyS1"
# PID 1 must never exit (that panics the kernel).
while :; do
    sh /agent.sh </dev/ttyS1 >/dev/ttyS1 2>&1
    echo "snapfs-guest: agent exited with $?, restarting"
    sleep 1
done
