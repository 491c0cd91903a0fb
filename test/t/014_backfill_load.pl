# The backfill yields to the application's load (migrate_ext.backfill_yield):
# while this database's sessions keep CPUs busy, the job throttles with reason
# 'load'; sessions that only wait do not count; and with the setting at 0
# (reloaded into the running worker) it runs flat out under the same load.
# A load of very short statements (pgbench) is seen too: the worker measures
# the sessions' CPU time, not a sample of who is running.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('load', setup => q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	INSERT INTO t SELECT g, 'V' || g FROM generate_series(1, 300000) g;
	SELECT mig_expand('t', 'v', up => 'lower(v)');
});

# a session that only waits (here: for a lock) must not count as load
$node->safe_psql('postgres', q{CREATE TABLE gate (x int)});
my $holder = $node->background_psql('postgres');
$holder->query_safe(q{BEGIN; LOCK TABLE gate});
my $waiter = IPC::Run::start(
	[ 'psql', '-X', '-d', $node->connstr('postgres'), '-c', 'BEGIN', '-c', 'LOCK TABLE gate', '-c', 'COMMIT' ],
	'>', \my $wout, '2>', \my $werr);
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'})
  or die 'the waiter does not wait';

is($node->safe_psql('postgres', q{SELECT migrate_ext.busy_sessions()}),
	'0', 'a session waiting for a lock, or idle in a transaction, is not load');
$node->safe_psql('postgres', q{SELECT mig_backfill('t', batch_size => 2000)});
$node->poll_query_until('postgres', q{SELECT state = 'done' FROM migrate_ext.job ORDER BY id DESC LIMIT 1})
  or die 'the backfill did not finish';
$holder->query_safe('COMMIT');
$waiter->finish;
$holder->quit;

# two sessions keeping both CPUs busy
my $busy_sql = 'SELECT count(*) FROM generate_series(1, 2000000000)';
my @busy = map {
	IPC::Run::start([ 'psql', '-X', '-d', $node->connstr('postgres'), '-c', $busy_sql ],
		'>', \my $out, '2>', \my $err)
} 1 .. 2;
$node->poll_query_until('postgres',
	qq{SELECT count(*) = 2 FROM pg_stat_activity WHERE query = '$busy_sql' AND state = 'active'})
  or die 'the busy sessions did not start';
# polled: on a machine busy with other work a sample may catch one of them
# off its CPU for a moment
ok($node->poll_query_until('postgres', q{SELECT migrate_ext.busy_sessions() = 2}),
	'two sessions running on a CPU are load');

$node->safe_psql('postgres', q{
	SET migrate_ext.writer = 'old';
	UPDATE t SET v = v || '!' WHERE id % 2 = 0;	-- rows for a second job to write
	SELECT mig_backfill('t', batch_size => 2000);
});
ok($node->poll_query_until('postgres',
		q{SELECT state = 'throttled' AND throttle_reason = 'load' FROM mig_progress('t')}),
	'under CPU load the job throttles with reason load');

$node->safe_psql('postgres', q{ALTER SYSTEM SET migrate_ext.backfill_yield = 0; SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', q{SELECT state = 'done' FROM mig_progress('t')}),
	'with backfill_yield = 0 it finishes under the same load');
is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_stat_activity WHERE query = '$busy_sql' AND state = 'active'}),
	'2', 'the load was there all along');
is($node->safe_psql('postgres', q{SELECT count(*) FROM t WHERE _mig_new_v IS DISTINCT FROM lower(v)}),
	'0', 'every row right');
# the worker's now() moves with its transactions (a worker must set the
# statement start time itself): the job's timestamps are not all its first
is($node->safe_psql('postgres', q{
	SELECT finished_at > started_at + interval '50 ms' AND updated_at = finished_at
	  FROM migrate_ext.job ORDER BY id DESC LIMIT 1}),
	't', 'the job row records when it really finished');

$node->safe_psql('postgres',
	qq{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = '$busy_sql'});
$_->finish for @busy;

# Short statements keep the CPUs busy too, though a session is rarely caught
# running one: the worker measures the sessions' CPU time over each batch and
# its pause (/proc), not a sample, and yields to them.
$node->safe_psql('postgres', q{ALTER SYSTEM RESET migrate_ext.backfill_yield; SELECT pg_reload_conf()});
$node->safe_psql('postgres', q{
	SET migrate_ext.writer = 'old';
	UPDATE t SET v = v || '?' WHERE id % 2 = 1;
});
my ($pgbench, $perr) = mig_pgbench($node, q{
\set id random(1, 300000)
SELECT v FROM t WHERE id = :id;
}, clients => 2, seconds => 30);
sleep(1);
$node->safe_psql('postgres', q{SELECT mig_backfill('t', batch_size => 2000)});
ok($node->poll_query_until('postgres',
		q{SELECT state = 'throttled' AND throttle_reason = 'load' FROM mig_progress('t')}),
	'under a load of 0.05 ms statements the job throttles with reason load');
ok($node->poll_query_until('postgres', q{SELECT state = 'done' FROM mig_progress('t')}),
	'and it finishes under it');
$pgbench->kill_kill;
is($node->safe_psql('postgres', q{SELECT count(*) FROM t WHERE _mig_new_v IS DISTINCT FROM lower(v)}),
	'0', 'every row right');
$node->stop;
done_testing();
