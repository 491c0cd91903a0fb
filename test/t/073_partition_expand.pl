# mig_expand, the dual-write trigger and mig_abort on a partitioned table
# (issue 12):
#  - one ADD COLUMN on the parent and the trigger cloned to every partition,
#    under the lock ladder over the parent and every partition at once (a
#    lock held on one leaf stops it, named; a WARNING near
#    max_locks_per_transaction);
#  - writes through the parent and straight into leaves keep the pair in
#    step: INSERT, UPDATE, a cross-partition UPDATE (row movement), a write
#    of the new side (down), a disagreement refused with the right columns
#    named, on a leaf whose columns are numbered otherwise (created with a
#    dropped column and another column order, then attached); a session
#    that cached a leaf's entry picks up a pair added later;
#  - a partition attached during the migration (it must have the new
#    column: the guard says so) gets the trigger, and validation shows its
#    rows until they are filled; one detached loses the trigger, keeps the
#    column, and both are noticed and written in mig_history;
#  - DDL on a leaf's migrated columns is refused, naming the parent to abort;
#  - mig_preflight reads every leaf;
#  - mig_abort leaves the table exactly as before (pg_dump -s).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('partition_expand', conf => "max_locks_per_transaction = 10\n");
my $cols = 'id int NOT NULL, created_at date NOT NULL, v int, note text, PRIMARY KEY (id, created_at)';

# a tree, and a leaf numbered otherwise: a dropped column, another order
sub make_tree
{
	my ($t) = @_;
	mig_partition_tree($node, $cols, name => $t);
	$node->safe_psql('postgres', qq{
		CREATE TABLE ${t}_4 (junk int, note text, created_at date NOT NULL, id int NOT NULL, v int);
		ALTER TABLE ${t}_4 DROP COLUMN junk;
		ALTER TABLE $t ATTACH PARTITION ${t}_4 FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
		INSERT INTO $t SELECT g, date '2020-01-01' + (g % 1800), g, 'n' || g
			FROM generate_series(1, 2000) g;});
}
make_tree('ev');
is($node->safe_psql('postgres', q{
	SELECT string_agg(attrelid::regclass || '.' || attnum, ',' ORDER BY attrelid::regclass::text)
	  FROM pg_attribute WHERE attname = 'v' AND attrelid IN ('ev'::regclass, 'ev_4'::regclass)}),
	'ev.3,ev_4.5', 'ev_4 numbers v otherwise than its parent');

sub dump_schema
{
	my ($pattern) = @_;
	my $dump = `pg_dump -s -p @{[ $node->port ]} -h @{[ $node->host ]} -t '$pattern' postgres`;
	die "pg_dump failed" if $?;
	$dump =~ s/^\\(un)?restrict .*$//mg;	# a random key, new in every dump
	return $dump;
}

# --- mig_preflight reads every leaf ----------------------------------------
# note -> int: every note but those of ids divisible by 100 fails up, in
# every leaf (ev_4, numbered otherwise, included); nothing is changed
$node->safe_psql('postgres', q{UPDATE ev SET note = id::text WHERE id % 100 = 0});
my $pf = $node->safe_psql('postgres', q{
	SELECT check_name || '|' || passed || '|' || failing || '|' || detail
	  FROM mig_preflight('ev', 'note', 'int')});
like($pf, qr/^up\|false\|1980\|1980 rows where up raises an error/m,
	'preflight of a partitioned table finds the failing rows of every leaf') or diag $pf;
like($pf, qr/\(1,2020-01-02\)/, 'named by the parent\'s primary key');
is($node->safe_psql('postgres', q{
	SELECT count(DISTINCT tableoid) FROM ev WHERE note !~ '^[0-9]+$'}), '7',
	'(the failing rows are spread over all seven leaves)');
$pf = $node->safe_psql('postgres', q{
	SELECT string_agg(check_name || ':' || passed, ',') FROM mig_preflight('ev', 'v', 'bigint', not_null => true)});
is($pf, 'up:true,not_null:true', 'v -> bigint NOT NULL passes over every leaf');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_attribute WHERE attname LIKE '\_mig%'}), '0',
	'preflight changed nothing');

# --- the lock ladder over the whole tree ----------------------------------
my $holder = $node->background_psql('postgres');
$holder->query_safe("SET application_name = 'leaf_reader'");
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->query_safe('BEGIN');
$holder->query_safe('SELECT count(*) FROM ev_3d');
my ($rc, $out, $err) = $node->psql('postgres', q{
	SET migrate_ext.lock_timeout_max = 300;
	SELECT mig_expand('ev', 'v', type => 'bigint')});
like($err, qr/could not lock table "ev_3d" to add the new column: process $holder_pid holds a conflicting lock/,
	'a reader of one leaf stops the expand, named with its leaf');
$holder->query_safe('COMMIT');
$holder->quit;
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_attribute WHERE attname = '_mig_new_v'}), '0', 'and nothing was added');

