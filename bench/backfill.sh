#!/usr/bin/env bash
#
# bench/backfill.sh: filling the new column of every existing row (issues 3
# and 12), at each table size of bench_sizes (MIG_BENCH_BF_SIZES, default
# "2000000 5000000").
#
# On t(id bigint primary key, email text, created_at timestamptz), each
# method starts from a fresh copy of the same data (vacuumed, analyzed,
# checkpointed) and fills new := lower(email):
#   UPDATE, no trigger         ALTER TABLE ADD COLUMN, one UPDATE: the floor
#   UPDATE, trigger live       after mig_expand, one UPDATE (writer = old,
#                              so the trigger recomputes and keeps the value):
#                              what a plain UPDATE costs once dual-write is on
#   mig_backfill               defaults, timed by its job row from the call
#                              until done
# and at the smallest size only:
#   PL/pgSQL keyset loop       a procedure walking the key, COMMIT every
#                              MIG_BENCH_BF_BATCH rows, trigger live
#   mig_backfill, updated_at   the same on t with a PL/pgSQL BEFORE UPDATE
#   trigger, fire_triggers     updated_at trigger, with fire_triggers off (the
#   off / on                   default: the trigger does not fire) and on
# For each: rows/s; WAL bytes a row (pg_current_wal_lsn before and after);
# heap + index pages after it, against the size before ("growth") and
# against the same table compacted by VACUUM FULL right after ("/compact":
# the space the method left that the rows do not need).  Autovacuum runs as
# shipped.
# Goals (issue 12): mig_backfill >= 0.95x the rows/s of the UPDATE without
# trigger, and heap + indexes <= 1.1x the compact size.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

read -r -a SIZES <<<"$(bench_sizes)"
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

now() { date +%s.%N; }

check() {
	local bad
	bad=$(bv "SELECT count(*) FROM t WHERE new IS DISTINCT FROM lower(email)")
	[ "$bad" = 0 ] || { echo "ERROR: $1 left $bad rows wrong" >&2; exit 1; }
}

# results, keyed "method,rows"
declare -A SEC WAL PB PA PC JOB
declare -A LABEL=(
	[update_plain]="UPDATE, no trigger"
	[update_trigger]="UPDATE, migrate_ext trigger live"
	[plpgsql_loop]="PL/pgSQL keyset loop, COMMIT/$BATCH"
	[mig_backfill]="mig_backfill, defaults"
	[bf_trig_off]="mig_backfill, updated_at trigger"
	[bf_trig_on]="same, fire_triggers => true"
)

run() {
	local m=$1 rows=$2 k="$1,$2" t0 t1 ms lsn
	bench_fresh_table "$rows"
	case $m in
	bf_trig_*)
		bq "ALTER TABLE t ADD COLUMN updated_at timestamptz NOT NULL DEFAULT '2024-01-01'" \
			"CREATE OR REPLACE FUNCTION bench_updated_at() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN NEW.updated_at := now(); RETURN NEW; END \$\$" \
			"CREATE TRIGGER t_updated_at BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION bench_updated_at()" \
			"VACUUM ANALYZE t" ;;
	esac
	case $m in
	update_plain) bq "ALTER TABLE t ADD COLUMN new text" ;;
	*) bq "SELECT mig_expand('t', 'email', new_col => 'new', up => 'lower(email)')" ;;
	esac
	PB[$k]=$(bench_pages t)
	bq "CHECKPOINT"
	lsn=$(bench_lsn)
	case $m in
	update_plain)
		ms=$(bench_time "SELECT 1" -- "UPDATE t SET new = lower(email)") || exit 1 ;;
	update_trigger)
		ms=$(bench_time "SET migrate_ext.writer = old" -- "UPDATE t SET new = lower(email)") || exit 1 ;;
	plpgsql_loop)
		ms=$(bench_time "SET migrate_ext.writer = old" -- "CALL bench_keyset_backfill($BATCH)") || exit 1 ;;
	mig_backfill | bf_trig_off | bf_trig_on)
		t0=$(now)
		bq "SELECT mig_backfill('t', fire_triggers => $([ "$m" = bf_trig_on ] && echo true || echo false))"
		bench_wait_backfill || exit 1
		t1=$(now)
		# the job row's own clock: mig_wait polls every 500 ms, which the
		# client's clock would add (the client's is logged beside it)
		ms="$(bv "SELECT extract(epoch FROM finished_at - started_at) * 1000 FROM migrate_ext.job ORDER BY id DESC LIMIT 1") -"
		JOB[$k]=$(bv "SELECT batches || ' batches, ' || vacuums || ' VACUUMs' FROM migrate_ext.job ORDER BY id DESC LIMIT 1")
		bench_log "  (client clock, with mig_wait's polling: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) * 1000 }') ms; ${JOB[$k]})" ;;
	esac
	WAL[$k]=$(bench_wal_bytes "$lsn")
	SEC[$k]=$(awk -v v="${ms%% *}" 'BEGIN { print v / 1000 }')
	PA[$k]=$(bench_pages t)
	check "$m"
	case $m in
	bf_trig_off) [ "$(bv "SELECT count(*) FROM t WHERE updated_at <> '2024-01-01'")" = 0 ] ||
		{ echo "ERROR: $m fired the updated_at trigger" >&2; exit 1; } ;;
	bf_trig_on) [ "$(bv "SELECT count(*) FROM t WHERE updated_at = '2024-01-01'")" = 0 ] ||
		{ echo "ERROR: $m did not fire the updated_at trigger on every row" >&2; exit 1; } ;;
	esac
	PC[$k]=$(bench_compact t)
	bench_log "${LABEL[$m]}, $(fmt_int "$rows") rows: $(fmt_ms "${ms%% *}") ms, pages (heap index) before ${PB[$k]}, after ${PA[$k]}, compact ${PC[$k]}"
}

