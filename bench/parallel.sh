#!/usr/bin/env bash
#
# bench/parallel.sh: the parallel backfill (issue 12), on
#   - a partitioned table p, range-partitioned by id into
#     MIG_BENCH_PAR_PARTS (8) partitions, MIG_BENCH_PAR_ROWS (5000000) rows:
#     one plain UPDATE of the parent, then mig_backfill with parallel =>
#     each of MIG_BENCH_PAR_WORKERS ("1 2 4");
#   - one plain heap t of MIG_BENCH_PAR_ROWS rows: mig_backfill with
#     parallel => each of MIG_BENCH_PAR_HEAP_WORKERS ("1 2") (block or key
#     ranges), against one plain UPDATE.
# Each method starts from a fresh copy of the same data (the rows of
# bench/lib.sh's bench_source).  For each: seconds, rows/s, its ratio to
# parallel => 1, and heap + index pages after it against the same rows
# compacted by VACUUM FULL.  Goal: parallel => 2 at least 1.5x the rows/s
# of parallel => 1 on the partitioned table (2 cores, otherwise idle).
#
# Parts that the installed migrate_ext refuses (mig_expand of a partitioned
# table, parallel > 1) are skipped with a line saying so and the error.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

ROWS=${MIG_BENCH_PAR_ROWS:-5000000}
PARTS=${MIG_BENCH_PAR_PARTS:-8}
read -r -a WORKERS <<<"${MIG_BENCH_PAR_WORKERS:-1 2 4}"
read -r -a HEAP_WORKERS <<<"${MIG_BENCH_PAR_HEAP_WORKERS:-1 2}"

sum2() { awk -v a="$1" 'BEGIN { split(a, v, " "); print v[1] + v[2] }'; }

# fresh_partitioned: p(id, email, created_at) in PARTS range partitions.
fresh_partitioned() {
	local per=$(((ROWS + PARTS - 1) / PARTS)) i sql=()
	bench_source bench_src_"$ROWS" "$ROWS"
	sql+=("DROP TABLE IF EXISTS p"
		"CREATE TABLE p (id bigint NOT NULL, email text, created_at timestamptz, PRIMARY KEY (id)) PARTITION BY RANGE (id)")
	for ((i = 0; i < PARTS; i++)); do
		sql+=("CREATE TABLE p_$i PARTITION OF p FOR VALUES FROM ($((i * per + 1))) TO ($(((i + 1) * per + 1)))")
	done
	sql+=("INSERT INTO p SELECT id, email, created_at FROM bench_src_$ROWS ORDER BY id" "VACUUM ANALYZE p" "CHECKPOINT")
	bq "${sql[@]}"
}

fresh() { if [ "$1" = p ]; then fresh_partitioned; else bench_fresh_table "$ROWS"; fi; }

declare -A SEC PA PC CORES
# one TABLE METHOD: METHOD is "update" or the number of workers.
one() {
	local tbl=$1 m=$2 k="$1,$2" ms err c0
	fresh "$tbl"
	if [ "$m" = update ]; then
		bq "ALTER TABLE $tbl ADD COLUMN new text" "CHECKPOINT"
		c0=$(bench_server_cpu)
		ms=$(bench_time "SELECT 1" -- "UPDATE $tbl SET new = lower(email)") || exit 1
	else
		if ! err=$(bench_try "SELECT mig_expand('$tbl', 'email', new_col => 'new', up => 'lower(email)')"); then
			echo "SKIP $tbl: mig_expand refuses it (${err:-error}); waits for the partitioned expand"
			return 1
		fi
		bq "CHECKPOINT"
		c0=$(bench_server_cpu)
		if ! err=$(bench_try "SELECT mig_backfill('$tbl', parallel => $m)"); then
			echo "SKIP $tbl parallel => $m: mig_backfill refuses it (${err:-error}); waits for the per-leaf or parallel backfill"
			return 1
		fi
		psql -X -q -A -t -c "SET client_min_messages = warning" -c "SELECT mig_wait('$tbl')" >/dev/null
		[ "$(bv "SELECT state FROM migrate_ext.job ORDER BY id DESC LIMIT 1")" = "done" ] ||
			{ echo "ERROR: the backfill of $tbl with parallel => $m did not end done" >&2; exit 1; }
		ms=$(bv "SELECT extract(epoch FROM finished_at - started_at) * 1000 FROM migrate_ext.job ORDER BY id DESC LIMIT 1")
	fi
	[ "$(bv "SELECT count(*) FROM $tbl WHERE new IS DISTINCT FROM lower(email)")" = 0 ] ||
		{ echo "ERROR: $tbl $m left rows wrong" >&2; exit 1; }
	SEC[$k]=$(awk -v v="${ms%% *}" 'BEGIN { print v / 1000 }')
	CORES[$k]=$(awk -v c="$(($(bench_server_cpu) - c0))" -v s="${SEC[$k]}" 'BEGIN { printf "%.2f", c / 1000 / s }')
	PA[$k]=$(bench_pages "$tbl")
	PC[$k]=$(bench_compact "$tbl")
	bench_log "$tbl $m: ${ms%% *} ms, ${CORES[$k]} cores busy, pages (heap index) after ${PA[$k]}, compact ${PC[$k]}"
	return 0
}

