# The backfill of a partitioned table walks every leaf with its own key and
# checkpoint (a slice each, migrate_ext.job_slices): range on top with a
# default partition, a hash and a list sub-partitioned level.  With
# parallel => 2 two workers walk leaves at once and share the pace (the rate
# cap split between them); mig_set changes the number of workers of a
# running job; a partition attached mid-backfill is walked too, and one
# detached is reported (slice 'detached', mig_status.slices_detached), not an
# error.  A pgbench mix during a parallel backfill: mig_validate is clean.
# A kill -9 of one of the workers and an immediate shutdown mid-run:
# the launcher resumes every slice, nothing is lost and no row is written
# twice (rows_done, which commits with the rows, is the number of rows, in
# the job row and in the sum of the slices).

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 3000;
my $node = mig_node('bf_leaves', conf => "restart_after_crash = on\n");
mig_partition_tree($node, 'id int NOT NULL, created_at date NOT NULL, v int, PRIMARY KEY (id, created_at)');
$node->safe_psql('postgres', qq{
INSERT INTO ev SELECT g, date '2020-01-01' + (g % 1400), g FROM generate_series(1, $rows) g;
SELECT mig_expand('ev', 'v', type => 'bigint');
});

my $job = latest_job();
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_trigger WHERE tgname = 'zz_migrate_ext_dualwrite'
	   AND tgenabled = 'A' AND tgrelid::regclass::text LIKE 'ev%'}),
	'9', 'the dual-write trigger is on the parent, the sub-levels and every leaf');

# every row's new value NULL again
sub clear
{
	$node->safe_psql('postgres', q{
SET client_min_messages = error;
ALTER TABLE ev DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE ev SET _mig_new_v = NULL;
ALTER TABLE ev ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
});
}

sub all_right
{
	my ($what, $expect_rows) = @_;
	is($node->safe_psql('postgres',
		'SELECT count(*) FROM ev WHERE _mig_new_v IS DISTINCT FROM v'),
		'0', "$what: every row of every leaf filled");
	is($node->safe_psql('postgres', "SELECT ($job).rows_done, ($job).rows_seen"),
		"$expect_rows|$expect_rows", "$what: the job row counts each row once");
	is($node->safe_psql('postgres', qq{
		SELECT sum(rows_done) FROM migrate_ext.job_slices WHERE job_id = ($job).id}),
		$expect_rows, "$what: the slices' counts add up to the job's");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM migrate_ext.job_slices s
		 WHERE s.job_id = ($job).id AND s.state = 'done'
		   AND s.rows_done IS DISTINCT FROM (SELECT count(*) FROM ev WHERE ev.tableoid = s.relid)}),
		'0', "$what: each leaf's slice wrote each of its rows once");
}

# 1. one worker, leaf by leaf
clear();
$node->safe_psql('postgres', "SELECT mig_backfill('ev', batch_size => 100)");
is(wait_job_ended($node, 'ev'), 'done', 'the backfill of a partitioned table is done');
all_right('one worker', $rows);
is($node->safe_psql('postgres', qq{
	SELECT string_agg(relname || ':' || key_kind || ':' || array_to_string(key_cols, ','), ' '
	                  ORDER BY relname)
	  FROM migrate_ext.job_slices WHERE job_id = ($job).id}),
	join(' ', map { "public.$_:primary key:id,created_at" } qw(ev_1 ev_2a ev_2b ev_3a ev_3d ev_d)),
	'a slice per leaf, each walking its own primary key');
is($node->safe_psql('postgres', "SELECT phase FROM mig_status"), 'backfilled',
	'the migration is backfilled');
is($node->safe_psql('postgres', "SELECT ($job).key_kind"), 'slices', 'the job walks slices');
is($node->safe_psql('postgres', q{
	SELECT coalesce(string_agg(check_name || ': ' || failing, ', '), 'clean')
	  FROM mig_validate('ev') WHERE NOT passed}),
	'clean', 'mig_validate reads every leaf: clean');
is($node->safe_psql('postgres', "SELECT ($job).vacuums"), '6', 'a last VACUUM of each leaf');

# 2. two workers, a shared rate cap, a partition attached and one detached
clear();
$node->safe_psql('postgres', q{
CREATE TABLE ev_new (junk int, id int NOT NULL, created_at date NOT NULL, v int, _mig_new_v bigint);
ALTER TABLE ev_new DROP COLUMN junk;	-- its columns numbered otherwise than the parent's
ALTER TABLE ev_new ADD PRIMARY KEY (id, created_at);
INSERT INTO ev_new SELECT g, date '2030-01-01' + (g % 100), g FROM generate_series(5001, 6000) g;
});
$node->safe_psql('postgres',
	"SELECT mig_backfill('ev', batch_size => 20, parallel => 2, max_rows_per_sec => 400)");
$node->poll_query_until('postgres', qq{
	SELECT count(*) = 2 FROM migrate_ext.job_slices WHERE job_id = ($job).id AND state = 'running'
	   AND rate_cap IS NOT NULL})
  or die 'two workers did not start';
is($node->safe_psql('postgres', qq{
	SELECT string_agg(DISTINCT rate_cap::text, ',') FROM migrate_ext.job_slices
	 WHERE job_id = ($job).id AND state = 'running'}),
	'200', 'each of two workers paces to half the rate cap');
is($node->safe_psql('postgres', 'SELECT workers FROM mig_status'), '2',
	'mig_status shows two workers');
like($node->safe_psql('postgres', 'SELECT worker_progress FROM mig_status'),
	qr/^public\.ev_\w+ \d+\/\d+, public\.ev_\w+ \d+\/\d+$/, 'and what each one walks');
