# A transaction's open cursor keeps its rows while mig_wait and mig_validate
# run in the same transaction (issue 10, item 9): they do not clear the
# backend's xmin while a cursor still reads with an older snapshot, so a
# concurrent DELETE and VACUUM cannot remove the rows the cursor has yet to
# return.  Without a cursor they still release it (vacuum moves on).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cursor');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'migrate_ext'
autovacuum = off
});
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION migrate_ext;
CREATE TABLE big (id int PRIMARY KEY, pad text);
INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 99999) g;
CREATE TABLE m (id int PRIMARY KEY, v int);
INSERT INTO m SELECT g, g FROM generate_series(1, 1000) g;
SELECT mig_expand('m', 'v', type => 'bigint');
-- a job that stays running (one row a second) for mig_wait to wait for
SELECT mig_backfill('m', batch_size => 1, sleep_ms => 1000) > 0;
-- a finished backfill for mig_validate to check
CREATE TABLE m2 (id int PRIMARY KEY, v int);
INSERT INTO m2 SELECT g, g FROM generate_series(1, 1000) g;
SELECT mig_expand('m2', 'v', type => 'bigint');
SELECT mig_backfill('m2') > 0;
SELECT mig_wait('m2');
});

for my $call ("SELECT mig_wait('m', '4s')",
	"SELECT count(*) FROM mig_validate('m2') UNION ALL SELECT count(*) FROM pg_sleep(3)")
{
	my $a = $node->background_psql('postgres');
	$a->query_safe('SET client_min_messages = warning');
	$a->query_safe('BEGIN');
	$a->query_safe('DECLARE c NO SCROLL CURSOR FOR SELECT id FROM big');
	$a->query_safe('FETCH 1 FROM c');
	# another session deletes the rows the cursor has yet to read, and
	# vacuums while the call runs
	$node->safe_psql('postgres', 'DELETE FROM big WHERE id > 1000');
	$a->query_until(qr/started/, "\\echo started\n$call;\n");
	sleep 1;
	$node->safe_psql('postgres', 'VACUUM big');
	$a->query_safe('SELECT 1');
	my $n = $a->query_safe(q{
CREATE FUNCTION pg_temp.rest() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE cur refcursor := 'c'; r record; n bigint := 0;
BEGIN
	LOOP
		FETCH cur INTO r;
		EXIT WHEN NOT FOUND;
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;
SELECT 1 + pg_temp.rest();});
	is($n, '99999', "the cursor returns every row after $call with a concurrent DELETE and VACUUM");
	$a->query_safe('COMMIT');
	$a->quit;
	$node->safe_psql('postgres',
		"INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1001, 99999) g");
}

# without a cursor, mig_wait still lets vacuum move on
my $a = $node->background_psql('postgres');
$a->query_safe('SET client_min_messages = warning');
$a->query_safe('BEGIN');
$a->query_safe('SELECT 1');
$a->query_until(qr/started/, "\\echo started\nSELECT mig_wait('m', '4s');\n");
sleep 1;
$node->safe_psql('postgres', 'DELETE FROM big WHERE id > 1000');
my ($stdout, $stderr);
$node->psql('postgres', 'VACUUM (VERBOSE) big', stdout => \$stdout, stderr => \$stderr);
like($stderr, qr/tuples: 98999 removed/,
	'without a cursor, a transaction in mig_wait holds back no dead rows');
$a->query_safe('COMMIT');
$a->quit;

$node->stop;
done_testing();
