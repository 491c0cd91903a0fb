# shellcheck shell=bash
#
# bench/lib.sh: helpers shared by bench/run.sh and the benchmarks it drives
# (bench/dualwrite.sh, backfill.sh, live.sh, parallel.sh, validate.sh,
# lifecycle.sh). Source it; it
# defines functions and runs nothing by itself.
#
# Server (used by run.sh only; needs test/lib.sh sourced first):
#   bench_server_start   initdb + start a throwaway server as MIG_TEST_USER,
#                        configured for benchmarking; exports PGHOST, PGPORT,
#                        PGUSER, PGDATABASE
#   bench_server_stop    stop it and remove its data directory
# Measuring (used by every benchmark):
#   bq SQL...            run statements (one psql -c each), quiet, stop on error
#   bv SQL               the single value SQL returns
#   bench_time PREP... -- SQL
#                        run PREP statements, then SQL; print SQL's time in ms
#   bench_has_function SIGNATURE
#                        true when to_regprocedure(SIGNATURE) exists
#   median N...          the median of the numbers
#   bench_summary LINE   add a line to run.sh's final summary
#   bench_latencies FROM TO LOG...
#                        count, p50, p99, max of the pgbench transactions
#                        (per-transaction logs) that ended between FROM and TO
#   bench_wait_backfill [TABLE]
#                        mig_wait for TABLE's backfill (default t); fails
#                        unless it ends done
#   ratio A B, fmt_ms MS, fmt_int N, goal_mark OP VALUE GOAL
#
# Settings: see bench/run.sh.

# shellcheck disable=SC2034
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_REPEAT=${MIG_BENCH_REPEAT:-3}

bench_log() { printf '  .. %s\n' "$*" >&2; }

# A server must be there: run.sh exports these after starting it.
bench_require_server() {
	if [ -z "${PGHOST:-}" ] || [ -z "${PGPORT:-}" ] || [ -z "${BENCH_OUT:-}" ]; then
		echo "ERROR: run the benchmarks through bench/run.sh (it starts the server): bash bench/run.sh $(basename "$0" .sh)" >&2
		exit 1
	fi
}

bq() {
	local a=()
	for s in "$@"; do a+=(-c "$s"); done
	psql -X -q -v ON_ERROR_STOP=1 "${a[@]}" >/dev/null
}

bv() { psql -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }

# bench_wait_backfill [TABLE]: wait for the backfill job of TABLE (default t)
# with mig_wait(), which holds no snapshot between its polls; a waiting loop
# in one transaction would hold back the xmin horizon, so the backfill's
# VACUUMs could reclaim nothing. Fails unless the job ends done.
bench_wait_backfill() {
	local s
	s=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "SELECT mig_wait('${1:-t}')") || return 1
	[ "$s" = done ] && return 0
	echo "ERROR: the backfill job ended $s: $(bv "SELECT last_error FROM migrate_ext.job ORDER BY id DESC LIMIT 1")" >&2
	return 1
}

# bench_time PREP... -- SQL: run the PREP statements (VACUUM, CHECKPOINT,
# SETs), then time SQL with psql's \timing, in the same session (so SETs
# hold). Prints two numbers: the elapsed milliseconds, and the CPU
# milliseconds (user + system) the backend spent on SQL, read from
# /proc/self/stat by the backend itself (10 ms resolution).
BENCH_CPU_SQL="SELECT 10 * ((a[12])::bigint + (a[13])::bigint) AS bench_cpu
	FROM (SELECT string_to_array(substr(s, strpos(s, ') ') + 2), ' ') AS a
	        FROM pg_read_file('/proc/self/stat') AS s) AS p"
bench_time() {
	local a=() out ms c0 c1
	while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
		a+=(-c "$1")
		shift
	done
	shift
	out=$(psql -X -q -A -t -v ON_ERROR_STOP=1 "${a[@]}" -c "$BENCH_CPU_SQL" \
		-c '\timing on' -c "$1" -c '\timing off' -c "$BENCH_CPU_SQL") || return 1
	ms=$(printf '%s\n' "$out" | sed -n -E 's/^Time: ([0-9.]+) ms.*/\1/p' | tail -n 1)
	c0=$(printf '%s\n' "$out" | grep -E '^[0-9]+$' | head -n 1)
	c1=$(printf '%s\n' "$out" | grep -E '^[0-9]+$' | tail -n 1)
	[ -n "$ms" ] && [ -n "$c0" ] || { echo "ERROR: no timing for: $1" >&2; return 1; }
	printf '%s %s\n' "$ms" "$((c1 - c0))"
}

# bench_server_cpu: the CPU milliseconds (user + system) the whole server
# has used so far: the postmaster and its live processes, and those that have
# exited (the backfill's workers and VACUUMs: the postmaster's cutime).
# Taken before and after a run, the difference over its wall time is how
# many cores it kept busy.
bench_server_cpu() {
	local pm
	pm=$(awk '{print $4}' "/proc/$(bv "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")/stat") || return 1
	{
		awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
		for c in $(pgrep -P "$pm"); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null; done
	} | awk -v t="$(getconf CLK_TCK)" '{s += $1} END {printf "%.0f\n", s * 1000 / t}'
}

