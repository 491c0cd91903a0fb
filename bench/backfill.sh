#!/usr/bin/env bash
#
# bench/backfill.sh: filling the new column of every existing row (issue 3).
#
# On t(id bigint primary key, email text, created_at timestamptz) with
# MIG_BENCH_BF_ROWS rows, each method starts from a fresh copy of the same
# data (vacuumed, analyzed, checkpointed) and fills new := lower(email):
#   UPDATE, no trigger         ALTER TABLE ADD COLUMN, one UPDATE: the floor
#   UPDATE, trigger live       after mig_expand, one UPDATE (writer = old,
#                              so the trigger recomputes and keeps the value):
#                              what a plain UPDATE costs once dual-write is on
#   PL/pgSQL keyset loop       a procedure walking the key, COMMIT every
#                              MIG_BENCH_BF_BATCH rows, trigger live
#   mig_backfill               defaults, timed from the call until its job
#                              row says done (only when the function exists)
# For each: rows/s, and pg_total_relation_size (table + indexes + TOAST)
# right after it finished, divided by the size before. Autovacuum runs as
# shipped, so the methods that commit as they go get what it reclaims.
# Goals: mig_backfill >= 1.0x the rows/s of the UPDATE with the trigger
# live, growth <= 1.3x.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

ROWS=${MIG_BENCH_BF_ROWS:-5000000}
BATCH=${MIG_BENCH_BF_BATCH:-10000}
MIG_BACKFILL_SIG='mig_backfill(regclass,integer,integer,integer,interval,bigint,integer,boolean)'

bq "CREATE OR REPLACE PROCEDURE bench_keyset_backfill(batch int) LANGUAGE plpgsql AS \$\$
DECLARE
	last_id bigint := 0;
	hi bigint;
	max_id bigint;
BEGIN
	SELECT max(id) INTO max_id FROM t;	-- the bound, frozen at start
	LOOP
		SELECT max(id) INTO hi
		  FROM (SELECT id FROM t WHERE id > last_id AND id <= max_id ORDER BY id LIMIT batch) AS b;
		EXIT WHEN hi IS NULL;
		UPDATE t SET new = lower(email) WHERE id > last_id AND id <= hi;
		last_id := hi;
		COMMIT;
	END LOOP;
END
\$\$"

size() { bv "SELECT pg_total_relation_size('t')"; }
now() { date +%s.%N; }

check() {
	local bad
	bad=$(bv "SELECT count(*) FROM t WHERE new IS DISTINCT FROM lower(email)")
	[ "$bad" = 0 ] || { echo "ERROR: $1 left $bad rows wrong" >&2; exit 1; }
}

declare -A SEC BEFORE AFTER
METHODS=(update_plain update_trigger plpgsql_loop mig_backfill)
declare -A LABEL=(
	[update_plain]="UPDATE, no trigger"
	[update_trigger]="UPDATE, migrate_ext trigger live"
	[plpgsql_loop]="PL/pgSQL keyset loop, COMMIT/$BATCH"
	[mig_backfill]="mig_backfill, defaults"
)

run() {
	local m=$1 t0 t1 ms
	bench_fresh_table "$ROWS"
	case $m in
	update_plain) bq "ALTER TABLE t ADD COLUMN new text" ;;
	*) bq "SELECT mig_expand('t', 'email', new_col => 'new', up => 'lower(email)')" ;;
	esac
	BEFORE[$m]=$(size)
	case $m in
	update_plain)
		ms=$(bench_time "CHECKPOINT" -- "UPDATE t SET new = lower(email)") || exit 1 ;;
	update_trigger)
		ms=$(bench_time "SET migrate_ext.writer = old" "CHECKPOINT" -- "UPDATE t SET new = lower(email)") || exit 1 ;;
	plpgsql_loop)
		ms=$(bench_time "SET migrate_ext.writer = old" "CHECKPOINT" -- "CALL bench_keyset_backfill($BATCH)") || exit 1 ;;
	mig_backfill)
		bq "CHECKPOINT"
		t0=$(now)
		bq "SELECT mig_backfill('t')"
		bench_wait_backfill || exit 1
		t1=$(now)
		ms="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) * 1000 }') -" ;;
	esac
	SEC[$m]=$(awk -v v="${ms%% *}" 'BEGIN { print v / 1000 }')
	AFTER[$m]=$(size)
	check "$m"
	bench_log "${LABEL[$m]}: $(fmt_ms "${ms%% *}") ms"
}

HAVE_BF=0
bench_has_function "$MIG_BACKFILL_SIG" && HAVE_BF=1
for m in "${METHODS[@]}"; do
	if [ "$m" = mig_backfill ] && [ "$HAVE_BF" = 0 ]; then
		continue
	fi
	run "$m"
done
bq "DROP TABLE t"

mb() { awk -v v="$1" 'BEGIN { printf "%.0f", v / 1048576 }'; }
rps() { awk -v n="$ROWS" -v s="$1" 'BEGIN { printf "%.0f", n / s }'; }

echo "Backfill: $(fmt_int "$ROWS") rows, new := lower(email), one run each"
printf '%-36s %8s %10s %10s %10s %-16s\n' method seconds rows/s "MB before" "MB after" "growth"
for m in "${METHODS[@]}"; do
	if [ -z "${SEC[$m]:-}" ]; then
		printf '%-36s %s\n' "${LABEL[$m]}" "not available (no $MIG_BACKFILL_SIG)"
		continue
	fi
	g=$(ratio "${AFTER[$m]}" "${BEFORE[$m]}")
	note=""
	[ "$m" = mig_backfill ] && note=" $(goal_mark le "$g" 1.3) (goal <= 1.3)"
	printf '%-36s %8.1f %10s %10s %10s %-16s\n' "${LABEL[$m]}" "${SEC[$m]}" "$(fmt_int "$(rps "${SEC[$m]}")")" \
		"$(mb "${BEFORE[$m]}")" "$(mb "${AFTER[$m]}")" "$g$note"
done
if [ "$HAVE_BF" = 1 ]; then
	r1=$(ratio "${SEC[update_trigger]}" "${SEC[mig_backfill]}")
	r2=$(ratio "${SEC[update_plain]}" "${SEC[mig_backfill]}")
	r3=$(ratio "${SEC[plpgsql_loop]}" "${SEC[mig_backfill]}")
	g=$(ratio "${AFTER[mig_backfill]}" "${BEFORE[mig_backfill]}")
	echo "mig_backfill rows/s: ${r1}x the UPDATE with the trigger live ($(goal_mark ge "$r1" 1.0), goal >= 1.0), ${r2}x the UPDATE without trigger, ${r3}x the PL/pgSQL loop"
	bench_summary "backfill: mig_backfill rows/s / UPDATE (trigger live) $r1 (goal >= 1.0: $(goal_mark ge "$r1" 1.0)); / UPDATE (no trigger) $r2; growth $g (goal <= 1.3: $(goal_mark le "$g" 1.3))"
else
	bench_summary "backfill: mig_backfill not available; UPDATE (trigger live) $(fmt_int "$(rps "${SEC[update_trigger]}")") rows/s, growth $(ratio "${AFTER[update_trigger]}" "${BEFORE[update_trigger]}"); PL/pgSQL loop $(fmt_int "$(rps "${SEC[plpgsql_loop]}")") rows/s, growth $(ratio "${AFTER[plpgsql_loop]}" "${BEFORE[plpgsql_loop]}")"
fi
exit 0
