#!/usr/bin/env bash
#
# bench/run.sh: the benchmarks, as `make bench` runs them (doc/bench.md).
#
#   bash bench/run.sh                     all of them
#   bash bench/run.sh dualwrite validate  some of them
#
# The benchmarks: dualwrite, backfill, live, parallel, validate, and
# lifecycle (expand to contract of a partitioned table's key under a
# pgbench write load: latencies and client lock waits per phase).
#
# It builds and installs the extension into the PostgreSQL whose pg_config
# is first on PATH (as root; otherwise it checks the installed files are
# current), starts a throwaway server as an unprivileged user with
# migrate_ext preloaded, runs each benchmark (each prints its table), prints
# a summary of the ratios against their goals, and stops the server.
#
# Settings (environment), sizes first:
#   MIG_BENCH_REPEAT=3          runs per timed measurement (the median is kept)
#   MIG_BENCH_DW_ROWS=1000000   dual-write: rows inserted and updated
#   MIG_BENCH_BF_SIZES="2000000 5000000"
#                               backfill and live impact: the table sizes, each
#                               measured in the same run
#   MIG_BENCH_BF_ROWS=5000000   validation: table size (and backfill/live when
#                               MIG_BENCH_BF_SIZES is unset and this is set)
#   MIG_BENCH_PAR_ROWS=5000000  parallel: rows of the partitioned table and heap
#   MIG_BENCH_PAR_PARTS=8       parallel: partitions
#   MIG_BENCH_PAR_WORKERS="1 2 4"       parallel => values, partitioned table
#   MIG_BENCH_PAR_HEAP_WORKERS="1 2"    parallel => values, one heap
#   MIG_BENCH_BF_BATCH=10000    rows per COMMIT of the PL/pgSQL keyset loop
#   MIG_BENCH_LIVE_SECONDS=30   live impact: length of each pgbench run
#   MIG_BENCH_LIVE_CLIENTS=4    pgbench -c
#   MIG_BENCH_LIVE_THREADS=2    pgbench -j
#   MIG_BENCH_LIVE_RATE=        pgbench -R (transactions/s); empty: as fast as it goes
#   MIG_BENCH_LIFE_ROWS=4000000 lifecycle: orders in the partitioned table
#   MIG_BENCH_LIFE_PARALLEL=2   lifecycle: mig_backfill parallel =>
#   MIG_BENCH_LIFE_CLIENTS=4    lifecycle: pgbench -c (and _THREADS=2: -j)
#   MIG_BENCH_LIFE_QUIET=10     lifecycle: seconds of load before expand and
#                               after contract
#   MIG_BENCH_LIFE_CHUNK=5      lifecycle: length of each pgbench run of the load
#   MIG_BENCH_LIFE_READER="2 3" lifecycle: a reader's transaction held 2 s, every
#                               2 + 3 s (0: none)
#   MIG_BENCH_LIFE_PROBE_MS=400 lifecycle: the probe's lock (0: none)
#   MIG_BENCH_LIFE_STEP_RETRIES=5  lifecycle: retries of a step failing with 55P03
#   MIG_BENCH_PROFILE=auto      dual-write: perf profile of the C trigger when it
#                               misses a goal (auto), always (on), never (off)
# and the server:
#   MIG_BENCH_PORT=5444         first port tried (the next free one is used)
#   MIG_BENCH_USER              OS user running it (default postgres, else migbench)
#   MIG_BENCH_SHARED_BUFFERS=4GB
#   MIG_BENCH_PGCONF            extra postgresql.conf lines
#   MIG_BENCH_KEEP=1            keep the data directory, log and pgbench logs

set -uo pipefail

BENCHES_ALL=(dualwrite backfill live parallel validate lifecycle)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The PostgreSQL to build against and run: the pg_config first on PATH.
if [ -z "${PG_CONFIG:-}" ] && command -v pg_config >/dev/null 2>&1; then
	PG_CONFIG=$(command -v pg_config)
fi

# shellcheck source=test/lib.sh
. "$ROOT/test/lib.sh"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

BENCHES=("$@")
[ "${#BENCHES[@]}" -gt 0 ] || BENCHES=("${BENCHES_ALL[@]}")
for b in "${BENCHES[@]}"; do
	[ -f "$ROOT/bench/$b.sh" ] && [[ " ${BENCHES_ALL[*]} " == *" $b "* ]] ||
		mig_die "unknown benchmark '$b' (choose from: ${BENCHES_ALL[*]})"
done

mig_ensure_packages || exit 1
mig_install || exit 1
for b in pgbench psql initdb pg_ctl; do
	command -v "$b" >/dev/null 2>&1 || mig_die "$b not found in $PG_BINDIR"
done

if [ -z "${MIG_BENCH_USER:-}" ]; then
	if id -u postgres >/dev/null 2>&1; then MIG_BENCH_USER=postgres; else MIG_BENCH_USER=migbench; fi
fi
MIG_TEST_USER=$MIG_BENCH_USER
mig_ensure_user || exit 1

BENCH_OUT=$(mktemp -d /tmp/migrate_ext_bench_out.XXXXXX) || exit 1
chmod 755 "$BENCH_OUT"
export BENCH_OUT
: >"$BENCH_OUT/summary"

# shellcheck disable=SC2317
cleanup() {
	bench_server_stop
	if [ "${MIG_BENCH_KEEP:-0}" = 1 ]; then
		echo "the benchmarks' files (pgbench logs, profiles) are kept in $BENCH_OUT"
	else
		rm -rf "$BENCH_OUT"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_server_start || exit 1

echo
echo "migrate_ext benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(bv 'SHOW server_version'),"
echo "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "server: shared_buffers=$(bv 'SHOW shared_buffers'), jit=$(bv 'SHOW jit'), fsync=$(bv 'SHOW fsync'), synchronous_commit=$(bv 'SHOW synchronous_commit'), repeat=$BENCH_REPEAT"

STATUS=0
START=$SECONDS
for b in "${BENCHES[@]}"; do
	echo
	t0=$SECONDS
	if ! bash "$ROOT/bench/$b.sh"; then
		echo "benchmark $b FAILED (server log: $BENCH_DATA/server.log)"
		tail -n 20 "$BENCH_DATA/server.log"
		bench_summary "$b: FAILED"
		STATUS=1
	fi
	echo "($b: $((SECONDS - t0)) s)"
done

echo
echo "Summary ($((SECONDS - START)) s)"
echo "-------"
cat "$BENCH_OUT/summary"
exit $STATUS