bench_has_function() {
	[ "$(bv "SELECT to_regprocedure('$1') IS NOT NULL")" = t ]
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

# ratio A B: A/B with two decimals ("-" when B is 0 or missing).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || b + 0 == 0 || a == "") print "-"; else printf "%.2f", a / b }'; }

fmt_ms() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt_int() { awk -v v="$1" 'BEGIN { printf "%.0f", v }' | sed -E ':a;s/([0-9])([0-9]{3})($|,)/\1,\2\3/;ta'; }

# goal_mark le|ge VALUE GOAL: "ok" or "MISSED" (or "-" without a value).
goal_mark() {
	awk -v op="$1" -v v="$2" -v g="$3" 'BEGIN {
		if (v == "-" || v == "") { print "-"; exit }
		ok = (op == "le") ? (v + 0 <= g + 0) : (v + 0 >= g + 0)
		print ok ? "ok" : "MISSED" }'
}

bench_summary() { printf '%s\n' "$*" >>"$BENCH_OUT/summary"; }

# bench_latencies FROM TO LOG...: the transactions of pgbench's
# per-transaction logs LOG... (--log; fields: client, transaction, latency
# in us, script, end time in s and us) that ended between FROM and TO (epoch
# seconds). Prints "N P50 P99 MAX": their number and latencies in ms ("0 - -
# -" when none). Lines cut short (a log still being written) are skipped.
bench_latencies() {
	local from=$1 to=$2
	shift 2
	cat "$@" |
		awk -v from="$from" -v to="$to" 'NF >= 6 && $3 ~ /^[0-9]+$/ { t = $5 + $6 / 1000000; if (t >= from && t <= to) print $3 }' |
		sort -n |
		awk '{ v[NR] = $1 } END {
			if (NR == 0) { print "0 - - -"; exit }
			i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
			i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
			printf "%d %.2f %.2f %.2f\n", NR, v[i50] / 1000, v[i99] / 1000, v[NR] / 1000 }'
}

# bench_sizes: the table sizes of the backfill and live benchmarks, from
# MIG_BENCH_BF_SIZES (default "2000000 5000000"), else MIG_BENCH_BF_ROWS.
bench_sizes() {
	if [ -n "${MIG_BENCH_BF_SIZES:-}" ]; then
		echo "$MIG_BENCH_BF_SIZES"
	elif [ -n "${MIG_BENCH_BF_ROWS:-}" ]; then
		echo "$MIG_BENCH_BF_ROWS"
	else
		echo "2000000 5000000"
	fi
}

# bench_pages TABLE: "HEAP INDEX" pages (8 kB) of TABLE, or of every leaf
# partition of a partitioned TABLE (TOAST included in the heap).
bench_pages() {
	bv "SELECT (coalesce(sum(pg_table_size(c.oid)), 0) / 8192)::bigint || ' ' || (coalesce(sum(pg_indexes_size(c.oid)), 0) / 8192)::bigint
	      FROM pg_class AS c
	     WHERE c.relkind = 'r'
	       AND c.oid IN (SELECT '$1'::regclass UNION SELECT relid FROM pg_partition_tree('$1'))"
}

# bench_compact TABLE: VACUUM FULL TABLE (every leaf of a partitioned one),
# then its "HEAP INDEX" pages: the compact size of the same rows.
bench_compact() {
	bq "VACUUM FULL $1"
	bench_pages "$1"
}

# bench_lsn: the current WAL position; bench_wal_bytes FROM: bytes since.
bench_lsn() { bv "SELECT pg_current_wal_lsn()"; }
bench_wal_bytes() { bv "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')::bigint"; }

# bench_try SQL: run SQL; on error print the error's first line and fail.
bench_try() {
	local out
	out=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -c "$1" 2>&1) && return 0
	printf '%s\n' "$out" | sed -n 's/^.*ERROR: *//p' | head -n 1
	return 1
}

# bench_source TABLE ROWS: the generated source data every benchmark copies
# from: id 1..ROWS, an e-mail of about 25 characters in mixed case, and a
# timestamp. Built once per size; deterministic, so every run and variant
# works on the same data.
bench_source() {
	local tbl=$1 rows=$2
	if [ "$(bv "SELECT coalesce(obj_description(to_regclass('$tbl'), 'pg_class') = 'rows=$rows', false)")" = t ]; then
		return 0
	fi
	bench_log "generating $tbl ($(fmt_int "$rows") rows)"
	bq "DROP TABLE IF EXISTS $tbl" \
		"CREATE TABLE $tbl AS
		 SELECT i::bigint AS id,
		        initcap(substr(md5(i::text), 1, 6)) || '.' || upper(substr(md5(i::text), 7, 3))
		          || i || '@Example.COM' AS email,
		        timestamptz '2024-01-01' + i * interval '1 second' AS created_at
		   FROM generate_series(1, $rows) AS i" \
		"COMMENT ON TABLE $tbl IS 'rows=$rows'" \
		"VACUUM ANALYZE $tbl"
}

