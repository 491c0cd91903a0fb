# mig_contract on a partitioned table (issue 12): range on top, a hash and a
# list sub-partitioned level, default partitions at both levels.
#  1. v int -> bigint, a non-key column with an index: the copy is built
#     concurrently per leaf, then ON ONLY on the parent and each level and
#     attached; values, indexes and names as before but for the type;
#  2. id int -> bigint, the id of a (id, created_at) primary key referenced
#     by another table: the leaves' unique copies become the leaves'
#     primary keys and the parent's attaches them without building any
#     index; the foreign key is moved and validated, and that of a
#     partitioned table (pref) too: NOT VALID on each of its leaves in the
#     swap, validated on each after it, then attached by pref's own;
#  3. a contract that fails (a name in the way) leaves nothing enforced
#     behind, and the next one succeeds;
#  4. a rename, note -> remark, with a unique constraint (which includes
#     the partition key) on it;
#  5. a foreign key declared on a partitioned table, moved with the column
#     of either side: NOT VALID and validated on each leaf, then attached by
#     the parent's.
#
# The expanded state is made by mig_expand on the partitioned table, and
# the backfilled one by an UPDATE of the parent (the dual-write trigger
# computes the new column on every leaf).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use IPC::Run;

my $node = mig_node('partition_contract');
mig_partition_tree($node,
	'id int NOT NULL, created_at date NOT NULL, v int, note text, PRIMARY KEY (id, created_at)');
$node->safe_psql('postgres', q{
CREATE INDEX ev_v ON ev (v);
INSERT INTO ev SELECT g, date '2020-01-01' + (g % 1400), g * 3, 'n' || g
	FROM generate_series(1, 5000) g;
CREATE TABLE ref (rid int PRIMARY KEY, ev_id int, ev_at date,
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev (id, created_at));
INSERT INTO ref SELECT g, g, date '2020-01-01' + (g % 1400) FROM generate_series(1, 5000, 7) g;
CREATE TABLE pref (rid int, at date, ev_id int, ev_at date,
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev (id, created_at)) PARTITION BY RANGE (at);
CREATE TABLE pref_1 PARTITION OF pref FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE pref_d PARTITION OF pref DEFAULT;
INSERT INTO pref SELECT g, date '2020-01-01' + g, g, date '2020-01-01' + (g % 1400)
	FROM generate_series(1, 5000, 11) g;
});
my $checksum_q = "SELECT count(*) || ':' || sum(id) || ':' || sum(v) || ':' || "
  . "md5(string_agg(id || ',' || created_at || ',' || v || ',' || note, ';' ORDER BY id)) FROM ev";
my $checksum = $node->safe_psql('postgres', $checksum_q);

# The expanded, backfilled state of ev for one column: mig_expand on the
# partitioned table, then an UPDATE of the parent (the dual-write trigger
# computes the new column in every leaf).
sub expand_and_fill
{
	my ($col, $type, $newcol) = @_;
	my $args = $newcol ? "new_col => '$newcol'" : "type => '$type'";
	my $id = $node->safe_psql('postgres', "SELECT mig_expand('ev', '$col', $args)");
	$node->safe_psql('postgres', "UPDATE ev SET $col = $col");
	return $id;
}

sub finish
{
	my ($what) = @_;
	my $failed = $node->safe_psql('postgres',
		"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('ev') WHERE NOT passed");
	is($failed, '', "$what: every check of mig_validate passes");
	$node->safe_psql('postgres', "SELECT mig_cutover('ev')");
}

my $leftovers_q = q{
	SELECT count(*) FROM pg_class WHERE relname LIKE '\_mig\_%'};
my $notvalid_q = q{
	SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
	WHERE NOT c.convalidated AND c.conparentid = 0 AND r.relname IN ('ev', 'ref')};

# --- 1. a non-key column with an index ------------------------------------
my $m1 = expand_and_fill('v', 'bigint');
finish('v');
my ($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev')");
is($rc, 0, 'v: mig_contract succeeds') or diag $err;
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT format_type(a.atttypid, a.atttypmod), ',')
	FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	WHERE c.relname LIKE 'ev%' AND c.relkind IN ('r', 'p') AND a.attname = 'v'}),
	'bigint', 'v is bigint on the parent, the levels and every leaf');
