# The routes PostgreSQL 15 allows for mig_contract on a partitioned table
# (issue 12), proven on the server itself, without migrate_ext:
#  - a primary key (which includes the partition key) moves to the new
#    column without building any index under the swap's lock: the leaves'
#    unique indexes are built CONCURRENTLY first; in the swap each leaf
#    gets its PRIMARY KEY USING INDEX, and the parent's ADD PRIMARY KEY
#    attaches them (relfilenodes unchanged).  Plain leaf indexes are not
#    enough: the parent's ADD PRIMARY KEY then builds new ones under
#    ACCESS EXCLUSIVE (shown too, as the reason for the route);
#  - a plain index: CREATE INDEX ... ON ONLY on the parent and every
#    sub-partitioned level, CONCURRENTLY per leaf, ATTACH PARTITION;
#  - a foreign key referencing the partitioned table: added NOT VALID in
#    the swap (catalog only) and validated after it, under locks that
#    block no writes;
#  - a foreign key declared on a partitioned table: NOT VALID is refused
#    on the parent, so NOT VALID + VALIDATE per leaf, then the parent's ADD
#    FOREIGN KEY attaches the leaves' keys without a scan (a planted row the
#    scan would reject goes unnoticed);
#  - dropping a column of the partition key (at any level) is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = PostgreSQL::Test::Cluster->new('partition_routes');
$node->init;
$node->start;

# range on top; a hash and a list sub-partitioned level (every level's key
# is in the primary key, as PostgreSQL requires); default partitions
my @leaves = mig_partition_tree($node, 'id int NOT NULL, created_at date NOT NULL, '
	  . 'region text NOT NULL, v int, id_new bigint, PRIMARY KEY (id, created_at)');
$node->safe_psql('postgres', q{
INSERT INTO ev SELECT g, date '2020-01-01' + (g % 1400),
	CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south' END, g, g
	FROM generate_series(1, 400000) g;
CREATE TABLE ref (rid int PRIMARY KEY, ev_id int, ev_at date, ev_id_new bigint,
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev (id, created_at));
INSERT INTO ref SELECT g, g, date '2020-01-01' + (g % 1400), g FROM generate_series(1, 1000) g;
CREATE TABLE pref (id int, at date, ev_id bigint, ev_at date) PARTITION BY RANGE (at);
CREATE TABLE pref_1 PARTITION OF pref FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE pref_d PARTITION OF pref DEFAULT;
INSERT INTO pref SELECT g, date '2020-01-01' + g, g, date '2020-01-01' + (g % 1400)
	FROM generate_series(1, 1000) g;
CREATE TABLE sub (a int, b int) PARTITION BY RANGE (a);
CREATE TABLE sub_1 PARTITION OF sub FOR VALUES FROM (0) TO (10) PARTITION BY LIST (b);
CREATE TABLE naive (id int NOT NULL, k int NOT NULL, id_new int, PRIMARY KEY (id, k))
	PARTITION BY LIST (k);
CREATE TABLE naive_1 PARTITION OF naive FOR VALUES IN (1);
INSERT INTO naive SELECT g, 1, g FROM generate_series(1, 1000) g;
});

my $leaf_in = join(', ', map { "'$_'" } @leaves);

# --- the partition key cannot change in place -----------------------------
my ($rc, $out, $err) = $node->psql('postgres',
	'ALTER TABLE ev DROP COLUMN created_at');
like($err, qr/cannot drop column "created_at" because it is part of the partition key of relation "ev"/,
	'a top-level partition-key column cannot be dropped');
($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE sub DROP COLUMN b');
like($err, qr/part of the partition key of relation "sub_1"/,
	'nor a sub-partition key column');

# --- the naive route: plain leaf indexes are rebuilt, not attached --------
$node->safe_psql('postgres',
	'CREATE UNIQUE INDEX CONCURRENTLY naive_1_new ON naive_1 (id_new, k)');
my $before = $node->safe_psql('postgres',
	"SELECT pg_relation_filenode('naive_1_new')");
$node->safe_psql('postgres', q{
BEGIN;
ALTER TABLE naive DROP CONSTRAINT naive_pkey;
ALTER TABLE naive ADD PRIMARY KEY (id_new, k);
COMMIT;
});
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_index WHERE indrelid = 'naive_1'::regclass}),
	'2', 'a plain leaf index is not attached: the parent built another one');
isnt($node->safe_psql('postgres', q{
	SELECT pg_relation_filenode(indexrelid) FROM pg_index
	WHERE indrelid = 'naive_1'::regclass AND indisprimary}),
	$before, 'under the swap\'s lock (a new relfilenode)');

