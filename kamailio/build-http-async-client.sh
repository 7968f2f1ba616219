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

# Our change to the module, applied to the unpacked source before it is compiled (see loadtest/BENCHMARKS.md,
# "SIP throughput"):
# - two module parameters for libcurl's multi handle, curl_maxconnects (CURLMOPT_MAXCONNECTS) and
#   curl_max_host_connections (CURLMOPT_MAX_HOST_CONNECTIONS); left at 0 they change nothing. Without the
#   first, curl's idle connection cache shrinks to 4 connections per transfer still running, so after every
#   burst of requests it closes the connections the next burst opens again;
# - a query is handed to an HTTP worker without waiting: when every worker's queue (a datagram socket pair) is
#   full, http_async_query fails at once instead of blocking the SIP worker, or the HTTP worker whose route
#   sends a query (two HTTP workers writing to each other's full queue stopped Kamailio for good);
# - an HTTP worker takes up to 64 queued queries per wake-up instead of one.
module_patch() {
    cat <<'PATCH'
--- a/src/modules/http_async_client/async_http.c
+++ b/src/modules/http_async_client/async_http.c
@@ -38,6 +38,7 @@
 #include <netinet/in.h>
 #include <arpa/inet.h>
 #include <fcntl.h>
+#include <errno.h>
 
 #include <event2/event.h>
 
@@ -294,8 +295,9 @@
 
 	if ((received = recvfrom(worker->notication_socket[0],
 			&aq, sizeof(async_query_t*),
-			0, NULL, 0)) < 0) {
-		LM_ERR("failed to read from socket (%d: %s)\n", errno, strerror(errno));
+			MSG_DONTWAIT, NULL, 0)) < 0) {
+		if (errno != EAGAIN && errno != EWOULDBLOCK)
+			LM_ERR("failed to read from socket (%d: %s)\n", errno, strerror(errno));
 		return;
 	}
 
@@ -432,9 +434,24 @@
 	return;
 }
 
+/* Takes up to 64 queued queries per wake-up rather than one per turn of the event loop: fewer epoll
+ * rounds, and curl starts the new transfers together. */
+static void notification_socket_batch_cb(int fd, short event, void *arg)
+{
+	const async_http_worker_t *worker = (async_http_worker_t *) arg;
+	async_query_t *peek;
+	int n;
+
+	for (n = 0; n < 64; n++) {
+		if (recv(worker->notication_socket[0], &peek, sizeof(peek), MSG_PEEK|MSG_DONTWAIT) != sizeof(peek))
+			break;
+		notification_socket_cb(fd, event, arg);
+	}
+}
+
 int init_socket(async_http_worker_t *worker)
 {
-	worker->socket_event = event_new(worker->evbase, worker->notication_socket[0], EV_READ|EV_PERSIST, notification_socket_cb, worker);
+	worker->socket_event = event_new(worker->evbase, worker->notication_socket[0], EV_READ|EV_PERSIST, notification_socket_batch_cb, worker);
 	event_add(worker->socket_event, NULL);
 	return (0);
 }
