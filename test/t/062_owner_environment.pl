# User code runs in the owner's environment; migrate_ext's own SQL stays
# pinned (issue 8, the last must-hold).
#
#  1. The owner's ALTER ROLE ... SET search_path = app, public: an audit
#     trigger with unqualified names and no SET search_path of its own, and
#     an up calling an immutable function that calls an unqualified helper,
#     work in the backfill worker (fire_triggers), in mig_validate and in
#     mig_preflight, whether the job is started by the owner or by a
#     superuser under SET ROLE.
#  2. Attack: another role with CREATE on public plants exact-match
#     operators and functions there that the generated SQL would bind by
#     name (=, <, <=, >, upper(text)), and the owner's path puts public
#     before pg_catalog.  None is ever called, nobody becomes superuser, and
#     the backfill, validation and preflight complete with the right data.
#  3. The contract worker takes the owner's role settings: a CHECK whose
#     function reads a custom setting the owner's role carries is validated
#     there, though the contract was started by a superuser under SET ROLE;
#     an old column's CHECK with an unqualified lookup is predicted by
#     mig_validate and validated by the contract worker.
#  4. Settings the owner's code changes (set_config(..., false)) do not
#     outlive the statement that ran it.
#  5. An owner's ALTER ROLE ... SET role does not change a worker's role.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('owner_env', setup => q{
CREATE TABLE public.planted_log (what text, by_role name);
GRANT INSERT, SELECT ON public.planted_log TO PUBLIC;
CREATE ROLE app_owner LOGIN;
CREATE ROLE mallory LOGIN;
CREATE ROLE victim LOGIN;
CREATE ROLE dba LOGIN SUPERUSER;
-- the login role's own database-specific path, which the owner's must beat
ALTER ROLE dba IN DATABASE postgres SET search_path = pg_catalog, public;
GRANT CREATE ON SCHEMA public TO mallory, victim;
CREATE SCHEMA app AUTHORIZATION app_owner;
ALTER ROLE app_owner SET search_path = app, public;
ALTER ROLE app_owner SET app.max_len = '40';
});

sub as_owner
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', 'app_owner' ]);
}

# 1. the owner's environment
as_owner(q{
CREATE TABLE items (id int PRIMARY KEY, v text);
CREATE TABLE audit (item_id int, note text);
CREATE TABLE codes (k text PRIMARY KEY, label text);
INSERT INTO codes VALUES ('a', 'Alpha'), ('b', 'Beta');
INSERT INTO items SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, 500) g;
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO audit VALUES (NEW.id, 'updated');
	RETURN NEW;
END $$;
CREATE TRIGGER items_audit AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE FUNCTION label_of(k text) RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
	RETURN (SELECT label FROM codes WHERE codes.k = label_of.k);
END $$;
CREATE FUNCTION describe(k text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	RETURN k || ':' || label_of(k);
END $$;
CREATE FUNCTION short_enough(s text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	RETURN length(s) <= current_setting('app.max_len')::int;
END $$;
});

is(as_owner(q{SELECT string_agg(check_name || ': ' || detail, ',') FROM mig_preflight('items', 'v', up => 'app.describe(v)',
	check_expr => 'app.short_enough(_mig_new_v)') WHERE NOT passed}),
	'', 'mig_preflight evaluates an up whose function looks things up unqualified');

as_owner(q{
SELECT mig_expand('items', 'v', new_col => 'v_desc', up => 'app.describe(v)',
	check_expr => 'app.short_enough(v_desc)');
SELECT mig_backfill('items', batch_size => 50, fire_triggers => true);
});
is(wait_job_ended($node, 'app.items'), 'done',
	'the backfill with an unqualified audit trigger and lookup completes');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT item_id) FROM app.audit}),
	'500|500', 'the audit trigger wrote a row for every row backfilled');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM app.items WHERE v_desc IS DISTINCT FROM v || ':' || CASE v WHEN 'a' THEN 'Alpha' ELSE 'Beta' END}),
	'0', 'every row has its looked-up value');
is(as_owner(q{SELECT string_agg(check_name, ',') FROM mig_validate('items') WHERE NOT passed}),
	'', 'mig_validate runs the lookup under the owner\'s search_path');