# --- the route for a primary key: per-leaf unique indexes, then per-leaf
# --- PRIMARY KEY USING INDEX and the parent's ADD PRIMARY KEY in the swap
my $t0 = time;
foreach my $leaf (@leaves)
{
	$node->safe_psql('postgres',
		"CREATE UNIQUE INDEX CONCURRENTLY ${leaf}_mig_pkey ON $leaf (id_new, created_at)");
}
my $build = time - $t0;
# NOT NULL's proof: a CHECK added NOT VALID on the parent (inherited by every
# leaf), validated without blocking writes
$node->safe_psql('postgres', q{
ALTER TABLE ev ADD CONSTRAINT ev_id_new_nn CHECK (id_new IS NOT NULL) NOT VALID;
ALTER TABLE ev VALIDATE CONSTRAINT ev_id_new_nn;
});
my $q_nodes = "SELECT string_agg(c.relname || '=' || pg_relation_filenode(i.indexrelid), ',' ORDER BY c.relname)"
  . " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
  . " WHERE c.relname IN ($leaf_in) AND i.indexrelid::regclass::text LIKE '%_mig_pkey'";
my $nodes_before = $node->safe_psql('postgres', $q_nodes);
my $q_others = "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
  . " WHERE c.relname IN ($leaf_in) AND NOT i.indisprimary";

# a writer that keeps inserting during the swap: its worst wait is measured
$node->safe_psql('postgres', q{
CREATE TABLE probe_result (worst interval, n int);
CREATE PROCEDURE probe(seconds float8) LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + seconds * interval '1 second';
	t0 timestamptz;
	worst interval := '0';
	n int := 0;
BEGIN
	LOOP
		t0 := clock_timestamp();
		INSERT INTO ev (id, created_at, region, v)
			VALUES (1000000 + n, date '2020-02-01' + n % 1000, 'north', n);
		worst := greatest(worst, clock_timestamp() - t0);
		n := n + 1;
		COMMIT;
		PERFORM pg_sleep(0.01);
		EXIT WHEN clock_timestamp() > deadline;
	END LOOP;
	INSERT INTO probe_result VALUES (worst, n);
END $$;
});
# the dual write, in miniature: the new column follows the old one
$node->safe_psql('postgres', q{
CREATE FUNCTION ev_dw() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.id_new := NEW.id; RETURN NEW; END $$;
CREATE TRIGGER ev_dw BEFORE INSERT OR UPDATE ON ev FOR EACH ROW EXECUTE FUNCTION ev_dw();
});
my $probe = $node->background_psql('postgres');
$probe->query_until(qr/started/, "\\echo started\nCALL probe(4);\n");
sleep 1;

my $per_leaf = join("\n", map {
	"ALTER TABLE $_ ADD CONSTRAINT ${_}_pkey PRIMARY KEY USING INDEX ${_}_mig_pkey;"
} @leaves);
my $swap = $node->safe_psql('postgres', qq{
SET client_min_messages = warning;
SET lock_timeout = '1s';
BEGIN;
SELECT clock_timestamp() AS t0 \\gset
LOCK TABLE ev, ref IN ACCESS EXCLUSIVE MODE;
ALTER TABLE ref DROP CONSTRAINT ref_ev_id_ev_at_fkey;
DROP TRIGGER ev_dw ON ev;
ALTER TABLE ev DROP COLUMN id;
ALTER TABLE ev RENAME id_new TO id;
ALTER TABLE ev ALTER id SET NOT NULL;
$per_leaf
ALTER TABLE ev ADD CONSTRAINT ev_pkey PRIMARY KEY (id, created_at);
ALTER TABLE ev DROP CONSTRAINT ev_id_new_nn;
ALTER TABLE ref DROP COLUMN ev_id;
ALTER TABLE ref RENAME ev_id_new TO ev_id;
ALTER TABLE ref ADD CONSTRAINT ref_ev_id_ev_at_fkey
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev (id, created_at) NOT VALID;
SELECT extract(epoch FROM clock_timestamp() - :'t0');
COMMIT;
});
$probe->quit;
note "leaf unique indexes built concurrently in ${build}s; swap held its locks ${swap}s";

is($node->safe_psql('postgres', $q_nodes =~ s/i.indexrelid::regclass::text LIKE '%_mig_pkey'/i.indisprimary/r),
	$nodes_before,
	'no leaf index was rebuilt: each leaf primary key has the relfilenode its concurrent build gave it')
  or diag "before: $nodes_before";
is($node->safe_psql('postgres', $q_others), '0',
	'and no other index was built on any leaf');
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE c.conparentid <> 0) || '/' || count(*)
	FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
	WHERE c.contype = 'p' AND r.relname LIKE 'ev%'}),
	'8/9', 'the leaves\' and sub-levels\' primary keys hang under the parent\'s');
is($node->safe_psql('postgres', q{
	SELECT bool_and(i.indisvalid AND i.indisprimary) FROM pg_index i
	JOIN pg_class c ON c.oid = i.indrelid WHERE c.relname LIKE 'ev%'}),
	't', 'every primary key index valid');
