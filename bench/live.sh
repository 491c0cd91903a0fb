#!/usr/bin/env bash
#
# bench/live.sh: what a running backfill does to the application (issue 3).
#
# A pgbench mix on t (MIG_BENCH_BF_ROWS rows, the migration expanded so
# the dual-write trigger is live, as it is before and during a backfill):
# 80% point SELECT by id, 20% UPDATE of email by id (through the trigger),
# MIG_BENCH_LIVE_CLIENTS clients, MIG_BENCH_LIVE_THREADS threads,
# MIG_BENCH_LIVE_SECONDS seconds; first alone (baseline), then again right
# after SELECT mig_backfill('t') with default settings. TPS from pgbench;
# p50/p99 latency from pgbench's per-transaction logs. Goal: p99 during the
# backfill <= 2x the baseline p99.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

ROWS=${MIG_BENCH_BF_ROWS:-5000000}
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

# pgbench_run NAME: run the mix; sets TPS[NAME], P50[NAME], P99[NAME] (ms).
declare -A TPS P50 P99 NTX
pgbench_run() {
	local name=$1 out pct
	local args=(-n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$SECS" -f "$SCRIPT" -D "nrows=$ROWS"
		--log --log-prefix="$BENCH_OUT/live_$name")
	[ -n "$RATE" ] && args+=(-R "$RATE")
	rm -f "$BENCH_OUT/live_$name".*
	out=$(pgbench "${args[@]}" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
	TPS[$name]=$(printf '%s\n' "$out" | sed -n -E 's/^tps = ([0-9.]+) .*/\1/p' | head -n 1)
	# the third field of a per-transaction log line is its latency in us
	pct=$(cat "$BENCH_OUT/live_$name".* | awk '{ print $3 }' | sort -n |
		awk '{ v[NR] = $1 } END {
			i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
			i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
			printf "%d %.2f %.2f\n", NR, v[i50] / 1000, v[i99] / 1000 }')
	read -r "NTX[$name]" "P50[$name]" "P99[$name]" <<<"$pct"
	bench_log "$name: tps ${TPS[$name]}, p50 ${P50[$name]} ms, p99 ${P99[$name]} ms (${NTX[$name]} transactions)"
}

bench_fresh_table "$ROWS"
bq "SELECT mig_expand('t', 'email', new_col => 'new', up => 'lower(email)')" "CHECKPOINT"
pgbench_run baseline || exit 1

HAVE_BF=0
NOTE=""
if bench_has_function "$MIG_BACKFILL_SIG"; then
	HAVE_BF=1
	bq "VACUUM ANALYZE t" "CHECKPOINT" "SELECT mig_backfill('t')"
	start=$(bv "SELECT extract(epoch FROM clock_timestamp())")
	pgbench_run during || exit 1
	state=$(bv "SELECT state || ' ' || coalesce(extract(epoch FROM finished_at)::text, '') FROM migrate_ext.job ORDER BY id DESC LIMIT 1")
	if [ "${state%% *}" = "done" ] || [ "${state%% *}" = "failed" ]; then
		NOTE="the backfill ended (${state%% *}) $(awk -v a="$start" -v b="${state#* }" 'BEGIN { d = b - a; if (d < 0.5) print "before pgbench started"; else printf "%.0f s into the run", d }'): the rest of the run had no backfill to compete with"
	else
		NOTE="the backfill was still running when pgbench ended (state ${state%% *})"
	fi
	bench_wait_backfill || exit 1
fi
bq "DROP TABLE t"

echo "Live impact: pgbench, 80% SELECT / 20% UPDATE by id on $(fmt_int "$ROWS") rows, -c $CLIENTS -j $THREADS, ${SECS} s each${RATE:+, -R $RATE}"
printf '%-32s %10s %10s %10s %12s\n' run TPS "p50 ms" "p99 ms" transactions
printf '%-32s %10.0f %10s %10s %12s\n' "baseline (trigger live)" "${TPS[baseline]}" "${P50[baseline]}" "${P99[baseline]}" "${NTX[baseline]}"
if [ "$HAVE_BF" = 1 ]; then
	printf '%-32s %10.0f %10s %10s %12s\n' "during mig_backfill (defaults)" "${TPS[during]}" "${P50[during]}" "${P99[during]}" "${NTX[during]}"
	r=$(ratio "${P99[during]}" "${P99[baseline]}")
	echo "p99 during / p99 baseline: $r ($(goal_mark le "$r" 2.0), goal <= 2.0); TPS during / baseline: $(ratio "${TPS[during]}" "${TPS[baseline]}"); $NOTE"
	bench_summary "live: p99 during backfill / baseline $r (goal <= 2.0: $(goal_mark le "$r" 2.0)); TPS $(ratio "${TPS[during]}" "${TPS[baseline]}")x; $NOTE"
else
	printf '%-32s %s\n' "during mig_backfill" "not available (no $MIG_BACKFILL_SIG)"
	bench_summary "live: mig_backfill not available; baseline $(printf '%.0f' "${TPS[baseline]}") TPS, p50 ${P50[baseline]} ms, p99 ${P99[baseline]} ms"
fi
exit 0
