#!/usr/bin/env bash
#
# bench/demo.sh (make demo): a throwaway server and a real migration of a
# generated table, step by step, with every statement echoed.
#
#   installs what is missing (as root), builds and installs the extension,
#   starts a fresh server as an unprivileged user in /tmp/migrate_ext_demo on
#   port 5499 (stopping the one a previous demo left), creates the database
#   demo with users(id, email, name, created_at) holding 1,000,000 rows, then
#   runs as much of the lifecycle as the extension has so far:
#   mig_expand -> dual-write -> mig_backfill + mig_status -> mig_validate ->
#   mig_checklist -> mig_cutover -> mig_contract, or mig_abort when the later
#   steps do not exist yet. The server is left running for you to explore.
#
# Settings (environment): DEMO_DIR (/tmp/migrate_ext_demo), DEMO_PORT (5499),
# DEMO_ROWS (1000000), DEMO_MAX_WAIT (seconds to wait for the backfill, 900),
# MIG_TEST_USER (the user that runs the server when root, default migtest).

set -uo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../test/lib.sh"

DEMO_DIR=${DEMO_DIR:-/tmp/migrate_ext_demo}
DEMO_PORT=${DEMO_PORT:-5499}
DEMO_ROWS=${DEMO_ROWS:-1000000}
DEMO_MAX_WAIT=${DEMO_MAX_WAIT:-900}
DATA="$DEMO_DIR/data"

banner() { printf '\n######## %s\n\n' "$*"; }

# --- install, build, the unprivileged user ------------------------------------------
mig_ensure_packages || exit 1
mig_build || mig_die "the build failed"
mig_install || exit 1
mig_ensure_user || exit 1

# psql as the demo user; SQL on stdin, echoed (ECHO all, set at the end of
# the demo's psqlrc so that its own lines are not) with its output.
psql_demo() {
	mig_as_user "PSQLRC=$(mig_q "$DEMO_DIR/psqlrc") psql -v ON_ERROR_STOP=1 -h $(mig_q "$DEMO_DIR") -p $DEMO_PORT -d demo"
}
# One value, unadorned, no echo.
psql_value() {
	printf '%s\n' "$1" | mig_as_user "psql -X -qAt -v ON_ERROR_STOP=1 -h $(mig_q "$DEMO_DIR") -p $DEMO_PORT -d demo"
}
# step TITLE SQL: show the title, run the SQL echoed; stop the demo on error.
step() {
	banner "$1"
	if ! printf '%s\n' "$2" | psql_demo; then
		echo
		echo "the demo stopped: this step failed."
		how_to_use
		exit 1
	fi
}
exists_fn() { [ "$(psql_value "SELECT to_regproc('$1') IS NOT NULL")" = t ]; }
exists_rel() { [ "$(psql_value "SELECT to_regclass('$1') IS NOT NULL")" = t ]; }

how_to_use() {
	local stop
	echo
	echo "The demo server is still running (data in $DATA, log in $DEMO_DIR/server.log)."
	if mig_is_root; then
		stop="runuser -u $MIG_TEST_USER -- $PG_BINDIR/pg_ctl stop -D $DATA"
		echo "Connect:  runuser -u $MIG_TEST_USER -- psql -h $DEMO_DIR -p $DEMO_PORT demo"
	else
		stop="$PG_BINDIR/pg_ctl stop -D $DATA"
		echo "Connect:  psql -h $DEMO_DIR -p $DEMO_PORT demo"
	fi
	echo "     or:  psql -h 127.0.0.1 -p $DEMO_PORT -U $MIG_TEST_USER demo     (trust on loopback)"
	echo "Stop it:  $stop"
}

# --- a fresh server ------------------------------------------------------------------
banner "a fresh server in $DEMO_DIR, port $DEMO_PORT, run by $MIG_TEST_USER"
# pg_ctl as the owner of the previous demo's data directory (it refuses root).
as_owner() {
	if mig_is_root; then
		runuser -u "$owner" -- "$@"
	else
		"$@"
	fi
}
if [ -f "$DATA/postmaster.pid" ]; then
	owner=$(stat -c %U "$DATA")
	if as_owner "$PG_BINDIR/pg_ctl" status -D "$DATA" >/dev/null 2>&1; then
		mig_log "stopping the server a previous demo left running (owner $owner)"
		as_owner "$PG_BINDIR/pg_ctl" stop -m fast -w -D "$DATA" ||
			mig_die "could not stop the previous demo server ($DATA); is it someone else's?"
	fi
fi
rm -rf "$DEMO_DIR" || mig_die "cannot remove $DEMO_DIR"
mkdir -p "$DEMO_DIR" || mig_die "cannot create $DEMO_DIR"
if mig_is_root; then
	chown "$MIG_TEST_USER:" "$DEMO_DIR"
fi
chmod 755 "$DEMO_DIR"

cat >"$DEMO_DIR/psqlrc" <<'EOF'
\set QUIET 1
\timing on
\pset null '(null)'
\unset QUIET
\set ECHO all
EOF
chmod 644 "$DEMO_DIR/psqlrc"

mig_as_user "initdb -D $(mig_q "$DATA") --auth-local=trust --auth-host=trust -E UTF8 --locale=C.UTF-8 >$(mig_q "$DEMO_DIR/initdb.log") 2>&1" || {
	tail -n 30 "$DEMO_DIR/initdb.log"
	mig_die "initdb failed"
}
cat >>"$DATA/postgresql.conf" <<EOF

