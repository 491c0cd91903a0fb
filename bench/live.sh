#!/usr/bin/env bash
#
# bench/live.sh: what a running backfill does to the application (issues 3
# and 12), at each table size of bench_sizes (MIG_BENCH_BF_SIZES, default
# "2000000 5000000").
#
# A pgbench mix on t (the migration expanded so the dual-write trigger is
# live, as it is before and during a backfill): 80% point SELECT by id, 20%
# UPDATE of email by id (through the trigger), MIG_BENCH_LIVE_CLIENTS
# clients, MIG_BENCH_LIVE_THREADS threads, MIG_BENCH_LIVE_SECONDS seconds;
# first alone (baseline), then right after SELECT mig_backfill('t') with
# default settings (the load yield on), then on a fresh copy with
# migrate_ext.backfill_yield = 0.  p50/p99 latency and TPS from pgbench's
# per-transaction logs, during a backfill over the window in which the job
# ran (its started_at and finished_at); the backfill's own rows/s over that
# window from its job row.  Goal: p99 during the default backfill <= 2x the
# baseline p99.  The run without the yield says what the yield costs the
# backfill and buys the application.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

read -r -a SIZES <<<"$(bench_sizes)"
SECS=${MIG_BENCH_LIVE_SECONDS:-30}
CLIENTS=${MIG_BENCH_LIVE_CLIENTS:-4}
THREADS=${MIG_BENCH_LIVE_THREADS:-2}
RATE=${MIG_BENCH_LIVE_RATE:-}
MIG_BACKFILL_SIG='mig_backfill(regclass,integer,integer,integer,interval,bigint,integer,boolean)'

SCRIPT=$BENCH_OUT/live.pgbench
cat >"$SCRIPT" <<'EOF'
\set id random(1, :nrows)
\set r random(1, 100)
\if :r <= 80
SELECT id, email, created_at FROM t WHERE id = :id;
\else
UPDATE t SET email = 'User' || :id || '.' || :r || '@Example.COM' WHERE id = :id;
\endif
EOF

# pgbench_run NAME [SQL]: run the mix, with a per-transaction log; with SQL,
# run it one second into the run (past pgbench's connections and first
# statements, so that they are not counted as the backfill's impact).  Sets
# TPS[NAME] (pgbench's), RUN_FROM[NAME] and RUN_TO[NAME] (epoch seconds
# around the run), and the latencies over the whole run (pgbench_window).
declare -A TPS P50 P99 NTX WIN RUN_FROM RUN_TO
pgbench_run() {
	local name=$1 sql=${2:-} out pid
	local args=(-n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$SECS" -f "$SCRIPT" -D "nrows=$ROWS"
		--log --log-prefix="$BENCH_OUT/live_$name")
	[ -n "$RATE" ] && args+=(-R "$RATE")
	rm -f "$BENCH_OUT/live_$name".*
	out=$BENCH_OUT/pgbench_$name.out
	RUN_FROM[$name]=$(date +%s.%N)
	pgbench "${args[@]}" >"$out" 2>&1 &
	pid=$!
	if [ -n "$sql" ]; then
		sleep 1
		bq "$sql" || { kill "$pid"; return 1; }
	fi
	wait "$pid" || { cat "$out" >&2; return 1; }
	RUN_TO[$name]=$(date +%s.%N)
	TPS[$name]=$(sed -n -E 's/^tps = ([0-9.]+) .*/\1/p' "$out" | head -n 1)
	pgbench_window "$name" "${RUN_FROM[$name]}" "${RUN_TO[$name]}"
}

# pgbench_window NAME FROM TO: p50/p99 (ms) of the transactions of NAME's run
# that ended between FROM and TO (epoch seconds), from pgbench's
# per-transaction log (bench_latencies); sets P50, P99, NTX (transactions)
# and WIN (the window's length, s).
pgbench_window() {
	local name=$1 from=$2 to=$3
	read -r "NTX[$name]" "P50[$name]" "P99[$name]" _ <<<"$(bench_latencies "$from" "$to" "$BENCH_OUT/live_$name".*)"
	WIN[$name]=$(awk -v a="$from" -v b="$to" 'BEGIN { printf "%.1f", b - a }')
	bench_log "$name: p50 ${P50[$name]} ms, p99 ${P99[$name]} ms over ${WIN[$name]} s (${NTX[$name]} transactions)"
}

