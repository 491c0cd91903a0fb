# The foreign keys that reference a partitioned table being contracted
# (issue 12): their copies need the table's new key, which exists only from
# the swap on, so they are added NOT VALID in the swap (on a plain
# referencing table; on each leaf of a partitioned one), validated after it,
# and a partitioned referencing table's ADD FOREIGN KEY attaches its leaves'
# copies last.  The swap records that unfinished work in
# migrate_ext.contract_object; the worker finishes from those rows alone,
# and after a restart the launcher starts one that does, without the DBA.
#
#  1. the worker killed (kill -9, or an immediate shutdown) after each step
#     of that route, stopped there by the test-only pause point
#     (migrate_ext.test_pause: the worker waits for advisory lock 7387,
#     which the test holds): after the restart every leaf enforces the key,
#     and, with no mig_contract run, the server finishes it by itself:
#     pg_constraint holds exactly one parent key and its clones, validated,
#     as an uninterrupted contract leaves them;
#  2. a row that violates the key, written behind its back (replication
#     role) after the validation: mig_validate names it; mig_contract fails
#     after its swap with 23503, the detail naming the partition and the
#     constraint, the hint what to do; every leaf enforces the key, the
#     table is usable, a second run fails alike, and once the row is fixed
#     mig_contract finishes;
#  3. the server's finishing worker cannot get its lock (a prepared
#     transaction holds a leaf across the restarts): it gives up through
#     its ladder and tries again, later each time, never holding clients
#     up; meanwhile
#     mig_status shows the keys left and the worker on them, mig_expand,
#     mig_abort and a DBA's mig_contract are refused with clear errors;
#     stopped, the table says so; killed, or the server restarted, the
#     next start gives the work a new worker; a standby runs none, and once
#     promoted it does; once the lock is free the keys end finished as in 1.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use IPC::Run;

my $node = mig_node('partition_fkey_crash', init => { allows_streaming => 1 },
	conf => "restart_after_crash = on\nmax_prepared_transactions = 2\n"
	  . "migrate_ext.lock_timeout = 20ms\nmigrate_ext.lock_timeout_max = 200ms\nmigrate_ext.lock_retries = 3\n");

# ev$i (the shared tree), pref$i partitioned and ref$i plain, both
# referencing it; ev$i.id int -> bigint expanded, filled, validated, cut over.
sub setup
{
	my ($i) = @_;
	my @leaves = mig_partition_tree($node,
		'id int NOT NULL, created_at date NOT NULL, PRIMARY KEY (id, created_at)',
		name => "ev$i");
	$node->safe_psql('postgres', qq{
INSERT INTO ev$i SELECT g, date '2020-01-01' + (g % 1400) FROM generate_series(1, 2000) g;
CREATE TABLE ref$i (rid int PRIMARY KEY, ev_id int, ev_at date,
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev$i (id, created_at));
INSERT INTO ref$i SELECT g, g, date '2020-01-01' + (g % 1400) FROM generate_series(1, 2000, 7) g;
CREATE TABLE pref$i (rid int, at date, ev_id int, ev_at date,
	FOREIGN KEY (ev_id, ev_at) REFERENCES ev$i (id, created_at)) PARTITION BY RANGE (at);
CREATE TABLE pref${i}_1 PARTITION OF pref$i FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE pref${i}_2 PARTITION OF pref$i FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
CREATE TABLE pref${i}_d PARTITION OF pref$i DEFAULT;
INSERT INTO pref$i SELECT g, date '2020-01-01' + g, g, date '2020-01-01' + (g % 1400)
	FROM generate_series(1, 2000, 3) g;
SELECT mig_expand('ev${i}', 'id', type => 'bigint');
UPDATE ev$i SET id = id;
SET client_min_messages = warning;
});
	is($node->safe_psql('postgres',
		"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('ev${i}') WHERE NOT passed"),
		'', "ev$i: every check of mig_validate passes");
	$node->safe_psql('postgres', "SELECT mig_cutover('ev${i}')");
	return @leaves;
}

