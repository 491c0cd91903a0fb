#!/usr/bin/env bash
# test/valgrind_workers.sh: a whole server (postmaster and every process it
# forks) under valgrind's memcheck, driven through the background workers'
# paths that test/valgrind.sh (one single-user backend) cannot reach:
#
#   part "workers" (make test, in the valgrind suite):
#     - the direct backfill batch with its striped windows (several windows
#       of ten small batches) and the VACUUM worker it starts, on a table with
#       a secondary index;
#     - its SQL fallback: a table with another trigger and fire_triggers, a
#       table with a stored generated column;
#     - the parallel backfill: a partitioned table's leaves in slices, and one
#       heap split in ranges (parallel => 2); a walk of one key raised to
#       parallel => 2 while it runs (it goes parallel);
#     - the launcher: a backfill stopped by a shutdown resumes after restart;
#     - ctid, unique-key and composite-key walks, TOASTed values, a split;
#     - a batch that fails: retried, the job failed, the row named;
#   part "contract" (make valgrind only, see VG_PARTS):
#     - pause, cancel and resume of a parallel job;
#     - the contract worker: mig_validate, mig_cutover, mig_contract of a
#       plain and of a partitioned table, of a primary key that another
#       table references (its foreign key finished after the swap), and
#       mig_abort.
#
# Fails when valgrind reports an error in any process (one log per process,
# vg.<pid>, errors between markers), when a process's exit code says so, or
# when the lifecycle's results are wrong (every row right, the columns
# retyped, the jobs done). Build and install first.
#
# Settings (environment): VG_PARTS (default "workers"; make valgrind runs
# "workers contract"), VG_KEEP=1 to keep the directory.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mig_pg_env
mig_ensure_user || exit 1
command -v valgrind >/dev/null || mig_die "valgrind is not installed (apt-get install valgrind)"

PARTS=${VG_PARTS:-workers}
dir=$(mktemp -d /tmp/migrate_ext_vgworkers.XXXXXX)
chmod 755 "$dir"
mig_is_root && chown "$MIG_TEST_USER:" "$dir"
port=$((20000 + RANDOM % 20000))
FAILS=0

# PostgreSQL's own false positives, as in its src/tools/valgrind.supp: a
# server built without USE_VALGRIND writes structures with uninitialised
# padding to files and sockets.  Only PostgreSQL core frames: nothing of
# migrate_ext is suppressed.
cat >"$dir/valgrind.supp" <<'SUPP'
# WAL records are copied with their padding into the WAL buffers, written
# whole (valgrind.supp: padding_XLogRecData_write).
{
	padding_XLogWrite
	Memcheck:Param
	pwrite64(buf)
	...
	fun:XLogWrite
}
{
	padding_XLogFlush
	Memcheck:Param
	pwrite64(buf)
	...
	fun:XLogFlush
}
# the relcache init file is written with fwrite from structures with padding
# (valgrind.supp: padding_relcache, in write_relcache_init_file, a static
# function this build has no symbol for: its caller)
{
	padding_relcache
	Memcheck:Param
	write(buf)
	...
	fun:RelationCacheInitializePhase3
}
SUPP
chmod 644 "$dir/valgrind.supp"

# as the test user, in $dir
u() { mig_as_user "cd $(mig_q "$dir") && $1"; }

# q SQL: run SQL (psql, stop at the first error), print its rows unaligned
q() {
	u "PGOPTIONS='-c client_min_messages=warning' psql -X -q -At -v ON_ERROR_STOP=1 -h $(mig_q "$dir") -p $port -d postgres" <<<"$1"
}

# is WHAT EXPECTED GOT
is() {
	local got=$3
	if [ "$got" = "$2" ]; then
		echo "ok: $1"
	else
		echo "not ok: $1: expected '$2', got '$got'"
		FAILS=$((FAILS + 1))
	fi
}

# check WHAT EXPECTED SQL: the rows SQL returns are EXPECTED
check() { is "$1" "$2" "$(q "$3" 2>&1 | tr '\n' '|' | sed 's/|$//')"; }