# --- expand ----------------------------------------------------------------
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_expand('ev', 'v', type => 'bigint')");
is($rc, 0, 'mig_expand on a partitioned table') or diag $err;
like($err, qr/WARNING:  locking table "ev" and its partitions takes 10 locks at once, close to max_locks_per_transaction \(10\)/,
	'a WARNING near max_locks_per_transaction');
is($node->safe_psql('postgres', q{
	SELECT count(*) || '/' || count(*) FILTER (WHERE a.atttypid = 'bigint'::regtype)
	       || '/' || count(*) FILTER (WHERE t.tgenabled = 'A')
	  FROM pg_partition_tree('ev') p
	  LEFT JOIN pg_attribute a ON a.attrelid = p.relid AND a.attname = '_mig_new_v'
	  LEFT JOIN pg_trigger t ON t.tgrelid = p.relid AND t.tgname = 'zz_migrate_ext_dualwrite'}),
	'10/10/10', 'the new column and the trigger (ENABLE ALWAYS) on the parent, both levels and every leaf');

# --- writes ----------------------------------------------------------------
$node->safe_psql('postgres', q{
	-- through the parent, into ev_1, ev_4, ev_d, ev_2*, ev_3a
	INSERT INTO ev VALUES (5001, '2020-02-01', 11, 'a'), (5002, '2023-02-01', 12, 'b'),
		(5003, '2030-01-01', 13, 'c'), (5004, '2021-06-01', 14, 'd'), (5005, '2022-01-01', 15, 'e');
	-- straight into leaves, the one numbered otherwise included
	INSERT INTO ev_4 (id, created_at, v, note) VALUES (5006, '2023-03-01', 16, 'f');
	INSERT INTO ev_3d VALUES (5007, '2022-05-01', 17, 'g');
	UPDATE ev SET v = v + 100 WHERE id IN (5001, 5002, 5004);
	UPDATE ev_4 SET v = v + 1000 WHERE id = 5006;
	-- row movement both ways, between ev_1 and ev_4
	UPDATE ev SET created_at = '2023-05-05' WHERE id = 5001;
	UPDATE ev SET created_at = '2020-05-05', v = v + 1 WHERE id = 5006;
	-- the new side written: down computes the old one
	SET migrate_ext.writer = 'new';
	UPDATE ev_4 SET _mig_new_v = 777 WHERE id = 5002;
	UPDATE ev SET _mig_new_v = 888 WHERE id = 5003;
});
is($node->safe_psql('postgres', q{
	SELECT string_agg(id || ':' || tableoid::regclass || ':' || v || ':' || _mig_new_v, ',' ORDER BY id)
	  FROM ev WHERE id > 5000}),
	'5001:ev_4:111:111,5002:ev_4:777:777,5003:ev_d:888:888,5004:ev_2a:114:114,'
	  . '5005:ev_3a:15:15,5006:ev_1:1017:1017,5007:ev_3d:17:17',
	'every write, through the parent or into a leaf, kept the pair in step');
($rc, $out, $err) = $node->psql('postgres', 'UPDATE ev_4 SET v = 1, _mig_new_v = 2 WHERE id = 5002');
like($err, qr/columns "v" and "_mig_new_v" of table "ev_4" were both written and disagree/,
	'a disagreement in the leaf numbered otherwise names the right columns');

# a session that cached the leaves' entries picks up a pair added later
my $writer = $node->background_psql('postgres');
$writer->query_safe(q{INSERT INTO ev_4 (id, created_at, v, note) VALUES (5008, '2023-04-01', 18, 'h')});
$writer->query_safe(q{INSERT INTO ev VALUES (5009, '2020-04-01', 19, 'i')});
$node->safe_psql('postgres', q{SELECT mig_expand('ev', 'note', new_col => 'note_up', up => 'upper(note)')});
$writer->query_safe(q{INSERT INTO ev_4 (id, created_at, v, note) VALUES (5010, '2023-04-02', 20, 'j')});
$writer->query_safe(q{UPDATE ev SET v = v + 1 WHERE id IN (5008, 5009)});
$writer->quit;
is($node->safe_psql('postgres', q{
	SELECT string_agg(id || ':' || _mig_new_v || ':' || coalesce(note_up, 'NULL'), ',' ORDER BY id)
	  FROM ev WHERE id >= 5008}),
	'5008:19:H,5009:20:I,5010:20:J', 'the cached session computes the second pair on every leaf');