# A violating row into each partition of pref$i, through the parent: each
# must fail with 23503.
sub enforced_everywhere
{
	my ($i, $what) = @_;
	foreach my $at ('2020-06-01', '2021-06-01', '2024-06-01')
	{
		my ($rc, $out, $err) = $node->psql('postgres',
			"\\set VERBOSITY verbose\nINSERT INTO pref$i VALUES (0, '$at', 999999, '2020-01-01')");
		like($err, qr/ERROR:  23503: insert or update on table "pref${i}_\w+" violates foreign key constraint/,
			"$what: a violating row into pref$i ($at) fails with 23503");
	}
	my ($rc, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nINSERT INTO ref$i VALUES (0, 999999, '2020-01-01')");
	like($err, qr/ERROR:  23503: insert or update on table "ref$i" violates foreign key constraint/,
		"$what: and into ref$i");
}

# The foreign keys of pref$i and ref$i as pg_constraint has them (table,
# name, attached to a parent, referenced table, validated), the numbers
# taken out of the names.
sub keys_of
{
	my ($i) = @_;
	return $node->safe_psql('postgres', qq{
	SELECT string_agg(k, ',' ORDER BY k COLLATE "C") FROM (
	  SELECT replace(replace(conrelid::regclass || ':' || conname || ':' || (conparentid <> 0) || ':'
	         || confrelid::regclass || ':' || convalidated, 'ref${i}', 'ref'), 'ev${i}', 'ev') AS k
	    FROM pg_constraint
	   WHERE contype = 'f' AND (conrelid IN (SELECT relid FROM pg_partition_tree('pref${i}'))
	                            OR conrelid = 'ref${i}'::regclass)) c});
}

# After a crash and the mig_contract that finishes, pref${i}'s and
# ref${i}'s keys must be exactly those of a contract that was never
# interrupted (ev0): one parent key, each leaf's attached to it, and their
# clones; no duplicate, no leftover.
my $uninterrupted;
sub keys_as_uninterrupted
{
	my ($i, $what) = @_;
	is(keys_of($i), $uninterrupted,
		"$what: pref$i and ref$i have exactly the keys of an uninterrupted contract");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FILTER (WHERE conrelid = 'pref${i}'::regclass AND conparentid = 0) || '/'
		    || count(*) FILTER (WHERE conrelid <> 'pref${i}'::regclass AND conparentid <> 0
		                          AND confrelid = 'ev${i}'::regclass)
		  FROM pg_constraint WHERE contype = 'f'
		   AND conrelid IN (SELECT relid FROM pg_partition_tree('pref${i}'))}),
		'1/3', "$what: one parent key on pref$i, each of its three leaves' attached to it");
}

# With no mig_contract run: the server's worker finishes what the swap of
# ev$i left, within a bounded poll, and says so in the log.
sub finished_by_server
{
	my ($i, $what, $offset) = @_;
	my $mid = $node->safe_psql('postgres',
		"SELECT id FROM migrate_ext.migration WHERE relid = 'ev${i}'::regclass");
	ok($node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM migrate_ext.contract_object WHERE migration_id = $mid)"),
		"$what: the server finishes the keys by itself, without mig_contract");
	ok($node->wait_for_log(qr/migrate_ext: table public\.ev$i is contracted: its foreign keys are finished/, $offset),
		"$what: the server log says it finished them");
	is($node->safe_psql('postgres', "SELECT count(*) FROM mig_status WHERE table_name = 'ev$i'"),
		'0', "$what: mig_status no longer lists it");
}

# --- 1. a crash after each step of the route after the swap -----------------
# The pref keys as a key added by hand on a contracted tree has them: one
# parent key and its clones, nothing else.
my $i = 0;
setup(0);
my ($rc0, $out0, $err0) = $node->psql('postgres', "SELECT mig_contract('ev0')");
is($rc0, 0, 'uninterrupted: mig_contract succeeds') or diag $err0;
$uninterrupted = keys_of(0);
like($uninterrupted, qr/(^|,)pref:pref_ev_id_ev_at_fkey:false:ev:true(,|$)/,
	'uninterrupted: pref has its key') or diag $uninterrupted;
