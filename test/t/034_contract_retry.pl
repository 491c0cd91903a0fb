# mig_contract run again right after one that failed: the caller gets the
# worker's error only once the worker has exited and released its locks, so
# the next run never meets the exiting worker ("already running"), and a
# worker that does find another one running reports it without crashing
# (its table name is read inside a transaction).  Before the fix, the
# second run raced the first worker's exit: now and then it reported
# "already running", or crashed reading the catalog outside a transaction.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('retry', setup => q{
CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
CREATE INDEX t_v ON t (v);
INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;
SELECT mig_expand('t', 'v', type => 'bigint');
});

# Not backfilled: the NOT NULL of the new column fails at contract, each time.
my $script = join('', map { "SELECT mig_contract('t', force => true);\n" } 1 .. 20);
my ($ret, $out, $err) = $node->psql('postgres', $script, on_error_stop => 0);
my @errors = $err =~ /^(?:psql:[^\n]*)?ERROR:\s+([^\n]*)/mg;
is(scalar(@errors), 20, 'every run failed');
is(scalar(grep { /is violated by some row/ } @errors), 20,
	'each on the rows, never on an exiting worker')
  or diag(join("\n", @errors));
ok(!$node->log_contains(qr/terminated by signal/), 'no worker crashed');

# Another worker really running: the second is refused cleanly, no crash.
$node->safe_psql('postgres', q{SET migrate_ext.writer = 'old'; UPDATE t SET v = v; RESET migrate_ext.writer; SELECT mig_validate('t')});
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
$holder->query_safe('UPDATE t SET id = id WHERE id = 1');
# the first contract's copy of t_v (CREATE INDEX CONCURRENTLY) waits for it
my $first = $node->background_psql('postgres', on_error_stop => 0);
$first->query_until(qr/started/, "\\echo started\nSELECT mig_contract('t');\n");
$node->poll_query_until('postgres', q{
SELECT count(*) > 0 FROM pg_stat_activity
 WHERE application_name = 'migrate_ext contract' AND wait_event_type = 'Lock'})
  or die 'the first contract never waited';
($ret, $out, $err) = $node->psql('postgres', q{SELECT mig_contract('t')});
like($err, qr/mig_contract is already running on table "t"/,
	'a second contract meanwhile is refused, naming the table');
$holder->query_safe('COMMIT');
$holder->quit;
$first->query('SELECT 1');
$first->quit;
is($node->safe_psql('postgres', q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute
  WHERE attrelid = 't'::regclass AND attname = 'v'}), 'bigint', 'and the first one completes');
is($node->safe_psql('postgres', 'SELECT count(*), sum(v) FROM t'), '100|5050', 'every row is there');
ok(!$node->log_contains(qr/terminated by signal/), 'still no crash');

done_testing();
