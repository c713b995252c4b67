#!/bin/sh
# Install echod as a systemd service: a virtualenv at $PREFIX/venv with echod
# in it, the unit files in $UNITDIR, the settings at /etc/echod/echod.toml (only
# if there are none yet), the man pages echod(8) and echod-bench(1) in $MANDIR,
# then `systemctl daemon-reload`.
# Safe to run again: it upgrades the venv in place, overwrites the units and
# keeps /etc/echod/echod.toml as the administrator left it.
#
#   sudo systemd/install.sh                      # /opt/echod, /etc/systemd/system
#   sudo PREFIX=/srv/echod systemd/install.sh    # elsewhere; ExecStart= follows
#   DESTDIR=/tmp/stage systemd/install.sh        # staged: no reload (testing)
#
# Variables: PREFIX (/opt/echod), UNITDIR (/etc/systemd/system), MANDIR
# (/usr/local/share/man), PYTHON (python3), SOURCE (the repository holding
# this script), DESTDIR (empty).
# It enables nothing; afterwards: systemctl enable --now echod.socket
set -eu

PREFIX=${PREFIX:-/opt/echod}
UNITDIR=${UNITDIR:-/etc/systemd/system}
MANDIR=${MANDIR:-/usr/local/share/man}
PYTHON=${PYTHON:-python3}
DESTDIR=${DESTDIR:-}
here=$(cd "$(dirname "$0")" && pwd)
SOURCE=${SOURCE:-$(dirname "$here")}

case $PREFIX in
    /home/* | /root/* | /tmp/* | /var/tmp/*)
        # ProtectHome=yes and PrivateTmp=yes hide these from the service.
        echo "install.sh: PREFIX=$PREFIX is hidden from the hardened service; choose e.g. /opt/echod" >&2
        exit 2 ;;
    /*) ;;
    *)
        echo "install.sh: PREFIX must be an absolute path, not '$PREFIX'" >&2
        exit 2 ;;
esac

venv=$DESTDIR$PREFIX/venv
if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv"
    "$PYTHON" -m venv "$venv"
fi
echo "installing echod from $SOURCE into $venv"
"$venv/bin/python" -m pip install --quiet --upgrade "$SOURCE"

mkdir -p "$DESTDIR$UNITDIR"
for unit in echod.socket echod-udp.socket echod-metrics.socket echod.service echod-standalone.service; do
    sed "s|^\(Exec[A-Za-z]*=\)/opt/echod/venv/bin/echod|\1$PREFIX/venv/bin/echod|" \
        "$here/$unit" > "$DESTDIR$UNITDIR/$unit.tmp"
    chmod 0644 "$DESTDIR$UNITDIR/$unit.tmp"
    mv -f "$DESTDIR$UNITDIR/$unit.tmp" "$DESTDIR$UNITDIR/$unit"
    echo "installed $DESTDIR$UNITDIR/$unit"
done

# Both units read this file (ExecStart=... --config); an existing one is the
# administrator's, so an upgrade leaves it alone.
conf=$DESTDIR/etc/echod/echod.toml
if [ -e "$conf" ]; then
    echo "kept $conf (the shipped defaults are in $here/echod.toml)"
else
    mkdir -p "$DESTDIR/etc/echod"
    cp "$here/echod.toml" "$conf.tmp"
    chmod 0644 "$conf.tmp"
    mv -f "$conf.tmp" "$conf"
    echo "installed $conf"
fi

# The units' Documentation=man:echod(8) resolves once these are on man's path;
# /usr/local/share/man is on it by default (manpath(5)).
for page in echod.8 echod-bench.1; do
    section=${page##*.}
    mkdir -p "$DESTDIR$MANDIR/man$section"
    cp "$SOURCE/docs/man/$page" "$DESTDIR$MANDIR/man$section/$page.tmp"
    chmod 0644 "$DESTDIR$MANDIR/man$section/$page.tmp"
    mv -f "$DESTDIR$MANDIR/man$section/$page.tmp" "$DESTDIR$MANDIR/man$section/$page"
    echo "installed $DESTDIR$MANDIR/man$section/$page"
done

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "done: systemctl enable --now echod.socket"
else
    echo "done (no systemd running here, or DESTDIR set: daemon-reload skipped)"
fi
