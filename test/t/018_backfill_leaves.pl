# The backfill of a partitioned table walks every leaf with its own key and
# checkpoint (a slice each, migrate_ext.job_slices): range on top with a
# default partition, a hash and a list sub-partitioned level.  With
# parallel => 2 two workers walk leaves at once and share the pace (the rate
# cap split between them); mig_set changes the number of workers of a
# running job; a partition attached mid-backfill is walked too, and one
# detached is reported (slice 'detached', mig_status.slices_detached), not an
# error.  A kill -9 of one of the workers and an immediate shutdown mid-run:
# the launcher resumes every slice, nothing is lost and no row is written
# twice (a trigger counts the backfill's writes).
#
# Until mig_expand takes a partitioned table (branch pexp), the expanded
# state is made by hand, as 071_partition_validate.pl does, with a stand-in
# dual-write trigger on the parent (cloned to every leaf, ENABLE ALWAYS) that
# computes new := id and logs each write the backfill makes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 3000;
my $node = mig_node('bf_leaves', conf => "restart_after_crash = on\n", setup => qq{
CREATE TABLE ev (id int NOT NULL, created_at date NOT NULL, v int,
	PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE ev_2 PARTITION OF ev FOR VALUES FROM ('2021-01-01') TO ('2022-01-01')
	PARTITION BY HASH (created_at);
CREATE TABLE ev_2a PARTITION OF ev_2 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE ev_2b PARTITION OF ev_2 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE ev_3 PARTITION OF ev FOR VALUES FROM ('2022-01-01') TO ('2023-01-01')
	PARTITION BY LIST (created_at);
CREATE TABLE ev_3a PARTITION OF ev_3 FOR VALUES IN ('2022-01-01', '2022-01-02', '2022-01-03');
CREATE TABLE ev_3d PARTITION OF ev_3 DEFAULT;
CREATE TABLE ev_d PARTITION OF ev DEFAULT;
INSERT INTO ev SELECT g, date '2020-01-01' + (g % 1400), g FROM generate_series(1, $rows) g;

CREATE TABLE proto (id int NOT NULL, created_at date NOT NULL, v int, PRIMARY KEY (id, created_at));
SELECT mig_expand('proto', 'id', type => 'bigint');
CREATE TABLE hits (id int, leaf regclass);
CREATE FUNCTION dw() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	NEW._mig_new_id := NEW.id;
	IF TG_OP = 'UPDATE' AND current_setting('session_replication_role') = 'replica' THEN
		INSERT INTO public.hits VALUES (NEW.id, TG_RELID::regclass);
	END IF;
	RETURN NEW;
END \$\$;
BEGIN;
ALTER EVENT TRIGGER migrate_ext_guard_start DISABLE;
DROP TRIGGER zz_migrate_ext_dualwrite ON proto;
ALTER TABLE ev ADD COLUMN _mig_new_id bigint;
UPDATE migrate_ext.migration SET relid = 'ev'::regclass, table_name = 'public.ev';
DO \$\$ BEGIN
	EXECUTE format('CREATE TRIGGER zz_migrate_ext_dualwrite BEFORE INSERT OR UPDATE ON ev '
		'FOR EACH ROW EXECUTE FUNCTION dw(%L)', (SELECT id FROM migrate_ext.migration)::text);
END \$\$;
ALTER TABLE ev ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
ALTER EVENT TRIGGER migrate_ext_guard_start ENABLE;
COMMIT;
});

my $job = latest_job();
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_trigger WHERE tgname = 'zz_migrate_ext_dualwrite'
	   AND tgenabled = 'A' AND tgrelid::regclass::text LIKE 'ev%'}),
	'9', 'the stand-in trigger is on the parent, the sub-levels and every leaf, ENABLE ALWAYS');

# every row's new value NULL again, and the log of writes empty
sub clear
{
	$node->safe_psql('postgres', q{
SET client_min_messages = error;
ALTER TABLE ev DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE ev SET _mig_new_id = NULL;
ALTER TABLE ev ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
TRUNCATE hits;
});
}

sub all_right
{
	my ($what, $expect_rows) = @_;
	is($node->safe_psql('postgres',
		'SELECT count(*) FROM ev WHERE _mig_new_id IS DISTINCT FROM id'),
		'0', "$what: every row of every leaf filled");
	is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM hits'),
		"$expect_rows|$expect_rows", "$what: each row written once");
	is($node->safe_psql('postgres', "SELECT ($job).rows_done"), $expect_rows,
		"$what: the job row counts each once");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM migrate_ext.job_slices s
		 WHERE s.job_id = ($job).id AND s.state = 'done'
		   AND s.rows_done = (SELECT count(*) FROM hits h WHERE h.leaf = s.relid::regclass)}),
		$node->safe_psql('postgres', qq{
		SELECT count(*) FROM migrate_ext.job_slices WHERE job_id = ($job).id AND state = 'done'}),
		"$what: each leaf's slice counts its own rows");
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
cmp_ok($node->safe_psql('postgres', "SELECT ($job).vacuums"), '>=', 0, 'vacuums counted');

# 2. two workers, a shared rate cap, a partition attached and one detached
clear();
$node->safe_psql('postgres', q{
CREATE TABLE ev_new (id int NOT NULL, created_at date NOT NULL, v int, _mig_new_id bigint);
ALTER TABLE ev_new ADD PRIMARY KEY (id, created_at);
INSERT INTO ev_new SELECT g, date '2030-01-01' + (g % 100), g FROM generate_series(5001, 5200) g;
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
$node->safe_psql('postgres', "SELECT mig_set('ev', 'max_rows_per_sec', NULL)");
is(wait_job_ended($node, 'ev'), 'done', 'two workers: done');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ev_new WHERE _mig_new_id IS DISTINCT FROM id'),
	'0', 'the partition attached during the backfill was walked');
is($node->safe_psql('postgres', qq{
	SELECT state FROM migrate_ext.job_slices WHERE job_id = ($job).id AND relname = 'public.ev_3a'}),
	'detached', 'the partition detached during the backfill is reported');
is($node->safe_psql('postgres', 'SELECT slices_detached FROM mig_status'), '1',
	'mig_status counts it');
my $in_ev = $node->safe_psql('postgres', 'SELECT count(*) FROM ev');
is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT id) FROM hits'), '0',
	'two workers: no row written twice');
is($node->safe_psql('postgres',
	'SELECT count(*) FROM ev WHERE NOT EXISTS (SELECT FROM hits WHERE hits.id = ev.id)'),
	'0', 'two workers: every row of the table written');

# 3. kill -9 of one of two workers, then an immediate shutdown: resumed
$node->safe_psql('postgres', q{
ALTER TABLE ev_3 ATTACH PARTITION ev_3a FOR VALUES IN ('2022-01-01', '2022-01-02', '2022-01-03')});
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

$node->stop;
done_testing();
