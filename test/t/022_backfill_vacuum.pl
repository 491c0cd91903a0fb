# The backfill's VACUUMs.  Several workers walking ranges of one heap VACUUM
# it one at a time (the advisory lock (lock_key('vacuum'), relid)): a VACUUM
# due while another runs waits for it and is not skipped, so every VACUUM the
# job counts ran (pg_stat_user_tables.vacuum_count) and the heap stays well
# below what one UPDATE leaves.  Under the application's load a VACUUM runs
# with a cost-based delay (vacuum_cost_delay, as autovacuum), on an idle
# server without.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 60000;
my $node = mig_node('bf_vacuum', conf => "autovacuum = off\nlog_min_messages = debug1\n",
	setup => qq(
CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO t SELECT g, 'Value ' || g FROM generate_series(1, $rows) g;
CREATE TABLE plain (LIKE t INCLUDING ALL);
INSERT INTO plain SELECT * FROM t;
CREATE TABLE w (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO w SELECT g, 'Value ' || g FROM generate_series(1, 20000) g;
CREATE TABLE u (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO u SELECT g, 'Value ' || g FROM generate_series(1, 100000) g;
VACUUM ANALYZE t, plain, u, w;
SELECT mig_expand('t', 'v', up => 'lower(v)');
SELECT mig_expand('u', 'v', up => 'lower(v)');
SELECT mig_expand('w', 'v', up => 'lower(v)');
));
my $jt = job_row('t');

# what one UPDATE of every row leaves
my $plain_pages = $node->safe_psql('postgres', q{
	ALTER TABLE plain ADD COLUMN w text;
	UPDATE plain SET w = lower(v);
	SELECT pg_relation_size('plain') / 8192});
my $before = $node->safe_psql('postgres',
	q{SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 't'});

# 1. two workers, eight key ranges; each range ends with a VACUUM.  While
# someone holds the table's VACUUM lock, both workers' VACUUMs wait for it
# (with SKIP_LOCKED alone, the second of two at once was skipped).
my $holder = $node->background_psql('postgres');
$holder->query_safe(q{SELECT pg_advisory_lock(migrate_ext.lock_key('vacuum'), 't'::regclass::oid::int)});
$node->safe_psql('postgres', q{SELECT mig_backfill('t', batch_size => 2500, parallel => 2)});
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 2 FROM pg_locks
	 WHERE locktype = 'advisory' AND NOT granted AND classid = migrate_ext.lock_key('vacuum')
	   AND objid = 't'::regclass::oid AND objsubid = 2}),
	'the VACUUMs of two workers wait for the table\'s VACUUM lock, one at a time');
# live, not done: running, or throttled when its last batch's pace saw the
# test's own polling sessions as load (a fresh-clone run read 'throttled')
like($node->safe_psql('postgres', qq{SELECT ($jt).state}), qr/^(running|throttled)$/,
	'the job waits for its VACUUMs');
$holder->query_safe(q{SELECT pg_advisory_unlock(migrate_ext.lock_key('vacuum'), 't'::regclass::oid::int)});
$holder->quit;
is(wait_job_ended($node, 't'), 'done', 'the parallel backfill finishes');

my ($vacuums, $counted) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT ($jt).vacuums,
	       (SELECT vacuum_count - $before FROM pg_stat_user_tables WHERE relname = 't')});
cmp_ok($vacuums, '>=', 9, 'a VACUUM per range and the last one');
is($counted, $vacuums, 'every VACUUM the job counts ran: none was skipped');
my $pages = $node->safe_psql('postgres', q{SELECT pg_relation_size('t') / 8192});
cmp_ok($pages, '<', 0.8 * $plain_pages,
	"the heap ($pages pages) stays well below one UPDATE's ($plain_pages)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM t WHERE _mig_new_v IS DISTINCT FROM lower(v)}),
	'0', 'every row right');
ok(!$node->log_contains('skipping vacuum of'), 'no VACUUM was skipped');
ok(!$node->log_contains('vacuum_cost_delay = '), 'on an idle server the VACUUMs run without a delay');

# 2. the last VACUUM (which may truncate the table) is never skipped: while
# someone holds a lock that VACUUM needs (here an explicit one; autovacuum
# or an ANALYZE), it waits, and the job is done only once it has run
$before = $node->safe_psql('postgres',
	q{SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'w'});
$holder = $node->background_psql('postgres');
$holder->query_safe(q{BEGIN; LOCK TABLE w IN SHARE UPDATE EXCLUSIVE MODE});
$node->safe_psql('postgres', q{SELECT mig_backfill('w', batch_size => 5000)});
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity
	 WHERE query = 'migrate_ext backfill: its last VACUUM waits for the table''s SHARE UPDATE EXCLUSIVE lock'}),
	'the last VACUUM waits for the lock');
is($node->safe_psql('postgres', q{SELECT state, rows_done FROM mig_progress('w')}), 'running|20000',
	'every row is written, and the job is not done before its last VACUUM');
$holder->query_safe('COMMIT');
$holder->quit;
is(wait_job_ended($node, 'w'), 'done', 'then it runs and the job is done');
is($node->safe_psql('postgres', qq{
	SELECT vacuum_count - $before > 0 FROM pg_stat_user_tables WHERE relname = 'w'}),
	't', 'the last VACUUM ran');

# 3. under a load of short statements the VACUUMs run with a cost delay
my ($pgbench) = mig_pgbench($node, q{
\set id random(1, 60000)
SELECT v FROM t WHERE id = :id;
}, clients => 2, seconds => 120);
sleep(1);
$node->safe_psql('postgres', q{SELECT mig_backfill('u', batch_size => 2000)});
ok($node->poll_query_until('postgres', q{SELECT state = 'throttled' FROM mig_progress('u')}),
	'the job yields to the load');
ok($node->wait_for_log(qr/VACUUM of public\.u with vacuum_cost_delay = [0-9.]+ ms, vacuum_cost_limit = 200/),
	'under load its VACUUMs run with a cost-based delay');
$pgbench->kill_kill;
is(wait_job_ended($node, 'u'), 'done', 'and it finishes');
is($node->safe_psql('postgres', q{SELECT count(*) FROM u WHERE _mig_new_v IS DISTINCT FROM lower(v)}),
	'0', 'every row right');
$node->stop;
done_testing();
