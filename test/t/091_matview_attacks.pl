# Attacks on the rebuild of materialized views at contract (issue #11): the
# copy `_mig_<name>` built beside a materialized view on the old column
# before the swap, in its own transaction, as the materialized view's owner.
#
#  1. A crash (kill -9 of the contract worker, an immediate shutdown) after
#     a copy is built and before the swap: mig_abort drops the leftover
#     copy; the next mig_contract drops it and builds it again; the end
#     state has one materialized view, with the right rows, index, grants.
#     A contract that fails at the swap (its lock ladder gives up) leaves
#     nothing behind.
#  2. Readers of the old materialized view and writers of the table keep
#     going while the copy is built and while the swap tries its lock.
#  3. Hostile owners: the copy is built as the materialized view's owner; a
#     query that calls a function doing SET ROLE / RESET ROLE fails inside
#     the security-restricted operation and contract refuses cleanly; a
#     relation planted under the copy's name (or its index's) is neither
#     dropped nor used.
#  4. REFRESH MATERIALIZED VIEW CONCURRENTLY running while contract builds
#     and swaps: no deadlock, right end state.
#
# The contract is held between its copies and its swap by a session that
# holds a lock on the old materialized view (the swap takes ACCESS
# EXCLUSIVE on it through the lock ladder, which waits and retries); the
# copies only read, so they are built meanwhile.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('mvattack', conf => "restart_after_crash = on\n", setup => q{
CREATE ROLE mv_owner;
CREATE ROLE mv_reader;
CREATE ROLE planter;
GRANT CREATE ON SCHEMA public TO mv_owner, planter;
CREATE TABLE s (id int PRIMARY KEY, region text, amount int NOT NULL);
INSERT INTO s SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 2000) g;
GRANT SELECT ON s TO mv_owner;
-- owned by another role than the table's; current_user says who built it
CREATE MATERIALIZED VIEW mvr AS
  SELECT id, region, current_user::text AS built_by FROM s WHERE id <= 600;
ALTER MATERIALIZED VIEW mvr OWNER TO mv_owner;
REFRESH MATERIALIZED VIEW mvr;
CREATE UNIQUE INDEX mvr_id ON mvr (id);
GRANT SELECT ON mvr TO mv_reader;
CREATE FUNCTION mv_summary() RETURNS text LANGUAGE sql AS $$
SELECT string_agg(c.relname || ':' || c.relkind::text || ':' || c.relowner::regrole::text || ':' || coalesce(c.relacl::text, ''),
                  ' ' ORDER BY c.relname)
  FROM pg_class c WHERE c.relname LIKE 'mvr%' OR c.relname LIKE '\_mig\_%' OR c.relname LIKE 'planted%'
$$;
});

my $expected_end = 'mvr:m:mv_owner:{'
  . $node->safe_psql('postgres', q{SELECT array_to_string(relacl, ',') FROM pg_class WHERE relname = 'mvr'})
  . '} mvr_id:i:mv_owner:';
my $leftovers = q{SELECT count(*) FROM pg_class WHERE relname LIKE '\_mig\_%'};
my $leftover_names = q{SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname LIKE '\_mig\_%'};

# expand region (no index, no NOT NULL on it: contract's first steps are the
# copies alone), filled, validated
sub expand_region
{
	$node->safe_psql('postgres', q{
SELECT mig_expand('s', 'region', up => 'upper(region)');
SET migrate_ext.writer = 'old';
UPDATE s SET region = region;
RESET migrate_ext.writer;
SELECT bool_and(passed) FROM mig_validate('s');});
}

# A session holding ACCESS SHARE on mvr (the swap waits for it).
sub hold_mvr
{
	my $h = $node->background_psql('postgres');
	$h->query_safe('BEGIN');
	$h->query_safe('SELECT count(*) FROM mvr');
	return $h;
}

