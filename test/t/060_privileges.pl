# Privilege boundaries (issue 8): nothing migrate_ext runs has more
# privilege than the table's owner.  Each attack is asserted to fail AND the
# legitimate operation to complete.
#
#  1. A table owner plants now() and = (exact-match signatures) in her own
#     schema, first in search_path by SET and by ALTER ROLE ... SET; every
#     entry point, the backfill worker and the launcher's resume run without
#     ever calling them.
#  2. A superuser starts a backfill with SET ROLE owner; a trigger on the
#     table tries RESET ROLE and ALTER ROLE owner SUPERUSER: both refused
#     (the trigger catches the errors and records them), the owner stays
#     non-superuser, the backfill completes.
#  3. FORCE ROW LEVEL SECURITY with a policy hiding half the rows: backfill
#     and validation still cover every row.
#  4. A NOLOGIN owner's job, started by a superuser under SET ROLE, runs.
#  5. A worker does not inherit its login role's lock_timeout for its own
#     set-up: it waits for its starter to commit and completes.
#  6. An owner's CHECK calling an owner's function with constant arguments,
#     which PostgreSQL runs while proving contract's SET NOT NULL: run as
#     the owner, restricted, whether a superuser runs mig_contract directly
#     or under SET ROLE owner.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 3000;
my $node = PostgreSQL::Test::Cluster->new('privileges');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'migrate_ext'\n");
$node->start;

sub job { return job_row(@_); }
sub wait_job_done { return wait_job_ended($node, @_); }

$node->safe_psql('postgres', q{
CREATE EXTENSION migrate_ext;
CREATE TABLE public.planted_log (what text, by_role name);
GRANT INSERT, SELECT ON public.planted_log TO PUBLIC;

CREATE ROLE alice LOGIN;
GRANT CREATE ON DATABASE postgres TO alice;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN;
CREATE ROLE nolog NOLOGIN;
GRANT CREATE ON SCHEMA public TO alice, bob, carol, nolog;
});