# the same, started by a superuser under SET ROLE: the worker logs in as the
# superuser and takes the owner's settings, over the superuser's own
# ALTER ROLE dba IN DATABASE ... SET search_path
as_owner(q{
CREATE TABLE items2 (id int PRIMARY KEY, v text);
INSERT INTO items2 SELECT g, 'a' FROM generate_series(1, 200) g;
CREATE TRIGGER items2_audit AFTER UPDATE ON items2 FOR EACH ROW EXECUTE FUNCTION audit_row();
});
$node->safe_psql('postgres', q{
SET ROLE app_owner;
SELECT public.mig_expand('app.items2', 'v', new_col => 'v_desc', up => 'app.describe(v)');
SELECT public.mig_backfill('app.items2', batch_size => 50, fire_triggers => true);
}, extra_params => [ '-U', 'dba' ]);
is(wait_job_ended($node, 'app.items2'), 'done',
	'a backfill started under SET ROLE runs the owner\'s code under the owner\'s search_path');
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.audit WHERE item_id <= 200}),
	'400', 'its audit rows are there too');

# 3. the contract worker takes the owner's role settings: the CHECK's
#    function reads app.max_len, which only the owner's role carries (the
#    worker logs in as the superuser that started it)
$node->safe_psql('postgres', q{
SET ROLE app_owner;
SET app.max_len = '40';
SELECT mig_cutover('app.items');
});
my ($ret, $out, $err) = $node->psql('postgres', q{
SET ROLE app_owner;
SELECT mig_contract('app.items');
});
is($ret, 0, 'the contract worker validates a CHECK that reads an owner role setting')
	or diag($err);
is($node->safe_psql('postgres', q{SELECT convalidated FROM pg_constraint
	WHERE conrelid = 'app.items'::regclass AND contype = 'c'}),
	't', 'the CHECK is validated');

# 3b. a CHECK of the old column whose function looks a table up unqualified:
#     mig_validate's prediction re-states it on the new column, and the
#     contract worker validates the copy, both under the owner's path
as_owner(q{
CREATE FUNCTION is_known(s text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	RETURN EXISTS (SELECT 1 FROM codes WHERE codes.k = s);
END $$;
CREATE TABLE items3 (id int PRIMARY KEY, v text CONSTRAINT v_known CHECK (is_known(v)));
INSERT INTO items3 SELECT g, 'a' FROM generate_series(1, 100) g;
SELECT mig_expand('items3', 'v', type => 'varchar(10)');
SELECT mig_backfill('items3', batch_size => 50);
});
is(wait_job_ended($node, 'app.items3'), 'done', 'the in-place backfill is done');
is(as_owner(q{SELECT string_agg(check_name || ': ' || detail, ',') FROM mig_validate('items3') WHERE NOT passed}),
	'', "the prediction of the re-stated CHECK runs its lookup under the caller's search_path");
($ret, $out, $err) = $node->psql('postgres', q{
SET ROLE app_owner;
SELECT mig_cutover('app.items3');
SELECT mig_contract('app.items3');
});
is($ret, 0, "the contract worker validates the re-stated CHECK under the owner's search_path")
	or diag($err);
is($node->safe_psql('postgres', q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute
	WHERE attrelid = 'app.items3'::regclass AND attname = 'v'}),
	'character varying(10)', 'the column has its new type');

