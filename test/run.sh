#!/usr/bin/env bash
#
# test/run.sh: the whole suite, as `make test` and CI (.ci/run) run it.
#
#   1. installs what is missing (as root; otherwise only checks),
#   2. builds and installs the extension,
#   3. runs pg_regress (sql/*.sql), isolation (test/isolation/specs/*.spec)
#      and TAP (test/t/*.pl) against throwaway servers, as an unprivileged
#      user (initdb refuses root) in a copy of the tree when root,
#   4. goes on through all three suites when one fails, shows why, and
#   5. ends with one line "N passed, M failed", counting test files: each
#      pg_regress test, each isolation spec, each TAP file. Exits non-zero
#      when anything failed or nothing ran.
#
# Settings (environment):
#   MIG_TEST_USER     the unprivileged user (root only; default migtest)
#   MIG_TEST_BUDGET   seconds the whole run may take, counted from the start
#                     (default 840): a suite still running then is stopped
#                     and counts as failed
#   MIG_TEST_KEEP=1   keep the staging copy even when everything passed
#   MIG_TEST_SUITES   which suites, default "regress isolation tap valgrind
#                     package" (package: test/package.sh, make package-test)
#   MIG_TAP_ONLY      TAP files to run instead of all (e.g. test/t/050_*.pl)
#   MIG_TAP_JOBS      TAP files run at a time (default 2)
#   PG_CONFIG         default /usr/lib/postgresql/15/bin/pg_config

set -uo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUDGET=${MIG_TEST_BUDGET:-840}
SUITES=${MIG_TEST_SUITES:-regress isolation tap valgrind package}
PASSED=0
FAILED=0
FAILED_NAMES=()
STAGE=
HLOG=

# The summary, last, alone on its line; the exit status.
finish() {
	echo
	if [ -n "$STAGE" ] && [ "$STAGE" != "$MIG_ROOT" ]; then
		if [ "$FAILED" -eq 0 ] && [ "${MIG_TEST_KEEP:-0}" != 1 ]; then
			rm -rf "$STAGE"
		else
			echo "the test run's tree (servers' data and logs) is kept in $STAGE"
		fi
	fi
	if [ -n "$HLOG" ]; then
		if [ "$FAILED" -eq 0 ] && [ "${MIG_TEST_KEEP:-0}" != 1 ]; then
			rm -rf "$HLOG"
		else
			echo "the runners' output is in $HLOG"
		fi
	fi
	[ "${#FAILED_NAMES[@]}" -gt 0 ] && echo "failed: ${FAILED_NAMES[*]}"
	[ "$PASSED" -eq 0 ] && [ "$FAILED" -eq 0 ] && echo "no test ran"
	echo "$PASSED passed, $FAILED failed"
	if [ "$FAILED" -gt 0 ] || [ "$PASSED" -eq 0 ]; then
		exit 1
	fi
	exit 0
}

# A step before the suites failed: nothing can be tested.
fail_early() {
	FAILED=$((FAILED + 1))
	FAILED_NAMES+=("$1")
	finish
}

# Show a file, or its head and tail when long.
show_file() {
	local f=$1 n
	[ -s "$f" ] || return 0
	n=$(wc -l <"$f")
	echo "---- $f ($n lines) ----"
	if [ "$n" -le 400 ]; then
		cat "$f"
	else
		head -n 300 "$f"
		echo "[... $((n - 400)) lines left out ...]"
		tail -n 100 "$f"
	fi
	echo "---- end of $f ----"
}

show_tail() {
	local f=$1 n=${2:-60}
	[ -s "$f" ] || return 0
	echo "---- last $n lines of $f ----"
	tail -n "$n" "$f"
	echo "---- end of $f ----"
}

# Stop any server a runner left behind in the staging tree (after a timeout).
stop_leftover_servers() {
	local pidfile dir
	while IFS= read -r pidfile; do
		dir=$(dirname "$pidfile")
		mig_as_user "pg_ctl stop -m immediate -D $(mig_q "$dir") >/dev/null 2>&1" || true
	done < <(find "$STAGE" -name postmaster.pid -path '*tmp_check*' 2>/dev/null)
}

