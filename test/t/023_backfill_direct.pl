# The backfill's direct batch (issue 12, backfill_apply.c): which tables
# get it, and that it writes what the batch's UPDATE would.
#
#  1. A table owned by app_owner with an updated_at BEFORE UPDATE trigger,
#     an audit AFTER trigger, an expression index and a partial index whose
#     expression and predicate call the owner's functions, which refuse to
#     run as anyone but the owner: its backfill, started by a superuser,
#     writes directly (the server log says so); every row is right,
#     updated_at untouched, no audit row, every index holds every row it
#     should (amcheck's heapallindexed), validation passes.  A table with no
#     key (ctid walk) writes directly too.
#  2. A stored generated column, an exclusion constraint, a deferrable
#     unique constraint: those tables' batches take the UPDATE statements
#     (the log says why), and are right.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = mig_node('bf_direct', setup => q{
CREATE EXTENSION amcheck;
CREATE ROLE app_owner LOGIN;
CREATE ROLE dba LOGIN SUPERUSER;
GRANT CREATE ON SCHEMA public TO app_owner;
});

sub as_owner
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', 'app_owner' ]);
}

sub as_dba
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', 'dba' ]);
}

# 1. the direct path
as_owner(q{
CREATE FUNCTION owner_only(id int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF current_user <> 'app_owner' OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'index predicate ran as %', current_user;
	END IF;
	RETURN id % 3 = 0;
END $$;
CREATE FUNCTION owner_norm(v text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF current_user <> 'app_owner' THEN
		RAISE EXCEPTION 'index expression ran as %', current_user;
	END IF;
	RETURN lower(v);
END $$;
CREATE TABLE d_plain (id int PRIMARY KEY, email text, n int,
	updated_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00', CHECK (n >= 0));
CREATE TABLE d_audit (id int);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO d_audit VALUES (NEW.id); RETURN NULL; END $$;
CREATE TRIGGER d_touch BEFORE UPDATE ON d_plain FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TRIGGER d_audit AFTER UPDATE ON d_plain FOR EACH ROW EXECUTE FUNCTION audit();
CREATE INDEX d_plain_norm ON d_plain (owner_norm(email));
CREATE INDEX d_plain_third ON d_plain (n) WHERE owner_only(id);
INSERT INTO d_plain (id, email, n) SELECT g, 'User' || g || '@Example.COM', g % 7 FROM generate_series(1, 3000) g;
CREATE TABLE d_heap (email text);
CREATE INDEX d_heap_norm ON d_heap (owner_norm(email));
INSERT INTO d_heap SELECT 'Heap' || g FROM generate_series(1, 2000) g;
});

as_dba(q{
SELECT mig_expand('d_plain', 'email', type => 'text', up => 'lower(email)');
SELECT mig_expand('d_heap', 'email', type => 'text', up => 'upper(email)');
SELECT mig_backfill('d_plain', batch_size => 500);
SELECT mig_backfill('d_heap', batch_size => 500);
});
is(wait_job_ended($node, 'd_plain'), 'done', 'the backfill of d_plain is done');
is(wait_job_ended($node, 'd_heap'), 'done', 'the backfill of d_heap (ctid walk) is done');

my $log = slurp_file($node->logfile);
like($log, qr/the backfill of table public\.d_plain writes its rows directly/, 'd_plain is written directly');
like($log, qr/the backfill of table public\.d_heap writes its rows directly/, 'd_heap is written directly');
unlike($log, qr/ERROR: .*index (predicate|expression) ran as/, 'no index expression or predicate ran as another role than the owner');
is($node->safe_psql('postgres', q{
	SELECT string_agg(table_name || '=' || write_path, ' ' ORDER BY table_name) FROM mig_status
	 WHERE table_name IN ('d_plain', 'd_heap')}),
	'd_heap=direct, striped d_plain=direct, striped', 'mig_status shows both written directly, in stripes');

is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE _mig_new_email IS NOT DISTINCT FROM lower(email)) || '/' || count(*)
	FROM d_plain}), '3000/3000', 'every row of d_plain is right');
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE _mig_new_email IS NOT DISTINCT FROM upper(email)) || '/' || count(*)
	FROM d_heap}), '2000/2000', 'every row of d_heap is right');
is($node->safe_psql('postgres', q{SELECT count(*) FROM d_plain WHERE updated_at <> '2024-01-01 00:00:00+00'}),
	'0', 'the updated_at trigger did not fire');
is($node->safe_psql('postgres', 'SELECT count(*) FROM d_audit'), '0', 'the audit trigger did not fire');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_index i, LATERAL bt_index_check(i.indexrelid, true)
	WHERE i.indrelid IN ('d_plain'::regclass, 'd_heap'::regclass)}),
	'4', 'every index of both tables holds every row version (amcheck heapallindexed)');