$node->safe_psql('postgres', q{
ALTER TABLE ev ATTACH PARTITION ev_new FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');
ALTER TABLE ev_3 DETACH PARTITION ev_3a;
});
# fewer workers, then more again, while it runs
$node->safe_psql('postgres', "SELECT mig_set('ev', 'parallel', '1')");
$node->poll_query_until('postgres', 'SELECT workers = 1 FROM mig_status')
  or die 'the second worker did not leave';
$node->safe_psql('postgres', "SELECT mig_set('ev', 'parallel', '2')");
$node->poll_query_until('postgres', "SELECT workers = 2 OR state <> 'running' FROM mig_status")
  or die 'no second worker came';
# the attached partition's slice, added by the last worker's re-listing, counts
# in the job's total while it is walked (1,000 rows at the cap: seconds)
$node->poll_query_until('postgres', qq{
	SELECT ($job).state NOT IN ('running', 'throttled')
	    OR EXISTS (SELECT FROM migrate_ext.job_slices WHERE job_id = ($job).id AND relname = 'public.ev_new')})
  or die 'the attached partition got no slice';
is($node->safe_psql('postgres', qq{
	SELECT ($job).state IN ('running', 'throttled')
	   AND ($job).rows_total = (SELECT sum(rows_total) FROM migrate_ext.job_slices WHERE job_id = ($job).id)
	   AND (SELECT rows_total FROM mig_status) >= $rows + 1000}),
	't', 'while it runs, the job\'s total (and mig_status\') counts the rows of the partition attached meanwhile');
$node->safe_psql('postgres', "SELECT mig_set('ev', 'max_rows_per_sec', NULL)");
is(wait_job_ended($node, 'ev'), 'done', 'two workers: done');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ev_new WHERE _mig_new_v IS DISTINCT FROM v'),
	'0', 'the partition attached during the backfill (its columns numbered otherwise) was walked');
is($node->safe_psql('postgres', qq{
	SELECT state FROM migrate_ext.job_slices WHERE job_id = ($job).id AND relname = 'public.ev_3a'}),
	'detached', 'the partition detached during the backfill is reported');
is($node->safe_psql('postgres', 'SELECT slices_detached FROM mig_status'), '1',
	'mig_status counts it');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ev WHERE _mig_new_v IS DISTINCT FROM v'),
	'0', 'two workers: every row of the table right');
my $in_ev = $node->safe_psql('postgres', 'SELECT count(*) FROM ev');
cmp_ok($node->safe_psql('postgres', "SELECT ($job).rows_done"), '<=',
	$in_ev + $node->safe_psql('postgres', 'SELECT count(*) FROM ev_3a'),
	'two workers: no row written twice (the table\'s rows, and at most those of the detached leaf)');

# 3. kill -9 of one of two workers, then an immediate shutdown: resumed
$node->safe_psql('postgres', q{
ALTER TABLE ev_3 ATTACH PARTITION ev_3a FOR VALUES IN ('2022-01-01', '2022-01-02')});
for my $how ('kill -9 of one worker', 'an immediate shutdown')
{
	clear();
	$node->safe_psql('postgres', "SELECT mig_backfill('ev', batch_size => 20, sleep_ms => 30, parallel => 2)");
	$node->poll_query_until('postgres', qq{
		SELECT count(*) = 2 AND sum(rows_done) >= 300 FROM migrate_ext.job_slices
		 WHERE job_id = ($job).id AND state = 'running'})
	  or die "the workers did not get going before $how";
	my $offset = -s $node->logfile;
	if ($how =~ /kill/)
	{
		my $pid = $node->safe_psql('postgres', qq{
			SELECT min(worker_pid) FROM migrate_ext.job_slices
			 WHERE job_id = ($job).id AND state = 'running'});
		kill 'KILL', $pid;
	}
	else
	{
		$node->stop('immediate');
		$node->start;
	}
	$node->poll_query_until('postgres', "SELECT ($job).state = 'done'")
	  or die "the job did not finish after $how";
	ok($node->log_contains(qr/resuming backfill job/, $offset), "$how: the launcher resumed the job");
	my $n = $node->safe_psql('postgres', 'SELECT count(*) FROM ev');
	all_right($how, $n);
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM migrate_ext.job_slices WHERE job_id = ($job).id AND state <> 'done'}),
		'0', "$how: every slice done");
}

# 4. a pgbench write mix through the parent and straight into leaves during a
# parallel backfill: mig_validate finds every row right
clear();
my ($pgbench, $err) = mig_pgbench($node, q{
\set id random(1, 3000)
\set r random(1, 10)
BEGIN;
UPDATE ev SET v = v + 1 WHERE id = :id;
UPDATE ev_1 SET v = v - 1 WHERE id = :id + 1;
INSERT INTO ev (id, created_at, v) SELECT 100000 + :id * 10 + :r, date '2020-01-01' + :id % 1400, :r
	WHERE :r <= 3 ON CONFLICT DO NOTHING;
UPDATE ev SET created_at = date '2021-06-01' WHERE id = :id + 2 AND :r = 1 AND created_at < '2021-01-01';
COMMIT;
}, clients => 3, threads => 1, seconds => 8);
sleep(1);
$node->safe_psql('postgres', "SELECT mig_backfill('ev', batch_size => 50, parallel => 2, max_rows_per_sec => 1000)");
$pgbench->finish;
is($pgbench->result(0), 0, 'pgbench ran without errors') or diag($$err);
is(wait_job_ended($node, 'ev'), 'done', 'the parallel backfill finished under the mix');
is($node->safe_psql('postgres', q{
	SELECT coalesce(string_agg(check_name || ': ' || failing, ', '), 'clean')
	  FROM mig_validate('ev') WHERE NOT passed}),
	'clean', 'mig_validate after the mix: 0 rows diverged');

$node->stop;
done_testing();
