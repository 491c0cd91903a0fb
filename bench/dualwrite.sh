#!/usr/bin/env bash
#
# bench/dualwrite.sh: the cost of the dual-write trigger (issue 2).
#
# A bulk INSERT of MIG_BENCH_DW_ROWS rows into t(id bigint primary key,
# email text, new text), then a bulk UPDATE of all of them, with the new
# column computed four ways:
#   plain        by the statement itself (no trigger): the floor
#   generated    new text GENERATED ALWAYS AS (lower(email)) STORED: the
#                cheapest thing the server has, the limit
#   plpgsql      a PL/pgSQL BEFORE trigger, NEW.new := lower(NEW.email):
#                what trigger-based migration tools install
#   migrate_ext  the C trigger, after mig_expand('t', 'email', 'new',
#                up => 'lower(email)')
# Every run: a fresh table (autovacuum off on it, so nothing runs behind the
# timed statement), VACUUM ANALYZE and CHECKPOINT before each timed
# statement; the variants take turns, MIG_BENCH_REPEAT rounds, median kept.
# Goals: migrate_ext / generated <= 1.25; (migrate_ext - plain) /
# (plpgsql - plain) <= 0.2.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

ROWS=${MIG_BENCH_DW_ROWS:-1000000}
PROFILE=${MIG_BENCH_PROFILE:-auto}
VARIANTS=(plain generated plpgsql migrate_ext)
SRC=bench_src_$ROWS
TBL="WITH (autovacuum_enabled = off)"

bench_source "$SRC" "$ROWS"
bq "CREATE OR REPLACE FUNCTION bench_dw_plpgsql() RETURNS trigger LANGUAGE plpgsql AS
	\$\$BEGIN NEW.new := lower(NEW.email); RETURN NEW; END\$\$"

# create VARIANT: an empty t as the variant wants it.
create() {
	bq "DROP TABLE IF EXISTS t"
	case $1 in
	plain) bq "CREATE TABLE t (id bigint PRIMARY KEY, email text, new text) $TBL" ;;
	generated) bq "CREATE TABLE t (id bigint PRIMARY KEY, email text,
		new text GENERATED ALWAYS AS (lower(email)) STORED) $TBL" ;;
	plpgsql) bq "CREATE TABLE t (id bigint PRIMARY KEY, email text, new text) $TBL" \
		"CREATE TRIGGER bench_dw BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION bench_dw_plpgsql()" ;;
	migrate_ext) bq "CREATE TABLE t (id bigint PRIMARY KEY, email text) $TBL" \
		"SELECT mig_expand('t', 'email', new_col => 'new', up => 'lower(email)')" ;;
	esac
}

insert_sql() {
	if [ "$1" = plain ]; then
		echo "INSERT INTO t (id, email, new) SELECT id, email, lower(email) FROM $SRC"
	else
		echo "INSERT INTO t (id, email) SELECT id, email FROM $SRC"
	fi
}

update_sql() {
	if [ "$1" = plain ]; then
		echo "UPDATE t SET email = email || 'x', new = lower(email || 'x')"
	else
		echo "UPDATE t SET email = email || 'x'"
	fi
}

# Every row must come out right, or the timing means nothing.
check() {
	local bad
	bad=$(bv "SELECT count(*) FILTER (WHERE new IS DISTINCT FROM lower(email)) || '/' || count(*) FROM t")
	[ "$bad" = "0/$ROWS" ] || { echo "ERROR: $1 $2: wrong rows (bad/total = $bad)" >&2; exit 1; }
}

declare -A INS UPD INSCPU UPDCPU
for v in "${VARIANTS[@]}"; do INS[$v]=""; UPD[$v]=""; INSCPU[$v]=""; UPDCPU[$v]=""; done

# CPU steal (the hypervisor running someone else) during the rounds.
steal() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# A round that is not counted: the first statements after the server
# starts pay for faulting in shared memory.
create plain
bq "$(insert_sql plain)" "$(update_sql plain)"
S0=$(steal)