# 1. shadowing: alice's schema holds now() and = for the types the
#    extension's own statements compare
$node->safe_psql('postgres', q{
SET ROLE alice;
CREATE SCHEMA alice_s;
CREATE FUNCTION alice_s.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.planted_log VALUES ('now', current_user);
	RETURN pg_catalog.now();
END $$;
CREATE FUNCTION alice_s.eq8(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.planted_log VALUES ('= bigint', current_user);
	RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE FUNCTION alice_s.eqo(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.planted_log VALUES ('= oid', current_user);
	RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE FUNCTION alice_s.eqt(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.planted_log VALUES ('= text', current_user);
	RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR alice_s.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = alice_s.eq8);
CREATE OPERATOR alice_s.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = alice_s.eqo);
CREATE OPERATOR alice_s.= (LEFTARG = text, RIGHTARG = text, FUNCTION = alice_s.eqt);
CREATE TABLE public.t (id int PRIMARY KEY, v text);
INSERT INTO public.t SELECT g, 'V' || g FROM generate_series(1, 3000) g;
CREATE TABLE public.t_ab (id int PRIMARY KEY, v text);
INSERT INTO public.t_ab VALUES (1, 'A');
RESET ROLE;
ALTER ROLE alice SET search_path = alice_s, pg_catalog, public;
});
is($node->safe_psql('postgres', "SET search_path = alice_s, pg_catalog, public; SELECT 1 = 1"),
	't', 'the planted operator works where it is first in search_path');
$node->safe_psql('postgres', "TRUNCATE public.planted_log");

my $sp = "SET search_path = alice_s, pg_catalog, public;";
$node->safe_psql('postgres', "SET ROLE alice; $sp
	SELECT mig_expand('t_ab', 'v', up => 'lower(v)');
	SELECT mig_abort('t_ab');");
$node->safe_psql('postgres', "SET ROLE alice; $sp
	SELECT mig_expand('t', 'v', up => 'lower(v)');
	INSERT INTO t VALUES (0, 'ZERO');
	SELECT mig_backfill('t', batch_size => 100, sleep_ms => 40);
	SELECT mig_set('t', 'sleep_ms', '30');");
my $tj = job('t');
$node->poll_query_until('postgres', "SELECT ($tj).rows_done >= 300")
  or die "the backfill did not get going";

# the launcher resumes it after a restart, alice's ALTER ROLE setting and all
$node->restart;
$node->poll_query_until('postgres', "SELECT ($tj).state <> 'interrupted'")
  or die "the launcher did not resume the job";
like(slurp_file($node->logfile), qr/resuming backfill job/,
	'the launcher resumed the job after the restart, under the ALTER ROLE setting');
$node->safe_psql('postgres', "SET ROLE alice; $sp SELECT mig_set('t', 'sleep_ms', '0');");
is(wait_job_done('t'), 'done', 'the backfill started under a shadowing search_path is done');
$node->safe_psql('postgres', "SET ROLE alice; $sp
	SELECT mig_wait('t');
	SELECT count(*) FROM mig_validate('t') WHERE NOT passed;
	SELECT mig_cutover('t');");
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE relid = 't'::regclass"),
	'cutover', 'expand, backfill, set, wait, validate and cutover all completed');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE relid = 't_ab'::regclass"),
	'aborted', 'expand and abort completed');
is($node->safe_psql('postgres', "SELECT count(*) FROM t WHERE _mig_new_v IS DISTINCT FROM lower(v)"),
	'0', 'every row backfilled');
is($node->safe_psql('postgres', "SELECT coalesce(string_agg(DISTINCT what || ' by ' || by_role, ', '), 'none') FROM public.planted_log"),
	'none', 'no planted function or operator ever ran, in a session, a worker or the launcher');

# 2. SET ROLE start, and a trigger that tries to leave the role
$node->safe_psql('postgres', q{
SET ROLE bob;
CREATE TABLE public.t2 (id int PRIMARY KEY, v text);
INSERT INTO public.t2 SELECT g, 'V' || g FROM generate_series(1, 500) g;
CREATE TABLE public.t2_log (msg text);
CREATE FUNCTION public.t2_escape() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		RESET ROLE;
		INSERT INTO public.t2_log VALUES ('RESET ROLE worked: now ' || current_user);
	EXCEPTION WHEN OTHERS THEN
		INSERT INTO public.t2_log VALUES ('reset refused: ' || SQLERRM);
	END;
	BEGIN
		ALTER ROLE bob SUPERUSER;
		INSERT INTO public.t2_log VALUES ('ALTER ROLE worked');
	EXCEPTION WHEN OTHERS THEN
		INSERT INTO public.t2_log VALUES ('alter refused: ' || SQLERRM);
	END;
	RETURN NEW;
END $$;
CREATE TRIGGER t2_escape BEFORE UPDATE ON public.t2 FOR EACH ROW EXECUTE FUNCTION public.t2_escape();
});
$node->safe_psql('postgres', "SET ROLE bob; SELECT mig_expand('t2', 'v', up => 'upper(v)'); RESET ROLE;
	SET ROLE bob; SELECT mig_backfill('t2', batch_size => 100, fire_triggers => true);");
is(wait_job_done('t2'), 'done', 'the backfill started by a superuser under SET ROLE is done');
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'bob'"),
	'f', 'the owner is still not a superuser');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.t2_log WHERE msg LIKE '%worked%'"),
	'0', 'neither RESET ROLE nor ALTER ROLE worked from the trigger');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM public.t2_log WHERE msg LIKE 'reset refused: cannot set parameter \"role\"%'"),
	'>', 0, 'RESET ROLE was refused inside the owner switch (the trigger fired)');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM public.t2_log WHERE msg LIKE 'alter refused: must be superuser%'"),
	'>', 0, 'ALTER ROLE SUPERUSER was refused: the trigger ran as the owner, not as the superuser');