# bench_fresh_table ROWS: table t(id bigint primary key, email text,
# created_at timestamptz) with ROWS rows copied from bench_source, vacuumed,
# analyzed and checkpointed: every variant starts from the same state.
bench_fresh_table() {
	local rows=$1
	bench_source bench_src_"$rows" "$rows"
	bq "DROP TABLE IF EXISTS t" \
		"CREATE TABLE t (id bigint NOT NULL, email text, created_at timestamptz)" \
		"INSERT INTO t SELECT id, email, created_at FROM bench_src_$rows ORDER BY id" \
		"ALTER TABLE t ADD PRIMARY KEY (id)" \
		"VACUUM ANALYZE t" \
		"CHECKPOINT"
}

# ----------------------------------------------------------------------
# The throwaway server (run.sh only).

# The first port from MIG_BENCH_PORT (default 5444) nobody listens on.
bench_free_port() {
	local p=${MIG_BENCH_PORT:-5444}
	while [ "$p" -lt 65000 ]; do
		if ! (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && [ ! -e "/tmp/.s.PGSQL.$p" ]; then
			echo "$p"
			return 0
		fi
		p=$((p + 1))
	done
	return 1
}

# The server settings, and why (doc/bench.md repeats them).
bench_server_conf() {
	cat <<EOF
shared_preload_libraries = 'migrate_ext'
listen_addresses = ''
max_connections = 50
max_worker_processes = 16
# the data sets (5M rows, twice over after a plain UPDATE) fit in memory:
# the benchmarks measure CPU and WAL, not the disk's random reads
shared_buffers = ${MIG_BENCH_SHARED_BUFFERS:-4GB}
maintenance_work_mem = 1GB
# no checkpoint in the middle of a timed statement (each run starts with a
# CHECKPOINT of its own)
max_wal_size = 40GB
min_wal_size = 2GB
checkpoint_timeout = 1h
# durability as shipped: fsync and synchronous_commit on
fsync = on
synchronous_commit = on
# JIT would add LLVM compile time to the bulk statements of some variants
# only (the trigger's expressions are never JIT-compiled); off, as on most
# OLTP servers
jit = off
# autovacuum as shipped (the dual-write tables turn it off per table)
autovacuum = on
log_min_messages = warning
log_line_prefix = '%m [%p] '
EOF
	[ -n "${MIG_BENCH_PGCONF:-}" ] && printf '%s\n' "$MIG_BENCH_PGCONF"
	return 0
}

bench_server_start() {
	local port
	port=$(bench_free_port) || { echo "ERROR: no free port" >&2; return 1; }
	BENCH_DATA=$(mktemp -d /tmp/migrate_ext_bench.XXXXXX) || return 1
	chmod 755 "$BENCH_DATA"
	mig_is_root && chown "$MIG_TEST_USER": "$BENCH_DATA"
	bench_server_conf >"$BENCH_DATA/bench.conf"
	mig_log "starting a throwaway server in $BENCH_DATA/pgdata (port $port, user $MIG_TEST_USER)"
	mig_as_user "set -e
		initdb -D $(mig_q "$BENCH_DATA/pgdata") -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >$(mig_q "$BENCH_DATA/initdb.log") 2>&1
		cat $(mig_q "$BENCH_DATA/bench.conf") >>$(mig_q "$BENCH_DATA/pgdata/postgresql.conf")
		echo \"unix_socket_directories = '$BENCH_DATA'\" >>$(mig_q "$BENCH_DATA/pgdata/postgresql.conf")
		echo \"port = $port\" >>$(mig_q "$BENCH_DATA/pgdata/postgresql.conf")
		pg_ctl -D $(mig_q "$BENCH_DATA/pgdata") -l $(mig_q "$BENCH_DATA/server.log") -w -t 120 start >/dev/null" || {
		echo "ERROR: could not start the server; see $BENCH_DATA/initdb.log and $BENCH_DATA/server.log" >&2
		tail -n 20 "$BENCH_DATA/initdb.log" "$BENCH_DATA/server.log" 2>/dev/null >&2
		return 1
	}
	export PGHOST=$BENCH_DATA PGPORT=$port PGUSER=postgres PGDATABASE=postgres
	export PGOPTIONS='-c client_min_messages=warning'
	bq "CREATE DATABASE bench"
	export PGDATABASE=bench
	bq "CREATE EXTENSION migrate_ext"
}

bench_server_stop() {
	[ -n "${BENCH_DATA:-}" ] && [ -d "$BENCH_DATA/pgdata" ] || return 0
	mig_as_user "pg_ctl -D $(mig_q "$BENCH_DATA/pgdata") -m fast -w stop >/dev/null 2>&1" || true
	if [ "${MIG_BENCH_KEEP:-0}" = 1 ]; then
		echo "the server's data directory and log are kept in $BENCH_DATA"
	else
		rm -rf "$BENCH_DATA"
	fi
}
