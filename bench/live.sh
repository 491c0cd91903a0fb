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
# migrate_ext.backfill_yield = 0.  TPS from pgbench; p50/p99 latency from
# pgbench's per-transaction logs; the backfill's own rows/s while pgbench
# ran from its job row.  Goal: p99 during the default backfill <= 2x the
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

# during NAME: pgbench right after a default mig_backfill('t') started;
# sets NOTE[NAME] and BF_RPS[NAME] (the backfill's rows/s while pgbench ran).
declare -A NOTE BF_RPS
during() {
	local name=$1 start state seen
	bq "VACUUM ANALYZE t" "CHECKPOINT" "SELECT mig_backfill('t')"
	start=$(bv "SELECT extract(epoch FROM clock_timestamp())")
	pgbench_run "$name" || exit 1
	state=$(bv "SELECT state || ' ' || coalesce(extract(epoch FROM finished_at)::text, '') FROM migrate_ext.job ORDER BY id DESC LIMIT 1")
	seen=$(bv "SELECT rows_seen FROM migrate_ext.job ORDER BY id DESC LIMIT 1")
	BF_RPS[$name]=$(awk -v n="$seen" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }')
	if [ "${state%% *}" = "done" ] || [ "${state%% *}" = "failed" ]; then
		NOTE[$name]="the backfill ended (${state%% *}) $(awk -v a="$start" -v b="${state#* }" 'BEGIN { d = b - a; if (d < 0.5) print "before pgbench started"; else printf "%.0f s into the run", d }'): the rest of the run had no backfill to compete with"
		BF_RPS[$name]="${BF_RPS[$name]} (ended early)"
	else
		NOTE[$name]="the backfill was still running when pgbench ended"
	fi
	bench_wait_backfill || exit 1
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
	printf '%-40s %10s %10s %10s %12s %14s\n' run TPS "p50 ms" "p99 ms" transactions "backfill rows/s"
	printf '%-40s %10.0f %10s %10s %12s\n' "baseline (trigger live)" "${TPS[base_$ROWS]}" "${P50[base_$ROWS]}" "${P99[base_$ROWS]}" "${NTX[base_$ROWS]}"
	if [ "$HAVE_BF" = 0 ]; then
		printf '%-40s %s\n' "during mig_backfill" "not available (no $MIG_BACKFILL_SIG)"
		bench_summary "live $(fmt_int "$ROWS"): mig_backfill not available; baseline $(printf '%.0f' "${TPS[base_$ROWS]}") TPS, p99 ${P99[base_$ROWS]} ms"
		continue
	fi
	for n in yield noyield; do
		k="${n}_$ROWS"
		printf '%-40s %10.0f %10s %10s %12s %14s\n' \
			"during mig_backfill ($([ $n = yield ] && echo defaults || echo 'backfill_yield = 0'))" \
			"${TPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${NTX[$k]}" "${BF_RPS[$k]}"
	done
	r=$(ratio "${P99[yield_$ROWS]}" "${P99[base_$ROWS]}")
	r0=$(ratio "${P99[noyield_$ROWS]}" "${P99[base_$ROWS]}")
	t=$(ratio "${TPS[yield_$ROWS]}" "${TPS[base_$ROWS]}")
	t0=$(ratio "${TPS[noyield_$ROWS]}" "${TPS[base_$ROWS]}")
	echo "p99 during the default backfill / baseline: $r ($(goal_mark le "$r" 2.0), goal <= 2.0), TPS ${t}x; without the yield: p99 ${r0}x, TPS ${t0}x;" \
		"the yield costs the backfill $(ratio "${BF_RPS[yield_$ROWS]%% *}" "${BF_RPS[noyield_$ROWS]%% *}")x of its rows/s. ${NOTE[yield_$ROWS]}"
	bench_summary "live $(fmt_int "$ROWS"): p99 during backfill / baseline $r (goal <= 2.0: $(goal_mark le "$r" 2.0)), TPS ${t}x; backfill_yield = 0: p99 ${r0}x, TPS ${t0}x; backfill rows/s with / without the yield $(ratio "${BF_RPS[yield_$ROWS]%% *}" "${BF_RPS[noyield_$ROWS]%% *}")"
	echo
done
exit 0
