#!/bin/sh
# desktop: one TigerVNC Xvnc desktop per slot, with a window manager and a
# terminal, reachable only through a Unix socket in the session directory.
#
# Service script protocol: "start" prints {"unix": "<socket>"} once Xvnc
# listens and stays in the foreground; the gateway stops the whole process
# group when the session ends.
# Options (WSGW_OPTIONS JSON): geometry (WIDTHxHEIGHT, default 1280x800).
set -eu

case "${1:-}" in
start) ;;
stop) exit 0 ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

if ! command -v Xvnc >/dev/null 2>&1; then
	echo "Xvnc not found: install the Debian package tigervnc-standalone-server" >&2
	exit 1
fi

opts=${WSGW_OPTIONS:-"{}"}
geometry=$(printf '%s' "$opts" | sed -n 's/.*"geometry":"\([^"]*\)".*/\1/p')
geometry=${geometry:-1280x800}
if ! printf '%s' "$geometry" | grep -Eq '^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$'; then
	echo "option geometry must look like 1280x800, got: $geometry" >&2
	exit 1
fi

dir=${WSGW_SESSION_DIR:?WSGW_SESSION_DIR is not set}
sock="$dir/vnc.sock"
dfile="$dir/display"
rm -f "$sock" "$dfile"

Xvnc -displayfd 3 -geometry "$geometry" -depth 24 \
	-rfbport -1 -rfbunixpath "$sock" -rfbunixmode 0600 \
	-SecurityTypes None -AlwaysShared -nolisten tcp \
	-desktop "${WSGW_SERVICE:-desktop}" 3>"$dfile" &
xvnc=$!

i=0
while [ ! -S "$sock" ] || [ ! -s "$dfile" ]; do
	if ! kill -0 "$xvnc" 2>/dev/null; then
		echo "Xvnc exited before it was ready" >&2
		exit 1
	fi
	i=$((i + 1))
	if [ "$i" -gt 300 ]; then
		echo "Xvnc did not become ready within 30 seconds" >&2
		exit 1
	fi
	sleep 0.1
done
display=":$(head -n1 "$dfile")"
export DISPLAY="$display"

if command -v openbox >/dev/null 2>&1; then
	# Openbox's stock configuration focuses "nothing" on a click on the
	# desktop background, which takes the keyboard from the terminal. This
	# one focuses windows on a click in them and new windows when they
	# appear, never follows the mouse, and lets a click on the background
	# leave the focus where it is.
	rc="$dir/openbox-rc.xml"
	cat >"$rc" <<'RC'
<?xml version="1.0" encoding="UTF-8"?>
<openbox_config xmlns="http://openbox.org/3.4/rc">
  <focus>
    <focusNew>yes</focusNew>
    <followMouse>no</followMouse>
    <focusLast>yes</focusLast>
    <underMouse>no</underMouse>
  </focus>
  <desktops><number>1</number></desktops>
  <mouse>
    <dragThreshold>1</dragThreshold>
    <doubleClickTime>500</doubleClickTime>
    <context name="Frame">
      <mousebind button="A-Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="A-Left" action="Drag"><action name="Move"/></mousebind>
      <mousebind button="A-Right" action="Drag"><action name="Resize"/></mousebind>
    </context>
    <context name="Titlebar">
      <mousebind button="Left" action="Drag"><action name="Move"/></mousebind>
      <mousebind button="Left" action="DoubleClick"><action name="ToggleMaximize"/></mousebind>
    </context>
    <context name="Titlebar Top Right Bottom Left TLCorner TRCorner BRCorner BLCorner">
      <mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/><action name="Unshade"/></mousebind>
      <mousebind button="Right" action="Press"><action name="Focus"/><action name="Raise"/><action name="ShowMenu"><menu>client-menu</menu></action></mousebind>
    </context>
    <context name="Top"><mousebind button="Left" action="Drag"><action name="Resize"><edge>top</edge></action></mousebind></context>
    <context name="Left"><mousebind button="Left" action="Drag"><action name="Resize"><edge>left</edge></action></mousebind></context>
    <context name="Right"><mousebind button="Left" action="Drag"><action name="Resize"><edge>right</edge></action></mousebind></context>
    <context name="Bottom"><mousebind button="Left" action="Drag"><action name="Resize"><edge>bottom</edge></action></mousebind></context>
    <context name="TLCorner"><mousebind button="Left" action="Drag"><action name="Resize"/></mousebind></context>
    <context name="TRCorner"><mousebind button="Left" action="Drag"><action name="Resize"/></mousebind></context>
    <context name="BLCorner"><mousebind button="Left" action="Drag"><action name="Resize"/></mousebind></context>
    <context name="BRCorner"><mousebind button="Left" action="Drag"><action name="Resize"/></mousebind></context>
    <context name="Client">
      <mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="Middle" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="Right" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
    </context>
    <context name="Icon">
      <mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/><action name="ShowMenu"><menu>client-menu</menu></action></mousebind>
    </context>
    <context name="AllDesktops">
      <mousebind button="Left" action="Click"><action name="ToggleOmnipresent"/></mousebind>
    </context>
    <context name="Shade">
      <mousebind button="Left" action="Click"><action name="ToggleShade"/></mousebind>
    </context>
    <context name="Iconify">
      <mousebind button="Left" action="Click"><action name="Iconify"/></mousebind>
    </context>
    <context name="Maximize">
      <mousebind button="Left" action="Click"><action name="ToggleMaximize"/></mousebind>
    </context>
    <context name="Close">
      <mousebind button="Left" action="Click"><action name="Close"/></mousebind>
    </context>
    <!-- The desktop background: menus, and no Focus action (which would
         focus nothing). -->
    <context name="Root">
      <mousebind button="Middle" action="Press"><action name="ShowMenu"><menu>client-list-combined-menu</menu></action></mousebind>
      <mousebind button="Right" action="Press"><action name="ShowMenu"><menu>root-menu</menu></action></mousebind>
    </context>
  </mouse>
</openbox_config>
RC
	openbox --config-file "$rc" >/dev/null 2>&1 &
	# Wait for openbox to manage the screen before mapping windows.
	i=0
	while ! xprop -root _NET_SUPPORTING_WM_CHECK 2>/dev/null | grep -q 'window id'; do
		i=$((i + 1)); [ "$i" -gt 100 ] && break
		sleep 0.05
	done
fi
if command -v xterm >/dev/null 2>&1; then
	xterm -geometry 100x30+20+20 -title "wsgateway desktop" >/dev/null 2>&1 &
fi

# Stopping: take the children down and reap them, so none is left a zombie.
trap 'kill $(jobs -p) 2>/dev/null; wait; exit 0' TERM INT HUP

printf '{"unix": "%s", "display": "%s"}\n' "$sock" "$display"
wait "$xvnc"
