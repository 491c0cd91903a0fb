# The foreign-key route of mig_contract on partitioned tables (issue 12),
# its failure paths, step by step, each step forced with the test-only pause
# point (migrate_ext.test_pause: after the named step the worker waits for
# advisory lock 7387, which the test holds):
#
#  1. a key declared ON a partitioned table being migrated (po.cust_id ->
#     cust): its copy is added NOT VALID on each leaf, validated on each,
#     then attached by the parent's ADD FOREIGN KEY, all before the swap.
#     The worker killed after each of those steps: after the restart the
#     next mig_contract finishes (one parent key and its clones, as a key
#     added by hand), or mig_abort leaves the tree as it was;
#  2. a row of a leaf that violates that key, found only at the validation
#     (written behind the key's back): 23503 naming the partition and the
#     constraint, a hint, nothing enforced left, the table usable; fixed,
#     mig_contract succeeds;
#  3. the deadlock of that route's ADD FOREIGN KEY on a partitioned table:
#     the statement locks every partition of both trees; taken there,
#     outside the ladder, such a lock queues behind a session that holds a
#     leaf while that session waits for a table the contract holds.  The
#     worker is stopped just before the parent's ADD FOREIGN KEY; a client
#     takes a leaf of the referencing tree, the worker goes on, and the
#     client then writes into the referenced tree.  With every partition of
#     both sides locked through the ladder (lock_fkey_tables), the client
#     completes and the contract either finishes or fails with the
#     ladder's own error, never a deadlock or a statement's lock timeout;
#  4. a partition attached (by the tables' owner) before the parent's ADD
#     FOREIGN KEY, with an index predicate calling the owner's function with
#     constant arguments, which PostgreSQL runs while it validates the key
#     on that partition: it runs as the owner, restricted, not as the
#     superuser who ran mig_contract; the swap is refused and the next
#     mig_contract finishes.  Likewise an index expression calling the
#     owner's function with constant arguments, which the swap's ALTER
#     INDEX ... ATTACH PARTITION simplifies.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use IPC::Run;

my $node = mig_node('partition_fkey_route', conf => "restart_after_crash = on\ndeadlock_timeout = 5s\n");

# cust$i (plain) referenced by po$i (partitioned, sub-partitioned);
# po$i.cust_id int -> bigint expanded, filled, validated, cut over.
sub setup
{
	my ($i) = @_;
	$node->safe_psql('postgres', qq{
CREATE TABLE cust$i (cid int PRIMARY KEY);
INSERT INTO cust$i SELECT g FROM generate_series(1, 50) g;
CREATE TABLE po$i (id int, at date, cust_id int REFERENCES cust$i (cid)) PARTITION BY RANGE (at);
CREATE TABLE po${i}_1 PARTITION OF po$i FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE po${i}_2 PARTITION OF po$i FOR VALUES FROM ('2021-01-01') TO ('2022-01-01')
	PARTITION BY HASH (id);
CREATE TABLE po${i}_2a PARTITION OF po${i}_2 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE po${i}_2b PARTITION OF po${i}_2 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE po${i}_d PARTITION OF po$i DEFAULT;
INSERT INTO po$i SELECT g, date '2020-01-01' + g, g % 50 + 1 FROM generate_series(1, 900) g;
SELECT mig_expand('po$i', 'cust_id', type => 'bigint');
UPDATE po$i SET cust_id = cust_id;
SET client_min_messages = warning;
});
	is($node->safe_psql('postgres',
		"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('po$i') WHERE NOT passed"),
		'', "po$i: every check of mig_validate passes");
	$node->safe_psql('postgres', "SELECT mig_cutover('po$i')");
}

# The foreign keys of the tree of $t: table, name, attached to a parent,
# referenced table; the table's name with $from replaced by $to.
sub tree_keys
{
	my ($t, $from, $to) = @_;
	return $node->safe_psql('postgres', qq{
	SELECT string_agg(k, ',' ORDER BY k COLLATE "C") FROM (
	  SELECT replace(conrelid::regclass::text, '$from', '$to') || ':' || conname || ':'
	       || (conparentid <> 0) || ':' || confrelid::regclass || ':' || convalidated AS k
	    FROM pg_constraint
	   WHERE contype = 'f' AND conrelid IN (SELECT relid FROM pg_partition_tree('$t'))) c});
}