is($node->safe_psql('postgres', "SELECT count(*) FROM t2 WHERE _mig_new_v IS DISTINCT FROM upper(v)"),
	'0', 'every row of t2 backfilled');

# 3. FORCE ROW LEVEL SECURITY hiding half the rows from the owner
$node->safe_psql('postgres', q{
SET ROLE carol;
CREATE TABLE public.t3 (id int PRIMARY KEY, v text);
INSERT INTO public.t3 SELECT g, 'V' || g FROM generate_series(1, 1000) g;
CREATE POLICY even ON public.t3 USING (id % 2 = 0);
ALTER TABLE public.t3 ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.t3 FORCE ROW LEVEL SECURITY;
});
is($node->safe_psql('postgres', "SET ROLE carol; SELECT count(*) FROM t3"), '500',
	'the policy hides half the rows from the owner');
$node->safe_psql('postgres', "SET ROLE carol; SELECT mig_expand('t3', 'v', up => 'lower(v)');
	SELECT mig_backfill('t3', batch_size => 100);");
is(wait_job_done('t3'), 'done', 'the backfill of the FORCE RLS table is done');
is($node->safe_psql('postgres', "SELECT count(*) FROM t3 WHERE _mig_new_v IS DISTINCT FROM lower(v)"),
	'0', 'the backfill wrote every row, hidden ones too');
$node->safe_psql('postgres', "ALTER TABLE t3 DISABLE TRIGGER zz_migrate_ext_dualwrite; UPDATE t3 SET _mig_new_v = 'wrong' WHERE id = 7; ALTER TABLE t3 ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite");
is($node->safe_psql('postgres', "SET ROLE carol; SELECT passed FROM mig_validate('t3') WHERE check_name LIKE 'new_equals_up%'"),
	'f', 'validation sees a wrong row the policy hides');
$node->safe_psql('postgres', "ALTER TABLE t3 DISABLE TRIGGER zz_migrate_ext_dualwrite; UPDATE t3 SET _mig_new_v = lower(v) WHERE id = 7; ALTER TABLE t3 ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite");
is($node->safe_psql('postgres', "SET ROLE carol; SELECT bool_and(passed) FROM mig_validate('t3')"),
	't', 'and passes once it is right');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE relid = 't3'::regclass"),
	'validated', 'the FORCE RLS table is validated');

# 4. a NOLOGIN owner's job
$node->safe_psql('postgres', q{
SET ROLE nolog;
CREATE TABLE public.t4 (id int PRIMARY KEY, v text);
INSERT INTO public.t4 SELECT g, 'V' || g FROM generate_series(1, 500) g;
SELECT mig_expand('t4', 'v', up => 'lower(v)');
SELECT mig_backfill('t4', batch_size => 100);
});
is(wait_job_done('t4'), 'done', "a NOLOGIN owner's job runs");
is($node->safe_psql('postgres', "SELECT count(*) FROM t4 WHERE _mig_new_v IS DISTINCT FROM lower(v)"),
	'0', 'every row of t4 backfilled');

# 5. ALTER ROLE ... SET lock_timeout does not kill the worker's set-up
$node->safe_psql('postgres', q{
CREATE ROLE dave LOGIN;
GRANT CREATE ON SCHEMA public TO dave;
ALTER ROLE dave SET lock_timeout = '1ms';
});
$node->safe_psql('postgres', q{
SET ROLE dave;
CREATE TABLE public.t5 (id int PRIMARY KEY, v text);
INSERT INTO public.t5 SELECT g, 'V' || g FROM generate_series(1, 500) g;
SELECT mig_expand('t5', 'v', up => 'lower(v)');
});
# the worker waits for this transaction (its start gate) longer than 1 ms
$node->psql('postgres', "SET lock_timeout = 0; BEGIN;
	SELECT mig_backfill('t5', batch_size => 100); SELECT pg_sleep(0.5); COMMIT;",
	connstr => $node->connstr('postgres') . ' user=dave');