# Copy a suite's results into the work tree (when the run was staged).
copy_back() {
	[ "$STAGE" != "$MIG_ROOT" ] || return 0
	local p
	for p in "$@"; do
		[ -e "$STAGE/$p" ] || continue
		mkdir -p "$MIG_ROOT/$(dirname "$p")"
		rm -rf "${MIG_ROOT:?}/$p"
		cp -r "$STAGE/$p" "$MIG_ROOT/$p" 2>/dev/null || true
	done
}

# run_make_suite NAME LOG MAKE-ARGS...: run `make installcheck ARGS` as the
# test user in the staging tree, within what is left of the budget. Sets RC.
run_make_suite() {
	local name=$1 log=$2 left
	shift 2
	left=$((BUDGET - SECONDS))
	if [ "$left" -lt 30 ]; then
		echo "not enough time left in MIG_TEST_BUDGET=$BUDGET s to run $name" | tee "$log"
		RC=124
		return
	fi
	local args="" a
	for a in "$@"; do args+=" $(mig_q "$a")"; done
	# pg_regress --temp-instance=tmp_check/X does not create tmp_check/.
	mig_as_user "cd $(mig_q "$STAGE") && mkdir -p tmp_check && exec timeout -k 20 $left make installcheck PG_CONFIG=$(mig_q "$PG_CONFIG")$args" \
		</dev/null 2>&1 | tee "$log"
	RC=${PIPESTATUS[0]}
	if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
		echo "$name: timed out (MIG_TEST_BUDGET=$BUDGET s for the whole run)" | tee -a "$log"
	fi
	stop_leftover_servers
}

# Add one suite's counts to the totals: NAME passed failed [failed names...]
tally() {
	local name=$1 p=$2 f=$3
	shift 3
	echo "==> $name: $p passed, $f failed"
	PASSED=$((PASSED + p))
	FAILED=$((FAILED + f))
	FAILED_NAMES+=("$@")
}

# pg_regress and pg_isolation_regress (PostgreSQL 15) print one line per
# test: "test NAME ... ok  12 ms" or "... FAILED" (indented, without "test",
# inside a parallel group).
RE_PGR='^(test +| +)[^ ]+ +\.\.\. '

