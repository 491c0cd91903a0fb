#!/usr/bin/env bash
#
# bench/profile_dualwrite.sh: where the dual-write trigger's time goes,
# counted exactly. Called by dualwrite.sh when a goal is missed (or with
# MIG_BENCH_PROFILE=on).
#
# Timings on a small shared VM move by +-20% from run to run; instruction
# counts do not. So this runs the same INSERT and UPDATE as dualwrite.sh, on
# MIG_BENCH_CG_ROWS rows (default 20000), in a single-user backend of a
# scratch cluster under callgrind (collecting inside standard_ExecutorRun
# only), for each variant plus a no-op C trigger
# (suppress_redundant_updates_trigger, UPDATE only: the cost of being a
# BEFORE ROW trigger at all), and prints instructions per row, the goal
# ratios in instructions, and what mig_dualwrite spends its instructions on.

set -uo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_require_server

ROWS=${MIG_BENCH_CG_ROWS:-20000}
command -v valgrind >/dev/null 2>&1 && command -v callgrind_annotate >/dev/null 2>&1 || {
	echo "Profile: valgrind is not installed (apt-get install valgrind); skipped"
	exit 0
}
BIN=$(dirname "$(command -v postgres)")
CG=$(mktemp -d "$BENCH_OUT/callgrind.XXXXXX")
chmod 777 "$CG"

# as_server_user CMD: run as the user that owns the clusters.
as_server_user() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "${MIG_BENCH_USER:-postgres}" -- bash -c "cd $CG && PATH=$BIN:\$PATH LC_ALL=C.UTF-8 $1"
	else
		bash -c "cd $CG && PATH=$BIN:\$PATH LC_ALL=C.UTF-8 $1"
	fi
}

# Single-user mode reads one statement per line.
single() { as_server_user "postgres --single -D $CG/data bench <$1 >>$CG/single.log 2>&1"; }

echo "Profile of the dual-write trigger: callgrind, $(fmt_int "$ROWS") rows, instructions counted in the executor"
as_server_user "initdb -D $CG/data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >$CG/initdb.log 2>&1" || {
	echo "(initdb failed: $CG/initdb.log)"
	exit 1
}
cat >>"$CG/data/postgresql.conf" <<EOF
shared_preload_libraries = 'migrate_ext'
shared_buffers = 512MB
jit = off
autovacuum = off
EOF
echo "CREATE DATABASE bench" >"$CG/createdb.sql"
as_server_user "postgres --single -D $CG/data postgres <$CG/createdb.sql >>$CG/single.log 2>&1"

# the same data as the benchmark, generated the same way (bench_source)
{
	echo "CREATE EXTENSION migrate_ext"
	echo "CREATE TABLE src AS SELECT i::bigint AS id, initcap(substr(md5(i::text), 1, 6)) || '.' || upper(substr(md5(i::text), 7, 3)) || i || '@Example.COM' AS email FROM generate_series(1, $ROWS) AS i"
	echo "CREATE FUNCTION bench_dw_plpgsql() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN NEW.new := lower(NEW.email); RETURN NEW; END\$\$"
	for p in i u; do
		echo "CREATE TABLE ${p}_plain (id bigint PRIMARY KEY, email text, new text)"
		echo "CREATE TABLE ${p}_generated (id bigint PRIMARY KEY, email text, new text GENERATED ALWAYS AS (lower(email)) STORED)"
		echo "CREATE TABLE ${p}_plpgsql (id bigint PRIMARY KEY, email text, new text)"
		echo "CREATE TRIGGER b BEFORE INSERT OR UPDATE ON ${p}_plpgsql FOR EACH ROW EXECUTE FUNCTION bench_dw_plpgsql()"
		echo "CREATE TABLE ${p}_migrate_ext (id bigint PRIMARY KEY, email text)"
		echo "SELECT mig_expand('${p}_migrate_ext', 'email', new_col => 'new', up => 'lower(email)')"
	done
	echo "CREATE TABLE u_noop_c (id bigint PRIMARY KEY, email text, new text)"
	echo "CREATE TRIGGER b BEFORE UPDATE ON u_noop_c FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
	for v in plain noop_c; do
		echo "INSERT INTO u_$v (id, email, new) SELECT id, email, lower(email) FROM src"
	done
	for v in generated plpgsql migrate_ext; do
		echo "INSERT INTO u_$v (id, email) SELECT id, email FROM src"
	done
	echo "VACUUM ANALYZE"
} >"$CG/prep.sql"
single "$CG/prep.sql"