is(wait_job_done('t5'), 'done', "the job of a role with lock_timeout = 1ms completes");
is($node->safe_psql('postgres', "SELECT count(*) FROM t5 WHERE _mig_new_v IS DISTINCT FROM lower(v)"),
	'0', 'every row of t5 backfilled');

# 6. mig_contract's SET NOT NULL of the new column proves itself from the
#    table's CHECK constraints, which PostgreSQL simplifies as the role that
#    runs the statement, calling an owner's function there with constant
#    arguments (here an "immutable" one calling a volatile one).  Run by a
#    superuser, and by a superuser under SET ROLE owner: the function runs
#    as the owner, restricted; neither RESET ROLE nor ALTER ROLE ...
#    SUPERUSER works from it, and the contract completes.
$node->safe_psql('postgres', q{
CREATE ROLE erin LOGIN;
GRANT CREATE ON SCHEMA public TO erin;
});
# set up by erin herself: under a superuser's SET ROLE erin, her CHECK
# would RESET ROLE in that session already, as any trigger of hers could
$node->safe_psql('postgres', q{
CREATE TABLE public.t6_log (msg text);
CREATE FUNCTION public.t6_grab() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	INSERT INTO public.t6_log VALUES ('ran as ' || current_user);
	BEGIN
		RESET ROLE;
		INSERT INTO public.t6_log VALUES ('RESET ROLE worked: now ' || current_user);
	EXCEPTION WHEN OTHERS THEN NULL;
	END;
	BEGIN
		ALTER ROLE erin SUPERUSER;
		INSERT INTO public.t6_log VALUES ('ALTER ROLE worked');
	EXCEPTION WHEN OTHERS THEN NULL;
	END;
	RETURN true;
END $$;
CREATE FUNCTION public.t6_ok(int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	RETURN public.t6_grab();
END $$;
CREATE TABLE public.t6 (id int PRIMARY KEY, v int, CONSTRAINT t6_v CHECK (public.t6_ok(1) AND v > 0));
CREATE TABLE public.t7 (id int PRIMARY KEY, v int, CONSTRAINT t7_v CHECK (public.t6_ok(1) AND v > 0));
INSERT INTO public.t6 SELECT g, g FROM generate_series(1, 200) g;
INSERT INTO public.t7 SELECT g, g FROM generate_series(1, 200) g;
SELECT mig_expand('t6', 'id', type => 'bigint');
SELECT mig_expand('t7', 'id', type => 'bigint');
UPDATE public.t6 SET v = v;
UPDATE public.t7 SET v = v;
SELECT count(*) FROM mig_validate('t6');
SELECT count(*) FROM mig_validate('t7');
SELECT mig_cutover('t6');
SELECT mig_cutover('t7');
TRUNCATE public.t6_log;
}, extra_params => [ '-U', 'erin' ]);
$node->safe_psql('postgres', "SET client_min_messages = warning; SELECT mig_contract('t6')");
$node->safe_psql('postgres', "SET client_min_messages = warning; SET ROLE erin; SELECT mig_contract('t7')");
is($node->safe_psql('postgres', "SELECT string_agg(DISTINCT msg, ', ') FROM public.t6_log"),
	'ran as erin', "the owner's function ran at the contracts' SET NOT NULL, as the owner, and RESET ROLE and ALTER ROLE did not work");
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'erin'"),
	'f', 'the owner is still not a superuser');
is($node->safe_psql('postgres', q{SELECT string_agg(attrelid::regclass || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull, ', ' ORDER BY attrelid::regclass::text)
	FROM pg_attribute WHERE attrelid IN ('t6'::regclass, 't7'::regclass) AND attname = 'id'}),
	't6 bigint true, t7 bigint true', 'both contracts completed: id is a NOT NULL bigint');

$node->stop;
done_testing();