# DDL on a leaf's migrated column: refused, naming the parent
($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE ev_4 ALTER COLUMN note TYPE varchar(100)');
like($err, qr/cannot alter the type of column "note" of table "ev_4": migration \d+ uses it/,
	'ALTER TYPE of a migrated column on a leaf is refused');
like($err, qr/mig_abort\('ev'\)/, 'and the hint names the parent');

# the backfill by hand, then validation
$node->safe_psql('postgres', 'UPDATE ev SET v = v');
is($node->safe_psql('postgres',
	"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('ev') WHERE NOT passed"),
	'', 'every check of mig_validate passes');

# --- a partition attached during the migration ------------------------------
$node->safe_psql('postgres', q{
	CREATE TABLE ev_5 (id int NOT NULL, created_at date NOT NULL, v int, note text);
	INSERT INTO ev_5 SELECT g, date '2019-01-01' + g, g, 'x' FROM generate_series(1, 30) g;
});
($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n"
	  . "ALTER TABLE ev ATTACH PARTITION ev_5 FOR VALUES FROM ('2019-01-01') TO ('2020-01-01')");
like($err, qr/55000: cannot attach "ev_5" to table "ev" during migration \d+: it lacks new column "_mig_new_v"/,
	'attaching a table without the new column: refused, the column named');
like($err, qr/HINT:  Run ALTER TABLE ev_5 ADD COLUMN _mig_new_v bigint first/, 'with how');
($rc, $out, $err) = $node->psql('postgres', q{
	ALTER TABLE ev_5 ADD COLUMN _mig_new_v bigint, ADD COLUMN note_up text;
	ALTER TABLE ev ATTACH PARTITION ev_5 FOR VALUES FROM ('2019-01-01') TO ('2020-01-01')});
is($rc, 0, 'with the new columns it attaches') or diag $err;
like($err, qr/NOTICE:  partition "ev_5" attached during migration \d+ of table public.ev/, 'noticed');
is($node->safe_psql('postgres', q{
	SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'ev_5'::regclass AND tgname = 'zz_migrate_ext_dualwrite'}),
	'A', 'it got the dual-write trigger');
my $v = $node->safe_psql('postgres',
	"SELECT string_agg(check_name || '|' || failing || '|' || detail, E'\\n') FROM mig_validate('ev') WHERE NOT passed");
like($v, qr/^backfilled:_mig_new_v\|30\|30 rows not yet backfilled.*\(1,2019-01-02\)/, 'validation shows the 30 rows of the attached partition as needing the backfill') or diag $v;
like($node->safe_psql('postgres', 'SELECT invalidated_why FROM migrate_ext.migration WHERE relid = \'ev\'::regclass'),
	qr/partition ev_5 attached to ev/, 'the migration records that a validation is needed');
$node->safe_psql('postgres', q{UPDATE ev SET v = v WHERE tableoid = 'ev_5'::regclass});
is($node->safe_psql('postgres',
	"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('ev') WHERE NOT passed"),
	'', 'filled, they pass');

# --- a partition detached during the migration ------------------------------
($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE ev DETACH PARTITION ev_1');
like($err, qr/NOTICE:  partition "ev_1" detached during migration \d+ of table public.ev/, 'a detach is noticed');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ev_1'::regclass AND tgname = 'zz_migrate_ext_dualwrite'}),
	'0', 'the detached table lost the trigger');
$node->safe_psql('postgres', q{INSERT INTO ev_1 (id, created_at, v) VALUES (6001, '2020-03-03', 5)});
is($node->safe_psql('postgres', 'SELECT _mig_new_v IS NULL FROM ev_1 WHERE id = 6001'),
	't', 'it keeps the new column, which nothing fills any more');
like($node->safe_psql('postgres', q{
	SELECT phases::text FROM mig_history WHERE table_name = 'ev'}),
	qr/partition ev_5 attached to ev: its rows need the backfill.*partition ev_1 detached from ev/,
	'mig_history shows both');

# --- abort -----------------------------------------------------------------
make_tree('ab');
my $ab_before = dump_schema('ab*');
$node->safe_psql('postgres', q{
	SELECT mig_expand('ab', 'v', type => 'bigint');
	SELECT mig_expand('ab', 'note', new_col => 'note_up', up => 'upper(note)');
	UPDATE ab SET v = v WHERE id % 3 = 0;
	INSERT INTO ab_4 (id, created_at, v, note) VALUES (9001, '2023-01-09', 1, 'z');
	SELECT mig_abort('ab');
});
is(dump_schema('ab*'), $ab_before, 'mig_abort leaves the table and its partitions exactly as before (pg_dump -s)');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	 WHERE c.relname LIKE 'ab%' AND t.tgname = 'zz_migrate_ext_dualwrite'}), '0', 'no trigger clone left');
is($node->safe_psql('postgres', q{SELECT count(*) FROM ab_4 WHERE id = 9001}), '1', 'the rows are there');

$node->safe_psql('postgres', "SELECT mig_abort('ev')");
is($node->safe_psql('postgres', q{
	SELECT string_agg(p.relid::regclass::text, ',' ORDER BY p.relid::regclass::text)
	  FROM pg_partition_tree('ev') p JOIN pg_attribute a ON a.attrelid = p.relid
	 WHERE a.attname IN ('_mig_new_v', 'note_up') AND NOT a.attisdropped}),
	'', 'no partition (ev_5, attached during the migration, included) keeps a new column after mig_abort');

$node->stop;
done_testing();
