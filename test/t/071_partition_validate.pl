# mig_validate on a partitioned table (issue 12): every leaf is read (range
# on top, a hash and a list sub-partitioned level, default partitions), each
# in its own chunks; the dual-write trigger is checked on every leaf; the
# predictions of contract read the leaves, not ONLY the parent (which holds
# no row: a foreign key referencing it would have looked broken, a unique
# collision would have gone unseen).
#
# The state is made by mig_expand on the partitioned table, filled by an
# UPDATE of the parent (the dual-write trigger computes the new column); the
# wrong rows are planted with the trigger disabled on the parent (and so on
# every leaf), which the guard records.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('partition_validate');
mig_partition_tree($node, 'id int NOT NULL, created_at date NOT NULL, v int, PRIMARY KEY (id, created_at)');
$node->safe_psql('postgres', q{
INSERT INTO ev SELECT g, date '2020-01-01' + (g % 1400), g FROM generate_series(1, 3000) g;
CREATE TABLE ref (rid int PRIMARY KEY, ev_id int, ev_at date,
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev (id, created_at));
INSERT INTO ref SELECT g, g, date '2020-01-01' + (g % 1400) FROM generate_series(1, 3000, 7) g;
SELECT mig_expand('ev', 'id', type => 'bigint');
UPDATE ev SET id = id;
});

# every leaf's row counts: 3000 in all
my $total = $node->safe_psql('postgres', 'SELECT count(*) FROM ev');
is($total, '3000', 'the rows are spread over the leaves');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_class WHERE relname LIKE 'ev\_%' AND relkind = 'r'
	AND EXISTS (SELECT FROM ev WHERE ev.tableoid = pg_class.oid)}),
	'6', 'and every leaf holds some');

sub checks
{
	my $rows = $node->safe_psql('postgres',
		"SELECT check_name || '|' || passed || '|' || failing || '|' || detail FROM mig_validate('ev')");
	my %c;
	foreach (split /\n/, $rows)
	{
		my ($name, $passed, $failing, $detail) = split /\|/, $_, 4;
		$c{$name} = { passed => $passed, failing => $failing, detail => $detail };
	}
	return \%c;
}

# wrong rows planted in three leaves at two levels: a NULL, a wrong value
# (referenced by ref), a collision in the new primary key
$node->safe_psql('postgres', q{
ALTER TABLE ev DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE ev SET _mig_new_id = NULL WHERE id IN (400, 401);	-- in ev_2's leaves
UPDATE ev SET _mig_new_id = id + 100000 WHERE id = 2801;	-- in ev_1
UPDATE ev SET _mig_new_id = 8 WHERE id = 1408;			-- in ev_1, as (8, 2020-01-09)
});
my $leaf_of = $node->safe_psql('postgres',
	"SELECT string_agg(id || ':' || tableoid::regclass, ',' ORDER BY id) FROM ev WHERE id IN (400, 401, 2801, 1408, 8)");
note "planted rows live in $leaf_of";

my $c = checks();
is($c->{trigger_enabled}{passed}, 'false', 'the trigger disabled: trigger_enabled fails');
is($c->{backfilled}{failing}, '2', 'the two NULLs are found, whatever leaf they are in');
like($c->{backfilled}{detail}, qr/\(400,[^)]*\), \(401,[^)]*\); all 3000 rows checked/,
	'named by the primary key, every row of every leaf checked');
is($c->{new_equals_up}{failing}, '2', 'the two wrong values are found');
is($c->{'unique:ev_pkey'}{failing}, '2',
	'the collision in the new primary key is predicted (read across the leaves)');
# ref references 400, 1408 and 2801 (every 7th id from 1), not 401
is($c->{'fkey_in:ref_ev_id_ev_at_fkey'}{failing}, '3',
	'exactly the ref rows whose rows have no right new value are predicted to break the foreign key');
like($c->{'fkey_in:ref_ev_id_ev_at_fkey'}{detail}, qr/\(400,.*\(1408,.*\(2801,|\(2801,/, 'and named');

# put the rows right; the trigger on the parent (cloned to every leaf)
$node->safe_psql('postgres', q{
ALTER TABLE ev ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
UPDATE ev SET id = id WHERE _mig_new_id IS DISTINCT FROM id;
});
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_trigger WHERE tgname = 'zz_migrate_ext_dualwrite'
	AND tgenabled = 'A'}), '9', 'the trigger is on the parent, both sub-levels and every leaf');

# one leaf's clone disabled: named
$node->safe_psql('postgres',
	'ALTER TABLE ev_3d DISABLE TRIGGER zz_migrate_ext_dualwrite');
$c = checks();
is($c->{trigger_enabled}{passed}, 'false', 'a leaf whose clone of the trigger is disabled fails');
like($c->{trigger_enabled}{detail}, qr/on partition ev_3d is disabled/, 'and is named');
$node->safe_psql('postgres',
	'ALTER TABLE ev_3d ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite');

$c = checks();
my @failed = grep { $c->{$_}{passed} ne 'true' } sort keys %$c;
is("@failed", '', 'every check passes once the rows are right');
like($c->{backfilled}{detail}, qr/all 3000 rows checked/, 'over all 3000 rows');
is($node->safe_psql('postgres', 'SELECT phase FROM migrate_ext.migration'),
	'validated', 'the migration is validated');

# a sample reads the leaves too
$node->safe_psql('postgres', 'ANALYZE ev');
my $sampled = $node->safe_psql('postgres',
	"SELECT detail FROM mig_validate('ev', 500) WHERE check_name = 'backfilled'");
unlike($sampled, qr/all 3000 rows checked/, 'a sample reads part of the rows');
like($sampled, qr/\d+ rows? (checked|sampled)|sample/, 'and says so') or diag $sampled;

done_testing();