# the server under valgrind, in the background; wait for connections
start() {
	u "nohup valgrind --quiet --trace-children=yes --error-exitcode=3 \
		--suppressions=valgrind.supp --error-markers=VGERROR-BEGIN,VGERROR-END \
		--leak-check=no --num-callers=30 --log-file=$(mig_q "$dir")/vg.%p \
		postgres -D data -p $port -k $(mig_q "$dir") -c listen_addresses= \
		>>server.log 2>&1 </dev/null &"
	for _ in $(seq 1 240); do
		u "pg_isready -q -h $(mig_q "$dir") -p $port" && return 0
		sleep 0.5
	done
	mig_warn "the server under valgrind did not start: $dir/server.log"
	FAILS=$((FAILS + 1))
	return 1
}

stop() {
	u "pg_ctl stop -D data -m fast -t 600 >/dev/null" ||
		{ mig_warn "the server did not stop"; FAILS=$((FAILS + 1)); }
}

# is the server up? (an error under --error-exitcode stops it: see
# restart_after_crash below)
up() { [ -f "$dir/data/postmaster.pid" ]; }

# wait_rows TBL N: until the table's latest job wrote more than N rows
wait_rows() {
	for _ in $(seq 1 240); do
		up || return
		[ "$(q "SELECT (${JOB//%s/$1}).rows_done > $2" 2>/dev/null)" = t ] && return
		sleep 0.5
	done
}

# wait_job TBL [SQL]: until the table's latest job is no longer running (SQL,
# the application's writes, run at each look); its state in STATE
JOB="(SELECT j FROM migrate_ext.job j JOIN migrate_ext.migration m ON m.id = j.migration_id
	WHERE m.relid = '%s'::regclass ORDER BY j.id DESC LIMIT 1)"
wait_job() {
	local j s
	# shellcheck disable=SC2059 # JOB is the format
	j=$(printf "$JOB" "$1")
	for _ in $(seq 1 600); do
		up || { STATE="the server stopped"; return; }
		s=$(q "SELECT ($j).state" 2>/dev/null)
		case $s in
		running | throttled | interrupted | '')
			[ -z "${2:-}" ] || q "$2" >/dev/null || FAILS=$((FAILS + 1))
			sleep 0.5
			;;
		*) STATE=$s; return ;;
		esac
	done
	STATE=timeout
}

mig_as_user "initdb -D $(mig_q "$dir")/data -A trust >$(mig_q "$dir")/initdb.log 2>&1" ||
	mig_die "initdb failed: $dir/initdb.log"
# small: valgrind shadows all shared memory; few processes; nothing that
# runs on its own; timeouts long enough for a server 30x slower
cat >>"$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'migrate_ext'
shared_buffers = 16MB
max_connections = 10
max_worker_processes = 12
max_parallel_workers = 0
max_wal_senders = 0
wal_level = minimal
autovacuum = off
# a process with an error exits with --error-exitcode: stop there, no
# crash-restart loop
restart_after_crash = off
fsync = off
synchronous_commit = off
full_page_writes = off
checkpoint_timeout = 1h
max_wal_size = 1GB
jit = off
deadlock_timeout = 5s
log_min_messages = warning
log_line_prefix = '%m [%p] %b '
CONF

# diverged TBL COL EXPR: the rows whose new column is not EXPR of the old
diverged() {
	echo "SELECT count(*) FROM $1 WHERE _mig_new_$2 IS DISTINCT FROM ($3)"
}

