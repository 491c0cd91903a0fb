# The lock ladder next to a long reader (issue 10, item 9): it looks at who
# holds the table before it queues.  A reader that has held the table longer
# than the ladder's whole budget means no try at all; a fresh one gets a few
# short tries whose lock_timeouts add up to lock_timeout_max at most.  Either
# way the error names the reader (pid, application_name, how long), and the
# application's writers never wait more than about a second in all.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('ladder');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'migrate_ext'
});
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION migrate_ext;
CREATE TABLE t (id serial PRIMARY KEY, v int);
INSERT INTO t (v) SELECT g FROM generate_series(1, 1000) g;

-- The writers: short transactions, each timed on the server.  "stalled"
-- adds up every write that took longer than 20 ms.
CREATE TABLE probe_result (worst interval, stalled interval, iterations int);
CREATE PROCEDURE probe(seconds float8) LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + seconds * interval '1 second';
	t0 timestamptz;
	d interval;
	worst interval := '0';
	stalled interval := '0';
	n int := 0;
BEGIN
	LOOP
		t0 := clock_timestamp();
		INSERT INTO t (v) VALUES (0);
		d := clock_timestamp() - t0;
		worst := greatest(worst, d);
		IF d > interval '20 ms' THEN stalled := stalled + d; END IF;
		n := n + 1;
		COMMIT;
		PERFORM pg_sleep(0.01);
		EXIT WHEN clock_timestamp() > deadline;
	END LOOP;
	INSERT INTO probe_result VALUES (worst, stalled, n);
END $$;
});

my $connstr = $node->connstr('postgres');

my ($probe_out, $probe_err) = ('', '');
my $probe = IPC::Run::start(
	[ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $connstr, '-c', 'CALL probe(8)' ],
	'>', \$probe_out, '2>', \$probe_err);
sleep 1;

# The 20 s reader, named so that the error can name it.
my $reader = $node->background_psql('postgres');
$reader->query_safe("SET application_name = 'long_reader'");
my $reader_pid = $reader->query_safe('SELECT pg_backend_pid()');
$reader->query_safe('BEGIN');
$reader->query_safe('SELECT count(*) FROM t');

sub expand
{
	my ($out, $err) = ('', '');
	my $t0 = time;
	IPC::Run::run(
		[ 'psql', '-X', '-v', 'VERBOSITY=verbose', '-d', $connstr,
		  '-c', "SELECT mig_expand('t', 'v', type => 'bigint')" ],
		'>', \$out, '2>', \$err);
	return ($err, time - $t0);
}

# 1. A fresh reader: a few short tries, then a clear error naming it.
my ($err, $took) = expand();
like($err, qr/ERROR:\s+55P03: could not lock table "t" to add the new column: process $reader_pid holds a conflicting lock/,
	'expand behind a fresh reader fails with 55P03 naming its pid');
like($err, qr/application_name "long_reader"/, 'and its application_name');
like($err, qr/has been in its transaction for [0-9.]+ s, since/, 'and how long it has run');
# (on a slow machine the reader may outgrow the budget between two tries)
like($err, qr/queueing [0-9]+ ms in all|did not queue for the lock at all/,
	'the tries queued a bounded time in all');
cmp_ok($took, '<', 6, "it gave up within the ladder's budget ($took s)");

# 2. The reader has now held the table longer than the ladder's budget
# (2.5 s by default): no try at all.
sleep 3;
($err, $took) = expand();
like($err, qr/process $reader_pid holds a conflicting lock/, 'expand behind the old reader names it');
like($err, qr/did not queue for the lock at all/, 'and did not queue');
cmp_ok($took, '<', 1.5, "it failed fast ($took s)");

$probe->finish;
is($probe_err, '', 'the writers never failed');
my ($worst, $stalled, $n) = split /\|/, $node->safe_psql('postgres',
	'SELECT extract(epoch FROM worst), extract(epoch FROM stalled), iterations FROM probe_result');
cmp_ok($n, '>', 50, "the writers kept running ($n writes)");
cmp_ok($worst, '<', 1.2, "no write waited more than about 1 s (worst $worst s)");
cmp_ok($stalled, '<', 1.5, "the writes waited about 1 s at most in all ($stalled s)");
is($node->safe_psql('postgres',
		"SELECT count(*) FROM migrate_ext.migration"), '0', 'nothing was left behind');

# 3. Once the reader ends, expand goes through.
$reader->query_safe('COMMIT');
$reader->quit;
is($node->safe_psql('postgres', "SELECT mig_expand('t', 'v', type => 'bigint') IS NOT NULL"),
	't', 'expand succeeds once the reader is gone');

# 4. A lock timeout met outside the ladder (contract's CREATE INDEX
# CONCURRENTLY, behind a session holding SHARE) gets the same error.
$node->safe_psql('postgres', q{
CREATE TABLE c (id int PRIMARY KEY, v int UNIQUE);
INSERT INTO c SELECT g, g FROM generate_series(1, 1000) g;
SELECT mig_expand('c', 'v', type => 'bigint');
SET migrate_ext.writer = 'old';
UPDATE c SET v = v;
RESET migrate_ext.writer;
SELECT bool_and(passed) FROM mig_validate('c');
SELECT mig_cutover('c');
});
my $locker = $node->background_psql('postgres');
$locker->query_safe("SET application_name = 'share_locker'");
my $locker_pid = $locker->query_safe('SELECT pg_backend_pid()');
$locker->query_safe('BEGIN');
$locker->query_safe('LOCK TABLE c IN SHARE MODE');
{
	my ($out, $cerr) = ('', '');
	local $ENV{PGOPTIONS} = '-c migrate_ext.lock_timeout_max=200';
	IPC::Run::run(
		[ 'psql', '-X', '-v', 'VERBOSITY=verbose', '-d', $connstr,
		  '-c', "SELECT mig_contract('c')" ],
		'>', \$out, '2>', \$cerr);
	like($cerr, qr/ERROR:\s+55P03: could not lock table "c" to contract it: process $locker_pid holds a conflicting lock/,
		"contract's own statement that times out names the blocker too");
	like($cerr, qr/A statement of the contract gave up.*application_name "share_locker".*steps done so far are kept/s,
		'and says which statement, and the application');
}
$locker->query_safe('COMMIT');
$locker->quit;

$node->stop;
done_testing();