# migrate_ext demo
port = $DEMO_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO_DIR'
shared_preload_libraries = 'migrate_ext'
max_worker_processes = 16
shared_buffers = 256MB
max_wal_size = 4GB
EOF
if ! mig_as_user "pg_ctl start -w -t 60 -D $(mig_q "$DATA") -l $(mig_q "$DEMO_DIR/server.log") >/dev/null"; then
	tail -n 30 "$DEMO_DIR/server.log"
	mig_die "the demo server did not start (is port $DEMO_PORT taken by another server?)"
fi
mig_as_user "createdb -h $(mig_q "$DEMO_DIR") -p $DEMO_PORT demo" || mig_die "createdb demo failed"

# --- the table ---------------------------------------------------------------------
step "the extension, and a table of $DEMO_ROWS users with mixed-case emails" "
CREATE EXTENSION migrate_ext;
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL,
    name       text,
    created_at timestamptz DEFAULT now()
);
INSERT INTO users (email, name, created_at)
SELECT CASE g % 4
         WHEN 0 THEN 'User' || g || '@Example.COM'
         WHEN 1 THEN 'FIRST.LAST' || g || '@MAIL.EXAMPLE.ORG'
         WHEN 2 THEN 'someone_' || g || '@example.net'
         ELSE 'Mixed.Case' || g || '@Sub.Example.IO'
       END,
       'Name ' || g,
       now() - g * interval '1 minute'
FROM generate_series(1, $DEMO_ROWS) AS g;
VACUUM ANALYZE users;
SELECT * FROM users ORDER BY id LIMIT 4;"

# --- expand and dual-write -----------------------------------------------------------
exists_fn mig_expand || {
	echo "mig_expand does not exist yet in this build of migrate_ext: nothing more to show."
	how_to_use
	exit 1
}
step "1. expand: a new column for lower(email), and the dual-write trigger (one short lock)" "
SELECT mig_expand('users', 'email', up => 'lower(email)');
\\d users"

step "dual-write: an INSERT and an UPDATE through the old column fill the new one" "
INSERT INTO users (email, name) VALUES ('New.Person@Example.COM', 'New Person') RETURNING *;
UPDATE users SET email = 'Changed.Address@Example.ORG' WHERE id = 1 RETURNING *;
-- row 2 was not written since expand: its new column waits for the backfill
SELECT * FROM users WHERE id IN (1, 2, $((DEMO_ROWS + 1))) ORDER BY id;"

# --- backfill, validate, checklist, cut over, contract ---------------------------------
contracted=0
if exists_fn mig_backfill; then
	step "2. backfill: a background worker fills the existing rows, batch by batch; returns at once" "
SELECT mig_backfill('users');"
	if exists_rel mig_status; then
		banner "progress: SELECT * FROM mig_status, every second until the job ends"
		t0=$SECONDS
		while :; do
			echo "-- after $((SECONDS - t0)) s"
			printf '%s\n' '\x on' 'SELECT * FROM mig_status;' |
				mig_as_user "psql -X -q -h $(mig_q "$DEMO_DIR") -p $DEMO_PORT -d demo" || break
			state=$(psql_value "SELECT coalesce(state, '') FROM mig_status LIMIT 1")
			case "$state" in
			running | throttled | '') ;;
			*) break ;;
			esac
			if [ $((SECONDS - t0)) -ge "$DEMO_MAX_WAIT" ]; then
				echo "still running after $DEMO_MAX_WAIT s: the demo goes on without waiting"
				break
			fi
			sleep 1
		done
		echo "backfill state: ${state:-unknown}, after $((SECONDS - t0)) s"
		if [ "$state" != "done" ]; then
			echo "the backfill did not finish (state: ${state:-unknown}); see last_error above"
			how_to_use
			exit 1
		fi
	elif exists_fn mig_wait; then
		step "waiting for the backfill" "SELECT mig_wait('users');"
	fi
	if exists_fn mig_validate; then
		step "3. validate: every row's new value equals lower(old), the trigger is in place" "
SELECT * FROM mig_validate('users');"
	fi
	if exists_fn mig_checklist; then
		banner "the live runbook: SELECT mig_checklist('users')"
		printf '%s\n' "SELECT mig_checklist('users');" |
			mig_as_user "psql -X -qAt -v ON_ERROR_STOP=1 -h $(mig_q "$DEMO_DIR") -p $DEMO_PORT -d demo" ||
			echo "(mig_checklist failed)"
	fi
	if exists_fn mig_cutover; then
		step "4. cut over: the new column becomes the source of truth; the old one is kept in sync" "
SELECT mig_cutover('users');
SELECT * FROM mig_status;"
	fi
	if exists_fn mig_contract; then
		step "5. contract: the old column goes, the new one takes its name (point of no return)" "
SELECT mig_contract('users');
\\d users
SELECT * FROM users ORDER BY id LIMIT 4;"
		contracted=1
		if exists_rel mig_history; then
			step "the history of this migration" "\\x on
SELECT * FROM mig_history;"
		fi
	fi
fi
if [ "$contracted" -eq 0 ]; then
	if exists_fn mig_abort; then
		step "this build cannot finish a migration yet: roll back with mig_abort; the new column is gone" "
SELECT mig_abort('users');
\\d users"
	else
		echo "mig_abort does not exist yet: the migration is left as it is."
	fi
fi

how_to_use
