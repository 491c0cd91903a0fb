# A streaming standby whose replay is paused falls behind: the backfill
# throttles with reason 'replica lag' and writes nothing more until replay
# resumes, then finishes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 20000;
my $primary = mig_node('primary', init => { allows_streaming => 1 }, setup => qq(
CREATE TABLE t (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO t SELECT g, 'User' || g || '\@Example.COM' FROM generate_series(1, $rows) g;
SELECT mig_expand('t', 'email', up => 'lower(email)');
));
$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->append_conf('postgresql.conf', "wal_receiver_status_interval = 1s\n");
$standby->start;
$primary->wait_for_catchup($standby);

$standby->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
$primary->safe_psql('postgres',
	"SELECT mig_backfill('t', batch_size => 100, sleep_ms => 20, max_replica_lag => '1s')");
my $job = latest_job();
$primary->poll_query_until('postgres', "SELECT ($job).state = 'throttled'")
  or die "the backfill did not throttle";
is($primary->safe_psql('postgres', "SELECT ($job).throttle_reason"),
	'replica lag', 'throttled for replica lag');
my $done = $primary->safe_psql('postgres', "SELECT ($job).rows_done");
cmp_ok($done, '<', $rows, 'before the end');
sleep(2);
is($primary->safe_psql('postgres', "SELECT ($job).state, ($job).rows_done"),
	"throttled|$done", 'and it holds while replay stays paused');

$standby->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
$primary->poll_query_until('postgres', "SELECT ($job).state NOT IN ('running', 'throttled')")
  or die "the backfill did not finish";
is($primary->safe_psql('postgres', "SELECT ($job).state"), 'done', 'done once replay resumed');
$primary->wait_for_catchup($standby);
is( $standby->safe_psql('postgres',
		"SELECT count(*) FROM t WHERE _mig_new_email IS DISTINCT FROM lower(email)"),
	'0', 'every row right on the standby too');

$standby->stop;
$primary->stop;
done_testing();
