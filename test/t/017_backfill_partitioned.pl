# mig_expand on partitioned tables (issue 12): range, list, hash,
# sub-partitioned, default partitions are expanded (one ADD COLUMN on the
# parent, the dual-write trigger cloned to every partition) and aborted.
# Refused up front, cleanly, with what to do instead: a partition on its own
# (the parent is the unit, named), a partition-key column at any level (never
# in place), a leaf that is a foreign table; nothing is left behind by a
# refusal: no column, no trigger, no migration row.
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

# a partition on its own: the parent is the unit, named in the hint
for my $p (qw(r_2024 r_def l_eu h0 s_2024 s_2024_1))
{
	my $root = substr($p, 0, 1);
	refused("SELECT mig_expand('$p', 'v', type => 'int')", '0A000',
		qq{cannot migrate partition "$p" on its own},
		qq{Call mig_expand on partitioned table "$root"}, "partition $p");
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
refused("SELECT mig_expand('s', 'k', type => 'bigint')", '0A000',
	'cannot change partition-key column "k" of partitioned table "s" in place',
	'Rewrite the data', 'key column of a sub-partitioned level');

# a leaf that is a foreign table: refused, with the leaf named
$node->safe_psql('postgres', q{
	CREATE FOREIGN DATA WRAPPER dummy_fdw;
	CREATE SERVER dummy_srv FOREIGN DATA WRAPPER dummy_fdw;
	CREATE TABLE f (id int, at date, v text) PARTITION BY RANGE (at);
	CREATE TABLE f_1 PARTITION OF f FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
	CREATE FOREIGN TABLE f_ft PARTITION OF f FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
		SERVER dummy_srv;
});
refused("SELECT mig_expand('f', 'v', type => 'int')", '0A000',
	'partition "f_ft" of table "f" is not an ordinary table', 'Detach partition "f_ft"',
	'a foreign leaf');

# the finish takes a partitioned table: without a migration it says so
for my $f (qw(mig_validate mig_cutover mig_contract))
{
	my $call = $f eq 'mig_validate' ? "SELECT * FROM mig_validate('r')" : "SELECT $f('r')";
	refused($call, '42704', 'table "r" has no active migration',
		'Start one with mig_expand', "$f on a partitioned table");
}
my ($r0, $o0, $e0) = $node->psql('postgres', "SELECT mig_abort('r')");
like($e0, qr/table "r" has no migration to abort/, 'mig_abort on a partitioned table without a migration');

# the backfill takes a partitioned table (074_partition_backfill.pl): without a
# migration it says so
refused("SELECT mig_backfill('r')", '42704', 'table "r" has no active migration',
	'Start one with mig_expand', 'mig_backfill on a partitioned table');

# a role that does not own it learns nothing about it
$node->safe_psql('postgres', 'CREATE ROLE stranger');
my ($ret, $out, $err) = $node->psql('postgres', "SET ROLE stranger; SELECT mig_expand('r', 'v', type => 'int')");
like($err, qr/must be owner of table r/, 'a role that does not own it: 42501 first');

# nothing was left behind by any refusal, and the tables work
is($node->safe_psql('postgres',
	q{SELECT string_agg(attrelid::regclass || '.' || attname, ',' ORDER BY attrelid::regclass::text, attnum)
	  FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped
	   AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p'))
	   AND attrelid::regclass::text NOT LIKE 'f%'}),
	$before, 'no column was added anywhere');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'zz_migrate_ext%'}), '0',
	'no trigger');
is($node->safe_psql('postgres', q{SELECT count(*) FROM migrate_ext.migration}), '0', 'no migration');
is($node->safe_psql('postgres', q{SELECT count(*) FROM r}), '2', 'the rows are all there');

# expand works on every kind: range with a default partition, list, hash,
# sub-partitioned; one ADD COLUMN on the parent, the trigger cloned to
# every partition (ENABLE ALWAYS on each), the rows kept in step
for my $t (qw(r l h s))
{
	$node->safe_psql('postgres', "SELECT mig_expand('$t', 'v', type => 'int', new_col => 'v_new')");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FILTER (WHERE a.attname IS NULL) || '/' || count(*)
		  FROM pg_partition_tree('$t') p
		  LEFT JOIN pg_attribute a ON a.attrelid = p.relid AND a.attname = 'v_new' AND NOT a.attisdropped}),
		'0/' . $node->safe_psql('postgres', "SELECT count(*) FROM pg_partition_tree('$t')"),
		"$t: every level has the new column");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FILTER (WHERE t.tgenabled = 'A') || '/' || count(*)
		  FROM pg_partition_tree('$t') p
		  LEFT JOIN pg_trigger t ON t.tgrelid = p.relid AND t.tgname = 'zz_migrate_ext_dualwrite'}),
		$node->safe_psql('postgres', "SELECT count(*) || '/' || count(*) FROM pg_partition_tree('$t')"),
		"$t: the dual-write trigger on every level, ENABLE ALWAYS");
}
$node->safe_psql('postgres', q{
	INSERT INTO r VALUES (3, '2024-02-01', '30'), (4, '2031-01-01', '40');
	INSERT INTO l VALUES (1, 'eu', '5');
	INSERT INTO s VALUES (1, '2024-03-01', 1, '6');
	UPDATE h SET v = v;
});
is($node->safe_psql('postgres', q{
	SELECT string_agg(tableoid::regclass || ':' || id || '=' || coalesce(v_new::text, 'NULL'), ',' ORDER BY tableoid::regclass::text, id)
	  FROM (SELECT tableoid, * FROM r UNION ALL SELECT tableoid, id, NULL, v, v_new FROM l
	        UNION ALL SELECT tableoid, id, at, v, v_new FROM s) x WHERE id > 2 OR tableoid::regclass::text <> 'r_2024'}),
	'l_eu:1=5,r_2024:3=30,r_def:2=NULL,r_def:4=40,s_2024_1:1=6',
	'writes through the parent reach every leaf, sub-partitioned and default ones included');