# The key of po$i as one added by hand on a twin tree makes it.
sub keys_as_by_hand
{
	my ($i, $what) = @_;
	$node->safe_psql('postgres', qq{
CREATE TABLE twin$i (id int, at date, cust_id bigint) PARTITION BY RANGE (at);
CREATE TABLE twin${i}_1 PARTITION OF twin$i FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE twin${i}_2 PARTITION OF twin$i FOR VALUES FROM ('2021-01-01') TO ('2022-01-01')
	PARTITION BY HASH (id);
CREATE TABLE twin${i}_2a PARTITION OF twin${i}_2 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE twin${i}_2b PARTITION OF twin${i}_2 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE twin${i}_d PARTITION OF twin$i DEFAULT;
ALTER TABLE twin$i ADD CONSTRAINT po${i}_cust_id_fkey FOREIGN KEY (cust_id) REFERENCES cust$i (cid);
});
	is(tree_keys("po$i", 'po', 'po'), tree_keys("twin$i", 'twin', 'po'),
		"$what: po$i has exactly the keys a key added by hand makes: one parent key and its clones, validated");
}

sub enforced_everywhere
{
	my ($i, $what) = @_;
	foreach my $at ('2020-06-01', '2021-06-01', '2021-06-02', '2024-06-01')
	{
		my ($rc, $out, $err) = $node->psql('postgres',
			"\\set VERBOSITY verbose\nINSERT INTO po$i VALUES (1000 + extract(day FROM date '$at')::int, '$at', 999)");
		like($err, qr/ERROR:  23503: insert or update on table "po${i}_\w+" violates foreign key constraint/,
			"$what: a violating row into po$i ($at) fails with 23503");
	}
}

# --- 1. a crash after each step of the route before the swap ----------------
my $i = 0;
foreach my $case (
	[ 'leaf_fkey_added', 'kill', 'contract' ], [ 'leaf_fkey_validated', 'immediate', 'contract' ],
	[ 'leaf_fkey_attached', 'kill', 'contract' ], [ 'leaf_fkey_validated', 'kill', 'abort' ],
	[ 'leaf_fkey_attached', 'immediate', 'abort' ])
{
	my ($step, $how, $then) = @$case;
	$i++;
	setup($i);
	my $before = tree_keys("po$i", 'po', 'po');
	my ($h, $holder, $err, $pid) = mig_contract_paused($node, "po$i", $step);
	mig_crash($node, $how, $pid);
	$h->finish;
	eval { $holder->quit };
	mig_contract_unpause($node);
	my $what = "crash ($how) after step $step, then $then";
	is($node->safe_psql('postgres',
		"SELECT phase FROM migrate_ext.migration WHERE relid = 'po${i}'::regclass"),
		'cutover', "$what: the swap had not begun");
	enforced_everywhere($i, "$what, before");
	if ($then eq 'abort')
	{
		$node->safe_psql('postgres', "SELECT mig_abort('po$i')");
		is(tree_keys("po$i", 'po', 'po'), $before, "$what: the keys are as before the contract");
		is($node->safe_psql('postgres', q{SELECT count(*) FROM migrate_ext.contract_object}),
			'0', "$what: nothing is left recorded");
		enforced_everywhere($i, "$what, after");
		next;
	}
	my ($rc, $out, $cerr) = $node->psql('postgres', "SELECT mig_contract('po$i')");
	is($rc, 0, "$what: the next mig_contract succeeds") or diag $cerr;
	keys_as_by_hand($i, $what);
	is($node->safe_psql('postgres', q{SELECT count(*) FROM migrate_ext.contract_object}),
		'0', "$what: nothing is left recorded");
	enforced_everywhere($i, "$what, after");
}

# --- 2. a row that violates the key, found only at the validation -----------
$i++;
setup($i);
my $before = tree_keys("po$i", 'po', 'po');
$node->safe_psql('postgres', qq{
	SET session_replication_role = replica;
	INSERT INTO po$i VALUES (-1, '2021-03-03', 777);});
my $failed = $node->safe_psql('postgres',
	"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('po$i') WHERE NOT passed");
like($failed, qr/777/, 'dirty leaf row: mig_validate names it') or diag $failed;
my ($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT mig_contract('po$i', force => true)");
isnt($rc, 0, 'dirty leaf row: mig_contract fails');
like($err, qr/ERROR:  23503: insert or update on table "po${i}_2\w" violates foreign key constraint "_mig\w*"/,
	'dirty leaf row: 23503 naming the partition and the copy being validated') or diag $err;
like($err, qr/DETAIL:  .*777.*mig_contract was validating foreign key "po${i}_cust_id_fkey" on the new column, on partition po${i}_2\w.*was dropped/s,
	'dirty leaf row: the detail names the row, the key and the partition, and says the copies were dropped');
like($err, qr/HINT:  Fix or delete the row/, 'dirty leaf row: the hint says what to do');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE relid = 'po${i}'::regclass"),
	'cutover', 'dirty leaf row: the migration is still cut over');