is($node->safe_psql('postgres', q{
	SET enable_seqscan = off; SET enable_bitmapscan = off;
	SELECT count(*) FROM d_plain WHERE n >= 0 AND owner_only(id)}),
	'1000', 'the partial index finds its rows');
is($node->safe_psql('postgres', q{
	SELECT string_agg(check_name || '=' || passed, ' ' ORDER BY check_name) FROM mig_validate('d_plain')
	WHERE check_name IN ('backfilled', 'new_equals_up')}),
	'backfilled=true new_equals_up=true', 'validation of d_plain passes');
is($node->safe_psql('postgres', q{
	SELECT string_agg(check_name || '=' || passed, ' ' ORDER BY check_name) FROM mig_validate('d_heap')
	WHERE check_name IN ('backfilled', 'new_equals_up')}),
	'backfilled=true new_equals_up=true', 'validation of d_heap passes');

# a client's write still fires the triggers, and the pair stays in step
as_owner(q{UPDATE d_plain SET email = 'Client@X' WHERE id = 7});
is($node->safe_psql('postgres', q{SELECT _mig_new_email, updated_at > '2024-01-01', (SELECT count(*) FROM d_audit) FROM d_plain WHERE id = 7}),
	'client@x|t|1', 'a client write after the backfill fires every trigger');

# 2. tables that get the UPDATE statements
$node->safe_psql('postgres', q{
CREATE TABLE d_gen (id int PRIMARY KEY, email text, len int GENERATED ALWAYS AS (length(email)) STORED);
CREATE TABLE d_excl (id int PRIMARY KEY, email text, during int4range, EXCLUDE USING gist (during WITH &&));
CREATE TABLE d_defer (id int PRIMARY KEY, email text, code text UNIQUE DEFERRABLE);
INSERT INTO d_gen (id, email) SELECT g, 'Gen' || g FROM generate_series(1, 1000) g;
INSERT INTO d_excl SELECT g, 'Excl' || g, int4range(2 * g, 2 * g + 1) FROM generate_series(1, 1000) g;
INSERT INTO d_defer SELECT g, 'Defer' || g, 'c' || g FROM generate_series(1, 1000) g;
});
for my $t ([ 'd_gen', 'it has a stored generated column' ],
	[ 'd_excl', 'it has an exclusion constraint' ],
	[ 'd_defer', 'it has a deferrable unique constraint' ])
{
	my ($tbl, $why) = @$t;
	$node->safe_psql('postgres', qq{
		SELECT mig_expand('$tbl', 'email', type => 'text', up => 'lower(email)');
		SELECT mig_backfill('$tbl', batch_size => 300);
	});
	is(wait_job_ended($node, $tbl), 'done', "the backfill of $tbl is done");
	like(slurp_file($node->logfile),
		qr/the backfill of table public\.$tbl writes its rows with UPDATE statements: \Q$why\E/,
		"$tbl takes the UPDATE statements: $why");
	is($node->safe_psql('postgres', qq{SELECT write_path FROM mig_status WHERE table_name = '$tbl'}),
		"UPDATE: $why", "mig_status says why $tbl takes the UPDATE statements");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FILTER (WHERE _mig_new_email IS NOT DISTINCT FROM lower(email)) || '/' || count(*)
		FROM $tbl}), '1000/1000', "every row of $tbl is right");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM d_gen WHERE len IS DISTINCT FROM length(email)'),
	'0', 'the generated column is right');

# 3. a partitioned table whose leaves differ: mig_status shows each leaf's way
$node->safe_psql('postgres', q{
CREATE TABLE d_part (id int, email text, during int4range) PARTITION BY RANGE (id);
CREATE TABLE d_part_1 PARTITION OF d_part FOR VALUES FROM (1) TO (1001);
CREATE TABLE d_part_2 PARTITION OF d_part (EXCLUDE USING gist (during WITH &&)) FOR VALUES FROM (1001) TO (2001);
INSERT INTO d_part SELECT g, 'Part' || g, int4range(2 * g, 2 * g + 1) FROM generate_series(1, 2000) g;
SELECT mig_expand('d_part', 'email', type => 'text', up => 'lower(email)');
SELECT mig_backfill('d_part', batch_size => 300);
});
is(wait_job_ended($node, 'd_part'), 'done', 'the backfill of d_part is done');
is($node->safe_psql('postgres', q{
	SELECT string_to_array(write_path, '; ') @> ARRAY['direct, striped', 'UPDATE: it has an exclusion constraint']
	       AND array_length(string_to_array(write_path, '; '), 1) = 2
	  FROM mig_status WHERE table_name = 'd_part'}),
	't', 'mig_status shows the leaf written directly and the one that takes the UPDATE statements');
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE _mig_new_email IS NOT DISTINCT FROM lower(email)) || '/' || count(*)
	FROM d_part}), '2000/2000', 'every row of d_part is right');

done_testing();
