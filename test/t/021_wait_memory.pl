# mig_wait polls the job row every half second for as long as the job runs;
# each poll reads into a memory context reset before the next, so a wait of
# hours uses the memory of one poll.  Measured from outside with
# pg_log_backend_memory_contexts(): the waiting backend's grand total after
# ~4 polls and after ~40 polls stays the same (within one 8 kB block).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = PostgreSQL::Test::Cluster->new('waitmem');
$node->init;
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION migrate_ext;
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, 'V' || g FROM generate_series(1, 1000) g;
SELECT mig_expand('t', 'v', up => 'lower(v)');
SELECT mig_backfill('t', batch_size => 10, sleep_ms => 1000);
SELECT mig_pause('t');
});

my $job = job_row('t');
my ($out, $err) = ('', '');
my $waiter = IPC::Run::start(
	[ 'psql', '-X', '-At', '-d', $node->connstr('postgres'),
	  '-c', "SET application_name = 'waiter'; SELECT mig_wait('t', interval '60 seconds')" ],
	'>', \$out, '2>', \$err);
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'waiter' AND state = 'active'})
  or die 'mig_wait did not start';
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE application_name = 'waiter'});

# the grand total of the waiter's memory, as the server log reports it
sub waiter_total
{
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
	my $total;
	for (1 .. 100)
	{
		my $log = substr(slurp_file($node->logfile), $offset);
		if ($log =~ /\[$pid\].*Grand total: (\d+) bytes/)
		{
			$total = $1;
			last;
		}
		usleep(100_000);
	}
	die 'the memory report did not show up' unless defined $total;
	return $total;
}

sleep(2);
my $early = waiter_total();
sleep(20);
my $late = waiter_total();
note("waiter memory: $early bytes after 2 s, $late bytes after 22 s");
cmp_ok($late - $early, '<', 8192, "mig_wait's memory stays flat over 40 polls");

$node->safe_psql('postgres', "SELECT mig_resume('t'); SELECT mig_set('t', 'sleep_ms', '0')");
$waiter->finish;
like($out, qr/^done$/m, 'and it still returns the job state when the job ends');
is($node->safe_psql('postgres', "SELECT ($job).state"), 'done', 'the job is done');

$node->stop;
done_testing();