foreach my $case (
	[ 'swapped', 'kill' ], [ 'fkey_validated', 'immediate' ], [ 'fkey_validated', 'kill' ],
	[ 'fkey_attach', 'kill' ], [ 'fkey_attached', 'immediate' ], [ 'swapped', 'immediate', 'dba' ])
{
	my ($step, $how, $dba) = @$case;
	$i++;
	setup($i);
	my ($h, $holder, $err, $pid) = mig_contract_paused($node, "ev$i", $step);
	my $offset = -s $node->logfile;
	mig_crash($node, $how, $pid);
	$h->finish;
	eval { $holder->quit };
	mig_contract_unpause($node);
	my $what = "crash ($how) after step $step" . ($dba ? ', a DBA\'s mig_contract at once' : '');
	# the DBA runs mig_contract as the server comes back: it races with the
	# server's worker, and exactly one of them finishes the keys
	if ($dba)
	{
		my ($drc, $dout, $derr) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT mig_contract('ev${i}')");
		ok(($drc == 0 && $derr =~ /finishing the foreign keys that reference table "ev$i"|is already contracted/)
			  || $derr =~ /ERROR:  55006: mig_contract is already running on table "ev$i"/,
			"$what: it finishes the keys, finds them finished, or is refused while the server's worker does") or diag $derr;
	}
	is($node->safe_psql('postgres',
		"SELECT phase FROM migrate_ext.migration WHERE relid = 'ev${i}'::regclass"),
		'contracted', "$what: the swap had committed");
	enforced_everywhere($i, "$what, before the server finishes");
	if ($dba)
	{
		ok($node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT FROM migrate_ext.contract_object)"),
			"$what: the keys end finished");
	}
	else
	{
		finished_by_server($i, $what, $offset);
	}
	keys_as_uninterrupted($i, $what);
	is($node->safe_psql('postgres', qq{
		SELECT string_agg(conrelid::regclass::text, ',' ORDER BY conrelid::regclass::text) FROM pg_constraint
		 WHERE contype = 'f' AND NOT convalidated AND conparentid = 0
		   AND (conrelid IN (SELECT relid FROM pg_partition_tree('pref${i}')) OR conrelid = 'ref${i}'::regclass)}),
		'', "$what: every key of pref$i and its leaves, and ref${i}'s, is validated");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM pg_constraint WHERE conrelid = 'pref${i}'::regclass AND contype = 'f'
		   AND confrelid = 'ev${i}'::regclass}),
		'1', "$what: pref$i has one key, its own");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM migrate_ext.contract_object}),
		'0', "$what: nothing is left recorded");
	enforced_everywhere($i, "$what, after it");
	my ($rc, $out, $cerr) = $node->psql('postgres', "SELECT mig_contract('ev${i}')");
	like($cerr, qr/is already contracted/, "$what: a mig_contract after it has nothing to do");
}

# --- 2. a row that violates the key, found only at the validation -----------
$i++;
setup($i);
$node->safe_psql('postgres', qq{
	SET session_replication_role = replica;
	INSERT INTO pref$i VALUES (-1, '2021-03-03', 777777, '2020-01-01');});
my $failed = $node->safe_psql('postgres',
	"SELECT string_agg(check_name || ': ' || detail, '; ') FROM mig_validate('ev${i}') WHERE NOT passed");
like($failed, qr/777777/, 'mig_validate names the row that has no referenced row') or diag $failed;
my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT mig_contract('ev${i}', force => true)");
isnt($rc, 0, 'dirty row: mig_contract fails');
like($err, qr/ERROR:  23503: insert or update on table "pref${i}_2" violates foreign key constraint "pref${i}_ev_id_ev_at_fkey"/,
	'dirty row: 23503 naming the partition and the constraint');
like($err, qr/DETAIL:  .*777777.*mig_contract was validating foreign key "pref${i}_ev_id_ev_at_fkey" on the new column, on partition pref${i}_2.*The columns of table "ev$i" are swapped/s,
	'dirty row: the detail names the row, what was being validated, and that the swap is done');
like($err, qr/HINT:  Fix or delete the row/, 'dirty row: the hint says what to do');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE relid = 'ev${i}'::regclass"),
	'contracted', 'dirty row: the migration is contracted (the error came after the swap)');
enforced_everywhere($i, 'dirty row, before the fix');
$node->safe_psql('postgres', qq{
	INSERT INTO ev$i (id, created_at) VALUES (5000000000, '2020-05-05'), (3000000, '2020-05-05');
	INSERT INTO pref$i VALUES (1, '2020-02-02', 3000000, '2020-05-05');
	UPDATE ev$i SET created_at = created_at WHERE id < 10;});