is($node->safe_psql('postgres', $checksum_q), $checksum, 'every row as before');
is($node->safe_psql('postgres', q{
	SELECT count(*) || '/' || bool_and(i.indisvalid)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
	WHERE a.attname = 'v' AND c.relname LIKE 'ev%v%'}),
	'9/true', 'the index on v: parent, both levels and six leaves, all valid');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	WHERE c.relkind IN ('i', 'I') AND c.relname LIKE 'ev%v%'}),
	'8', 'every level\'s and leaf\'s copy attached to its parent level\'s');
is($node->safe_psql('postgres', "SELECT indexrelid::regclass FROM pg_index WHERE indrelid = 'ev'::regclass AND NOT indisprimary"),
	'ev_v', 'under the old name');
is($node->safe_psql('postgres', $leftovers_q), '0', 'no copy left under a _mig_ name');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE id = $m1"),
	'contracted', 'the migration is contracted');

# --- 3. a contract that fails leaves nothing enforced behind ----------------
my $m2 = expand_and_fill('id', 'bigint');
finish('id');
my $old_leaf_keys = $node->safe_psql('postgres', q{
	SELECT string_agg(indexrelid::text, ',' ORDER BY indexrelid) FROM pg_index WHERE indisprimary
	AND indrelid::regclass::text LIKE 'ev%'});
$node->safe_psql('postgres', 'CREATE TABLE "_mig_ev_1_pkey" ()');
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev')");
like($err, qr/relation "_mig_ev_1_pkey" already exists/, 'id: a name in the way stops contract');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_class WHERE relname LIKE '\_mig\_%pkey' AND relkind = 'i'}),
	'0', 'the unique copies already built on other leaves are dropped');
is($node->safe_psql('postgres', $notvalid_q), '0', 'no NOT VALID constraint is left');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_constraint WHERE conrelid = 'ev'::regclass AND contype = 'c'}),
	'0', 'nor the NOT NULL proof');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE id = $m2"),
	'cutover', 'the migration is still cut over');
is($node->safe_psql('postgres', q{
	SELECT string_agg(indexrelid::text, ',' ORDER BY indexrelid) FROM pg_index WHERE indisprimary
	AND indrelid::regclass::text LIKE 'ev%'}),
	$old_leaf_keys, 'the old primary keys are untouched');
$node->safe_psql('postgres', 'DROP TABLE "_mig_ev_1_pkey"');

# --- 2. the id of a (id, created_at) primary key referenced by ref ----------
# A reader of the table and of one leaf, and a writer through the parent
# (its rows dual-written on their leaves until the swap), during the whole
# contract, each statement timed on the server: nobody waits behind the
# swap for a second.
$node->safe_psql('postgres', q{
CREATE TABLE probe_result (worst float8, n int);
CREATE PROCEDURE probe(seconds float8) LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + seconds * interval '1 second';
	t0 timestamptz;
	worst float8 := 0;
	n int := 0;
BEGIN
	LOOP
		t0 := clock_timestamp();
		PERFORM count(*) FROM ev WHERE id = n % 5000 + 1;
		PERFORM count(*) FROM ev_2a WHERE v = n;
		UPDATE ev SET v = v WHERE id = (n * 7) % 5000 + 1;
		worst := greatest(worst, extract(epoch FROM clock_timestamp() - t0));
		n := n + 1;
		COMMIT;
		PERFORM pg_sleep(0.01);
		EXIT WHEN clock_timestamp() > deadline;
	END LOOP;
	INSERT INTO probe_result VALUES (worst, n);
END $$;
});
my $probe = $node->background_psql('postgres');
$probe->query_until(qr/started/, "\\echo started\nCALL probe(5);\n");
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev')");
is($rc, 0, 'id: mig_contract succeeds once the name is free') or diag $err;
my @nn = $err =~ /validating that column "id" has no NULL/g;
is(scalar @nn, 7, 'the NOT NULL proof validated leaf by leaf (six), then on the parent');
$probe->quit;
my ($worst, $n) = split /\|/, $node->safe_psql('postgres', 'SELECT worst, n FROM probe_result');
cmp_ok($n, '>', 10, 'a reader and a writer ran during the contract');
cmp_ok($worst, '<', 1.0, "and never waited a second (worst ${worst}s)");
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT format_type(a.atttypid, a.atttypmod), ',')
	FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	WHERE c.relname LIKE 'ev%' AND c.relkind IN ('r', 'p') AND a.attname = 'id' AND a.attnotnull}),
	'bigint', 'id is bigint NOT NULL everywhere');
