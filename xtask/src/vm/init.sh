
# The guest's /init (busybox sh). xtask prepends END (the end marker), MODULES, THREADS, RUN and
# `set -- ARGS...`: with RUN=tests, ARGS is the filter given to every test binary in /tests; with
# RUN=command (cargo xtask vm-run), ARGS is the one command to run. Whatever happens, this script
# ends by printing "$END rc=N" and powering off; if it dies instead, the kernel panics
# ("Attempted to kill init"), which the host also reports.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CHAOS_BIN=/bin/chaos
rc=0
echo # the firmware's last line may lack its newline

# A set-up step: a failure is reported and fails the lane, but the tests still run so that
# their output shows what it breaks.
step() {
	"$@" || { echo "init: '$*' failed"; rc=1; }
}

step mount -t devtmpfs dev /dev
step mount -t proc proc /proc
step mount -t sysfs sysfs /sys
step mount -t tmpfs tmpfs /run
step mount -t tmpfs tmpfs /tmp
step mount -t cgroup2 cgroup2 /sys/fs/cgroup
step mount -t bpf bpf /sys/fs/bpf
step mount -t securityfs securityfs /sys/kernel/security
step mount -t debugfs debugfs /sys/kernel/debug
step mount -t tracefs tracefs /sys/kernel/tracing
step ip link set lo up
# Where a distribution keeps the kernel's config.
[ -f /boot/config ] && mv /boot/config "/boot/config-$(uname -r)"
# vm-run's --copy paths, staged under /copies because /tmp and /run were just mounted over.
if [ -d /copies ]; then
	step cp -R /copies/. /
	rm -rf /copies
fi

for m in $MODULES; do
	step modprobe "$m"
done

# `ip netns add` bind-mounts namespaces under /run/netns; check once that it works here.
step mkdir -p /run/netns
step ip netns add init-check
step ip -n init-check link set lo up
step ip netns delete init-check

cd /tmp
if [ "$RUN" = command ]; then
	# The start line tells the host where the command's own output begins; its status is the
	# run's. Its stdin is empty rather than the console, which the host never writes to.
	echo "$END start"
	"$@" </dev/null
	rc=$?
else
	echo "init: kernel $(uname -r), $(nproc) CPUs; running the tests with --test-threads=$THREADS"
	for t in /tests/*; do
		[ -x "$t" ] || continue
		echo "init: running ${t##*/}"
		"$t" --test-threads="$THREADS" "$@"
		code=$?
		if [ "$code" != 0 ]; then
			echo "init: ${t##*/} exited with status $code"
			rc=1
		fi
	done
fi

echo "$END rc=$rc"
# Let the serial line drain before the machine stops.
sleep 1
poweroff -f
