# Without migrate_ext in shared_preload_libraries there is no launcher: a
# job whose worker died stays interrupted (state running, nobody holds its
# lock) until mig_resume, which goes on from the checkpoint rather than
# from the start.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 20000;
my $node = PostgreSQL::Test::Cluster->new('resume');
$node->init;
$node->append_conf('postgresql.conf', "restart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', qq(
CREATE EXTENSION migrate_ext;
CREATE TABLE t (a int, b int, v text, PRIMARY KEY (a, b));
INSERT INTO t SELECT g / 100, g % 100, 'V' || g FROM generate_series(1, $rows) g;
SELECT mig_expand('t', 'v', up => 'lower(v)');
SELECT mig_backfill('t', batch_size => 200, sleep_ms => 20);
));
my $job = latest_job();
my $alive = qq(EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted
			   AND classid = migrate_ext.lock_key('job') AND objid = ($job).id));
$node->poll_query_until('postgres', "SELECT ($job).rows_done >= 4000")
  or die "the backfill did not get going";

kill 'KILL', $node->safe_psql('postgres', "SELECT ($job).worker_pid");
$node->poll_query_until('postgres', "SELECT NOT $alive")
  or die "the server did not come back";
sleep(2);
my ($state, $done, $key) =
  split /\|/, $node->safe_psql('postgres', "SELECT ($job).state, ($job).rows_done, ($job).lower_key");
is($state, 'running', 'the job row still says running');
is($node->safe_psql('postgres', "SELECT $alive"), 'f', 'but no worker holds its lock: interrupted');
cmp_ok($done, '>=', 4000, 'the batches committed before the crash are kept');
is($node->safe_psql('postgres', "SELECT count(*) FROM t WHERE _mig_new_v IS NOT NULL"),
	$done, 'exactly the rows of the committed batches are written');

my ($ret, $out, $err) = $node->psql('postgres', "SELECT mig_backfill('t')");
like($err, qr/already has a backfill job \(interrupted\).*mig_resume/s,
	'a new job is refused with a hint to resume');

$node->safe_psql('postgres', "SELECT mig_set('t', 'sleep_ms', '0'); SELECT mig_resume('t')");
$node->poll_query_until('postgres', "SELECT ($job).state NOT IN ('running', 'throttled')")
  or die "the resumed job did not finish";
is($node->safe_psql('postgres', "SELECT ($job).state"), 'done', 'the resumed job is done');
is($node->safe_psql('postgres', "SELECT ($job).rows_done, ($job).rows_seen"),
	"$rows|$rows", 'it went on from the checkpoint: no row seen twice');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM t WHERE _mig_new_v IS DISTINCT FROM lower(v)"),
	'0', 'every row right');

$node->stop;
done_testing();
