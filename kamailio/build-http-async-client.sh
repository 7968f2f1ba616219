#!/usr/bin/env bash
# Builds http_async_client.so for the Kamailio installed from Debian's packages.
#
# Debian 12 ships Kamailio 5.6 without the http_async_client module (its debian/rules never builds the
# module group that holds it). This script compiles that one module from the Debian source package of
# the INSTALLED kamailio version, so its compile flags match the running core, and puts it in
# kamailio/build/modules/ (override with KAMAILIO_MODULES_DIR). kamailio.cfg lists that directory first
# in mpath.
#
# It is idempotent: when the module exists and was built for the installed version it only re-checks
# it with `kamailio -c`. On a fresh Debian 12 machine (as root) it also installs kamailio, the module
# packages it needs (db_postgres included) and sip-tester (SIPp, used by the tests), then the build dependencies.
#
# Usage: kamailio/build-http-async-client.sh [--force]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODULES_DIR="${KAMAILIO_MODULES_DIR:-$HERE/build/modules}"
WORK_DIR="${KAMAILIO_BUILD_WORKDIR:-$HERE/build/src}"
MODULE="http_async_client"
SO="$MODULES_DIR/$MODULE.so"
STAMP="$MODULES_DIR/$MODULE.version"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

# kamailio-postgres-modules: db_postgres for the dialogs kept in PostgreSQL (WITH_DIALOG_DB)
RUNTIME_PACKAGES=(kamailio kamailio-json-modules kamailio-extra-modules kamailio-utils-modules kamailio-postgres-modules
    sip-tester)
BUILD_PACKAGES=(build-essential pkg-config libcurl4-openssl-dev libevent-dev libssl-dev xz-utils)
export DEBIAN_FRONTEND=noninteractive

log() { echo "[build-http-async-client] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing_packages() {
    local pkg
    for pkg in "$@"; do
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
            echo "$pkg"
        fi
    done
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -q >&2
        APT_UPDATED=1
    fi
}

install_packages() {
    local missing
    missing="$(missing_packages "$@")"
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || die "packages missing: $(echo $missing); run this script as root to install them"
    apt_update_once
    log "installing: $(echo $missing)"
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >&2
}

system_modules_dir() {
    local tm
    tm="$(dpkg -L kamailio 2>/dev/null | grep '/kamailio/modules/tm\.so$' | head -n1 || true)"
    [ -n "$tm" ] || die "cannot find Kamailio's module directory (is the kamailio package installed?)"
    dirname "$tm"
}

# Loads the built module with the installed core: `kamailio -c` fails on a compile-flags mismatch.
verify_module() {
    local cfg sysdir out
    sysdir="$(system_modules_dir)"
    cfg="$(mktemp /tmp/check-http-async-XXXXXX.cfg)"
    cat >"$cfg" <<EOF
#!KAMAILIO
mpath="$MODULES_DIR:$sysdir"
loadmodule "tm.so"
loadmodule "pv.so"
loadmodule "$MODULE.so"
request_route { exit; }
EOF
    if out="$(kamailio -c -f "$cfg" 2>&1)"; then
        rm -f "$cfg"
        return 0
    fi
    rm -f "$cfg"
    log "kamailio -c refused the module:"
    echo "$out" | tail -n 20 >&2
    return 1
}

# 1. Runtime packages (kamailio itself, the modules the configuration loads, SIPp for the tests).
install_packages "${RUNTIME_PACKAGES[@]}"
command -v kamailio >/dev/null || die "kamailio binary not found after installation"
VERSION="$(dpkg-query -W -f='${Version}' kamailio)"
log "installed kamailio package version: $VERSION"

# 2. Already built for this version? Then only check it.
if [ "$FORCE" = 0 ] && [ -f "$SO" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ]; then
    if verify_module; then
        log "up to date: $SO (kamailio $VERSION)"
        exit 0
    fi
    log "existing module does not load; rebuilding"
fi

[ "$(id -u)" = 0 ] || die "building needs root (apt-get source and build dependencies)"