is($node->safe_psql('postgres', $checksum_q), $checksum, 'every row as before');
is($node->safe_psql('postgres', q{
	SELECT count(*) || '/' || count(*) FILTER (WHERE c.conparentid <> 0)
	FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
	WHERE c.contype = 'p' AND r.relname LIKE 'ev%'
	AND c.conname = r.relname || '_pkey'}),
	'9/8', 'a primary key on the parent, both levels and six leaves, under their old names, attached');
# The parent's key was made in the swap; a leaf index built there would be
# newer than it.  Each leaf's key is older: its concurrent copy, attached.
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	WHERE i.indisprimary AND c.relkind = 'r' AND c.relname LIKE 'ev%'
	AND i.indexrelid::int8 < 'ev_pkey'::regclass::oid::int8}),
	'6', 'no leaf index was built in the swap: every leaf key is older than the parent\'s');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	WHERE c.relname LIKE 'ev%' AND c.relkind = 'r'}),
	'12', 'and no other: one key and one index on v per leaf');
is($node->safe_psql('postgres', q{
	SELECT convalidated FROM pg_constraint
	WHERE conname = 'ref_ev_id_ev_at_fkey' AND conparentid = 0}),
	't', 'the foreign key of ref is moved and validated');
# pref, partitioned, references ev: its copy needs ev's new key, made in the
# swap, and cannot be added NOT VALID on pref: NOT VALID on each of pref's
# leaves in the swap, validated on each after it, then pref's own attaches
# them
is($node->safe_psql('postgres', q{
	SELECT string_agg(conrelid::regclass || ':' || conname || ':' || convalidated
	       || ':' || (conparentid <> 0), ',' ORDER BY conrelid::regclass::text)
	  FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text LIKE 'pref%'
	   AND conname = 'pref_ev_id_ev_at_fkey'}),
	'pref:pref_ev_id_ev_at_fkey:true:false,pref_1:pref_ev_id_ev_at_fkey:true:true,'
	  . 'pref_d:pref_ev_id_ev_at_fkey:true:true',
	'the foreign key of partitioned pref is moved: validated on each leaf, attached by the parent\'s');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_constraint c
	 WHERE c.contype = 'f' AND c.conrelid IN ('pref_1'::regclass, 'pref_d'::regclass)
	   AND c.conname = 'pref_ev_id_ev_at_fkey' AND c.oid::int8 < (SELECT oid::int8 FROM pg_constraint WHERE conname = 'pref_ev_id_ev_at_fkey'
	                       AND conrelid = 'pref'::regclass)}),
	'2', 'the leaves\' keys are older than the parent\'s: attached, not built by it');
my @pref_validations = $err =~ /validating foreign key "pref_ev_id_ev_at_fkey" on the new column, on partition/g;
is(scalar @pref_validations, 2, 'each leaf\'s copy validated on its own');
($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO pref VALUES (0, '2020-03-03', 999999, '2020-01-01')});
like($err, qr/violates foreign key constraint "pref_ev_id_ev_at_fkey"/, 'and enforced');
($rc, $out, $err) = $node->psql('postgres',
	"INSERT INTO ref VALUES (100000, 999999, '2020-01-01')");
like($err, qr/violates foreign key constraint "ref_ev_id_ev_at_fkey"/, 'and enforced');
$node->safe_psql('postgres', q{
	INSERT INTO ev (id, created_at, v, note) VALUES (4000000000, '2021-06-01', 1, 'big');
	INSERT INTO ev (id, created_at, v, note) VALUES (999999, '2020-01-01', 1, 'ref');
	INSERT INTO ref VALUES (100000, 999999, '2020-01-01');});