# run_pgr_suite NAME EXPECTED DIFFS POSTMASTER_LOG MAKE-ARGS...
run_pgr_suite() {
	local name=$1 expected=$2 diffs=$3 pmlog=$4
	shift 4
	local log="$HLOG/$name.log" p f missing names
	rm -f "$STAGE/$diffs"
	mig_log "$name: $expected test(s)"
	run_make_suite "$name" "$log" "$@"
	p=$(grep -Ec "$RE_PGR(ok|failed \\(ignored\\))( |$)" "$log")
	f=$(grep -Ec "${RE_PGR}FAILED" "$log")
	mapfile -t names < <(grep -E "${RE_PGR}FAILED" "$log" |
		sed -E "s/^(test +| +)([^ ]+).*/$name:\\2/")
	missing=$((expected - p - f))
	if [ "$missing" -gt 0 ]; then
		echo "$name: $missing test(s) did not run or report (runner exit status $RC)"
		f=$((f + missing))
		names+=("$name:($missing not run)")
	elif [ "$RC" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "$name: the runner failed (exit status $RC) though no test reported a failure"
		f=1
		names+=("$name:(runner exit $RC)")
	fi
	if [ "$f" -gt 0 ]; then
		show_file "$STAGE/$diffs"
		show_tail "$STAGE/$pmlog" 60
		[ -s "$STAGE/$diffs" ] || [ -s "$STAGE/$pmlog" ] || show_tail "$log" 40
	fi
	tally "$name" "$p" "$f" "${names[@]}"
}

run_tap_suite() {
	local expected=$1 log="$HLOG/tap.log" files p f name base lf
	local -a failed_files=()
	mig_log "tap: $expected file(s)"
	if [ -n "${MIG_TAP_ONLY:-}" ]; then
		run_make_suite tap "$log" REGRESS= ISOLATION= "PROVE_TESTS=$MIG_TAP_ONLY"
	else
		# two files at a time: the TAP files mostly wait (for workers,
		# restarts, polls), about a fifth of the machine's CPU when run one
		# by one; each has its own servers and ports (PostgreSQL::Test::Cluster)
		run_make_suite tap "$log" REGRESS= ISOLATION= "PROVE_FLAGS=-j${MIG_TAP_JOBS:-2}"
	fi
	# prove: "Files=N, Tests=M, ..." then "Result: PASS|FAIL"; each failed
	# file is listed under "Test Summary Report" as "FILE (Wstat: ...".
	files=$(sed -n -E 's/^Files=([0-9]+), Tests=.*/\1/p' "$log" | tail -n 1)
	mapfile -t failed_files < <(grep -E '^[^ ]+\.pl +\(Wstat: ' "$log" | awk '{print $1}' | sort -u)
	if [ -n "$files" ]; then
		f=${#failed_files[@]}
		p=$((files - f))
		if [ "$RC" -ne 0 ] && [ "$f" -eq 0 ]; then
			echo "tap: prove failed (exit status $RC) though no file reported a failure"
			f=1
			failed_files=("(prove exit $RC)")
		fi
	else
		# prove did not finish (timeout, or it did not start): whatever did
		# not print "ok" failed.
		p=$(grep -Ec '^[^ ]+\.pl \.+ ok' "$log")
		f=$((expected - p))
		[ "$f" -gt 0 ] || f=1
		failed_files+=("(prove did not finish: exit status $RC)")
	fi
	if [ "$f" -gt 0 ]; then
		local shown=0
		for name in "${failed_files[@]}"; do
			base=$(basename "$name" .pl)
			for lf in "$STAGE"/tmp_check/log/*"$base"*; do
				[ -f "$lf" ] || continue
				show_tail "$lf" 80
				shown=1
			done
		done
		if [ "$shown" -eq 0 ]; then
			for lf in "$STAGE"/tmp_check/log/*; do
				[ -f "$lf" ] && show_tail "$lf" 40
			done
		fi
	fi
	local -a names=()
	for name in "${failed_files[@]}"; do names+=("tap:$name"); done
	tally tap "$p" "$f" "${names[@]}"
}

# --- 1. packages ------------------------------------------------------------
mig_ensure_packages || fail_early packages
mig_log "$("$PG_CONFIG" --version), binaries in $PG_BINDIR"

# --- 2. build and install ------------------------------------------------------
mig_build || fail_early build
mig_install || fail_early install
mig_ensure_user || fail_early user

# --- 3. where the suites run -----------------------------------------------------
HLOG=$(mktemp -d /tmp/migrate_ext_harness.XXXXXX)
# the released versions' sources, for the upgrade test (git is not staged)
mig_export_releases "$MIG_ROOT/test/releases"
if mig_is_root; then
	STAGE=$(mktemp -d /tmp/migrate_ext_test.XXXXXX)
	tar -C "$MIG_ROOT" --exclude=./.git --exclude=./results --exclude=./output_iso \
		--exclude=./tmp_check --exclude=./log --exclude=./regression.diffs --exclude=./regression.out \
		-cf - . | tar -C "$STAGE" -xf - || fail_early "copy to $STAGE"
	chown -R "$MIG_TEST_USER:" "$STAGE" || fail_early "chown $STAGE"
	chmod 755 "$STAGE"
	# what a previous run copied back would now mislead
	rm -rf "${MIG_ROOT:?}/results" "$MIG_ROOT/output_iso" "$MIG_ROOT/tmp_check" \
		"$MIG_ROOT/log/postmaster.log" "$MIG_ROOT/log/initdb.log" \
		"$MIG_ROOT/regression.diffs" "$MIG_ROOT/regression.out"
	mig_log "running the suites as $MIG_TEST_USER in $STAGE"
else
	STAGE=$MIG_ROOT
	mig_log "running the suites as $MIG_TEST_USER in place"
fi

# tests_of DIR EXT: the test names in DIR (*.EXT), sorted as make sorts them.
tests_of() {
	local f
	for f in "$1"/*."$2"; do
		[ -f "$f" ] && basename "$f" ".$2"
	done | LC_ALL=C sort
}

# pg_regress stops the whole suite at a test whose expected file is missing.
# Staged, give such a test an empty expected file in the copy: it fails and
# its diff shows all it printed (copy it from results/). In place, leave it
# out and count it failed. Sets RUN_LIST (names to run) and MISSING.
# check_expected NAME TESTDIR EXT EXPECTEDDIR
check_expected() {
	local name=$1 tdir=$2 ext=$3 edir=$4 t
	RUN_LIST=()
	MISSING=()
	while IFS= read -r t; do
		if [ -f "$edir/$t.out" ]; then
			RUN_LIST+=("$t")
			continue
		fi
		MISSING+=("$t")
		if [ "$STAGE" != "$MIG_ROOT" ]; then
			echo "$name: ${edir#"$STAGE"/}/$t.out is missing: $t will fail and its diff shows its whole output"
			mkdir -p "$edir" && : >"$edir/$t.out" && chown -R "$MIG_TEST_USER:" "$edir"
			RUN_LIST+=("$t")
		else
			echo "$name: ${edir#"$STAGE"/}/$t.out is missing: $t is not run and counts as failed"
		fi
	done < <(tests_of "$tdir" "$ext")
}

# run_pgr_group NAME VAR TESTDIR EXT EXPECTEDDIR DIFFS PMLOG MAKE-ARGS...:
# one pg_regress-style suite, VAR being the make variable listing its tests.
run_pgr_group() {
	local name=$1 var=$2 tdir=$3 ext=$4 edir=$5 diffs=$6 pmlog=$7
	shift 7
	check_expected "$name" "$tdir" "$ext" "$edir"
	local n_missing_out=0
	[ "$STAGE" != "$MIG_ROOT" ] || n_missing_out=${#MISSING[@]}
	if [ "${#RUN_LIST[@]}" -eq 0 ] && [ "$n_missing_out" -eq 0 ]; then
		mig_log "$name: no test, skipped"
		return
	fi
	if [ "${#RUN_LIST[@]}" -gt 0 ]; then
		run_pgr_suite "$name" "${#RUN_LIST[@]}" "$diffs" "$pmlog" "$var=${RUN_LIST[*]}" "$@"
	fi
	if [ "$n_missing_out" -gt 0 ]; then
		local -a names=()
		local t
		for t in "${MISSING[@]}"; do names+=("$name:$t(no expected output)"); done
		tally "$name (missing expected output)" 0 "$n_missing_out" "${names[@]}"
	fi
}

n_tap=$(find "$STAGE/test/t" -maxdepth 1 -name '*.pl' 2>/dev/null | wc -l)


for suite in $SUITES; do
	case $suite in
	regress)
		run_pgr_group regress REGRESS "$STAGE/sql" sql "$STAGE/expected" \
			regression.diffs log/postmaster.log ISOLATION= TAP_TESTS=
		copy_back results regression.diffs regression.out log/postmaster.log log/initdb.log
		;;
	isolation)
		run_pgr_group isolation ISOLATION "$STAGE/test/isolation/specs" spec "$STAGE/test/isolation/expected" \
			output_iso/regression.diffs output_iso/log/postmaster.log REGRESS= TAP_TESTS=
		copy_back output_iso
		;;
	tap)
		if [ "$n_tap" -gt 0 ]; then
			run_tap_suite "$n_tap"
			copy_back tmp_check/log
		else
			mig_log "tap: no test/t/*.pl, skipped"
		fi
		;;
	valgrind)
		# a single-user backend (~1 min), then a whole server through the
		# background workers' backfill paths (~80 s; make valgrind adds
		# the contract worker)
		for vg in valgrind valgrind_workers; do
			if bash "$MIG_ROOT/test/$vg.sh"; then
				tally "valgrind ($vg.sh)" 1 0
			else
				tally "valgrind ($vg.sh)" 0 1 "valgrind:test/$vg.sh"
			fi
		done
		;;
	package)
		# the Debian package, built in a clean copy and tested by pg_regress
		# against its files in a scratch server (~40 s)
		if bash "$MIG_ROOT/test/package.sh"; then
			tally package 1 0
		else
			tally package 0 1 package:test/package.sh
		fi
		;;
	*) mig_warn "unknown suite '$suite' in MIG_TEST_SUITES" ;;
	esac
done
if [ "$STAGE" != "$MIG_ROOT" ]; then
	echo "results copied back into $MIG_ROOT (results/, regression.diffs, log/, output_iso/, tmp_check/log/)"
fi
finish