part_workers() {
	q "
CREATE TABLE a (id int PRIMARY KEY, grp int NOT NULL, amount int, code text, note text);
INSERT INTO a SELECT g, g * 7919 % 500, CASE WHEN g % 13 <> 0 THEN g END, 'c' || g,
	CASE WHEN g % 1000 = 0 THEN repeat(md5(g::text), 300) END FROM generate_series(1, 12000) g;
CREATE INDEX a_grp ON a (grp);
CREATE UNIQUE INDEX a_code ON a (upper(code));
CREATE INDEX a_big ON a (amount) WHERE amount > 6000;
SELECT mig_expand('a', 'amount', type => 'bigint');

CREATE TABLE trg (id int PRIMARY KEY, v text, touched int NOT NULL DEFAULT 0);
INSERT INTO trg SELECT g, 'V' || g FROM generate_series(1, 600) g;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
	'BEGIN NEW.touched := NEW.touched + 1; RETURN NEW; END';
CREATE TRIGGER touch BEFORE UPDATE ON trg FOR EACH ROW EXECUTE FUNCTION touch();
SELECT mig_expand('trg', 'v', up => 'lower(v)');

CREATE TABLE gen (id int PRIMARY KEY, v text, len int GENERATED ALWAYS AS (length(v)) STORED);
INSERT INTO gen (id, v) SELECT g, 'V' || g FROM generate_series(1, 600) g;
SELECT mig_expand('gen', 'v', up => 'lower(v)');

CREATE TABLE pt (id int, created_at date, qty int) PARTITION BY RANGE (created_at);
CREATE TABLE pt_1 PARTITION OF pt FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE pt_2 PARTITION OF pt FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
CREATE TABLE pt_d PARTITION OF pt DEFAULT;
ALTER TABLE pt ADD PRIMARY KEY (id, created_at);
INSERT INTO pt SELECT g, date '2020-01-01' + g % 900, g FROM generate_series(1, 1500) g;
SELECT mig_expand('pt', 'qty', type => 'bigint');

CREATE TABLE rg (id int PRIMARY KEY, v text);
INSERT INTO rg SELECT g, 'V' || g FROM generate_series(1, 4000) g;
SELECT mig_expand('rg', 'v', up => 'lower(v)');

CREATE TABLE nk (v text, n int);
INSERT INTO nk SELECT CASE WHEN g % 30 = 0
	THEN (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 200) i) ELSE 'V' || g END, g
	FROM generate_series(1, 3000) g;
SELECT mig_expand('nk', 'v', up => 'v || ''!''');

CREATE TABLE ck (region text, id int, name text NOT NULL, PRIMARY KEY (region, id));
INSERT INTO ck SELECT 'r' || g % 7, g, 'First' || g || ' Last' || g FROM generate_series(1, 2000) g;
SELECT mig_expand('ck', 'name', new_col => 'first_name', up => 'split_part(name, '' '', 1)');
SELECT mig_expand('ck', 'name', new_col => 'last_name', up => 'split_part(name, '' '', 2)',
	down => 'first_name || '' '' || last_name');

CREATE TABLE uq (code text NOT NULL UNIQUE, v int);
INSERT INTO uq SELECT 'k' || g, g FROM generate_series(1, 2000) g;
SELECT mig_expand('uq', 'v', type => 'numeric');

CREATE TABLE bad (id int PRIMARY KEY, v text);
INSERT INTO bad SELECT g, CASE WHEN g = 377 THEN 'oops' ELSE g::text END FROM generate_series(1, 500) g;
SELECT mig_expand('bad', 'v', type => 'int');

CREATE TABLE rs (id int PRIMARY KEY, v text);
INSERT INTO rs SELECT g, 'V' || g FROM generate_series(1, 3000) g;
SELECT mig_expand('rs', 'v', up => 'lower(v)');