is($node->safe_psql('postgres', 'SELECT count(*) FROM ev WHERE id > 2147483647'),
	'1', 'a key beyond int4 is written; a referenced row is found in its leaf');
($rc, $out, $err) = $node->psql('postgres',
	"INSERT INTO ev (id, created_at, v, note) VALUES (4000000000, '2021-06-01', 1, 'dup')");
like($err, qr/duplicate key value violates unique constraint "ev_2.?_pkey"/,
	'the moved primary key is enforced in the leaf');
is($node->safe_psql('postgres', $leftovers_q), '0', 'no copy left under a _mig_ name');
is($node->safe_psql('postgres', $notvalid_q), '0', 'no NOT VALID constraint left');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_trigger WHERE tgname = 'zz_migrate_ext_dualwrite'"),
	'0', 'the dual-write trigger is gone from every partition');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE id = $m2"),
	'contracted', 'the migration is contracted');

# --- 4. a rename: note -> remark, with a unique key on it -------------------
$node->safe_psql('postgres', q{
	UPDATE ev SET note = 'n' || id;
	ALTER TABLE ev ADD CONSTRAINT ev_note_key UNIQUE (note, created_at);
	CREATE INDEX ev_note_idx ON ev (lower(note));});
$checksum = $node->safe_psql('postgres', $checksum_q);
my $m3 = expand_and_fill('note', 'text', 'remark');
finish('note -> remark');
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev')");
is($rc, 0, 'rename: mig_contract succeeds') or diag $err;
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE attname = 'remark') || '/' || count(*) FILTER (WHERE attname = 'note')
	FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	WHERE c.relname LIKE 'ev%' AND c.relkind IN ('r', 'p') AND NOT attisdropped}),
	'9/0', 'remark on the parent, the levels and every leaf; note is gone');
is($node->safe_psql('postgres', $checksum_q =~ s/note/remark/r), $checksum, 'every row as before');
is($node->safe_psql('postgres', q{
	SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ev_note_key'}),
	'UNIQUE (remark, created_at)', 'the unique key, under its name, on the new column');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
	WHERE c.contype = 'u' AND r.relkind = 'r' AND r.relname LIKE 'ev%' AND c.conparentid <> 0
	AND c.conindid::int8 < (SELECT conindid::int8 FROM pg_constraint WHERE conname = 'ev_note_key')}),
	'6', 'each leaf\'s unique key attached, not built');
is($node->safe_psql('postgres', q{
	SELECT count(*) || '/' || bool_and(indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	WHERE c.relname LIKE 'ev%' AND pg_get_indexdef(i.indexrelid) LIKE '%lower(remark)%'}),
	'9/true', 'the expression index follows the new column at every level');
($rc, $out, $err) = $node->psql('postgres',
	"INSERT INTO ev (id, created_at, v, remark) VALUES (-1, '2020-01-02', 0, 'n1')");
like($err, qr/duplicate key value violates unique constraint "ev_1_\w*key"/,
	'the unique key is enforced in the leaf');
is($node->safe_psql('postgres', $leftovers_q), '0', 'no copy left under a _mig_ name');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE id = $m3"),
	'contracted', 'the migration is contracted');

# --- 5. a partition attached while contract runs -----------------------------
# A writer holds ev_1, so the concurrent build of its copy waits; meanwhile a
# partition is created.  The swap sees a partition without copies: it stops,
# and the next mig_contract builds them and succeeds.
my $m4 = expand_and_fill('v', 'numeric');
finish('v -> numeric');
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK TABLE ev_1 IN ROW EXCLUSIVE MODE;');
my ($c_out, $c_err) = ('', '');
my $contract = IPC::Run::start(
	[ 'psql', '-X', '-d', $node->connstr('postgres'),
	  '-c', 'SET migrate_ext.lock_timeout = 60000', '-c', 'SET migrate_ext.lock_timeout_max = 60000',
	  '-c', "SELECT mig_contract('ev')" ],
	'>', \$c_out, '2>', \$c_err);
$node->poll_query_until('postgres', q{
	SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND locktype = 'virtualxid')})
  or die 'the build of ev_1\'s copy did not wait';
