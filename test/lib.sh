# shellcheck shell=bash
#
# test/lib.sh: helpers shared by test/run.sh (make test) and bench/demo.sh
# (make demo). Source it; it defines functions and a few variables and runs
# nothing by itself.
#
#   mig_ensure_packages   install what a fresh Debian 12 machine lacks (root),
#                         or check it is there (not root)
#   mig_pg_env            PG_CONFIG, PG_BINDIR, and the server binaries on PATH
#   mig_build             make (in the work tree)
#   mig_install           make install (as root, or through sudo -n)
#   mig_ensure_user       the unprivileged user that runs servers (initdb
#                         refuses root): MIG_TEST_USER, default migtest
#   mig_as_user CMD       run CMD with bash as that user, with a clean PATH
#   mig_export_releases DIR  the source of each released version (git
#                         archive of the commit src/upgrade/RELEASES names)
#
# Settings (environment): MIG_TEST_USER, PG_CONFIG, MIG_APT_LOG.

MIG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIG_PG_MAJOR=15
# What the build and the suites need beyond the postgresql-15 server and
# client: PGXS and headers, IPC::Run (and IO::Pty, for interactive_psql) for
# the TAP tests, a compiler, valgrind for test/valgrind.sh, git for the
# released version test/t/080_upgrade.pl builds, pgbouncer for
# test/t/082_pgbouncer.pl, prometheus-postgres-exporter for
# test/t/083_exporter.pl, and the Debian packaging tools for make
# package-test (test/package.sh).
MIG_PACKAGES=("postgresql-server-dev-$MIG_PG_MAJOR" libipc-run-perl libio-pty-perl make gcc libc6-dev valgrind
	git pgbouncer prometheus-postgres-exporter
	postgresql-server-dev-all debhelper dpkg-dev build-essential)
MIG_APT_LOG=${MIG_APT_LOG:-/tmp/migrate_ext_apt.log}

mig_log() { printf '==> %s\n' "$*"; }
mig_warn() { printf 'WARNING: %s\n' "$*" >&2; }
mig_die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
mig_is_root() { [ "$(id -u)" -eq 0 ]; }

# Print the packages of MIG_PACKAGES that are not installed, one a line.
mig_missing_packages() {
	local p
	command -v dpkg-query >/dev/null 2>&1 || return 0
	for p in "${MIG_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
			|| printf '%s\n' "$p"
	done
}

# Install (as root) or check (otherwise) everything the build and the tests
# need. Returns non-zero, having said why, when something is missing.
mig_ensure_packages() {
	local missing
	missing=$(mig_missing_packages | tr '\n' ' ')
	missing=${missing% }
	if [ -n "$missing" ]; then
		if mig_is_root; then
			mig_log "installing missing packages: $missing (log: $MIG_APT_LOG)"
			: >"$MIG_APT_LOG"
			# shellcheck disable=SC2086 # one word per package
			if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
				DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
					$missing; } >>"$MIG_APT_LOG" 2>&1 </dev/null; then
				echo "---- last lines of $MIG_APT_LOG ----" >&2
				tail -n 40 "$MIG_APT_LOG" >&2
				echo "----" >&2
				printf 'ERROR: apt-get failed to install: %s\n' "$missing" >&2
				return 1
			fi
		else
			printf 'ERROR: missing packages: %s\n' "$missing" >&2
			printf '       run as root: apt-get update && apt-get install -y %s\n' "$missing" >&2
			return 1
		fi
	fi
	mig_pg_env || return 1
	if [ ! -f "$("$PG_CONFIG" --pgxs 2>/dev/null)" ]; then
		echo "ERROR: PGXS not found ($PG_CONFIG --pgxs); is postgresql-server-dev-$MIG_PG_MAJOR installed?" >&2
		return 1
	fi
	if ! perl -MIPC::Run -e 1 2>/dev/null; then
		echo "ERROR: the perl module IPC::Run is missing (package libipc-run-perl)" >&2
		return 1
	fi
	local b
	for b in initdb pg_ctl postgres psql; do
		[ -x "$PG_BINDIR/$b" ] || { echo "ERROR: $PG_BINDIR/$b not found (is postgresql-$MIG_PG_MAJOR installed?)" >&2; return 1; }
	done
}

# PG_CONFIG (the PostgreSQL 15 one, not whatever /usr/bin/pg_config picks),
# PG_BINDIR, and PATH with the server binaries first.
mig_pg_env() {
	if [ -z "${PG_CONFIG:-}" ]; then
		if [ -x "/usr/lib/postgresql/$MIG_PG_MAJOR/bin/pg_config" ]; then
			PG_CONFIG=/usr/lib/postgresql/$MIG_PG_MAJOR/bin/pg_config
		else
			PG_CONFIG=pg_config
		fi
	fi
	command -v "$PG_CONFIG" >/dev/null 2>&1 || { echo "ERROR: pg_config not found" >&2; return 1; }
	PG_BINDIR=$("$PG_CONFIG" --bindir) || return 1
	case "$("$PG_CONFIG" --version)" in
	"PostgreSQL $MIG_PG_MAJOR"*) ;;
	*) mig_warn "$PG_CONFIG is $("$PG_CONFIG" --version), not PostgreSQL $MIG_PG_MAJOR" ;;
	esac
	case ":$PATH:" in
	*":$PG_BINDIR:"*) ;;
	*) PATH="$PG_BINDIR:$PATH" ;;
	esac
	export PG_CONFIG PG_BINDIR PATH
}