# mig_contract started in a session of its own, its lock ladder long enough
# to wait for a holder; returns when the copy is built and the worker waits
# for the swap's lock.
sub start_contract
{
	my ($ladder) = @_;
	my $c = $node->background_psql('postgres', on_error_stop => 0);
	$c->query_safe($ladder);
	$c->query_until(qr/started/, "\\echo started\nSELECT mig_contract('s');\n");
	$node->poll_query_until('postgres', q{
SELECT EXISTS (SELECT FROM pg_class WHERE relname = '_mig_mvr')
   AND EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                WHERE a.backend_type = 'migrate_ext' AND NOT l.granted
                  AND l.relation = 'mvr'::regclass)})
	  or die 'the contract did not get to its swap';
	return $c;
}

sub worker_pid
{
	return $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'migrate_ext'});
}

sub quit_dead
{
	eval { $_->quit } for @_;
}

# (tries of 50 ms doubling up to 7 s, 20 s of queueing in all: long enough
# to hold the contract, short enough for a session queued behind one try)
my $long = q{SET migrate_ext.lock_timeout_max = '20s'; SET migrate_ext.lock_retries = 1000};

# ---- 1. a contract failing at the swap leaves nothing behind
expand_region();
my $holder = hold_mvr();
my ($ret, $out, $err) = $node->psql('postgres', q{
SET migrate_ext.lock_timeout_max = 300; SET migrate_ext.lock_retries = 3;
SELECT mig_contract('s')});
isnt($ret, 0, 'contract failed at the swap');
like($err, qr/could not lock/, 'for the lock on the materialized view') or diag($err);
is($node->safe_psql('postgres', $leftovers), '0', 'its copy was dropped');
is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.contract_object'), '0',
	'nothing recorded is left');
$holder->query_safe('COMMIT');
$holder->quit;

# ---- 1. kill -9 of the worker between copy and swap, then mig_abort
$holder = hold_mvr();
my $contract = start_contract($long);
is($node->safe_psql('postgres', q{SELECT built_by FROM _mig_mvr LIMIT 1}), 'mv_owner',
	'the copy was built as the materialized view owner, not as the caller');
is($node->safe_psql('postgres',
		q{SELECT relowner::regrole FROM pg_class WHERE relname = '_mig_mvr'}),
	'mv_owner', 'and is owned by it');
kill 'KILL', worker_pid();
quit_dead($holder, $contract);
$node->poll_query_until('postgres', 'SELECT true') or die 'no restart';
is($node->safe_psql('postgres', $leftover_names), '_mig_mvr,_mig_mvr_id', 'the crash left the copy');
$node->safe_psql('postgres', q{SELECT mig_abort('s')});
is($node->safe_psql('postgres', $leftovers), '0', 'mig_abort dropped it');
is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.contract_object'), '0',
	'and forgot it');
is($node->safe_psql('postgres', 'SELECT mv_summary()'), $expected_end,
	'mvr is as it was');
is($node->safe_psql('postgres', q{SELECT count(*) FROM mvr WHERE region IN ('eu', 'us')}),
	'600', 'with its rows');

# ---- 1. an immediate shutdown between copy and swap, then mig_contract
expand_region();
$holder = hold_mvr();
$contract = start_contract($long);
$node->stop('immediate');
quit_dead($holder, $contract);
$node->start;
is($node->safe_psql('postgres', $leftover_names), '_mig_mvr,_mig_mvr_id', 'the shutdown left the copy');
my $copy_oid = $node->safe_psql('postgres', q{SELECT '_mig_mvr'::regclass::oid});
$node->safe_psql('postgres', q{SELECT mig_contract('s')});
is($node->safe_psql('postgres', $leftovers), '0', 'the next contract left nothing behind');
isnt($node->safe_psql('postgres', q{SELECT 'mvr'::regclass::oid}), $copy_oid,
	'it built the copy again');
is($node->safe_psql('postgres', 'SELECT mv_summary()'), $expected_end,
	'one mvr, its index, owner and grants');
is($node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE region IN ('EU', 'US')), count(*), min(built_by), max(built_by) FROM mvr}),
	'600|600|mv_owner|mv_owner', 'its rows are computed from the new column by its owner');
is($node->safe_psql('postgres', q{SET ROLE mv_reader; SELECT count(*) FROM mvr}), '600',
	'mv_reader still reads it');
is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.contract_object'), '0',
	'nothing recorded is left');