$node->safe_psql('postgres',
	"CREATE TABLE ev_30 PARTITION OF ev FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')");
$holder->query_safe('COMMIT;');
$holder->quit;
$contract->finish;
like($c_err, qr/partition "ev_30" was attached to table "ev" while mig_contract ran/,
	'a partition attached while contract ran stops the swap');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE id = $m4"),
	'cutover', 'the migration is still cut over');
is($node->safe_psql('postgres', $notvalid_q), '0', 'no NOT VALID constraint is left');
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev')");
is($rc, 0, 'the next mig_contract succeeds') or diag $err;
is($node->safe_psql('postgres', q{
	SELECT format_type(atttypid, atttypmod) FROM pg_attribute
	WHERE attrelid = 'ev_30'::regclass AND attname = 'v'}),
	'numeric', 'the new partition has the new column too');
is($node->safe_psql('postgres', q{
	SELECT count(*) || '/' || bool_and(i.indisvalid)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
	WHERE a.attname = 'v' AND c.relname LIKE 'ev%v%'}),
	'10/true', 'the index on v covers it');
is($node->safe_psql('postgres', $leftovers_q), '0', 'no copy left under a _mig_ name');

# --- 5. a foreign key declared on a partitioned table ----------------------
# PostgreSQL 15 cannot add it NOT VALID on the parent: its copy is added NOT
# VALID on each leaf and validated there, then the parent's ADD FOREIGN KEY
# attaches the leaves' copies (TAP 070 proves it scans nothing). Both
# directions: po's own column (po.cust_id -> bigint), and the plain table
# it references (cust.cid -> bigint).
$node->safe_psql('postgres', q{
CREATE TABLE cust (cid int PRIMARY KEY, name text);
INSERT INTO cust SELECT g, 'c' || g FROM generate_series(1, 50) g;
CREATE TABLE po (id int NOT NULL, created_at date NOT NULL, cust_id int REFERENCES cust (cid),
	PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
CREATE TABLE po_1 PARTITION OF po FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE po_2 PARTITION OF po FOR VALUES FROM ('2021-01-01') TO ('2022-01-01')
	PARTITION BY HASH (created_at);
CREATE TABLE po_2a PARTITION OF po_2 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE po_2b PARTITION OF po_2 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE po_d PARTITION OF po DEFAULT;
INSERT INTO po SELECT g, date '2020-01-01' + g, g % 50 + 1 FROM generate_series(1, 900) g;
});
my $fk_q = q{
	SELECT string_agg(conrelid::regclass || ':' || conname || ':' || convalidated
	       || ':' || (conparentid <> 0), ',' ORDER BY conrelid::regclass::text)
	  FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text LIKE 'po%'};
my $fk_expected = 'po:po_cust_id_fkey:true:false,po_1:po_cust_id_fkey:true:true,'
  . 'po_2:po_cust_id_fkey:true:true,po_2a:po_cust_id_fkey:true:true,'
  . 'po_2b:po_cust_id_fkey:true:true,po_d:po_cust_id_fkey:true:true';
foreach my $step (['po', 'cust_id'], ['cust', 'cid'])
{
	my ($t, $col) = @$step;
	$node->safe_psql('postgres', qq{
		SELECT mig_expand('$t', '$col', type => 'bigint');
		UPDATE $t SET $col = $col;});
	is($node->safe_psql('postgres',
		"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('$t') WHERE NOT passed"),
		'', "$t.$col: validation passes (no blocker for the foreign key of partitioned po)");
	$node->safe_psql('postgres', "SELECT mig_cutover('$t')");
	($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('$t')");
	is($rc, 0, "$t.$col: mig_contract succeeds") or diag $err;
	my @leaf_validations = $err =~ /validating foreign key "po_cust_id_fkey" on the new column, on partition/g;
	is(scalar @leaf_validations, 4, "$t.$col: the key's copy validated on each of the four leaves");
	is($node->safe_psql('postgres', $fk_q), $fk_expected,
		"$t.$col: the key validated on the parent, every partition's attached, under the old name");
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
		 WHERE c.contype = 'f' AND c.conparentid <> 0 AND r.relname LIKE 'po%' AND r.relkind = 'r'
		   AND c.oid::int8 < (SELECT oid::int8 FROM pg_constraint WHERE conname = 'po_cust_id_fkey'
		                       AND conrelid = 'po'::regclass)}),
		'4', "$t.$col: every leaf's key is older than the parent's: attached, not built by it");
}
is($node->safe_psql('postgres', q{
	SELECT string_agg(attrelid::regclass || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attrelid::regclass::text)
	  FROM pg_attribute WHERE (attrelid, attname) IN (('po'::regclass, 'cust_id'), ('cust'::regclass, 'cid'))}),
	'cust:bigint,po:bigint', 'both columns are bigint');
