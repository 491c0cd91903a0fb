#!/usr/bin/env bash
#
# tools/callgraph.sh: the include and call graph between src/*.c, and the
# layering it must respect (README, "Design").
#
#   tools/callgraph.sh            print the graph and any arrow that points up
#                                 or sideways; exit 1 if there is one
#
# A call edge a.c -> b.c means a.c calls a function that b.c defines and a
# header declares.  Layers, bottom first; an arrow may only point to the
# same file or a lower layer (the SQL face may call the middle, processes,
# bottom; processes call middle and bottom; middle calls bottom; bottom
# files call only other bottom files).  backfill_apply.c, the backfill's
# direct batch, sits between the middle and the processes: it writes the
# rows that the walk (middle) finds with values the dual-write trigger's
# code (middle) computes, for the worker (processes).  migrate_ext.c (_PG_init) sits on
# top: it registers everything.  contract_predict.c sits with the
# processes: it runs contract's plan (middle) for validate.c (SQL face).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

layer() {
	case "$1" in
	catalog.c | job.c | relation.c | expr.c | worker.c | horizon.c | contract_gate.c | contract_views.c | contract_partition.c) echo 0 ;;
	dualwrite.c | backfill_walk.c | contract_plan.c | contract_undo.c | contract_retype.c) echo 1 ;;
	backfill_apply.c) echo 2 ;;
	backfill_worker.c | contract_worker.c | launcher.c | contract_predict.c) echo 3 ;;
	ddl.c | backfill.c | contract.c | validate.c | report.c | guard.c | preflight.c) echo 4 ;;
	migrate_ext.c) echo 5 ;;
	*) echo 9 ;;
	esac
}
layer_name() {
	case "$1" in 0) echo bottom ;; 1) echo middle ;; 2) echo batch ;; 3) echo processes ;; 4) echo "SQL face" ;; 5) echo "_PG_init" ;; *) echo "?" ;; esac
}

# function name -> defining file, for every function a header declares
declare -A def
for h in src/*.h; do
	for fn in $(grep -hoE '^extern [^;(]*[[:space:]*]([a-z_][a-z0-9_]*)\(' "$h" | sed -E 's/.*[[:space:]*]([a-z_][a-z0-9_]*)\($/\1/'); do
		f=$(grep -lE "^${fn}\(" src/*.c | head -n 1 || true)
		[ -n "$f" ] && def[$fn]=$(basename "$f")
	done
done

echo "== includes (src/*.c -> project headers)"
for c in src/*.c; do
	incs=$(grep -oE '^#include "[a-z_]+\.h"' "$c" | sed -E 's/#include "(.*)"/\1/' | tr '\n' ' ')
	printf '%-20s %s\n' "$(basename "$c")" "$incs"
done

echo
echo "== calls (caller -> callee: functions)"
bad=0
declare -A edges
for c in src/*.c; do
	from=$(basename "$c")
	# strip comments and string literals before looking for calls
	body=$(sed -E 's://.*$::' "$c" | perl -0pe 's{/\*.*?\*/}{}gs; s{"(\\.|[^"\\])*"}{""}g')
	for fn in "${!def[@]}"; do
		to=${def[$fn]}
		[ "$to" = "$from" ] && continue
		if grep -qE "(^|[^a-z0-9_])${fn}\(" <<<"$body"; then
			edges["$from -> $to"]+="${fn} "
		fi
	done
done
for e in $(printf '%s\n' "${!edges[@]}" | sed 's/ -> /->/' | sort); do
	from=${e%%->*}
	to=${e##*->}
	mark=
	lf=$(layer "$from")
	lt=$(layer "$to")
	if [ "$lt" -gt "$lf" ] || { [ "$lt" -eq "$lf" ] && [ "$lf" -ne 0 ] && [ "$lf" -ne 5 ]; }; then
		mark="   <-- $(layer_name "$lf") calls $(layer_name "$lt")"
		bad=1
	fi
	printf '%-18s -> %-18s %s%s\n' "$from" "$to" "${edges["$from -> $to"]}" "$mark"
done

echo
echo "== layers"
for l in 5 4 3 2 1 0; do
	files=
	for c in src/*.c; do
		b=$(basename "$c")
		[ "$(layer "$b")" = "$l" ] && files+="$b "
	done
	printf '%-10s %s\n' "$(layer_name "$l")" "$files"
done

echo
echo "== PG_FUNCTION_INFO_V1 outside the SQL face (the trigger function excepted)"
for c in src/*.c; do
	b=$(basename "$c")
	fns=$(grep -oE 'PG_FUNCTION_INFO_V1\([a-z_]+\)' "$c" | grep -v 'mig_dualwrite)' | tr '\n' ' ' || true)
	if [ "$(layer "$b")" != 4 ] && [ -n "$fns" ]; then
		echo "$b: $fns"
		bad=1
	fi
done
[ "$bad" = 0 ] && echo "none; no arrow points up or sideways"

exit $bad
