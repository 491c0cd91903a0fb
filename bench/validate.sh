#!/usr/bin/env bash
#
# bench/validate.sh: how fast an exact validation reads the table (issue 4).
#
# t with MIG_BENCH_BF_ROWS rows, the migration expanded and every row
# filled (by mig_backfill when it exists, else by an UPDATE through the
# trigger), then VACUUM FULL ANALYZE so the table is compact and the same
# either way, and read once to warm the cache. Timed, median of
# MIG_BENCH_REPEAT runs each:
#   count(*)                 SELECT count(*) FROM t WHERE new IS DISTINCT
#                            FROM lower(email): the same comparison as one
#                            query (parallel query as configured, and
#                            again with max_parallel_workers_per_gather = 0)
#   mig_validate             SELECT * FROM mig_validate('t'), exact
# Goal: mig_validate >= 1M rows/s.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

ROWS=${MIG_BENCH_BF_ROWS:-5000000}
MIG_BACKFILL_SIG='mig_backfill(regclass,integer,integer,integer,interval,bigint,integer,boolean)'
MIG_VALIDATE_SIG='mig_validate(regclass,integer)'
COUNT_SQL="SELECT count(*) FROM t WHERE new IS DISTINCT FROM lower(email)"

bench_fresh_table "$ROWS"
bq "SELECT mig_expand('t', 'email', new_col => 'new', up => 'lower(email)')"
if bench_has_function "$MIG_BACKFILL_SIG"; then
	FILL="mig_backfill"
	bq "SELECT mig_backfill('t')"
	bench_wait_backfill || exit 1
else
	FILL="UPDATE through the trigger"
	bq "SET migrate_ext.writer = old; UPDATE t SET new = lower(email)"
fi
bq "VACUUM FULL ANALYZE t" "CHECKPOINT"
# (this count also reads the whole table once: the timed runs find it cached)
[ "$(bv "$COUNT_SQL")" = 0 ] || { echo "ERROR: the table was not filled right" >&2; exit 1; }

declare -A MS
timed() {
	local name=$1 prep=$2 sql=$3 runs=() v
	for ((r = 1; r <= BENCH_REPEAT; r++)); do
		v=$(bench_time "$prep" -- "$sql") || exit 1
		runs+=("${v%% *}")
	done
	MS[$name]=$(median "${runs[@]}")
	bench_log "$name: ${runs[*]} ms"
}

timed count_parallel "SELECT 1" "$COUNT_SQL"
timed count_serial "SET max_parallel_workers_per_gather = 0" "$COUNT_SQL"
HAVE_VAL=0
if bench_has_function "$MIG_VALIDATE_SIG"; then
	HAVE_VAL=1
	timed mig_validate "SELECT 1" "SELECT * FROM mig_validate('t')"
fi
bq "DROP TABLE t"

rps() { awk -v n="$ROWS" -v ms="$1" 'BEGIN { printf "%.0f", n / (ms / 1000) }'; }
echo "Validation: $(fmt_int "$ROWS") rows filled by $FILL, median of $BENCH_REPEAT runs"
printf '%-44s %10s %12s\n' query ms rows/s
printf '%-44s %10s %12s\n' "count(*) of differing rows, parallel" "$(fmt_ms "${MS[count_parallel]}")" "$(fmt_int "$(rps "${MS[count_parallel]}")")"
printf '%-44s %10s %12s\n' "count(*) of differing rows, no parallel" "$(fmt_ms "${MS[count_serial]}")" "$(fmt_int "$(rps "${MS[count_serial]}")")"
if [ "$HAVE_VAL" = 1 ]; then
	v=$(rps "${MS[mig_validate]}")
	g=$(goal_mark ge "$v" 1000000)
	printf '%-44s %10s %12s %s\n' "mig_validate('t'), exact" "$(fmt_ms "${MS[mig_validate]}")" "$(fmt_int "$v")" "$g (goal >= 1,000,000)"
	echo "mig_validate / count(*): $(ratio "${MS[mig_validate]}" "${MS[count_serial]}")x the time of the serial count, $(ratio "${MS[mig_validate]}" "${MS[count_parallel]}")x the parallel one"
	bench_summary "validate: mig_validate $(fmt_int "$v") rows/s (goal >= 1,000,000: $g); $(ratio "${MS[mig_validate]}" "${MS[count_serial]}")x the time of count(*) without parallel query"
else
	printf '%-44s %s\n' "mig_validate('t'), exact" "not available (no $MIG_VALIDATE_SIG)"
	bench_summary "validate: mig_validate not available; count(*) baseline $(fmt_int "$(rps "${MS[count_serial]}")") rows/s without parallel query, $(fmt_int "$(rps "${MS[count_parallel]}")") with"
fi
exit 0