CREATE TABLE gp (id int PRIMARY KEY, v text);
INSERT INTO gp SELECT g, 'V' || g FROM generate_series(1, 3000) g;
SELECT mig_expand('gp', 'v', up => 'lower(v)');
VACUUM ANALYZE a, trg, gen, pt, rg, nk, ck, uq, bad, rs, gp;
" >/dev/null || FAILS=$((FAILS + 1))

	# direct, striped: windows of ten batches of 400 rows, three windows;
	# a VACUUM worker after 10,000 rows. Writes while it runs: the
	# dual-write trigger next to the batch.
	q "SELECT mig_backfill('a', batch_size => 400);
	   SELECT mig_backfill('trg', batch_size => 100, fire_triggers => true);
	   SELECT mig_backfill('gen', batch_size => 100);
	   SELECT mig_backfill('nk', batch_size => 200);
	   SELECT mig_backfill('ck', batch_size => 150);
	   SELECT mig_backfill('uq');
	   SELECT mig_backfill('bad', batch_size => 100);" >/dev/null || FAILS=$((FAILS + 1))
	# the application writes while the batches run; the batch size changes
	wait_rows a 2000
	q "SELECT mig_set('a', 'batch_size', '300'); SELECT count(*) FROM mig_status;" >/dev/null ||
		FAILS=$((FAILS + 1))
	wait_job a "
		UPDATE a SET amount = amount + 1 WHERE id % 500 = (extract(epoch FROM clock_timestamp()) * 10)::bigint % 500;
		DELETE FROM a WHERE id = (SELECT min(id) FROM a WHERE id % 997 = 0);
		INSERT INTO a (id, grp, amount, code) SELECT max(id) + 1, 1, 5, 'n' || max(id) FROM a;"
	is "a: the direct, striped backfill is done" "done" "$STATE"
	wait_job trg
	is "trg: the fallback (fire_triggers) is done" "done" "$STATE"
	wait_job gen
	is "gen: the fallback (generated column) is done" "done" "$STATE"
	check "a: 0 rows diverged" 0 "$(diverged a amount amount::bigint)"
	check "a: its VACUUM worker ran, its batches wrote each row once" "t|t|t" \
		"SELECT (${JOB//%s/a}).vacuums > 0, (${JOB//%s/a}).batches >= 30, (${JOB//%s/a}).rows_done <= 12000"
	check "a: its indexes are right" "0|0" \
		"SET enable_seqscan = off; SELECT count(*) FROM a WHERE upper(code) = 'C77' AND id <> 77;
		 SELECT (SELECT count(*) FROM a WHERE amount > 6000) - (SELECT count(*) FROM a WHERE amount + 0 > 6000)"
	check "trg: 0 rows diverged, the trigger fired" "0|600" \
		"$(diverged trg v 'lower(v)'); SELECT count(*) FROM trg WHERE touched = 1"
	check "gen: 0 rows diverged" 0 "$(diverged gen v 'lower(v)')"
	for t in nk ck uq; do
		wait_job $t
		is "$t: the backfill is done" "done" "$STATE"
	done
	check "nk: the ctid walk, TOASTed values: 0 rows diverged" "ctid|0|100" \
		"SELECT (${JOB//%s/nk}).key_kind; $(diverged nk v "v || '!'");
		 SELECT count(*) FROM nk WHERE length(_mig_new_v) > 6000"
	check "ck: the split over a composite key: 0 rows diverged" "0|0" \
		"SELECT count(*) FROM ck WHERE first_name IS DISTINCT FROM split_part(name, ' ', 1);
		 SELECT count(*) FROM ck WHERE last_name IS DISTINCT FROM split_part(name, ' ', 2)"
	# a batch that fails: retried, then the job fails naming the row
	wait_job bad
	is "bad: the failing batch ends the job" "failed" "$STATE"
	check "bad: the error names the row, the batches before it written" "t|0" \
		"SELECT (${JOB//%s/bad}).last_error LIKE '%the one with id = 377)%';
		 SELECT count(*) FROM bad WHERE id <= 300 AND _mig_new_v IS DISTINCT FROM v::int"
	check "uq: the unique key walk, adaptive batches: 0 rows diverged" "unique key|0" \
		"SELECT (${JOB//%s/uq}).key_kind; $(diverged uq v v::numeric)"

	# parallel: the leaves in slices; one heap in ranges
	q "SELECT mig_backfill('pt', batch_size => 100, parallel => 2);
	   SELECT mig_backfill('rg', batch_size => 200, parallel => 2);" >/dev/null || FAILS=$((FAILS + 1))
	wait_job pt
	is "pt: the parallel backfill of the leaves is done" "done" "$STATE"
	wait_job rg
	is "rg: the parallel backfill in ranges is done" "done" "$STATE"
	check "pt: 0 rows diverged" 0 "$(diverged pt qty qty::bigint)"
	check "rg: 0 rows diverged" 0 "$(diverged rg v 'lower(v)')"

	# a walk of one key goes parallel when mig_set raises parallel: its
	# worker splits the rest after the first window (1,000 rows), then
	# starts the second worker
	q "SELECT mig_backfill('gp', batch_size => 100, sleep_ms => 100)" >/dev/null || FAILS=$((FAILS + 1))
	wait_rows gp 0
	q "SET client_min_messages = warning; SELECT mig_set('gp', 'parallel', '2')" >/dev/null ||
		FAILS=$((FAILS + 1))
	wait_rows gp 1000
	q "SELECT mig_set('gp', 'sleep_ms', '0')" >/dev/null || FAILS=$((FAILS + 1))
	wait_job gp
	is "gp: gone parallel, done" "done" "$STATE"
	check "gp: sliced, each row written once, 0 rows diverged" "slices|3000|0" \
		"SELECT (${JOB//%s/gp}).key_kind, (${JOB//%s/gp}).rows_done; $(diverged gp v 'lower(v)')"

	# the launcher: a backfill stopped by a shutdown resumes after a restart
	q "SELECT mig_backfill('rs', batch_size => 100, sleep_ms => 200)" >/dev/null || FAILS=$((FAILS + 1))
	wait_rows rs 0
	stop
	start || return
	check "rs: interrupted by the shutdown, resumed" t \
		"SELECT (${JOB//%s/rs}).rows_done < 3000"
	q "SELECT mig_set('rs', 'sleep_ms', '0')" >/dev/null || FAILS=$((FAILS + 1))
	wait_job rs
	is "rs: the resumed backfill is done" "done" "$STATE"
	check "rs: 0 rows diverged" 0 "$(diverged rs v 'lower(v)')"
}

