# The walk covers every row: a ctid walk (a table without a key) that finds
# its table rewritten mid-backfill (VACUUM FULL, CLUSTER, SET TABLESPACE)
# starts again and ends with every row backfilled and validation passing;
# new types that are a domain or an enum outside the worker's search_path
# backfill (types are compared by OID, not by their printed names).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = mig_node('bf_walk');
my $tsdir = PostgreSQL::Test::Utils::tempdir();
$node->safe_psql('postgres', "CREATE TABLESPACE bf_space LOCATION '$tsdir'");

# 20000 rows of ~200 bytes (about 36 a block, 550 blocks), no key; no
# autovacuum, so the first batches' dead versions are still there when the
# table is rewritten, and the rewrite moves the rows not yet covered into
# blocks the checkpoint has passed
my %rewrite = (
	'VACUUM FULL' => 'VACUUM FULL %s',
	'CLUSTER' => 'CLUSTER %s USING %s_n',
	'SET TABLESPACE' => 'ALTER TABLE %s SET TABLESPACE bf_space');
my $i = 0;
for my $how (sort keys %rewrite)
{
	my $t = 'heap' . ++$i;
	$node->safe_psql('postgres', qq{
		CREATE TABLE $t (n int, v int, pad text) WITH (autovacuum_enabled = false);
		INSERT INTO $t SELECT g, g, repeat('x', 200) FROM generate_series(1, 20000) g;
		CREATE INDEX ${t}_n ON $t (n);
		ANALYZE $t;
		SELECT mig_expand('$t', 'v', type => 'bigint', up => 'v::bigint * 10');
		SELECT mig_backfill('$t', batch_size => 400, sleep_ms => 100);
	});
	$node->poll_query_until('postgres',
		"SELECT (" . job_row($t) . ").rows_seen >= 4000") or die 'no progress';
	is($node->safe_psql('postgres', "SELECT (" . job_row($t) . ").key_kind"), 'ctid', "$how: a ctid walk");
	my $file = $node->safe_psql('postgres', "SELECT pg_relation_filenode('$t')");
	$node->safe_psql('postgres', sprintf($rewrite{$how}, $t, $t));
	isnt($node->safe_psql('postgres', "SELECT pg_relation_filenode('$t')"), $file, "$how rewrote the table");
	$node->safe_psql('postgres', "SELECT mig_set('$t', 'sleep_ms', '0')");
	is(wait_job_ended($node, $t), 'done', "$how: the job is done");
	is($node->safe_psql('postgres',
		"SELECT count(*), count(*) FILTER (WHERE _mig_new_v = v::bigint * 10) FROM $t"),
		'20000|20000', "$how mid-backfill: every row backfilled");
	is($node->safe_psql('postgres', "SELECT bool_and(passed) FROM mig_validate('$t')"), 't',
		"$how: validation passes");
	# rows_seen counts the new walk (a ctid walk may meet a row version it
	# moved ahead of itself once more); rows_done every row written, once
	is($node->safe_psql('postgres', "SELECT (" . job_row($t) . ").rows_done, (" . job_row($t) . ").rows_seen BETWEEN 20000 AND 21000"),
		'20000|t', "$how: the walk started again on the new file, and wrote no row twice");
	like(slurp_file($node->logfile), qr/table public\.$t was rewritten/, "$how: and logged it");
}

# a domain and an enum in a schema the worker's search_path does not name
$node->safe_psql('postgres', q{
	CREATE SCHEMA app;
	CREATE DOMAIN app.pos AS int CHECK (VALUE > 0);
	CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
	CREATE TABLE typed (id int PRIMARY KEY, qty text, mood text);
	INSERT INTO typed SELECT g, g::text, (ARRAY['sad', 'ok', 'happy'])[1 + g % 3] FROM generate_series(1, 3000) g;
	SET search_path = app, public;
	SELECT mig_expand('typed', 'qty', type => 'pos', up => 'qty::int::pos');
	SELECT mig_expand('typed', 'mood', type => 'mood', up => 'mood::mood');
	SELECT mig_backfill('typed');
});
is(wait_job_ended($node, 'typed'), 'done', 'a domain and an enum as new types: done');
is($node->safe_psql('postgres', q{SELECT count(*) FROM typed
	WHERE _mig_new_qty = qty::int AND _mig_new_mood::text = mood}), '3000', 'every row backfilled');

# a failed batch names the row that failed: by a composite key, or by ctid
# without one; the batch wrote nothing of it (the other stripes of its
# window, backfill_apply.c, may have written rows after it: right ones)
$node->safe_psql('postgres', q{
	RESET search_path;
	CREATE TABLE bad2 (a int, b int, v text, PRIMARY KEY (a, b));
	INSERT INTO bad2 SELECT g / 10, g % 10, CASE WHEN g = 47 THEN 'x' ELSE g::text END
	FROM generate_series(1, 100) g;
	CREATE TABLE bad3 (v text);
	INSERT INTO bad3 SELECT CASE WHEN g = 70 THEN 'y' ELSE g::text END FROM generate_series(1, 100) g;
	SELECT mig_expand('bad2', 'v', type => 'int');
	SELECT mig_expand('bad3', 'v', type => 'int');
	SELECT mig_backfill('bad2', batch_size => 30);
	SELECT mig_backfill('bad3');
});
# one bad row deep in a large batch: found by bisection
$node->safe_psql('postgres', q{
	CREATE TABLE bad4 (id int PRIMARY KEY, v text);
	INSERT INTO bad4 SELECT g, CASE WHEN g = 12345 THEN 'z' ELSE g::text END FROM generate_series(1, 20000) g;
	SELECT mig_expand('bad4', 'v', type => 'int');
	SELECT mig_backfill('bad4', batch_size => 20000);
});
is(wait_job_ended($node, 'bad4'), 'failed', 'a bad row in a batch of 20000 fails the job');
like($node->safe_psql('postgres', "SELECT (" . job_row('bad4') . ").last_error"),
	qr/the first row that fails is the one with id = 12345\)/, 'last_error names it');
is($node->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE id = 12345), count(*) > 0
	FROM bad4 WHERE _mig_new_v IS NOT NULL}), '0|t',
	'the (halved) batches before it were written, not the bad row');
is($node->safe_psql('postgres', "SELECT count(*) FROM bad4 WHERE _mig_new_v IS NULL AND id <= (SELECT ("
	  . job_row('bad4') . ").lower_key[1]::int)"), '0', 'every row up to the checkpoint was written');
is(wait_job_ended($node, 'bad2'), 'failed', 'a bad row fails the job (composite key)');
is(wait_job_ended($node, 'bad3'), 'failed', 'a bad row fails the job (ctid)');
like($node->safe_psql('postgres', "SELECT (" . job_row('bad2') . ").last_error"),
	qr/invalid input syntax for type integer: "x" \(the batch failed 4 times; the first row that fails is the one with \(a, b\) = \(4, 7\)\)/,
	'last_error names the composite key of the row');
like($node->safe_psql('postgres', "SELECT (" . job_row('bad3') . ").last_error"),
	qr/the first row that fails is the one with ctid \(0,70\)/, 'last_error names the ctid of the row');
is($node->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE (a, b) = (4, 7)), count(*) >= 45
	FROM bad2 WHERE _mig_new_v IS NOT NULL}), '0|t', 'the batches before the bad row were written, not the bad row');
is($node->safe_psql('postgres', q{SELECT count(*) FROM bad3 WHERE _mig_new_v IS NOT NULL AND ctid = '(0,70)'}), '0',
	'the ctid batch did not write the bad row');

$node->stop;
done_testing();