# 3. Debian source entries (deb-src) mirroring the configured binary sources.
have_deb_src() {
    grep -hsE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources >/dev/null
}
if ! have_deb_src; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        log "adding deb-src entries mirroring /etc/apt/sources.list.d/debian.sources"
        sed -E 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
            >/etc/apt/sources.list.d/rating-kamailio-src.sources
    elif grep -qsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list; then
        log "adding deb-src entries mirroring /etc/apt/sources.list"
        grep -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list | sed -E 's/^([[:space:]]*)deb /\1deb-src /' \
            >/etc/apt/sources.list.d/rating-kamailio-src.list
    else
        . /etc/os-release
        log "adding deb-src entries for deb.debian.org $VERSION_CODENAME"
        cat >/etc/apt/sources.list.d/rating-kamailio-src.sources <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $VERSION_CODENAME-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    APT_UPDATED=0
fi

# 4. Build dependencies (libssl-dev matters: without it the module lacks TLS_PTHREAD_MUTEX_SHARED and the
#    core refuses it with "module compile flags mismatch").
install_packages "${BUILD_PACKAGES[@]}"

# 5. Source of exactly the installed version.
mkdir -p "$WORK_DIR"
cd "$WORK_DIR"
UPSTREAM="${VERSION#*:}"
UPSTREAM="${UPSTREAM%-*}"
ORIG="$(ls kamailio_"$UPSTREAM".orig.tar.* 2>/dev/null | head -n1 || true)"
if [ -z "$ORIG" ]; then
    apt_update_once
    log "downloading the source package kamailio=$VERSION"
    if ! apt-get source --download-only -o APT::Sandbox::User=root "kamailio=$VERSION" >&2; then
        APT_UPDATED=0
        apt_update_once
        apt-get source --download-only -o APT::Sandbox::User=root "kamailio=$VERSION" >&2 \
            || die "apt-get source kamailio=$VERSION failed"
    fi
    ORIG="$(ls kamailio_"$UPSTREAM".orig.tar.* | head -n1)"
fi
SRC="$WORK_DIR/kamailio-$UPSTREAM"
rm -rf "$SRC"
log "unpacking $ORIG"
tar -xf "$ORIG"
[ -d "$SRC" ] || SRC="$(tar -tf "$ORIG" | head -n1 | cut -d/ -f1 | sed "s|^|$WORK_DIR/|")"
[ -d "$SRC/src/modules/$MODULE" ] || die "no src/modules/$MODULE in $SRC"

# 6. Configure like Debian's build and compile the one module.
MULTIARCH="$(dirname "$(system_modules_dir)")"   # /usr/lib/<triplet>/kamailio
MULTIARCH="$(dirname "$MULTIARCH")"                # /usr/lib/<triplet>
LIBDIR="${MULTIARCH#/usr/}"
cd "$SRC"
log "make cfg (LIBDIR=$LIBDIR)"
make cfg prefix=/usr LIBDIR="$LIBDIR" FLAVOUR=kamailio LIBSSL_SET_MUTEX_SHARED=1 >"$WORK_DIR/make-cfg.log" 2>&1 \
    || { tail -n 30 "$WORK_DIR/make-cfg.log" >&2; die "make cfg failed"; }
log "make modules modules=src/modules/$MODULE"
make -j"$(nproc)" modules modules="src/modules/$MODULE" >"$WORK_DIR/make-modules.log" 2>&1 \
    || { tail -n 30 "$WORK_DIR/make-modules.log" >&2; die "make modules failed"; }
[ -f "src/modules/$MODULE/$MODULE.so" ] || die "build produced no $MODULE.so"

# 7. Install into the project's module directory and check it loads.
mkdir -p "$MODULES_DIR"
install -m 0644 "src/modules/$MODULE/$MODULE.so" "$SO.tmp"
mv -f "$SO.tmp" "$SO"
echo "$VERSION" >"$STAMP"
verify_module || { rm -f "$SO" "$STAMP"; die "built module does not load into kamailio $VERSION"; }
log "built $SO for kamailio $VERSION"