is($node->safe_psql('postgres', "SELECT count(*) FROM ev$i WHERE id = 5000000000")
	. $node->safe_psql('postgres', "SELECT count(*) FROM pref$i WHERE ev_id = 3000000"),
	'11', 'dirty row: the tables are usable (a bigint key written, a new row referenced)');
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev${i}')");
like($err, qr/violates foreign key constraint "pref${i}_ev_id_ev_at_fkey"/,
	'dirty row: a second mig_contract fails alike');
$node->safe_psql('postgres', "DELETE FROM pref$i WHERE ev_id = 777777");
($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('ev${i}')");
is($rc, 0, 'dirty row fixed: mig_contract finishes') or diag $err;
keys_as_uninterrupted($i, 'dirty row fixed');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated AND conparentid = 0
	   AND conrelid IN (SELECT relid FROM pg_partition_tree('pref${i}'))}),
	'0', 'dirty row fixed: every key validated');
enforced_everywhere($i, 'dirty row, after the fix');

# --- 3. the server's worker cannot get its lock -----------------------------
# First a table dropped after its swap, before the restart: its rows stay in
# contract_object, but nothing is done for it (checked at the restarts below).
$i++;
setup($i);
my $dropped = $node->safe_psql('postgres', "SELECT id FROM migrate_ext.migration WHERE relid = 'ev${i}'::regclass");
{
	my ($hd, $holderd, $errd, $pidd) = mig_contract_paused($node, "ev$i", 'swapped');
	$node->safe_psql('postgres', "DROP TABLE ev$i CASCADE");
	mig_crash($node, 'kill', $pidd);
	$hd->finish;
	eval { $holderd->quit };
	mig_contract_unpause($node);
}
is($node->safe_psql('postgres', "SELECT count(*) > 0 FROM migrate_ext.contract_object WHERE migration_id = $dropped")
	. $node->safe_psql('postgres', "SELECT count(*) FROM mig_status WHERE migration_id = $dropped"),
	't0', 'dropped after its swap: its rows stay recorded, mig_status lists nothing to finish');
# Then one stopped after its swap; a prepared transaction (it survives restarts) then
# holds pref's first leaf against the validation of its key's copy; the
# contract is killed.
$i++;
setup($i);
my $mid = $node->safe_psql('postgres', "SELECT id FROM migrate_ext.migration WHERE relid = 'ev${i}'::regclass");
my ($h3, $holder3, $err3, $pid3) = mig_contract_paused($node, "ev$i", 'swapped');
$node->safe_psql('postgres', qq{BEGIN; LOCK TABLE pref${i}_1 IN SHARE UPDATE EXCLUSIVE MODE; PREPARE TRANSACTION 'hold';});
my $offset = -s $node->logfile;
mig_crash($node, 'kill', $pid3);
$h3->finish;
eval { $holder3->quit };
mig_contract_unpause($node);
ok($node->wait_for_log(qr/migrate_ext: could not finish the foreign keys that reference table public\.ev$i yet: could not lock table "pref${i}_1"/, $offset),
	'held: the server\'s worker gives up through its ladder, and the log says why and that it tries again');
my $finishing = q{SELECT pid FROM pg_stat_activity WHERE application_name = 'migrate_ext contract'};
is($node->safe_psql('postgres', "SELECT phase, fkeys_to_finish > 0, fkeys_finishing FROM mig_status WHERE table_name = 'ev$i'"),
	'contracted|t|t', 'held: mig_status shows the keys left to finish and a worker on them');