is($node->safe_psql('postgres', 'SELECT count(*) FROM h WHERE v_new IS DISTINCT FROM v::int'), '0',
	'hash: an UPDATE of the parent filled every leaf');
for my $t (qw(r l h s))
{
	$node->safe_psql('postgres', "SELECT mig_abort('$t')");
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'zz_migrate_ext%'}), '0',
	'mig_abort dropped the trigger and its clones');
is($node->safe_psql('postgres',
	q{SELECT string_agg(attrelid::regclass || '.' || attname, ',' ORDER BY attrelid::regclass::text, attnum)
	  FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped
	   AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p'))
	   AND attrelid::regclass::text NOT LIKE 'f%'}),
	$before, 'and the new column everywhere');

# the arguments work as on a plain table, through contract: a no-rewrite
# retype (one ALTER TYPE on the parent), a split with down (COPY and a
# write of the new side included), NOT NULL with a new default and a CHECK
$node->safe_psql('postgres', q{
	CREATE TABLE k (id int, at date, name varchar(10), full_name text, n int) PARTITION BY RANGE (at);
	CREATE TABLE k_1 PARTITION OF k FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
	CREATE TABLE k_d PARTITION OF k DEFAULT;
	INSERT INTO k VALUES (1, '2024-02-02', 'ab', 'Ann Lee', 1), (2, '2030-01-01', 'cd', 'Bob Ray', 2);
});
my ($rk, $ok, $ek) = $node->psql('postgres', "SELECT mig_expand('k', 'name', type => 'varchar(20)')");
like($ek, qr/column "name" changed from character varying\(10\) to character varying\(20\) without a rewrite/,
	'a no-rewrite retype of a partitioned table');
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT format_type(atttypid, atttypmod), ',') FROM pg_attribute
	 WHERE attname = 'name' AND attrelid IN ('k'::regclass, 'k_1'::regclass, 'k_d'::regclass)}),
	'character varying(20)', 'on the parent and every leaf');
$node->safe_psql('postgres', q{
	SELECT mig_expand('k', 'full_name', new_col => 'first', up => 'split_part(full_name, '' '', 1)');
	SELECT mig_expand('k', 'full_name', new_col => 'last', up => 'split_part(full_name, '' '', 2)',
		down => 'first || '' '' || last');
	COPY k (id, at, name, full_name) FROM STDIN;
3	2024-03-03	ef	Cy Doe
\.
	SET migrate_ext.writer = 'new';
	UPDATE k SET first = 'Zed' WHERE id = 1;
	RESET migrate_ext.writer;
	UPDATE k SET full_name = full_name;
	SELECT count(*) FROM mig_validate('k');
	SELECT mig_cutover('k');
	SELECT mig_contract('k');
	UPDATE k SET n = 3 WHERE n IS NULL;
	SELECT mig_expand('k', 'n', type => 'bigint', not_null => true, new_default => '7',
		check_expr => '_mig_new_n >= 0');
	UPDATE k SET n = n;
	SELECT count(*) FROM mig_validate('k');
	SELECT mig_cutover('k');
	SELECT mig_contract('k');
	INSERT INTO k (id, at) VALUES (9, '2024-09-09');
});
is($node->safe_psql('postgres', q{
	SELECT string_agg(format('%s:%s:%s:%s:%s', tableoid::regclass, id, first, last, n), ',' ORDER BY id) FROM k}),
	'k_1:1:Zed:Lee:1,k_d:2:Bob:Ray:2,k_1:3:Cy:Doe:3,k_1:9:::7',
	'a split with down and NOT NULL with a new default, contracted on a partitioned table');
is($node->safe_psql('postgres', q{
	SELECT string_agg(attrelid::regclass || ':' || attnotnull || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attrelid::regclass::text)
	  FROM pg_attribute WHERE attname = 'n' AND attrelid IN ('k'::regclass, 'k_1'::regclass, 'k_d'::regclass)}),
	'k:true:bigint,k_1:true:bigint,k_d:true:bigint', 'n is bigint NOT NULL on the parent and every leaf');

$node->stop;
done_testing();