sum2() { awk -v a="$1" 'BEGIN { split(a, v, " "); print v[1] + v[2] }'; }
mb() { awk -v p="$1" 'BEGIN { printf "%.0f", p * 8192 / 1048576 }'; }

HAVE_BF=0
bench_has_function "$MIG_BACKFILL_SIG" && HAVE_BF=1
SMALLEST=$(printf '%s\n' "${SIZES[@]}" | sort -n | head -n 1)
for rows in "${SIZES[@]}"; do
	METHODS=(update_plain update_trigger)
	[ "$rows" = "$SMALLEST" ] && METHODS+=(plpgsql_loop)
	if [ "$HAVE_BF" = 1 ]; then
		METHODS+=(mig_backfill)
		[ "$rows" = "$SMALLEST" ] && METHODS+=(bf_trig_off bf_trig_on)
	fi
	for m in "${METHODS[@]}"; do
		run "$m" "$rows"
	done

	echo "Backfill: $(fmt_int "$rows") rows, new := lower(email), one run each"
	printf '%-36s %8s %10s %8s %8s %8s %7s %9s\n' method seconds rows/s "WAL B/row" "MB before" "MB after" growth "/compact"
	for m in update_plain update_trigger plpgsql_loop mig_backfill bf_trig_off bf_trig_on; do
		k="$m,$rows"
		[ -n "${SEC[$k]:-}" ] || continue
		bef=$(sum2 "${PB[$k]}")
		aft=$(sum2 "${PA[$k]}")
		cmp=$(sum2 "${PC[$k]}")
		printf '%-36s %8.1f %10s %8s %8s %8s %7s %9s\n' "${LABEL[$m]}" "${SEC[$k]}" \
			"$(fmt_int "$(awk -v n="$rows" -v s="${SEC[$k]}" 'BEGIN { printf "%.0f", n / s }')")" \
			"$(awk -v w="${WAL[$k]}" -v n="$rows" 'BEGIN { printf "%.0f", w / n }')" \
			"$(mb "$bef")" "$(mb "$aft")" "$(ratio "$aft" "$bef")" "$(ratio "$aft" "$cmp")"
	done
	if [ "$HAVE_BF" = 0 ]; then
		echo "mig_backfill: not available (no $MIG_BACKFILL_SIG)"
		bench_summary "backfill $(fmt_int "$rows"): mig_backfill not available"
		continue
	fi
	k="mig_backfill,$rows"
	r1=$(ratio "${SEC[update_plain,$rows]}" "${SEC[$k]}")
	r2=$(ratio "${SEC[update_trigger,$rows]}" "${SEC[$k]}")
	gc=$(ratio "$(sum2 "${PA[$k]}")" "$(sum2 "${PC[$k]}")")
	read -r ha ia <<<"${PA[$k]}"
	read -r hc ic <<<"${PC[$k]}"
	echo "mig_backfill (${JOB[$k]}): rows/s ${r1}x the UPDATE without trigger ($(goal_mark ge "$r1" 0.95), goal >= 0.95), ${r2}x the UPDATE with the trigger live;" \
		"heap + indexes ${gc}x compact ($(goal_mark le "$gc" 1.1), goal <= 1.1): heap $(ratio "$ha" "$hc")x, indexes $(ratio "$ia" "$ic")x"
	bench_summary "backfill $(fmt_int "$rows"): mig_backfill rows/s / UPDATE (no trigger) $r1 (goal >= 0.95: $(goal_mark ge "$r1" 0.95)); / UPDATE (trigger live) $r2; heap+indexes / compact $gc (goal <= 1.1: $(goal_mark le "$gc" 1.1)), heap $(ratio "$ha" "$hc"), indexes $(ratio "$ia" "$ic")"
	if [ -n "${SEC[bf_trig_on,$rows]:-}" ]; then
		r4=$(ratio "${SEC[bf_trig_on,$rows]}" "${SEC[bf_trig_off,$rows]}")
		echo "with an updated_at trigger: fire_triggers off is ${r4}x the rows/s of fire_triggers on"
		bench_summary "backfill $(fmt_int "$rows"): updated_at trigger, fire_triggers off / on $r4"
	fi
	echo
done
bq "DROP TABLE IF EXISTS t"
exit 0
