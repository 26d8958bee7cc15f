#!/bin/sh
# node-desktop: the batch script of a "Cluster Desktop" session. Slurm runs
# it on a node; it starts a TigerVNC Xvnc desktop (a window manager and a
# terminal) on a free TCP port, protected by the session's VNC password,
# and prints the ready line {"hostname": ..., "port": ...} to the job's
# output, which the gateway reads from the session directory.
#
# The gateway writes the password (TigerVNC's obfuscated format, mode
# 0600) to $WSGW_VNC_PASSWORD_FILE in the session directory before it
# submits the job; nothing else on the node ever sees it. Xvnc offers only
# VNC authentication, so a connection without the password is refused.
#
# Options (WSGW_OPTIONS JSON): geometry (WIDTHxHEIGHT, default 1280x800),
# vnc_interface (the address Xvnc listens on, default all),
# node_hostname (the name the gateway dials, default `hostname`).
set -eu

opts=${WSGW_OPTIONS:-"{}"}
opt() { printf '%s' "$opts" | sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

geometry=$(opt geometry)
geometry=${geometry:-1280x800}
if ! printf '%s' "$geometry" | grep -Eq '^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$'; then
	echo "option geometry must look like 1280x800, got: $geometry" >&2
	exit 1
fi
iface=$(opt vnc_interface)
host=$(opt node_hostname)
host=${host:-$(hostname)}

dir=${WSGW_SESSION_DIR:?WSGW_SESSION_DIR is not set}
pwfile=${WSGW_VNC_PASSWORD_FILE:-$dir/vnc.passwd}
if [ ! -r "$pwfile" ]; then
	echo "the VNC password file $pwfile cannot be read on $(hostname): the session directory must be shared with the gateway" >&2
	exit 1
fi
if ! command -v Xvnc >/dev/null 2>&1; then
	echo "Xvnc not found on $(hostname): install tigervnc-standalone-server on the nodes" >&2
	exit 1
fi

# The job's own scratch: X's display file and Xvnc's log.
work=$(mktemp -d "${TMPDIR:-/tmp}/wsgw-node.XXXXXX")
xvnc=""
cleanup() {
	[ -n "$xvnc" ] && kill "$xvnc" 2>/dev/null
	kill $(jobs -p) 2>/dev/null
	wait 2>/dev/null
	rm -rf "$work"
}
trap 'cleanup; exit 0' TERM INT HUP

port=""
tries=0
while [ -z "$port" ] && [ "$tries" -lt 20 ]; do
	tries=$((tries + 1))
	p=$(( $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 20000 + 20000 ))
	set -- -displayfd 3 -geometry "$geometry" -depth 24 -rfbport "$p" \
		-SecurityTypes VncAuth -PasswordFile "$pwfile" -AlwaysShared -nolisten tcp \
		-desktop "${WSGW_SERVICE:-desktop}"
	[ -n "$iface" ] && set -- "$@" -interface "$iface"
	: >"$work/display"
	: >"$work/xvnc.log"
	Xvnc "$@" 3>"$work/display" 2>"$work/xvnc.log" &
	xvnc=$!
	i=0
	while :; do
		if grep -q "Listening for VNC connections" "$work/xvnc.log" && [ -s "$work/display" ]; then
			port=$p
			break
		fi
		if ! kill -0 "$xvnc" 2>/dev/null; then
			wait "$xvnc" 2>/dev/null || true
			xvnc=""
			break
		fi
		i=$((i + 1))
		if [ "$i" -gt 300 ]; then
			echo "Xvnc did not start within 30 seconds" >&2
			tail -n 5 "$work/xvnc.log" >&2
			cleanup
			exit 1
		fi
		sleep 0.1
	done
done
if [ -z "$port" ]; then
	echo "Xvnc could not listen on a free port:" >&2
	tail -n 5 "$work/xvnc.log" >&2
	cleanup
	exit 1
fi
DISPLAY=":$(head -n1 "$work/display")"
export DISPLAY

if command -v openbox >/dev/null 2>&1; then
	openbox >/dev/null 2>&1 &
	i=0
	while ! xprop -root _NET_SUPPORTING_WM_CHECK 2>/dev/null | grep -q 'window id'; do
		i=$((i + 1)); [ "$i" -gt 100 ] && break
		sleep 0.05
	done
fi
if command -v xterm >/dev/null 2>&1; then
	(cd "$HOME" 2>/dev/null || cd /; xterm -geometry 100x30+20+20 -title "wsgateway cluster desktop on $(hostname)" >/dev/null 2>&1) &
fi

printf '{"hostname": "%s", "port": %d}\n' "$host" "$port"
wait "$xvnc" || true
cleanup