# during NAME: a default mig_backfill('t') started one second into pgbench.  The
# latencies and TPS are those of the window in which both ran: from the
# later of the job's started_at and pgbench's start to the earlier of its
# finished_at and pgbench's end, so that a pgbench run longer than the
# backfill does not dilute them.  Sets NOTE[NAME] and BF_RPS[NAME] (the
# backfill's rows/s over that window).
declare -A NOTE BF_RPS
during() {
	local name=$1 row job_from job_to seen from to
	bq "VACUUM ANALYZE t" "CHECKPOINT"
	pgbench_run "$name" "SELECT mig_backfill('t')" || exit 1
	# the job row when pgbench ended: its start, its end (if any), rows covered
	row=$(bv "SELECT extract(epoch FROM started_at) || ' ' || coalesce(extract(epoch FROM finished_at)::text, '-') || ' ' || rows_seen
	            FROM migrate_ext.job ORDER BY id DESC LIMIT 1")
	read -r job_from job_to seen <<<"$row"
	from=$(awk -v a="$job_from" -v b="${RUN_FROM[$name]}" 'BEGIN { x = (a > b ? a : b); printf "%.6f", x }')
	to=${RUN_TO[$name]}
	if [ "$job_to" != "-" ]; then
		to=$(awk -v a="$job_to" -v b="$to" 'BEGIN { x = (a < b ? a : b); printf "%.6f", x }')
		NOTE[$name]="the backfill ended $(awk -v a="${RUN_FROM[$name]}" -v b="$job_to" 'BEGIN { printf "%.0f", b - a }') s into pgbench's ${SECS} s run: latencies over its window only"
	else
		NOTE[$name]="the backfill was still running when pgbench ended"
	fi
	pgbench_window "$name" "$from" "$to"
	TPS[$name]=$(awk -v n="${NTX[$name]}" -v w="${WIN[$name]}" 'BEGIN { if (w > 0) printf "%.0f", n / w; else print 0 }')
	BF_RPS[$name]=$(awk -v n="$seen" -v a="$job_from" -v b="$to" 'BEGIN { if (b > a) printf "%.0f", n / (b - a); else print "-" }')
	bench_wait_backfill t || exit 1
}

set_yield() {
	bq "ALTER SYSTEM SET migrate_ext.backfill_yield = $1" "SELECT pg_reload_conf()"
}

HAVE_BF=0
bench_has_function "$MIG_BACKFILL_SIG" && HAVE_BF=1
for ROWS in "${SIZES[@]}"; do
	bench_fresh_table "$ROWS"
	bq "SELECT mig_expand('t', 'email', new_col => 'new', up => 'lower(email)')" "CHECKPOINT"
	pgbench_run "base_$ROWS" || exit 1
	if [ "$HAVE_BF" = 1 ]; then
		during "yield_$ROWS"
		bench_fresh_table "$ROWS"
		bq "SELECT mig_expand('t', 'email', new_col => 'new', up => 'lower(email)')"
		set_yield 0
		during "noyield_$ROWS"
		bq "ALTER SYSTEM RESET migrate_ext.backfill_yield" "SELECT pg_reload_conf()"
	fi
	bq "DROP TABLE t"

	echo "Live impact: pgbench, 80% SELECT / 20% UPDATE by id on $(fmt_int "$ROWS") rows, -c $CLIENTS -j $THREADS, ${SECS} s each${RATE:+, -R $RATE}"
	printf '%-40s %10s %10s %10s %12s %9s %14s\n' run TPS "p50 ms" "p99 ms" transactions "window s" "backfill rows/s"
	printf '%-40s %10.0f %10s %10s %12s %9s\n' "baseline (trigger live)" "${TPS[base_$ROWS]}" "${P50[base_$ROWS]}" "${P99[base_$ROWS]}" "${NTX[base_$ROWS]}" "${WIN[base_$ROWS]}"
	if [ "$HAVE_BF" = 0 ]; then
		printf '%-40s %s\n' "during mig_backfill" "not available (no $MIG_BACKFILL_SIG)"
		bench_summary "live $(fmt_int "$ROWS"): mig_backfill not available; baseline $(printf '%.0f' "${TPS[base_$ROWS]}") TPS, p99 ${P99[base_$ROWS]} ms"
		continue
	fi
	for n in yield noyield; do
		k="${n}_$ROWS"
		printf '%-40s %10.0f %10s %10s %12s %9s %14s\n' \
			"during mig_backfill ($([ $n = yield ] && echo defaults || echo 'backfill_yield = 0'))" \
			"${TPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${NTX[$k]}" "${WIN[$k]}" "${BF_RPS[$k]}"
	done
	r=$(ratio "${P99[yield_$ROWS]}" "${P99[base_$ROWS]}")
	r0=$(ratio "${P99[noyield_$ROWS]}" "${P99[base_$ROWS]}")
	t=$(ratio "${TPS[yield_$ROWS]}" "${TPS[base_$ROWS]}")
	t0=$(ratio "${TPS[noyield_$ROWS]}" "${TPS[base_$ROWS]}")
	echo "p99 during the default backfill / baseline: $r ($(goal_mark le "$r" 2.0), goal <= 2.0), TPS ${t}x; without the yield: p99 ${r0}x, TPS ${t0}x;" \
		"the yield costs the backfill $(ratio "${BF_RPS[yield_$ROWS]}" "${BF_RPS[noyield_$ROWS]}")x of its rows/s. During the backfill: latencies and TPS over the window in which it ran (${WIN[yield_$ROWS]} s; without the yield ${WIN[noyield_$ROWS]} s); ${NOTE[yield_$ROWS]}"
	bench_summary "live $(fmt_int "$ROWS"): p99 during backfill / baseline $r (goal <= 2.0: $(goal_mark le "$r" 2.0)), TPS ${t}x; backfill_yield = 0: p99 ${r0}x, TPS ${t0}x; backfill rows/s with / without the yield $(ratio "${BF_RPS[yield_$ROWS]}" "${BF_RPS[noyield_$ROWS]}"); windows ${WIN[yield_$ROWS]} s / ${WIN[noyield_$ROWS]} s"
	echo
done
exit 0
