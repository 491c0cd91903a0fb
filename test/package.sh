#!/usr/bin/env bash
#
# test/package.sh (make package-test): the Debian package, built and tested
# the way a user gets it.
#
#   1. copies the source (git ls-files: no build products) into a scratch
#      directory and runs `dpkg-buildpackage -us -uc -b` there, as the
#      unprivileged test user (Rules-Requires-Root: no),
#   2. checks the .deb: its name and version (the control file's
#      default_version), the files it installs, and that apt could install
#      it here (apt-get --simulate),
#   3. unpacks it into a scratch copy of the server (PostgreSQL finds lib/ and
#      share/ relative to its binaries), with no other migrate_ext files there,
#   4. runs pg_regress (sql/*.sql, make installcheck) against that copy, so
#      against the package's files, not the build tree's.
#
# Nothing is installed into the system unless asked:
#   MIG_PACKAGE_INSTALL=system  step 3 is `apt-get install ./the.deb` instead
#                               (root): it REPLACES the system's
#                               /usr/lib/postgresql/15/lib/migrate_ext.so and
#                               extension/migrate_ext* files (what `make
#                               install` put there is the same code), and the
#                               package stays installed
#   test/package.sh --installed only step 4, against the system's server
#                               (autopkgtest, debian/tests/installcheck)
#
# Last line: "package-test: passed" or "package-test: FAILED (why)".

set -uo pipefail
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

fail() { echo "package-test: FAILED ($*)"; exit 1; }

mig_ensure_packages || fail "packages missing (debhelper, postgresql-server-dev-all, ...)"
mig_ensure_user || fail "no test user"
SYS_PG_CONFIG=/usr/lib/postgresql/$MIG_PG_MAJOR/bin/pg_config
VERSION=$(mig_version)
[ -n "$VERSION" ] || fail "no default_version in the control file"
W=$(mktemp -d /tmp/migrate_ext_pkg.XXXXXX)
chmod 755 "$W"
cleanup() { [ "${MIG_TEST_KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT

# copy_source DIR: the source files, owned by the test user.
copy_source() {
	mkdir -p "$1"
	if git -C "$MIG_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
		(cd "$MIG_ROOT" && git ls-files -z -c -o --exclude-standard | tar --null -T - -cf -) | tar -C "$1" -xf -
	else
		tar -C "$MIG_ROOT" --exclude=./.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
			--exclude='./migrate_ext--*.sql' --exclude=./results --exclude=./tmp_check \
			--exclude=./output_iso --exclude=./log --exclude=./test/releases -cf - . | tar -C "$1" -xf -
	fi
	mig_is_root && chown -R "$MIG_TEST_USER:" "$1"
	return 0
}

# installcheck PG_CONFIG: pg_regress as the test user in a fresh copy.
installcheck() {
	local pgc=$1 d=$W/check
	rm -rf "$d"
	copy_source "$d"
	mig_log "pg_regress against $("$pgc" --pkglibdir)/migrate_ext.so"
	mig_as_user "cd $(mig_q "$d") && mkdir -p tmp_check && make installcheck PG_CONFIG=$(mig_q "$pgc") ISOLATION= TAP_TESTS=" \
		</dev/null >"$W/installcheck.log" 2>&1
	local rc=$?
	grep -E '^(test +| +)[^ ]+ +\.\.\. |tests passed|failed' "$W/installcheck.log" | tail -n 60
	if [ "$rc" -ne 0 ]; then
		[ -f "$d/regression.diffs" ] && head -n 200 "$d/regression.diffs"
		tail -n 20 "$W/installcheck.log"
		fail "pg_regress against the package's files"
	fi
}

if [ "${1:-}" = --installed ]; then
	installcheck "$SYS_PG_CONFIG"
	echo "package-test: passed"
	exit 0
fi

# --- 1. build ---------------------------------------------------------------
copy_source "$W/src"
mig_is_root && chown "$MIG_TEST_USER:" "$W"
mig_log "dpkg-buildpackage -us -uc -b in $W/src (log: $W/build.log)"
if ! mig_as_user "cd $(mig_q "$W/src") && DEB_BUILD_OPTIONS=parallel=2 dpkg-buildpackage -us -uc -b" \
	</dev/null >"$W/build.log" 2>&1; then
	tail -n 40 "$W/build.log"
	MIG_TEST_KEEP=1
	fail "dpkg-buildpackage (log kept in $W/build.log)"
fi

# --- 2. the .deb ----------------------------------------------------------------
DEB=$(ls "$W"/postgresql-"$MIG_PG_MAJOR"-migrate-ext_"$VERSION"-*_*.deb 2>/dev/null | head -n 1)
[ -n "$DEB" ] || { ls "$W"; fail "no postgresql-$MIG_PG_MAJOR-migrate-ext_$VERSION-*.deb"; }
mig_log "built $(basename "$DEB")"
upstream=$(dpkg-deb -f "$DEB" Version | sed -E 's/-[^-]*$//')
[ "$upstream" = "$VERSION" ] || fail "package version $upstream, control file $VERSION"
contents=$(dpkg-deb -c "$DEB" | awk '{print $6}')
for f in "lib/postgresql/$MIG_PG_MAJOR/lib/migrate_ext.so" \
	"share/postgresql/$MIG_PG_MAJOR/extension/migrate_ext.control" \
	"share/postgresql/$MIG_PG_MAJOR/extension/migrate_ext--$VERSION.sql"; do
	grep -qx "\./usr/$f" <<<"$contents" || fail "the package lacks /usr/$f"
done
while read -r v _; do
	case $v in '' | '#'*) continue ;; esac
	f="share/postgresql/$MIG_PG_MAJOR/extension/migrate_ext--$v--$VERSION.sql"
	[ "$v" = "$VERSION" ] || grep -qx "\./usr/$f" <<<"$contents" || fail "the package lacks /usr/$f"
done <"$MIG_ROOT/src/upgrade/RELEASES"
if ! apt-get install --simulate -q "$DEB" >"$W/simulate.log" 2>&1; then
	cat "$W/simulate.log"
	fail "apt-get install --simulate $(basename "$DEB")"
fi
mig_log "apt could install it: $(grep -c '^Inst' "$W/simulate.log") package(s)"

# --- 3. install -------------------------------------------------------------------
if [ "${MIG_PACKAGE_INSTALL:-scratch}" = system ]; then
	mig_is_root || fail "MIG_PACKAGE_INSTALL=system needs root"
	mig_log "apt-get install $DEB (replaces the system's migrate_ext files)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$DEB" >"$W/install.log" 2>&1 ||
		{ tail -n 20 "$W/install.log"; fail "apt-get install"; }
	PKG_PG_CONFIG=$SYS_PG_CONFIG
else
	R=$W/root
	for k in bindir pkglibdir sharedir; do
		d=$("$SYS_PG_CONFIG" --$k)
		mkdir -p "$R$d"
		tar -C "$d" --exclude=./bitcode -cf - . | tar -C "$R$d" -xf - || fail "copy $d"
	done
	rm -f "$R$("$SYS_PG_CONFIG" --pkglibdir)"/migrate_ext.so "$R$("$SYS_PG_CONFIG" --sharedir)"/extension/migrate_ext*
	dpkg-deb -x "$DEB" "$R" || fail "dpkg-deb -x"
	chmod -R a+rX "$W"
	PKG_PG_CONFIG=$R$SYS_PG_CONFIG
	mig_log "unpacked into the scratch server $R"
fi

# --- 4. the suite against the package's files ---------------------------------------------
installcheck "$PKG_PG_CONFIG"
echo "package-test: passed"
