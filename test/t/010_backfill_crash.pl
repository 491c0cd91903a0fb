# A backfill survives a kill -9 of its worker and an immediate shutdown:
# with migrate_ext in shared_preload_libraries, the launcher gives the job a
# new worker after the restart, which goes on from the checkpoint, and every
# row ends up right, each counted once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 30000;
my $node = mig_node('crash', conf => "restart_after_crash = on\n", setup => qq(
CREATE TABLE t (id bigint PRIMARY KEY, email text NOT NULL);
INSERT INTO t SELECT g, 'User' || g || '\@Example.COM' FROM generate_series(1, $rows) g;
SELECT mig_expand('t', 'email', up => 'lower(email)');
));

my $job = latest_job();

# Empty the new column again (the trigger off meanwhile, so that it does
# not fill it back), for the next job to have every row to do.
sub clear_new_column
{
	$node->safe_psql('postgres', qq(
SET client_min_messages = error;
ALTER TABLE t DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE t SET _mig_new_email = NULL;
ALTER TABLE t ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
));
}

# Start a slow job, and wait until it is well under way.
sub start_slow_job
{
	$node->safe_psql('postgres',
		"SELECT mig_backfill('t', batch_size => 200, sleep_ms => 20)");
	$node->poll_query_until('postgres', "SELECT ($job).rows_done >= 3000")
	  or die "the backfill did not get going";
}

# After a restart: the job finishes by itself, with every row right.
sub check_finished
{
	my ($what) = @_;
	$node->poll_query_until('postgres',
		"SELECT ($job).state NOT IN ('running', 'throttled', 'interrupted')")
	  or die "the job did not finish after $what";
	is($node->safe_psql('postgres', "SELECT ($job).state"), 'done', "job done after $what");
	is( $node->safe_psql('postgres',
			"SELECT count(*) FROM t WHERE _mig_new_email IS DISTINCT FROM lower(email)"),
		'0',
		"every row right after $what");
	# the lost batch was rolled back with its checkpoint: no row counted twice
	is( $node->safe_psql('postgres', "SELECT ($job).rows_done, ($job).rows_seen"),
		"$rows|$rows", "each row written and counted once after $what");
}

# 1. kill -9 of the worker: the postmaster restarts every backend
start_slow_job();
my $pid = $node->safe_psql('postgres', "SELECT ($job).worker_pid");
my $log_offset = -s $node->logfile;
kill 'KILL', $pid;
check_finished('kill -9 of the worker');
ok($node->log_contains(qr/resuming backfill job/, $log_offset),
	'the launcher resumed the job');
isnt($node->safe_psql('postgres', "SELECT ($job).worker_pid"), $pid, 'by a new worker');

# 2. immediate shutdown in the middle of a job
clear_new_column();
start_slow_job();
$node->stop('immediate');
$node->start;
check_finished('an immediate shutdown');

# 3. a paused job stays paused across a restart, with a worker waiting
clear_new_column();
start_slow_job();
$node->safe_psql('postgres', "SELECT mig_pause('t')");
my $done = $node->safe_psql('postgres', "SELECT ($job).rows_done");
$node->restart;
$node->poll_query_until('postgres', qq(
SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND classid = migrate_ext.lock_key('job')
			   AND objid = ($job).id AND granted)))
  or die "no worker waits for the paused job";
sleep(1);
is($node->safe_psql('postgres', "SELECT ($job).state, ($job).rows_done"),
	"paused|$done", 'a paused job stays paused after a restart');
$node->safe_psql('postgres', "SELECT mig_set('t', 'sleep_ms', '0'); SELECT mig_resume('t')");
check_finished('a pause across a restart');

$node->stop;
done_testing();