@@ -620,7 +637,8 @@
 
 int async_push_query(async_query_t *aq)
 {
-	int len;
+	int len = -1;
+	int i;
 	int worker;
 	static unsigned long rr = 0; /* round robin */
 
@@ -628,10 +646,17 @@
 
 	query = ((str)aq->query);
 
-	worker = rr++ % num_workers;
-	len = write(workers[worker].notication_socket[1], &aq, sizeof(async_query_t*));
+	/* Never wait for a worker: a blocking write stalls the SIP worker (or the HTTP worker itself, when a
+	 * route it runs sends a query) once a worker's queue is full, and two HTTP workers writing to each
+	 * other's full queue never wake up again. Try each worker's queue once, then refuse the query. */
+	for (i = 0; i < num_workers; i++) {
+		worker = rr++ % num_workers;
+		len = send(workers[worker].notication_socket[1], &aq, sizeof(async_query_t*), MSG_DONTWAIT);
+		if (len > 0)
+			break;
+	}
 	if(len<=0) {
-		LM_ERR("failed to pass the query to async workers\n");
+		LM_ERR("failed to pass the query to async workers (queues full)\n");
 		return -1;
 	}
 	LM_DBG("query sent [%.*s] (%p) to worker %d\n", query.len, query.s, aq, worker + 1);
--- a/src/modules/http_async_client/http_async_client_mod.c
+++ b/src/modules/http_async_client/http_async_client_mod.c
@@ -74,6 +74,9 @@
 int tls_verify_host = 1; // By default verify host in HTTPS requests
 int tls_verify_peer = 1; // By default verify peer in HTTPS requests
 int curl_verbose = 0;
+/* libcurl multi handle: connection cache size and connections per host (0: libcurl's defaults) */
+int curl_maxconnects = 0;
+int curl_max_host_connections = 0;
 int curl_follow_redirect = 0;
 char* tls_client_cert = NULL; // client SSL certificate path, defaults to NULL
 char* tls_client_key = NULL; // client SSL certificate key path, defaults to NULL
@@ -152,6 +155,8 @@
 	{"tls_verify_peer",		INT_PARAM,		&tls_verify_peer},
 	{"curl_verbose",		INT_PARAM,		&curl_verbose},
 	{"curl_follow_redirect",	INT_PARAM,		&curl_follow_redirect},
+	{"curl_maxconnects",	INT_PARAM,		&curl_maxconnects},
+	{"curl_max_host_connections",	INT_PARAM,	&curl_max_host_connections},
 	{"tls_client_cert",		PARAM_STRING,	&tls_client_cert},
 	{"tls_client_key",		PARAM_STRING,	&tls_client_key},
 	{"tls_ca_path",			PARAM_STRING,	&tls_ca_path},
--- a/src/modules/http_async_client/http_multi.c
+++ b/src/modules/http_async_client/http_multi.c
@@ -403,6 +403,14 @@
 	curl_multi_setopt(g->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
 	curl_multi_setopt(g->multi, CURLMOPT_TIMERDATA, g);
 	curl_multi_setopt(g->multi, CURLMOPT_PIPELINING, CURLPIPE_NOTHING);
+	/* By default the idle connection cache holds 4 connections per transfer in progress: once a burst
+	 * is over it shrinks and closes the connections the next burst opens again. */
+	if (curl_maxconnects > 0)
+		curl_multi_setopt(g->multi, CURLMOPT_MAXCONNECTS, (long)curl_maxconnects);
+	/* Transfers beyond this many connections to one host wait for a free connection
+	 * instead of opening a new one. */
+	if (curl_max_host_connections > 0)
+		curl_multi_setopt(g->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)curl_max_host_connections);
 
 	return init_http_m_table(hash_size);
 }
--- a/src/modules/http_async_client/http_multi.h
+++ b/src/modules/http_async_client/http_multi.h
@@ -58,6 +58,8 @@
 extern stat_var *timeouts;
 extern int tls_version;
 extern int curl_verbose;
+extern int curl_maxconnects;
+extern int curl_max_host_connections;
 extern int curl_follow_redirect;
 
 void set_curl_mem_callbacks(void);
PATCH
}
# The stamp names the patch too: a module built from other sources (or none) is rebuilt.
PATCH_ID="$(module_patch | sha256sum | cut -c1-12)"

# kamailio-postgres-modules: db_postgres for the dialogs kept in PostgreSQL (WITH_DIALOG_DB)
RUNTIME_PACKAGES=(kamailio kamailio-json-modules kamailio-extra-modules kamailio-utils-modules kamailio-postgres-modules
    sip-tester)
BUILD_PACKAGES=(build-essential pkg-config libcurl4-openssl-dev libevent-dev libssl-dev xz-utils patch)
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
BUILD_ID="$VERSION patch $PATCH_ID"

# 2. Already built for this version? Then only check it.
if [ "$FORCE" = 0 ] && [ -f "$SO" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$BUILD_ID" ]; then
    if verify_module; then
        log "up to date: $SO (kamailio $VERSION, patch $PATCH_ID)"
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
log "patching $MODULE (patch $PATCH_ID)"
module_patch | (cd "$SRC" && patch -p1 --forward --quiet) || die "the module patch does not apply to $UPSTREAM"

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
echo "$BUILD_ID" >"$STAMP"
verify_module || { rm -f "$SO" "$STAMP"; die "built module does not load into kamailio $VERSION"; }
log "built $SO for kamailio $VERSION (patch $PATCH_ID)"