($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO po VALUES (5000, '2021-05-05', 999)});
like($err, qr/violates foreign key constraint "po_cust_id_fkey"/, 'the key is enforced on a leaf');
($rc, $out, $err) = $node->psql('postgres', 'DELETE FROM cust WHERE cid = 3');
like($err, qr/violates foreign key constraint "po_cust_id_fkey" on table "po"/, 'and on the referenced table');
is($node->safe_psql('postgres', $leftovers_q), '0', 'no copy left under a _mig_ name');

# --- 6. that route failing between the leaves' keys and the parent's -------
# A session holds the parent alone (ROW EXCLUSIVE on ONLY pq): each leaf's
# copy is added and validated, then the parent's ADD FOREIGN KEY cannot get
# its lock through the ladder.  The caller gets the lock error; the leaves'
# copies (enforced on new writes) are removed; the next mig_contract does it.
$node->safe_psql('postgres', q{
CREATE TABLE pq (id int NOT NULL, created_at date NOT NULL, cust_id int REFERENCES cust (cid),
	PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
CREATE TABLE pq_1 PARTITION OF pq FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE pq_2 PARTITION OF pq FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
INSERT INTO pq SELECT g, date '2020-01-01' + g, g % 50 + 1 FROM generate_series(1, 600) g;
SELECT mig_expand('pq', 'cust_id', type => 'bigint');
UPDATE pq SET cust_id = cust_id;
SET client_min_messages = warning;
SELECT count(*) FROM mig_validate('pq');
SELECT mig_cutover('pq');
});
my $pq_fk_q = q{
	SELECT string_agg(conrelid::regclass || ':' || conname || ':' || (conparentid <> 0), ','
	                  ORDER BY conrelid::regclass::text, conname)
	  FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text LIKE 'pq%'};
my $pq_before = $node->safe_psql('postgres', $pq_fk_q);
$holder = $node->background_psql('postgres');
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->query_safe('BEGIN');
$holder->query_safe('LOCK TABLE ONLY pq IN ROW EXCLUSIVE MODE');
{
	local $ENV{PGOPTIONS} = '-c migrate_ext.lock_timeout=20ms -c migrate_ext.lock_timeout_max=100ms';
	($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('pq')");
}
isnt($rc, 0, 'the parent\'s ADD FOREIGN KEY cannot get its lock: mig_contract fails');
like($err, qr/could not lock table "pq".*process $holder_pid holds a conflicting lock.*\(2 constraints or unique index copies\) was dropped/s,
	'the error names the table, the session that holds it, and the two leaf copies it dropped');
like($err, qr/validating foreign key "pq_cust_id_fkey" on the new column, on partition pq_2/,
	'it failed after the leaves\' keys were added and validated');
is($node->safe_psql('postgres', $pq_fk_q), $pq_before,
	'nothing enforced is left behind: no leaf keeps its copy of the key');
$holder->query_safe('COMMIT');
$holder->quit;
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('pq')");
is($rc, 0, 'the next mig_contract completes') or diag $err;
is($node->safe_psql('postgres', $pq_fk_q),
	'pq:pq_cust_id_fkey:false,pq_1:pq_cust_id_fkey:true,pq_2:pq_cust_id_fkey:true',
	'the key is on the new column of the parent, every leaf\'s attached');
is($node->safe_psql('postgres', q{
	SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'pq'::regclass AND attname = 'cust_id'}),
	'bigint', 'pq.cust_id is bigint');

done_testing();