part_contract() {
	# pause, cancel and resume reaching both workers of a parallel job
	q "CREATE TABLE pc (id int PRIMARY KEY, v text);
	   INSERT INTO pc SELECT g, 'V' || g FROM generate_series(1, 3000) g;
	   SELECT mig_expand('pc', 'v', up => 'lower(v)');
	   SELECT mig_backfill('pc', batch_size => 100, sleep_ms => 100, parallel => 2);" >/dev/null ||
		FAILS=$((FAILS + 1))
	wait_rows pc 0
	q "SELECT mig_pause('pc')" >/dev/null || FAILS=$((FAILS + 1))
	wait_job pc
	is "pc: paused" "paused" "$STATE"
	q "SELECT mig_resume('pc')" >/dev/null || FAILS=$((FAILS + 1))
	wait_rows pc 200
	q "SELECT mig_cancel('pc')" >/dev/null || FAILS=$((FAILS + 1))
	wait_job pc
	is "pc: cancelled" "cancelled" "$STATE"
	q "SELECT mig_set('pc', 'sleep_ms', '0'); SELECT mig_resume('pc');" >/dev/null || FAILS=$((FAILS + 1))
	wait_job pc
	is "pc: resumed to the end" "done" "$STATE"
	check "pc: 0 rows diverged" 0 "$(diverged pc v 'lower(v)')"
	check "a: mig_validate passes" t "SELECT bool_and(passed) FROM mig_validate('a')"
	q "SELECT mig_cutover('a'); SELECT mig_contract('a');" >/dev/null || FAILS=$((FAILS + 1))
	check "a: contracted, amount is bigint, its partial index rebuilt" "bigint|0|4|t" \
		"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'a'::regclass AND attname = 'amount';
		 SELECT count(*) FROM pg_attribute WHERE attrelid = 'a'::regclass AND attname LIKE '_mig%' AND NOT attisdropped;
		 SELECT count(*) FROM pg_index WHERE indrelid = 'a'::regclass AND indisvalid;
		 SELECT pg_get_indexdef('a_big'::regclass) LIKE '%(amount) WHERE (amount > 6000)'"
	check "pt: mig_validate passes" t "SELECT bool_and(passed) FROM mig_validate('pt')"
	q "SELECT mig_cutover('pt'); SELECT mig_contract('pt');" >/dev/null || FAILS=$((FAILS + 1))
	check "pt: contracted, qty is bigint on every leaf" "4|1500" \
		"SELECT count(*) FROM pg_attribute WHERE attrelid IN ('pt'::regclass, 'pt_1'::regclass, 'pt_2'::regclass, 'pt_d'::regclass)
		   AND attname = 'qty' AND atttypid = 'int8'::regtype;
		 SELECT count(*) FROM pt WHERE qty = id"
	# a referenced primary key retyped: the foreign key copied NOT VALID in
	# the swap, validated and finished after it
	q "CREATE TABLE par (id int PRIMARY KEY, v text);
	   INSERT INTO par SELECT g, 'V' || g FROM generate_series(1, 500) g;
	   CREATE TABLE chi (id int PRIMARY KEY, par_id int REFERENCES par (id));
	   INSERT INTO chi SELECT g, g % 500 + 1 FROM generate_series(1, 800) g;
	   SELECT mig_expand('par', 'id', type => 'bigint');
	   SELECT mig_backfill('par', batch_size => 100);" >/dev/null || FAILS=$((FAILS + 1))
	wait_job par
	is "par: the backfill of the referenced key is done" "done" "$STATE"
	check "par: mig_validate passes" t "SELECT bool_and(passed) FROM mig_validate('par')"
	q "SELECT mig_cutover('par'); SELECT mig_contract('par');" >/dev/null || FAILS=$((FAILS + 1))
	check "par: id is bigint, chi's foreign key validated and enforced" "bigint|1" \
		"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'par'::regclass AND attname = 'id';
		 SELECT count(*) FROM pg_constraint WHERE conrelid = 'chi'::regclass AND contype = 'f' AND convalidated;
		 DO \$\$BEGIN INSERT INTO chi VALUES (9999, 12345); RAISE EXCEPTION 'not enforced'; EXCEPTION WHEN foreign_key_violation THEN NULL; END\$\$"
	q "SELECT mig_abort('trg')" >/dev/null || FAILS=$((FAILS + 1))
	check "trg: aborted, no new column, no trigger left" "0|1" \
		"SELECT count(*) FROM pg_attribute WHERE attrelid = 'trg'::regclass AND attname LIKE '_mig%' AND NOT attisdropped;
		 SELECT count(*) FROM pg_trigger WHERE tgrelid = 'trg'::regclass"
}

