# A backfill under a pgbench mix of updates, inserts and deletes that write
# the old column only: afterwards not a single row has new <> up(old).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 200000;
my $node = mig_node('pgbench', conf => "max_connections = 20\n", setup => qq(
CREATE TABLE t (id bigint PRIMARY KEY, email text NOT NULL, n int NOT NULL DEFAULT 0);
INSERT INTO t SELECT g, 'User' || g || '\@Example.COM' FROM generate_series(1, $rows) g;
CREATE SEQUENCE t_new_id START $rows;
SELECT setval('t_new_id', $rows);
VACUUM ANALYZE t;
SELECT mig_expand('t', 'email', up => 'lower(email) || ''#'' || n::text');
));

my ($pgbench, $err, $out) = mig_pgbench($node, mig_pgbench_mix($rows), clients => 4, threads => 2, seconds => 20);
sleep(1);
$node->safe_psql('postgres', "SELECT mig_backfill('t', max_rows_per_sec => 25000)");
my $job = latest_job();
$pgbench->finish;
is($pgbench->result(0), 0, 'pgbench ran without errors') or diag($$err);
like($$out, qr/number of transactions actually processed: [1-9]/, 'pgbench did work');

# the traffic ran during the whole backfill
my ($state, $done, $retries) =
  split /\|/, $node->safe_psql('postgres', "SELECT ($job).state, ($job).rows_done, ($job).retries");
is($state, 'done', 'the backfill finished while the traffic ran');
note("rows_done $done, retries $retries");
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM t WHERE _mig_new_email IS DISTINCT FROM lower(email) || '#' || n"),
	'0', 'no row has new <> up(old)');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM t WHERE id > $rows"), '>', 0,
	'clients inserted rows during the backfill');

$node->stop;
done_testing();