report() {
	local tbl=$1 title=$2 m k base r
	shift 2
	echo "$title"
	printf '%-28s %8s %10s %12s %9s %6s\n' method seconds rows/s "/parallel 1" "/compact" cores
	base=${SEC[$tbl,1]:-}
	for m in "$@"; do
		k="$tbl,$m"
		[ -n "${SEC[$k]:-}" ] || continue
		r="-"
		[ "$m" != update ] && r=$(ratio "$base" "${SEC[$k]}")
		printf '%-28s %8.1f %10s %12s %9s %6s\n' "$([ "$m" = update ] && echo "UPDATE, no trigger" || echo "mig_backfill, parallel => $m")" \
			"${SEC[$k]}" "$(fmt_int "$(awk -v n="$ROWS" -v s="${SEC[$k]}" 'BEGIN { printf "%.0f", n / s }')")" \
			"$r" "$(ratio "$(sum2 "${PA[$k]}")" "$(sum2 "${PC[$k]}")")" "${CORES[$k]}"
	done
}

# the partitioned table
one p update
for w in "${WORKERS[@]}"; do
	one p "$w" || break
done
report p "Partitioned table: $(fmt_int "$ROWS") rows in $PARTS range partitions, new := lower(email), one run each" update "${WORKERS[@]}"
if [ -n "${SEC[p,1]:-}" ] && [ -n "${SEC[p,2]:-}" ]; then
	r=$(ratio "${SEC[p,1]}" "${SEC[p,2]}")
	# the most a second worker can add: the cores parallel => 1 left idle
	bound=$(awk -v n="$(nproc)" -v c="${CORES[p,1]}" 'BEGIN { if (c > 0) printf "%.2f", n / c; else print "-" }')
	echo "parallel => 2: ${r}x the rows/s of parallel => 1 ($(goal_mark ge "$r" 1.5), goal >= 1.5)"
	echo "parallel => 1 kept ${CORES[p,1]} of $(nproc) cores busy (its worker, the VACUUMs it starts, the WAL writer): with the same work per row, no number of workers can be more than ${bound}x faster here"
	bench_summary "parallel, partitioned $(fmt_int "$ROWS"): parallel 2 / 1 rows/s $r (goal >= 1.5: $(goal_mark ge "$r" 1.5); at most ${bound} with ${CORES[p,1]} of $(nproc) cores busy at parallel 1); parallel 1 / UPDATE $(ratio "${SEC[p,update]}" "${SEC[p,1]}")"
else
	bench_summary "parallel, partitioned: skipped (mig_expand, mig_backfill of a partitioned table or parallel > 1 not available yet; see the SKIP line)"
fi
bq "DROP TABLE IF EXISTS p"
echo

# one plain heap, split by ranges
one t update
for w in "${HEAP_WORKERS[@]}"; do
	one t "$w" || break
done
report t "One heap: $(fmt_int "$ROWS") rows, split by ranges, new := lower(email), one run each" update "${HEAP_WORKERS[@]}"
if [ -n "${SEC[t,1]:-}" ] && [ -n "${SEC[t,2]:-}" ]; then
	bench_summary "parallel, heap $(fmt_int "$ROWS"): parallel 2 / 1 rows/s $(ratio "${SEC[t,1]}" "${SEC[t,2]}")"
else
	bench_summary "parallel, heap: parallel > 1 skipped (not available)"
fi
bq "DROP TABLE IF EXISTS t"
exit 0