# Wait until the contract session's mig_contract has returned; its outcome.
sub finish_contract
{
	my ($c) = @_;
	$node->poll_query_until('postgres', q{
SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'migrate_ext')})
	  or die 'the contract worker did not end';
	my $res = $c->query('SELECT 1');
	my $e = $c->{stderr};
	$c->quit;
	return $e;
}

# ---- 2. readers of the old materialized view and writers of the table
# keep going while the copy is built and while the swap tries its lock.
# A holder of mvr keeps the swap's lock ladder trying (default ladder: its
# tries' lock_timeouts add up to migrate_ext.lock_timeout_max, 1 s, then it
# gives up); meanwhile a reader of mvr and a writer of s go on, each
# statement timed from the client.  A statement queued behind one try waits
# at most that try's lock_timeout, all of them 1 s in all: the bound
# asserted is 5 s, the 1 s plus room for a machine shared by several test
# runs (a swap that queued without lock_timeout would hang here until the
# holder let go, which it does only after the reads).
expand_region();
my $reader = $node->background_psql('postgres');
my $writer = $node->background_psql('postgres');
$holder = hold_mvr();
$contract = start_contract(q{SET migrate_ext.lock_retries = 1000});
my ($reads, $longest) = (0, 0);
for my $i (1 .. 200)
{
	my $t0 = time;
	$reader->query_safe('SELECT count(*) FROM mvr');
	$writer->query_safe("UPDATE s SET amount = amount + 1 WHERE id = $i");
	my $t = time - $t0;
	$longest = $t if $t > $longest;
	$reads++;
	last unless $node->safe_psql('postgres', q{
SELECT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'migrate_ext')}) eq 't';
}
my $cerr = finish_contract($contract);
like($cerr, qr/could not lock/, 'the swap gave up while mvr was held') or diag($cerr);
diag(sprintf('%d reads and writes while the swap tried; longest %.3f s', $reads, $longest));
cmp_ok($reads, '>', 1, 'reads and writes went on while the swap tried its lock');
cmp_ok($longest, '<', 5, 'none waited for long behind the swap');
is($node->safe_psql('postgres', $leftovers), '0', 'the failed contract left nothing');
$holder->query_safe('COMMIT');
$holder->quit;

# the same with no holder: the contract goes through while they go on
$contract = $node->background_psql('postgres', on_error_stop => 0);
$contract->query_until(qr/started/, "\\echo started\nSELECT mig_contract('s');\n");
($reads, $longest) = (0, 0);
for my $i (1 .. 2000)
{
	my $t0 = time;
	$reader->query_safe('SELECT count(*) FROM mvr');
	$writer->query_safe("UPDATE s SET amount = amount + 1 WHERE id = $i");
	my $t = time - $t0;
	$longest = $t if $t > $longest;
	$reads++;
	last if $node->safe_psql('postgres', q{
SELECT phase = 'contracted' FROM migrate_ext.migration ORDER BY id DESC LIMIT 1}) eq 't';
}
$cerr = finish_contract($contract);
diag(sprintf('%d reads and writes during the contract; longest %.3f s', $reads, $longest));
unlike($cerr, qr/ERROR/, 'the contract went through while they went on');
cmp_ok($longest, '<', 5, 'none waited for long');
$reader->quit;
$writer->quit;
is($node->safe_psql('postgres', 'SELECT mv_summary()'), $expected_end, 'one mvr');
is($node->safe_psql('postgres', $leftovers), '0', 'nothing left');