cmp_ok($swap, '<', 1.0, 'the swap is catalog-only: its locks held well under a second');
my ($worst, $n) = split /\|/, $node->safe_psql('postgres',
	"SELECT extract(epoch FROM worst), n FROM probe_result");
cmp_ok($n, '>', 10, 'the writer ran during the swap');
cmp_ok($worst, '<', 1.0, "no insert waited a second behind the swap (worst ${worst}s)");
is($node->safe_psql('postgres', q{
	SELECT format_type(atttypid, atttypmod) FROM pg_attribute
	WHERE attrelid = 'ev_3a'::regclass AND attname = 'id'}),
	'bigint', 'the leaves have the new column under the old name');
($rc, $out, $err) = $node->psql('postgres',
	"INSERT INTO ev (id, created_at, region) VALUES (1, '2020-01-02', 'north')");
like($err, qr/duplicate key value violates unique constraint "ev_1_pkey"/,
	'the moved primary key is enforced');

# --- the referencing foreign key: validated after the swap ---------------
$node->safe_psql('postgres',
	'ALTER TABLE ref VALIDATE CONSTRAINT ref_ev_id_ev_at_fkey');
is($node->safe_psql('postgres', q{
	SELECT convalidated FROM pg_constraint
	WHERE conname = 'ref_ev_id_ev_at_fkey' AND conparentid = 0}),
	't', 'a foreign key referencing the partitioned key: NOT VALID in the swap, validated after');
($rc, $out, $err) = $node->psql('postgres',
	"INSERT INTO ref (rid, ev_id, ev_at) VALUES (5000, 999999999, '2020-01-01')");
like($err, qr/violates foreign key constraint "ref_ev_id_ev_at_fkey"/, 'and enforced');

# --- a plain index on the new column: ON ONLY, per leaf, ATTACH ----------
$node->safe_psql('postgres', q{
CREATE INDEX ev_v_idx ON ONLY ev (v);
CREATE INDEX ev_2_v_idx ON ONLY ev_2 (v);
CREATE INDEX ev_3_v_idx ON ONLY ev_3 (v);
ALTER INDEX ev_v_idx ATTACH PARTITION ev_2_v_idx;
ALTER INDEX ev_v_idx ATTACH PARTITION ev_3_v_idx;
});
foreach my $leaf (@leaves)
{
	my $parent = $leaf =~ /^ev_2/ ? 'ev_2_v_idx' : $leaf =~ /^ev_3/ ? 'ev_3_v_idx' : 'ev_v_idx';
	$node->safe_psql('postgres', "CREATE INDEX CONCURRENTLY ${leaf}_v_idx ON $leaf (v)");
	is($node->safe_psql('postgres', "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ev_v_idx'::regclass"),
		'f', "the parent index is not valid while $leaf is not attached");
	$node->safe_psql('postgres', "ALTER INDEX $parent ATTACH PARTITION ${leaf}_v_idx");
}
is($node->safe_psql('postgres', q{
	SELECT bool_and(indisvalid) || '/' || count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	WHERE c.relname LIKE 'ev%v_idx'}),
	'true/9', 'once every leaf is attached, the parent and the sub-levels index are valid');

# --- a foreign key on a partitioned table --------------------------------
($rc, $out, $err) = $node->psql('postgres', q{
	ALTER TABLE pref ADD CONSTRAINT pref_fk FOREIGN KEY (ev_id, ev_at)
	REFERENCES ev (id, created_at) NOT VALID});
like($err, qr/cannot add NOT VALID foreign key on partitioned table "pref"/,
	'PostgreSQL 15 refuses NOT VALID on a partitioned table');
foreach my $leaf (qw(pref_1 pref_d))
{
	$node->safe_psql('postgres', qq{
		ALTER TABLE $leaf ADD CONSTRAINT pref_fk FOREIGN KEY (ev_id, ev_at)
		REFERENCES ev (id, created_at) NOT VALID;
		ALTER TABLE $leaf VALIDATE CONSTRAINT pref_fk;});
}
# a row the parent's validation scan would reject, written behind the leaf
# keys' backs: the attach does not see it, so it does not scan
$node->safe_psql('postgres', q{
SET session_replication_role = replica;
INSERT INTO pref_d VALUES (0, '2030-01-01', 999999999, '2020-01-01');
});
$node->safe_psql('postgres', q{
	ALTER TABLE pref ADD CONSTRAINT pref_fk FOREIGN KEY (ev_id, ev_at)
	REFERENCES ev (id, created_at)});
is($node->safe_psql('postgres', q{
	SELECT string_agg(conrelid::regclass || ':' || (conparentid <> 0) || ':' || convalidated, ',' ORDER BY conrelid::regclass::text)
	FROM pg_constraint WHERE conname = 'pref_fk'}),
	'pref:false:true,pref_1:true:true,pref_d:true:true',
	'per-leaf NOT VALID + VALIDATE, then the parent attaches them without a scan');
$node->safe_psql('postgres', 'DELETE FROM pref_d WHERE id = 0');

done_testing();