# Build in the work tree. Warnings are errors (the Makefile says so).
mig_build() {
	mig_log "make (in $MIG_ROOT)"
	make -C "$MIG_ROOT" -j2 PG_CONFIG="$PG_CONFIG"
}

mig_install() {
	mig_log "make install"
	if mig_is_root; then
		make -C "$MIG_ROOT" install PG_CONFIG="$PG_CONFIG"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n make -C "$MIG_ROOT" install PG_CONFIG="$PG_CONFIG"
	elif mig_installed_is_current; then
		mig_log "not root and no sudo: the installed files are already those just built"
	else
		echo "ERROR: make install needs root; run: sudo make -C '$MIG_ROOT' install PG_CONFIG=$PG_CONFIG" >&2
		echo "       (or run this script as root)" >&2
		return 1
	fi
}

# mig_make_var NAME: a plain "NAME = value" of the Makefile.
mig_make_var() { sed -n -E "s/^$1[[:space:]]*=[[:space:]]*//p" "$MIG_ROOT/Makefile" | head -n 1; }

# The version being built: the control file's default_version.
mig_version() {
	sed -n -E "s/^default_version[[:space:]]*=[[:space:]]*'([^']+)'.*/\1/p" \
		"$MIG_ROOT/$(mig_make_var EXTENSION).control"
}

# mig_export_releases DIR: DIR/migrate_ext-V.tar for each released version V
# of src/upgrade/RELEASES, from git history. Says so, and goes on, when the
# tree is not a git clone or lacks the commit (a shallow clone): the upgrade
# test then fails saying what is missing.
mig_export_releases() {
	local dir=$1 v c
	mkdir -p "$dir" || return 1
	while read -r v c; do
		case $v in '' | '#'*) continue ;; esac
		if git -C "$MIG_ROOT" archive --format=tar --prefix="migrate_ext-$v/" "$c" \
			>"$dir/migrate_ext-$v.tar" 2>"$dir/migrate_ext-$v.err"; then
			rm -f "$dir/migrate_ext-$v.err"
		else
			rm -f "$dir/migrate_ext-$v.tar"
			mig_warn "cannot export release $v (commit $c) from git: $(head -n 1 "$dir/migrate_ext-$v.err")"
		fi
	done <"$MIG_ROOT/src/upgrade/RELEASES"
}

# True when the installed library, control file and SQL script are the ones
# in the work tree (for a user who cannot run make install).
mig_installed_is_current() {
	local ext mod ver lib share
	ext=$(mig_make_var EXTENSION)
	mod=$(mig_make_var MODULE_big)
	ver=$(mig_version)
	lib=$("$PG_CONFIG" --pkglibdir)
	share=$("$PG_CONFIG" --sharedir)/extension
	[ -n "$ext" ] && [ -n "$mod" ] && [ -n "$ver" ] || return 1
	cmp -s "$MIG_ROOT/$mod.so" "$lib/$mod.so" &&
		cmp -s "$MIG_ROOT/$ext.control" "$share/$ext.control" &&
		cmp -s "$MIG_ROOT/$ext--$ver.sql" "$share/$ext--$ver.sql"
}

# The user that runs the servers. As root: MIG_TEST_USER (default migtest),
# created when missing. Otherwise: whoever runs this.
mig_ensure_user() {
	if ! mig_is_root; then
		MIG_TEST_USER=$(id -un)
		return 0
	fi
	MIG_TEST_USER=${MIG_TEST_USER:-migtest}
	[ "$MIG_TEST_USER" != root ] || { echo "ERROR: MIG_TEST_USER must not be root (initdb refuses it)" >&2; return 1; }
	if ! id -u "$MIG_TEST_USER" >/dev/null 2>&1; then
		mig_log "creating the unprivileged user $MIG_TEST_USER"
		useradd --create-home --user-group --shell /bin/bash "$MIG_TEST_USER" || return 1
	fi
}

# mig_as_user 'commands': run them with bash as MIG_TEST_USER (from /, with
# HOME set, PG's bindir on PATH, a deterministic locale), or as ourselves
# when not root.
mig_as_user() {
	local home upath
	home=$(getent passwd "$MIG_TEST_USER" | cut -d: -f6)
	[ -n "$home" ] && [ -d "$home" ] || home=/tmp
	upath="$PG_BINDIR:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
	if mig_is_root; then
		(cd / && runuser -u "$MIG_TEST_USER" -- env -u TMPDIR \
			HOME="$home" USER="$MIG_TEST_USER" LOGNAME="$MIG_TEST_USER" \
			PATH="$upath" PG_CONFIG="$PG_CONFIG" PG_BINDIR="$PG_BINDIR" \
			LANG=C.UTF-8 LC_ALL=C.UTF-8 \
			${MIG_CHAOS_SEED:+MIG_CHAOS_SEED="$MIG_CHAOS_SEED"} \
			${MIG_CHAOS_ROUNDS:+MIG_CHAOS_ROUNDS="$MIG_CHAOS_ROUNDS"} \
			${MIG_CHAOS_ROWS:+MIG_CHAOS_ROWS="$MIG_CHAOS_ROWS"} \
			bash -c "$1")
	else
		env PATH="$upath:$PATH" PG_CONFIG="$PG_CONFIG" PG_BINDIR="$PG_BINDIR" \
			LANG=C.UTF-8 LC_ALL=C.UTF-8 bash -c "$1"
	fi
}

# Single-quote a string for use inside a mig_as_user command.
mig_q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