# 4. settings the owner's code changes end with the statement that ran it:
#    an up that sets search_path and a custom setting for the session
#    leaves nothing behind in the caller's session
as_owner(q{
CREATE FUNCTION leaky(s text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	PERFORM pg_catalog.set_config('app.leak', 'yes', false);
	PERFORM pg_catalog.set_config('search_path', 'public, pg_catalog', false);
	RETURN s;
END $$;
CREATE TABLE items4 (id int PRIMARY KEY, v text);
INSERT INTO items4 SELECT g, 'a' FROM generate_series(1, 10) g;
SELECT mig_expand('items4', 'v', new_col => 'v2', up => 'app.leaky(v)');
});
is($node->safe_psql('postgres', q{
SET ROLE app_owner;
SELECT count(*) > 0 FROM mig_validate('app.items4');
SELECT count(*) > 0 FROM mig_preflight('app.items4', 'v', up => 'app.leaky(v)');
RESET ROLE;
SELECT coalesce(current_setting('app.leak', true), '') || '|' || current_setting('search_path');
}), "t\nt\n|" . '"$user", public', "the owner's code leaves no setting behind in the caller's session");

# 5. an owner's ALTER ROLE ... SET role = <a superuser> (which her own logins
#    refuse) does not change who a worker that logged in as a superuser is
$node->safe_psql('postgres', q{
CREATE ROLE sneaky LOGIN;
CREATE TABLE public.st (id int PRIMARY KEY, v text);
ALTER TABLE public.st OWNER TO sneaky;
INSERT INTO public.st SELECT g, 'x' FROM generate_series(1, 100) g;
SET ROLE sneaky;
ALTER ROLE sneaky SET role = 'dba';
});
$node->safe_psql('postgres', q{
SET ROLE sneaky;
SELECT public.mig_expand('public.st', 'v', new_col => 'v2', up => 'pg_catalog.upper(v)');
SELECT public.mig_backfill('public.st', batch_size => 50);
}, extra_params => [ '-U', 'dba' ]);
is(wait_job_ended($node, 'public.st'), 'done', 'the backfill of the sneaky owner is done');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT by_role, ',') FROM migrate_ext.phase_log l
	JOIN migrate_ext.migration m ON m.id = l.migration_id WHERE m.relid = 'public.st'::regclass}),
	'sneaky', "the worker stays the owner: a role setting cannot make it the superuser it logged in as");

# 2. attack: planted operators and functions in public, the victim's path
#    putting public before pg_catalog
$node->safe_psql('postgres', q{
SET ROLE mallory;
CREATE FUNCTION public.p_eq_text(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.planted_log VALUES ('= text', current_user);
	BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
	RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE FUNCTION public.p_cmp_int(int, int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.planted_log VALUES ('int comparison', current_user);
	BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
	RETURN true;
END $$;
CREATE FUNCTION public.upper(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.planted_log VALUES ('upper', current_user);
	BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
	RETURN pg_catalog.upper($1);
END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.p_eq_text);
CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = int, FUNCTION = public.p_cmp_int);
CREATE OPERATOR public.< (LEFTARG = int, RIGHTARG = int, FUNCTION = public.p_cmp_int);
CREATE OPERATOR public.<= (LEFTARG = int, RIGHTARG = int, FUNCTION = public.p_cmp_int);
CREATE OPERATOR public.> (LEFTARG = int, RIGHTARG = int, FUNCTION = public.p_cmp_int);
CREATE OPERATOR public.>= (LEFTARG = int, RIGHTARG = int, FUNCTION = public.p_cmp_int);
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;
RESET ROLE;
CREATE TABLE public.vt (id int PRIMARY KEY, v text);
ALTER TABLE public.vt OWNER TO victim;
INSERT INTO public.vt SELECT g, 'v' || g FROM generate_series(1, 1000) g;
-- rows already right: a rerun's filter compares them with IS DISTINCT FROM
ALTER ROLE victim SET search_path = public, pg_catalog;
});
my $victim = sub {
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', 'victim' ]);
};
is($victim->(q{SELECT pg_catalog.count(*) FROM mig_preflight('public.vt', 'v',
	up => 'pg_catalog.upper(v)') WHERE NOT passed}), '0', 'preflight under the hostile path passes');
$victim->(q{
SELECT mig_expand('public.vt', 'v', new_col => 'v_up', up => 'pg_catalog.upper(v)');
SELECT mig_backfill('public.vt', batch_size => 100);
});
is(wait_job_ended($node, 'public.vt'), 'done', 'the backfill under the hostile path is done');
# a second job: the filter now compares values that are all right
$victim->(q{SELECT mig_backfill('public.vt', batch_size => 100)});
is(wait_job_ended($node, 'public.vt'), 'done', 'a rerun under the hostile path is done');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM public.vt WHERE v_up IS DISTINCT FROM upper(v)}),
	'0', 'the data is right');
is($victim->(q{SELECT pg_catalog.count(*) FROM mig_validate('public.vt') WHERE NOT passed}),
	'0', 'validation under the hostile path passes');
is($node->safe_psql('postgres', q{SELECT count(*) FROM public.planted_log}),
	'0', 'no planted operator or function was ever called');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_roles WHERE rolsuper AND rolname IN ('mallory', 'victim', 'app_owner')}),
	'0', 'nobody became superuser');

done_testing();