for ((r = 1; r <= BENCH_REPEAT; r++)); do
	for v in "${VARIANTS[@]}"; do
		create "$v"
		i=$(bench_time "VACUUM ANALYZE t" "CHECKPOINT" -- "$(insert_sql "$v")") || exit 1
		check "$v" INSERT
		u=$(bench_time "VACUUM ANALYZE t" "CHECKPOINT" -- "$(update_sql "$v")") || exit 1
		check "$v" UPDATE
		INS[$v]+=" ${i%% *}"
		UPD[$v]+=" ${u%% *}"
		INSCPU[$v]+=" ${i##* }"
		UPDCPU[$v]+=" ${u##* }"
		bench_log "round $r/$BENCH_REPEAT $v: INSERT ${i%% *} ms (CPU ${i##* }), UPDATE ${u%% *} ms (CPU ${u##* })"
	done
done
bq "DROP TABLE t"
S1=$(steal)
STEAL=$(echo "$S0 $S1" | awk '{ d = $4 - $2; printf "%.1f", (d > 0) ? 100 * ($3 - $1) / d : 0 }')

# One table row per statement and measure; the goals are on elapsed time.
MISSED=0
echo "Dual-write: $(fmt_int "$ROWS") rows, median of $BENCH_REPEAT runs, ms (CPU steal during the runs: ${STEAL}%)"
printf '%-16s %8s %10s %8s %12s | %-22s %-28s\n' statement plain generated plpgsql migrate_ext \
	"migrate_ext/generated" "(mx-plain)/(plpgsql-plain)"
printf '%-16s %8s %10s %8s %12s | %-22s %-28s\n' "" "" "" "" "" "goal <= 1.25" "goal <= 0.20"
for stmt in INSERT UPDATE; do
	for what in elapsed cpu; do
		declare -A M=()
		for v in "${VARIANTS[@]}"; do
			# shellcheck disable=SC2086
			case $stmt/$what in
			INSERT/elapsed) M[$v]=$(median ${INS[$v]}) ;;
			UPDATE/elapsed) M[$v]=$(median ${UPD[$v]}) ;;
			INSERT/cpu) M[$v]=$(median ${INSCPU[$v]}) ;;
			UPDATE/cpu) M[$v]=$(median ${UPDCPU[$v]}) ;;
			esac
		done
		r1=$(ratio "${M[migrate_ext]}" "${M[generated]}")
		over=$(awk -v m="${M[migrate_ext]}" -v p="${M[plain]}" 'BEGIN { print m - p }')
		pover=$(awk -v g="${M[plpgsql]}" -v p="${M[plain]}" 'BEGIN { print g - p }')
		r2=$(ratio "$over" "$pover")
		g1=$(goal_mark le "$r1" 1.25)
		g2=$(goal_mark le "$r2" 0.20)
		label="$stmt"
		if [ "$what" = cpu ]; then
			label="  backend CPU"
			g1="" g2=""
		elif [ "$g1" != ok ] || [ "$g2" != ok ]; then
			MISSED=1
		fi
		printf '%-16s %8s %10s %8s %12s | %-22s %-28s\n' "$label" "$(fmt_ms "${M[plain]}")" \
			"$(fmt_ms "${M[generated]}")" "$(fmt_ms "${M[plpgsql]}")" "$(fmt_ms "${M[migrate_ext]}")" \
			"$r1 $g1" "$r2 $g2"
		if [ "$what" = elapsed ]; then
			bench_summary "dualwrite $stmt: migrate_ext/generated $r1 (goal <= 1.25: $g1); (migrate_ext-plain)/(plpgsql-plain) $r2 (goal <= 0.20: $g2)"
		fi
	done
done
echo "every run, elapsed ms:"
# shellcheck disable=SC2086
for v in "${VARIANTS[@]}"; do
	printf '  %-12s INSERT%s  UPDATE%s\n' "$v" "$(printf ' %.0f' ${INS[$v]})" "$(printf ' %.0f' ${UPD[$v]})"
done

# Where the C trigger's time goes, when it misses a goal (or when asked).
if [ "$PROFILE" = on ] || { [ "$PROFILE" = auto ] && [ "$MISSED" = 1 ]; }; then
	bash "$BENCH_DIR/profile_dualwrite.sh" || echo "(profiling failed)"
fi
exit 0
