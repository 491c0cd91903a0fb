# Partitioned tables are refused up front, cleanly, with what to do instead:
# range, list, hash, sub-partitioned, default partitions; a partition on its
# own (the parent is the unit); a partition-key column (never in place).
# Nothing is left behind: no column, no trigger, no migration row.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = mig_node('bf_part');
$node->safe_psql('postgres', q{
	CREATE TABLE r (id int, at date, v text) PARTITION BY RANGE (at);
	CREATE TABLE r_2024 PARTITION OF r FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
	CREATE TABLE r_def PARTITION OF r DEFAULT;
	CREATE TABLE l (id int, region text, v text) PARTITION BY LIST (region);
	CREATE TABLE l_eu PARTITION OF l FOR VALUES IN ('eu');
	CREATE TABLE h (id int, v text) PARTITION BY HASH (id);
	CREATE TABLE h0 PARTITION OF h FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE h1 PARTITION OF h FOR VALUES WITH (MODULUS 2, REMAINDER 1);
	CREATE TABLE s (id int, at date, k int, v text) PARTITION BY RANGE (at);
	CREATE TABLE s_2024 PARTITION OF s FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
		PARTITION BY LIST (k);
	CREATE TABLE s_2024_1 PARTITION OF s_2024 FOR VALUES IN (1);
	CREATE TABLE e (id int, at timestamptz, v text) PARTITION BY RANGE (date_trunc('day', at AT TIME ZONE 'UTC'));
	INSERT INTO r VALUES (1, '2024-05-01', '1'), (2, '2030-01-01', '2');
	INSERT INTO h SELECT g, g::text FROM generate_series(1, 10) g;
});
my $before = $node->safe_psql('postgres',
	q{SELECT string_agg(attrelid::regclass || '.' || attname, ',' ORDER BY attrelid::regclass::text, attnum)
	  FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped
	   AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p'))});

sub refused
{
	my ($sql, $state, $msg, $hint, $name) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	like($err, qr/ERROR:  $state: $msg/, "$name: $state") or diag($err);
	like($err, qr/HINT:  $hint/, "$name: hint");
}

for my $t (qw(r l h s))
{
	refused("SELECT mig_expand('$t', 'v', type => 'int')", '0A000',
		qq{cannot migrate partitioned table "$t" yet}, 'Change the column with ALTER TABLE',
		"partitioned table $t");
}
for my $p (qw(r_2024 r_def l_eu h0 s_2024 s_2024_1))
{
	refused("SELECT mig_expand('$p', 'v', type => 'int')", '0A000',
		qq{cannot migrate partition "$p" on its own},
		'migrate_ext does not migrate partitioned tables yet', "partition $p");
}
refused("SELECT mig_expand('r', 'at', type => 'timestamptz')", '0A000',
	'cannot change partition-key column "at" of partitioned table "r" in place',
	'Rewrite the data into a new table partitioned by the new column', 'range key column');
refused("SELECT mig_expand('l', 'region', type => 'varchar(10)')", '0A000',
	'cannot change partition-key column "region"', 'Rewrite the data', 'list key column');
refused("SELECT mig_expand('h', 'id', type => 'bigint')", '0A000',
	'cannot change partition-key column "id"', 'Rewrite the data', 'hash key column');
refused("SELECT mig_expand('e', 'at', type => 'timestamp')", '0A000',
	'cannot change partition-key column "at"', 'Rewrite the data', 'column in a key expression');

# the finish takes a partitioned table (branch part: validation, cut-over
# and contract, test/t/071 and 072): without a migration it says so
for my $f (qw(mig_validate mig_cutover mig_contract))
{
	my $call = $f eq 'mig_validate' ? "SELECT * FROM mig_validate('r')" : "SELECT $f('r')";
	refused($call, '42704', 'table "r" has no active migration',
		'Start one with mig_expand', "$f on a partitioned table");
}

# every other entry point refuses a partitioned table the same way
for my $f (qw(mig_backfill mig_abort mig_preflight))
{
	my $call = $f eq 'mig_preflight' ? "SELECT * FROM mig_preflight('r', 'v', 'int')"
	  : $f eq 'mig_validate' ? "SELECT * FROM mig_validate('r')" : "SELECT $f('r')";
	refused($call, '0A000', 'migrate_ext does not migrate partitioned tables yet; "r" is one',
		'Change the column with ALTER TABLE', "$f on a partitioned table");
}

# a role that does not own it learns nothing about it
$node->safe_psql('postgres', 'CREATE ROLE stranger');
my ($ret, $out, $err) = $node->psql('postgres', "SET ROLE stranger; SELECT mig_expand('r', 'v', type => 'int')");
like($err, qr/must be owner of table r/, 'a role that does not own it: 42501 first');

# nothing was left behind, and the tables work
is($node->safe_psql('postgres',
	q{SELECT string_agg(attrelid::regclass || '.' || attname, ',' ORDER BY attrelid::regclass::text, attnum)
	  FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped
	   AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p'))}),
	$before, 'no column was added anywhere');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'zz_migrate_ext%'}), '0',
	'no trigger');
is($node->safe_psql('postgres', q{SELECT count(*) FROM migrate_ext.migration}), '0', 'no migration');
is($node->safe_psql('postgres', q{SELECT count(*) FROM r}), '2', 'the rows are all there');

$node->stop;
done_testing();
