#!/bin/sh
# Install daemon.pyz as a systemd service (usage below, or run it with --help).
set -eu

usage() {
    cat <<'USAGE'
Usage: deploy/install.sh [--prefix DIR] [--pyz FILE] [--config FILE] [--unit FILE] [--start]

Install daemon.pyz as a systemd service: /opt/daemon/daemon.pyz, /etc/daemon/daemon.yaml (the FHS
layout: state in /var/lib/daemon, logs in /var/log/daemon), /etc/systemd/system/daemon.service.
Idempotent: a second run with the same inputs changes nothing. An existing /etc/daemon/daemon.yaml
is never overwritten; the shipped one is then put next to it as daemon.yaml.dist.

  --prefix DIR   install under DIR instead of / (also: DESTDIR=DIR); systemctl is not run
  --pyz FILE     the zipapp to install (default: dist/daemon.pyz; build it with: make pyz)
  --config FILE  the config to install (default: deploy/daemon.yaml)
  --unit FILE    the systemd unit (default: deploy/daemon.service)
  --start        also start the service (without a prefix only)
  -h, --help     this text
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
prefix=${DESTDIR:-}
pyz_src=$repo/dist/daemon.pyz
config_src=$here/daemon.yaml
unit_src=$here/daemon.service
start=no

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --pyz) [ $# -ge 2 ] || die "--pyz needs a file"; pyz_src=$2; shift 2 ;;
        --config) [ $# -ge 2 ] || die "--config needs a file"; config_src=$2; shift 2 ;;
        --unit) [ $# -ge 2 ] || die "--unit needs a file"; unit_src=$2; shift 2 ;;
        --start) start=yes; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
prefix=${prefix%/}

for f in "$pyz_src" "$config_src" "$unit_src"; do
    [ -f "$f" ] || die "missing $f (build the pyz first: make pyz)"
done
if [ -z "$prefix" ] && [ "$(id -u)" -ne 0 ]; then
    die "installing into / needs root (or give --prefix DIR to stage the files)"
fi

umask 022

# install_dir PATH MODE: create if missing, and (re)apply the mode every time.
install_dir() {
    mkdir -p "$prefix$1"
    chmod "$2" "$prefix$1"
}

# install_file SRC DEST MODE: copy only when the content differs, atomically (temp file + rename).
install_file() {
    dest=$prefix$2
    if [ -f "$dest" ] && cmp -s "$1" "$dest"; then
        chmod "$3" "$dest"
        echo "unchanged  $2"
        return 1
    fi
    tmp=$dest.tmp.$$
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$dest"
    echo "installed  $2"
    return 0
}

install_dir /opt/daemon 0755
install_dir /etc/daemon 0755
install_dir /etc/daemon/certs 0700      # client key and certificate: root only
install_dir /etc/daemon/keys 0755       # public update keys
install_dir /var/lib/daemon 0750        # daemon.work_dir: node id, outbox, state, backups
install_dir /var/lib/daemon/pyz 0750    # SHIV_ROOT: where the pyz unpacks
install_dir /var/log/daemon 0750
install_dir /etc/systemd/system 0755

pyz_changed=no
unit_changed=no
install_file "$pyz_src" /opt/daemon/daemon.pyz 0755 && pyz_changed=yes
if [ -e "$prefix/etc/daemon/daemon.yaml" ]; then
    if cmp -s "$config_src" "$prefix/etc/daemon/daemon.yaml"; then
        echo "unchanged  /etc/daemon/daemon.yaml"
    else
        echo "kept       /etc/daemon/daemon.yaml (yours; the shipped one goes to daemon.yaml.dist)"
        install_file "$config_src" /etc/daemon/daemon.yaml.dist 0644 || true
    fi
else
    install_file "$config_src" /etc/daemon/daemon.yaml 0640 || true
fi
install_file "$unit_src" /etc/systemd/system/daemon.service 0644 && unit_changed=yes

if [ -n "$prefix" ]; then
    echo "staged under $prefix; systemctl not run"
    exit 0
fi

if ! /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "warning: /usr/bin/python3 is older than 3.11; daemon.pyz will not run with it" >&2
fi
[ "$unit_changed" = yes ] && systemctl daemon-reload
systemctl enable --quiet daemon.service
if [ "$start" = yes ]; then
    systemctl start daemon.service
fi
if systemctl is-active --quiet daemon.service && { [ "$pyz_changed" = yes ] || [ "$unit_changed" = yes ]; }; then
    echo "daemon is running the previous version: systemctl restart daemon (the Agent keeps running)"
elif ! systemctl is-active --quiet daemon.service; then
    echo "enabled; start it with: systemctl start daemon"
fi