is(tree_keys("po$i", 'po', 'po'), $before, 'dirty leaf row: nothing the contract added is left');
$node->safe_psql('postgres', qq{INSERT INTO po$i VALUES (5000, '2021-04-04', 7)});
is($node->safe_psql('postgres', "SELECT count(*) FROM po$i WHERE id = 5000"), '1',
	'dirty leaf row: the table is usable');
$node->safe_psql('postgres', "DELETE FROM po$i WHERE cust_id = 777");
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('po$i', force => true)");
is($rc, 0, 'dirty leaf row fixed: mig_contract succeeds') or diag $err;
keys_as_by_hand($i, 'dirty leaf row fixed');

# --- 3. the deadlock of the parent's ADD FOREIGN KEY -------------------------
# ev (partitioned, referenced) and pref (partitioned, referencing): the key
# is moved after ev's swap, the parent's ADD FOREIGN KEY last.  The ladder's
# top (500ms) is below deadlock_timeout (5s): a statement that waits inside
# fails on its lock_timeout, deterministically.
$node->safe_psql('postgres', q{
CREATE TABLE ev (id int NOT NULL, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE ev_d PARTITION OF ev DEFAULT;
INSERT INTO ev SELECT g, date '2020-01-01' + g FROM generate_series(1, 700) g;
CREATE TABLE pref (rid int, at date, ev_id int, ev_at date,
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev (id, at)) PARTITION BY RANGE (at);
CREATE TABLE pref_1 PARTITION OF pref FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE pref_d PARTITION OF pref DEFAULT;
INSERT INTO pref SELECT g, date '2020-01-01' + g, g, date '2020-01-01' + g FROM generate_series(1, 700, 3) g;
SELECT mig_expand('ev', 'id', type => 'bigint');
UPDATE ev SET id = id;
SET client_min_messages = warning;
SELECT count(*) FROM mig_validate('ev');
SELECT mig_cutover('ev');
});
my ($h, $holder, $cerr, $wpid) = mig_contract_paused($node, 'ev', 'fkey_attach',
	'-c migrate_ext.lock_timeout=20ms -c migrate_ext.lock_timeout_max=500ms -c migrate_ext.lock_retries=1000');
my $client = $node->background_psql('postgres');
$client->query_safe('BEGIN');
$client->query_safe('LOCK TABLE pref_1 IN ROW EXCLUSIVE MODE');
$holder->query_safe('SELECT pg_advisory_unlock(7387)');
# the worker goes on to lock for the parent's ADD FOREIGN KEY and meets the
# client's lock on pref_1 (or has already given up on it)
$node->poll_query_until('postgres', qq{
	SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $wpid AND relation = 'pref_1'::regclass AND NOT granted)
	    OR NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $wpid)})
  or die 'the worker neither waited for pref_1 nor ended';
my ($cout, $cfailed) = $client->query(q{INSERT INTO ev (id, at) VALUES (100000, '2020-05-05')});
is($cfailed, 0, 'the client\'s write into the referenced tree completes: nobody deadlocked on it');
$client->query_safe('COMMIT');
$client->quit;
$holder->quit;
$h->finish;
mig_contract_unpause($node);
unlike($$cerr, qr/deadlock detected|canceling statement due to lock timeout/,
	'the contract never waited for a partition inside its statement');
if ($h->result(0) != 0)
{
	like($$cerr, qr/could not lock table "pref\w*" to attach the partitions' foreign keys/,
		'the contract gave up through its ladder, naming the table');
	($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev')");
	is($rc, 0, 'the next mig_contract finishes') or diag $err;
}
else
{
	pass('the contract waited through its ladder and finished');
	pass('(nothing left for a next run)');
}
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_constraint WHERE conrelid = 'pref'::regclass AND contype = 'f' AND convalidated
	   AND confrelid = 'ev'::regclass}),
	'1', 'pref has its key, attached');
is($node->safe_psql('postgres', q{SELECT count(*) FROM migrate_ext.contract_object}),
	'0', 'nothing is left recorded');