# ---- 3. hostile owners.  A function in the query of a materialized view
# that SET ROLEs or RESET ROLEs: the copy is built inside a
# security-restricted operation, as REFRESH does, so it fails there, and
# contract refuses with nothing left behind; once the function is harmless
# again, the contract goes through.
$node->safe_psql('postgres', q{
CREATE FUNCTION mvh_f(int) RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN $1; END';
ALTER FUNCTION mvh_f(int) OWNER TO mv_owner;
CREATE MATERIALIZED VIEW mvh AS SELECT id, region, mvh_f(id) AS f FROM s WHERE id <= 10;
ALTER MATERIALIZED VIEW mvh OWNER TO mv_owner;
REFRESH MATERIALIZED VIEW mvh;});
expand_region();
for my $body ('BEGIN RESET ROLE; RETURN $1; END',
	'BEGIN SET ROLE mv_reader; CREATE TABLE planted_by_fn (); RETURN $1; END',
	q{BEGIN PERFORM set_config('role', 'none', true); RETURN $1; END})
{
	$node->safe_psql('postgres', "CREATE OR REPLACE FUNCTION mvh_f(int) RETURNS int LANGUAGE plpgsql AS '"
		  . ($body =~ s/'/''/gr) . "'");
	($ret, $out, $err) = $node->psql('postgres', q{SELECT mig_contract('s')});
	isnt($ret, 0, "contract refused: $body");
	like($err, qr/cannot set parameter "role" within security-(definer function|restricted operation)/,
		'the role change failed inside the security-restricted operation') or diag($err);
	is($node->safe_psql('postgres', $leftovers), '0', 'no copy left');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'planted_by_fn'}),
		'0', 'nothing created as another role');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.contract_object'), '0',
		'nothing recorded');
}
is($node->safe_psql('postgres', 'SELECT mv_summary()'), $expected_end, 'mvr untouched');
$node->safe_psql('postgres',
	q{CREATE OR REPLACE FUNCTION mvh_f(int) RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN $1; END'});

# a relation planted under the copy's name, or under its index's copy name,
# by another role: neither dropped nor used; contract refuses clearly
for my $planted ('_mig_mvr', '_mig_mvr_id')
{
	$node->safe_psql('postgres', qq{SET ROLE planter; CREATE TABLE "$planted" (x int); INSERT INTO "$planted" VALUES (42)});
	($ret, $out, $err) = $node->psql('postgres', q{SELECT mig_contract('s')});
	isnt($ret, 0, "contract refused with $planted planted");
	like($err, qr/relation "$planted" already exists\nDETAIL:  mig_contract builds the copy of (materialized view "mvr"|index "mvr_id") under this name/,
		'it names the relation and says why') or diag($err);
	is($node->safe_psql('postgres', qq{
SELECT relowner::regrole::text || ':' || relkind::text || ':' || (SELECT x FROM "$planted")
  FROM pg_class WHERE relname = '$planted'}), 'planter:r:42', 'the planted relation is untouched');
	is($node->safe_psql('postgres', "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_mig\\_%' AND relname <> '$planted'"),
		'0', 'nothing else left');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.contract_object'), '0',
		'nothing recorded');
	$node->safe_psql('postgres', qq{SET ROLE planter; DROP TABLE "$planted"});
}
# the copy replaced by its owner (who may drop it) while the swap waits: the
# swap uses only the copy it built (by its recorded OID), and refuses
$holder = hold_mvr();
$contract = start_contract($long);
$node->safe_psql('postgres', q{
SET ROLE mv_owner;
DROP MATERIALIZED VIEW _mig_mvr;
CREATE MATERIALIZED VIEW _mig_mvr AS SELECT 666 AS id, 'EVIL'::text AS region, 'evil'::text AS built_by;
CREATE UNIQUE INDEX _mig_mvr_id ON _mig_mvr (id);});
$holder->query_safe('COMMIT');
$holder->quit;
$cerr = finish_contract($contract);
like($cerr, qr/relation "_mig_mvr" is not the copy of materialized view "mvr" that mig_contract built/,
	'the swap refused a copy it did not build') or diag($cerr);
is($node->safe_psql('postgres', q{SELECT count(*), min(built_by), max(built_by) FROM mvr}),
	'600|mv_owner|mv_owner', 'mvr is untouched');
is($node->safe_psql('postgres', 'SELECT mv_summary()'), '_mig_mvr:m:mv_owner: _mig_mvr_id:i:mv_owner: ' . $expected_end,
	'and so are its index and grants');
is($node->safe_psql('postgres', q{SELECT built_by FROM _mig_mvr}), 'evil',
	'the relation that took the name is not dropped');
is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.contract_object'), '0',
	'nothing recorded is left');
$node->safe_psql('postgres', q{SET ROLE mv_owner; DROP MATERIALIZED VIEW _mig_mvr});

$node->safe_psql('postgres', q{SELECT mig_contract('s')});
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT built_by, ',') FROM mvr}), 'mv_owner',
	'the legitimate contract goes through, built by the owner');
