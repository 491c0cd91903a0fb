# A mig_contract cancelled half way (its caller's statement_timeout, while
# the worker waits for a lock to add a foreign key copy) leaves nothing
# enforced that was not there before: the NOT VALID constraints it had
# added are dropped by their recorded OIDs, writes the old schema allows go
# through, and mig_abort succeeds and leaves the tables as they were.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('cancel', setup => q{
CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL CHECK (v >= 0));
CREATE TABLE ord (id int PRIMARY KEY, acct_id int REFERENCES acct);
INSERT INTO acct SELECT g, g FROM generate_series(1, 1000) g;
INSERT INTO ord SELECT g, 1 + g % 1000 FROM generate_series(1, 2000) g;
SELECT mig_expand('acct', 'id', type => 'bigint');
SET migrate_ext.writer = 'old';
UPDATE acct SET id = id;
RESET migrate_ext.writer;
SELECT bool_and(passed) FROM mig_validate('acct');
});
my $before = $node->safe_psql('postgres', q{
SELECT string_agg(conrelid::regclass || '.' || conname || ':' || convalidated, ', ' ORDER BY 1)
  FROM pg_constraint WHERE conrelid IN ('acct'::regclass, 'ord'::regclass)});

# A writer on ord: its ROW EXCLUSIVE lock keeps the foreign key copy (SHARE
# ROW EXCLUSIVE on ord) waiting in the lock ladder.
my $writer = $node->background_psql('postgres');
$writer->query_safe('BEGIN');
$writer->query_safe('UPDATE ord SET acct_id = acct_id WHERE id = 1');

# (the ladder's tries queue lock_timeout_max in all: 5 s, past the 3 s)
$ENV{PGOPTIONS} = '-c migrate_ext.lock_retries=8 -c migrate_ext.lock_timeout_max=5000';
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET statement_timeout = '3s'; SELECT mig_contract('acct')});
delete $ENV{PGOPTIONS};
isnt($ret, 0, 'mig_contract did not finish');
like($err, qr/canceling statement due to statement timeout/, 'it was cancelled')
  or diag($err);

# The worker goes on until its next step boundary (the lock ladder gives
# up), then drops what it added and exits.
$node->poll_query_until('postgres', q{
SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'migrate_ext'})
  or die 'the contract worker did not exit';
$writer->query_safe('COMMIT');
$writer->quit;
like(slurp_file($node->logfile),
	qr/was dropped: the table enforces nothing it did not before/,
	'the worker dropped what it had added');

is($node->safe_psql('postgres', q{
SELECT string_agg(conrelid::regclass || '.' || conname || ':' || convalidated, ', ' ORDER BY 1)
  FROM pg_constraint WHERE conrelid IN ('acct'::regclass, 'ord'::regclass)}),
	$before, 'no constraint is left that was not there before');
is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.contract_object'),
	'0', 'nothing recorded is left');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM pg_index WHERE indrelid = 'acct'::regclass AND indisunique
   AND indexrelid::regclass::text LIKE '\_mig\_%'}),
	'0', 'no unique copy is left');

# writes the old schema allows
$node->safe_psql('postgres', q{
INSERT INTO acct (id, v) VALUES (5000, 1);
INSERT INTO ord VALUES (5000, 5000);
INSERT INTO ord VALUES (5001, NULL);});
pass('writes go through');

$node->safe_psql('postgres', q{SELECT mig_abort('acct')});
is($node->safe_psql('postgres', q{
SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
 WHERE attrelid = 'acct'::regclass AND attnum > 0 AND NOT attisdropped}),
	'id,v', 'mig_abort left the table as it was');
is($node->safe_psql('postgres', q{
SELECT string_agg(conrelid::regclass || '.' || conname || ':' || convalidated, ', ' ORDER BY 1)
  FROM pg_constraint WHERE conrelid IN ('acct'::regclass, 'ord'::regclass)}),
	$before, 'and its constraints');
is($node->safe_psql('postgres', 'SELECT count(*), sum(id) FROM acct'), '1001|505500',
	'every row is there');

done_testing();