# --- 4. a partition attached before the parent's ADD FOREIGN KEY ------------
# It has no copy of the key, so PostgreSQL adds and validates one there,
# planning a query on it, which simplifies its index predicates: an owner's
# function called there with constant arguments ran as the role running the
# contract (a superuser here).  It runs as the owner, restricted: the
# owner's function cannot make her a superuser; the contract then refuses
# the swap (a partition attached while it ran), and the next one finishes.
$node->safe_psql('postgres', q{
CREATE ROLE po_owner LOGIN;
GRANT CREATE ON SCHEMA public TO po_owner;
});
sub as_po_owner
{
	return $node->safe_psql('postgres', $_[0], extra_params => [ '-U', 'po_owner' ]);
}
as_po_owner(q{
CREATE TABLE probe_log (msg text);
CREATE FUNCTION po_grab() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	INSERT INTO public.probe_log VALUES ('ran as ' || current_user);
	BEGIN
		ALTER ROLE po_owner SUPERUSER;
		INSERT INTO public.probe_log VALUES ('ALTER ROLE worked');
	EXCEPTION WHEN OTHERS THEN NULL;
	END;
	RETURN true;
END $$;
CREATE FUNCTION po_probe(int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	RETURN public.po_grab();
END $$;
CREATE TABLE cust9 (cid int PRIMARY KEY);
INSERT INTO cust9 SELECT g FROM generate_series(1, 50) g;
CREATE TABLE po9 (id int, at date, cust_id int REFERENCES cust9 (cid)) PARTITION BY RANGE (at);
CREATE TABLE po9_1 PARTITION OF po9 FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE po9_2 PARTITION OF po9 FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
INSERT INTO po9 SELECT g, date '2020-01-01' + g, g % 50 + 1 FROM generate_series(1, 600) g;
SELECT mig_expand('po9', 'cust_id', type => 'bigint');
UPDATE po9 SET cust_id = cust_id;
SELECT count(*) FROM mig_validate('po9');
SELECT mig_cutover('po9');
});
{
	my ($h, $holder, $err, $pid) = mig_contract_paused($node, 'po9', 'leaf_fkey_validated');
	as_po_owner(q{
CREATE TABLE po9_3 PARTITION OF po9 FOR VALUES FROM ('2022-01-01') TO ('2023-01-01');
INSERT INTO po9 VALUES (5000, '2022-05-05', 7);
CREATE INDEX po9_3_probe ON po9_3 (id) WHERE po_probe(1);
TRUNCATE probe_log;
});
	mig_contract_unpause($node);
	$holder->query_safe('SELECT pg_advisory_unlock(7387)');
	$h->finish;
	eval { $holder->quit };
	like($$err, qr/partition "po9_3" was attached to table "po9" while mig_contract ran/,
		'a partition attached mid-contract: the swap is refused');
}
is($node->safe_psql('postgres', "SELECT coalesce(string_agg(DISTINCT msg, ', '), 'none') FROM probe_log"),
	'ran as po_owner', "the new partition's index predicate ran as its owner at the parent's ADD FOREIGN KEY, and could not make her a superuser");
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'po_owner'"),
	'f', 'po_owner is still not a superuser');
$node->safe_psql('postgres', "SELECT count(*) FROM mig_validate('po9')");
$node->psql('postgres', "SELECT mig_cutover('po9')");
my ($rc9, $out9, $err9) = $node->psql('postgres', "SET client_min_messages = warning; SELECT mig_contract('po9')");
is($rc9, 0, 'the next mig_contract finishes') or diag $err9;
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated
	AND conrelid IN ('po9_1'::regclass, 'po9_2'::regclass, 'po9_3'::regclass)}),
	'3', 'every partition, the new one too, has the validated key');

# The same for ALTER INDEX ... ATTACH PARTITION in the swap, which compares
# the copies' definitions, simplifying an index expression that calls the
# owner's function with constant arguments.
as_po_owner(q{
CREATE FUNCTION po_k(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	PERFORM public.po_grab();
	RETURN $1;
END $$;
CREATE TABLE po10 (id int, at date, cust_id int) PARTITION BY RANGE (at);
CREATE TABLE po10_1 PARTITION OF po10 FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE po10_2 PARTITION OF po10 FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
CREATE INDEX po10_k ON po10 ((cust_id + po_k(1)));
INSERT INTO po10 SELECT g, date '2020-01-01' + g, g FROM generate_series(1, 600) g;
SELECT mig_expand('po10', 'cust_id', type => 'bigint');
UPDATE po10 SET cust_id = cust_id;
SELECT count(*) FROM mig_validate('po10');
SELECT mig_cutover('po10');
TRUNCATE probe_log;
});
($rc9, $out9, $err9) = $node->psql('postgres', "SET client_min_messages = warning; SELECT mig_contract('po10')");
is($rc9, 0, 'po10: mig_contract by a superuser finishes') or diag $err9;
is($node->safe_psql('postgres', "SELECT coalesce(string_agg(DISTINCT msg, ', '), 'none') FROM probe_log"),
	'ran as po_owner', "po10: the index expression's function ran as the owner only (builds and ATTACH PARTITION)");
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'po_owner'"),
	'f', 'po10: po_owner is still not a superuser');
is($node->safe_psql('postgres', q{SELECT pg_get_indexdef('po10_k'::regclass)}),
	'CREATE INDEX po10_k ON ONLY public.po10 USING btree (((cust_id + po_k(1))))',
	'po10: the index is on the new column, under its name');

done_testing();