is($node->safe_psql('postgres', q{SELECT count(*) FROM mvh WHERE f = id}), '10', 'mvh rebuilt');
is($node->safe_psql('postgres', $leftovers), '0', 'nothing left');

# ---- 4. REFRESH MATERIALIZED VIEW CONCURRENTLY during the contract
expand_region();
# (a) a refresh holds mvr when the swap comes, and refreshes again meanwhile
my $refresher = $node->background_psql('postgres', on_error_stop => 0);
$refresher->query_safe('BEGIN');
$refresher->query_safe('REFRESH MATERIALIZED VIEW CONCURRENTLY mvr');
$contract = start_contract($long);
$refresher->query_safe('REFRESH MATERIALIZED VIEW CONCURRENTLY mvr');
$refresher->query_safe('COMMIT');
$cerr = finish_contract($contract);
unlike($cerr, qr/ERROR/, 'the contract went through after the refresh');
# (b) a refresh that waits for mvr while the swap holds it, in a
# transaction holding s (the swap's next lock): a lock cycle, broken by the
# ladder's lock_timeout or the deadlock detector, never left hanging
expand_region();
$refresher->query_safe('BEGIN');
$refresher->query_safe('UPDATE s SET amount = amount WHERE id = 1');
$contract = $node->background_psql('postgres', on_error_stop => 0);
$contract->query_safe($long);
$contract->query_until(qr/started/, "\\echo started\nSELECT mig_contract('s');\n");
$node->poll_query_until('postgres', q{
SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                WHERE a.backend_type = 'migrate_ext' AND NOT l.granted AND l.relation = 's'::regclass)})
  or die 'the swap did not wait for s';
$refresher->query('REFRESH MATERIALIZED VIEW CONCURRENTLY mvr');
diag('refresh: ' . ($refresher->{stderr} || 'done'));
$refresher->query('COMMIT');
$cerr = finish_contract($contract);
unlike($cerr, qr/ERROR/, 'the contract went through');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM pg_locks WHERE NOT granted}), '0', 'nobody is left waiting');
$refresher->quit;
is($node->safe_psql('postgres', 'SELECT mv_summary()'), $expected_end, 'one mvr');
is($node->safe_psql('postgres', $leftovers), '0', 'nothing left');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT id, region FROM mvr
  EXCEPT SELECT id, region FROM s WHERE id <= 600) d}), '0', 'its rows are right');

# ---- 5. an owner that may read the table's columns only through column
# grants: the copy reads the new column, built as that owner
$node->safe_psql('postgres', q{
CREATE ROLE mv_colowner;
GRANT CREATE ON SCHEMA public TO mv_colowner;
CREATE TABLE g (id int PRIMARY KEY, v text, secret text);
INSERT INTO g SELECT n, 'v' || n, 's' FROM generate_series(1, 50) n;
GRANT SELECT (id, v) ON g TO mv_colowner;
CREATE MATERIALIZED VIEW mvg AS SELECT id, v FROM g;
ALTER MATERIALIZED VIEW mvg OWNER TO mv_colowner;
REFRESH MATERIALIZED VIEW mvg;
SELECT mig_expand('g', 'v', up => 'upper(v)');
SET migrate_ext.writer = 'old';
UPDATE g SET v = v;
RESET migrate_ext.writer;});
is($node->safe_psql('postgres', q{
SELECT passed FROM mig_validate('g') WHERE check_name = 'contract_blockers'}), 't',
	'validation finds no blocker');
($ret, $out, $err) = $node->psql('postgres', q{SELECT mig_contract('g')});
is($ret, 0, 'contract goes through') or diag($err);
is($node->safe_psql('postgres', q{SELECT count(*) FROM mvg WHERE v = upper(v)}), '50',
	'mvg rebuilt on the new column');
is($node->safe_psql('postgres', q{SET ROLE mv_colowner; SELECT count(*) FROM g WHERE v IS NOT NULL}), '50',
	'its owner reads the new column as it read the old one');
($ret, $out, $err) = $node->psql('postgres', q{SET ROLE mv_colowner; SELECT secret FROM g});
isnt($ret, 0, 'and still not the others');
is($node->safe_psql('postgres', $leftovers), '0', 'nothing left');

done_testing();
