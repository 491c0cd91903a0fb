# monitoring/queries.yaml in Debian's prometheus-postgres-exporter: against a
# server with a backfill running (held back by max_rows_per_sec so that it
# lasts), /metrics shows every figure of the migration, and rows_done moves
# from one scrape to the next. A row lock ahead of the backfill makes it
# retry, so retries and the last error show too.
#
# The exporter connects as a role with pg_monitor and SELECT on the
# migrating table, as README "Monitoring" says.
use strict;
use warnings;
use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $exporter = (grep { -x } '/usr/bin/prometheus-postgres-exporter', '/usr/bin/postgres_exporter')[0]
  or die "prometheus-postgres-exporter is not installed (Debian package; test/lib.sh installs it)";
my $queries = "$ENV{TESTDIR}/monitoring/queries.yaml";
-f $queries or die "$queries is missing";

my $node = mig_node('exporter', setup => q{
CREATE ROLE exporter LOGIN;
GRANT pg_monitor TO exporter;
CREATE TABLE orders (id int PRIMARY KEY, note text);
INSERT INTO orders SELECT g, 'N' || g FROM generate_series(1, 100000) g;
GRANT SELECT ON orders TO exporter;
SELECT mig_expand('orders', 'note', up => 'lower(note)');
});

# A row lock ahead of the backfill: its batch times out, is retried, and
# the job records the error; the lock goes after a few retries.
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; SELECT id FROM orders WHERE id = 300 FOR UPDATE;');
$node->safe_psql('postgres',
	"SELECT mig_backfill('orders', batch_size => 100, target_batch_ms => 100, max_rows_per_sec => 500)");
$node->poll_query_until('postgres', 'SELECT retries > 0 FROM mig_status')
  or die 'the backfill never retried';
$locker->query_safe('COMMIT;');
$locker->quit;

my $port = PostgreSQL::Test::Cluster::get_free_port();
my ($out, $err) = ('', '');
local $ENV{DATA_SOURCE_NAME} =
  sprintf('host=%s port=%d user=exporter dbname=postgres sslmode=disable', $node->host, $node->port);
my $h = IPC::Run::start(
	[ $exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$queries",
	  '--disable-default-metrics', '--disable-settings-metrics', '--log.level=warn' ],
	'>', \$out, '2>', \$err);

# scrape(): /metrics, retried for up to 60 s until the migration shows.
my $http = HTTP::Tiny->new(timeout => 10);
sub scrape
{
	for (1 .. 120)
	{
		my $r = $http->get("http://127.0.0.1:$port/metrics");
		return $r->{content}
		  if $r->{success} && $r->{content} =~ /^migrate_ext_migration_rows_done\{/m;
		select(undef, undef, undef, 0.5);
	}
	diag("exporter stderr: $err");
	return '';
}
sub metric
{
	my ($text, $name) = @_;
	return $text =~ /^\Q$name\E\{[^}]*table_name="orders"[^}]*\} (\S+)$/m ? $1 : undef;
}

my $first = scrape();
for my $m (qw(rows_done rows_seen rows_total percent rate rate_avg eta_seconds retries
	batches batch_size throttled running failed interrupted seconds_since_update))
{
	ok(defined metric($first, "migrate_ext_migration_$m"), "migrate_ext_migration_$m is exported");
}
like($first, qr/^migrate_ext_migration_state_info\{[^}]*phase="backfilling"[^}]*state="(running|throttled)"[^}]*\} 1$/m,
	'the phase and state, as labels');
like($first, qr/^migrate_ext_migration_state_info\{[^}]*throttle_reason="(max_rows_per_sec|)"[^}]*\} 1$/m,
	'the throttle reason, as a label');
cmp_ok(metric($first, 'migrate_ext_migration_retries'), '>', 0, 'retries counts the retried batch');
like($first, qr/^migrate_ext_migration_last_error_info\{[^}]*message="[^"]*lock[^"]*"[^}]*sqlstate="55P03"[^}]*\} 1$/m,
	'the last error (a lock timeout) with its SQLSTATE');
is(metric($first, 'migrate_ext_migration_running'), '1', 'running is 1');
cmp_ok(metric($first, 'migrate_ext_migration_rows_total'), '>=', 90000, 'rows_total about the table');

# rows_done moves: scrape again until it does (bounded).
my $done1 = metric($first, 'migrate_ext_migration_rows_done');
my $done2 = $done1;
for (1 .. 60)
{
	select(undef, undef, undef, 0.5);
	$done2 = metric(scrape(), 'migrate_ext_migration_rows_done');
	last if defined $done2 && $done2 > $done1;
}
cmp_ok($done2, '>', $done1, "rows_done moves between scrapes ($done1 -> $done2)");
my $second = scrape();
cmp_ok(metric($second, 'migrate_ext_migration_eta_seconds'), '>', 0, 'an ETA in seconds');
cmp_ok(metric($second, 'migrate_ext_migration_rate'), '>', 0, 'a rate');
cmp_ok(metric($second, 'migrate_ext_migration_rate'), '<=', 2000, 'held back by max_rows_per_sec');

# A finished migration leaves the exported set.
$node->safe_psql('postgres', "SELECT mig_cancel('orders'); SELECT mig_abort('orders')");
my $gone = 0;
for (1 .. 60)
{
	my $r = $http->get("http://127.0.0.1:$port/metrics");
	if ($r->{success} && $r->{content} !~ /^migrate_ext_migration_rows_done\{/m) { $gone = 1; last; }
	select(undef, undef, undef, 0.5);
}
ok($gone, 'an aborted migration is no longer exported');

$h->kill_kill;
$node->stop;
done_testing();