t0=$SECONDS
mig_log "valgrind: a whole server under memcheck through the background workers ($PARTS)"
start || { cat "$dir/server.log"; exit 1; }
q "CREATE EXTENSION migrate_ext;" || FAILS=$((FAILS + 1))

for part in $PARTS; do
	up || break
	case $part in
	workers) part_workers ;;
	contract) part_contract ;;
	*) mig_warn "unknown part $part"; FAILS=$((FAILS + 1)) ;;
	esac
done

if up; then
	stop
else
	echo "not ok: the server stopped on its own (a process exited with an error)"
	FAILS=$((FAILS + 1))
fi
mig_log "valgrind: the lifecycle took $((SECONDS - t0)) s"

# every process's log: errors between the markers; a log that is not empty
# (--quiet) says something we did not expect either
nerr=0
for f in "$dir"/vg.*; do
	[ -s "$f" ] || continue
	if grep -q VGERROR-BEGIN "$f"; then
		nerr=$((nerr + $(grep -c VGERROR-BEGIN "$f")))
	fi
	echo "---- $f ----"
	cat "$f"
done
if grep -Eq 'exit code [2-9]|terminated by signal' "$dir/server.log"; then
	echo "---- a process exited abnormally ($dir/server.log) ----"
	grep -E 'exit code [2-9]|terminated by signal' "$dir/server.log"
	FAILS=$((FAILS + 1))
fi
if [ "$nerr" -gt 0 ] || [ "$FAILS" -gt 0 ]; then
	echo "---- last lines of $dir/server.log ----"
	tail -n 40 "$dir/server.log"
	echo "valgrind_workers: $nerr valgrind error(s), $FAILS failed check(s) (files in $dir)"
	echo "0 passed, 1 failed"
	exit 1
fi
echo "valgrind_workers: no valgrind error in $(find "$dir" -name "vg.*" | wc -l) processes"
[ "${VG_KEEP:-0}" = 1 ] || rm -rf "$dir"
echo "1 passed, 0 failed"