($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT mig_expand('ev${i}', 'id', type => 'numeric')");
like($err, qr/ERROR:  55000: the last migration of table "ev$i" is contracted but not finished/,
	'held: a new mig_expand is refused until the keys are finished');
($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT mig_abort('ev${i}')");
like($err, qr/ERROR:  55000: the migration of table "ev$i" was contracted and cannot be aborted/,
	'held: mig_abort is refused after the swap, as before');
($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT mig_contract('ev${i}')");
like($err, qr/ERROR:  55006: mig_contract is already running on table "ev$i"/,
	'held: a DBA\'s mig_contract meanwhile is refused: one finisher only');
like($err, qr/DETAIL:  .*the server's own worker that finishes the foreign keys/, 'held: and says who holds it');
# clients are not held up: writes to the held leaf and to both trees go
# through (the worker queues at most the ladder's top, 200ms, for a lock)
foreach (1 .. 3)
{
	($rc, $out, $err) = $node->psql('postgres', qq{SET lock_timeout = '3s';
		INSERT INTO ev$i (id, created_at) VALUES (4000000 + $_, '2020-05-05');
		INSERT INTO pref$i VALUES ($_, '2020-02-02', 4000000 + $_, '2020-05-05');
		INSERT INTO ref$i VALUES (4000000 + $_, 4000000 + $_, '2020-05-05');});
	is($rc, 0, "held: client write $_ into ev$i, pref$i and ref$i is not held up") or diag $err;
}
enforced_everywhere($i, 'held');
like($node->safe_psql('postgres', "SELECT mig_checklist('ev$i')"),
	qr/- \[ \] the foreign keys the swap moved to the new column finished: \d+ copies not yet validated or attached, a worker is finishing them now/,
	'held: mig_checklist says what is left and that a worker is on it');
# it waits longer after each attempt (5 s, then 10 s, ... up to a minute):
# a lock held for hours must not cost the writers a queued wait and the log
# a line every few seconds
ok($node->wait_for_log(qr/could not finish the foreign keys that reference table public\.ev$i yet: .*\n.*DETAIL:  Trying again in 10 seconds/, $offset),
	'held: the second attempt waits twice as long as the first');
is(scalar(() = substr(slurp_file($node->logfile), $offset) =~ /DETAIL:  Trying again in 5 seconds/g), 1,
	'held: the first wait, 5 seconds, only once');
# the worker stopped (pg_terminate_backend): nobody is on it, and mig_status
# and mig_checklist say so; an immediate restart gives the work a new worker
my $wpid = $node->safe_psql('postgres', $finishing);
like($wpid, qr/^\d+$/, 'held: one worker finishes the keys');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($wpid)");
ok($node->poll_query_until('postgres', "SELECT NOT fkeys_finishing FROM mig_status WHERE table_name = 'ev$i'"),
	'held, the worker stopped: mig_status says no worker is on the keys');
like($node->safe_psql('postgres', "SELECT mig_checklist('ev$i')"), qr/no worker is on them \(run mig_contract again/,
	'held, the worker stopped: and mig_checklist says what to do');
mig_crash($node, 'immediate');
ok($node->poll_query_until('postgres', "SELECT fkeys_finishing FROM mig_status WHERE table_name = 'ev$i'"),
	'held, after a restart: a new worker is on it');
# the launcher's worker of this database is done once it has started that
# one and exited: by then it has started every finishing worker it would
$node->poll_query_until('postgres', q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity
	WHERE backend_type = 'migrate_ext launcher' AND datname = 'postgres')})
  or die 'the launcher\'s worker of database postgres did not end';
unlike(slurp_file($node->logfile), qr/finishing the foreign keys left after the swap of migration $dropped /,
	'the table dropped after its swap: no worker was ever started for it');
# that worker killed (kill -9) while it waits: the next start gives the
# work another one
$wpid = $node->safe_psql('postgres', $finishing);
mig_crash($node, 'kill', $wpid);
ok($node->poll_query_until('postgres', "SELECT fkeys_finishing FROM mig_status WHERE table_name = 'ev$i'"),
	'held, the worker killed: after the restart a new one is on it');
# a standby of it runs no worker; promoted (the primary gone), it does
$node->backup('held');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'held', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', "SELECT fkeys_to_finish > 0, fkeys_finishing FROM mig_status WHERE table_name = 'ev$i'")
	. '/' . $standby->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migrate_ext contract'"),
	't|f/0', 'held, a standby: it shows the keys left to finish and runs no worker');
$node->stop('immediate');
$node = $standby;
$node->promote;
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'migrate_ext contract'"),
	'held, the standby promoted: a worker finishes the keys there');
$offset = -s $node->logfile;
$node->safe_psql('postgres', "COMMIT PREPARED 'hold'");
finished_by_server($i, 'held, then let go', $offset);
keys_as_uninterrupted($i, 'held, then let go');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated AND conparentid = 0
	   AND (conrelid IN (SELECT relid FROM pg_partition_tree('pref${i}')) OR conrelid = 'ref${i}'::regclass)}),
	'0', 'held, then let go: every key validated');
enforced_everywhere($i, 'held, then let go');
done_testing();