# cg NAME SQL: instructions of SQL's executor run.
cg() {
	echo "$2" >"$CG/$1.sql"
	as_server_user "valgrind --tool=callgrind --callgrind-out-file=$CG/$1.cg --toggle-collect=standard_ExecutorRun \
		postgres --single -D $CG/data bench <$CG/$1.sql >$CG/$1.log 2>&1"
	sed -n 's/^summary: //p' "$CG/$1.cg" | head -n 1
}

declare -A IR
for v in plain generated plpgsql migrate_ext; do
	if [ "$v" = plain ]; then
		IR[INSERT_$v]=$(cg "ins_$v" "INSERT INTO i_$v (id, email, new) SELECT id, email, lower(email) FROM src")
		IR[UPDATE_$v]=$(cg "upd_$v" "UPDATE u_$v SET email = email || 'x', new = lower(email || 'x')")
	else
		IR[INSERT_$v]=$(cg "ins_$v" "INSERT INTO i_$v (id, email) SELECT id, email FROM src")
		IR[UPDATE_$v]=$(cg "upd_$v" "UPDATE u_$v SET email = email || 'x'")
	fi
done
IR[UPDATE_noop_c]=$(cg upd_noop_c "UPDATE u_noop_c SET email = email || 'x', new = lower(email || 'x')")
IR[INSERT_noop_c]=-

per_row() { awk -v v="$1" -v n="$ROWS" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.0f", v / n }'; }
printf '%-9s %9s %10s %9s %12s %13s | %-22s %-27s %s\n' "instr/row" plain generated plpgsql migrate_ext "no-op C trig" \
	"migrate_ext/generated" "(mx-plain)/(plpgsql-plain)" "(noop-plain)/(plpgsql-plain)"
for s in INSERT UPDATE; do
	p=${IR[${s}_plain]} g=${IR[${s}_generated]} l=${IR[${s}_plpgsql]} m=${IR[${s}_migrate_ext]} n=${IR[${s}_noop_c]}
	r1=$(ratio "$m" "$g")
	r2=$(ratio "$((m - p))" "$((l - p))")
	r3=-
	[ "$n" != - ] && r3=$(ratio "$((n - p))" "$((l - p))")
	printf '%-9s %9s %10s %9s %12s %13s | %-22s %-27s %s\n' "$s" "$(per_row "$p")" "$(per_row "$g")" \
		"$(per_row "$l")" "$(per_row "$m")" "$(per_row "$n")" "$r1" "$r2" "$r3"
	bench_summary "dualwrite $s in instructions (callgrind): migrate_ext/generated $r1; (migrate_ext-plain)/(plpgsql-plain) $r2"
done

# What the executor's trigger call and mig_dualwrite spend, per row.
for s in ins upd; do
	[ "$s" = ins ] && caller=ExecBRInsertTriggers || caller=ExecBRUpdateTriggersNew
	echo "$( [ "$s" = ins ] && echo INSERT || echo UPDATE ) with migrate_ext: instructions per row, inclusive"
	(cd "$CG" && callgrind_annotate --auto=no --tree=calling --inclusive=yes "${s}_migrate_ext.cg" 2>/dev/null) |
		awk -v n="$ROWS" -v c1="$caller" '
			/^ *[0-9,]+ .*\*  / { inblk = ($0 ~ ("[?]:" c1 " \\[") || $0 ~ /dualwrite[.]c:mig_dualwrite \[/) }
			/^$/ { inblk = 0 }
			/^ *[0-9,]+ .*[*]  .*executor[.]h:mig_dualwrite/ { v = $1; gsub(",", "", v); expr = v }
			inblk {
				v = $1; gsub(",", "", v)
				name = $0; sub(/.*(\*|>)  +/, "", name); sub(/ \[.*/, "", name); sub(/^.*:/, "", name); sub(/ \(.*/, "", name)
				mark = " "; if ($0 ~ /[*]  /) mark = "*"
				per = v / n
				if (per >= 20)
					printf "  %s %-34s %7.0f\n", mark, name, per
			}
			END { if (expr) printf "    of which the up expression (inlined ExecEvalExprSwitchContext) %.0f\n", expr / n }'
done
echo "(0x... are static functions of the stripped server: in ExecBR*Triggers, the larger is"
echo " ExecCallTriggerFunc, the other (UPDATE) GetTupleForTrigger, which locks the old row.)"
echo "(callgrind files: $CG, kept with MIG_BENCH_KEEP=1; read them with callgrind_annotate --tree=calling --inclusive=yes FILE)"
