# Objects planted by an unprivileged role never run as anyone else through
# migrate_ext (issue 8, attack class 3 and the SQL face of class 1).
#
# With CREATE on public granted to everyone (as on databases upgraded from
# PostgreSQL 14 or older), a role plants, for every function the extension
# script calls and every operator it uses, same-named functions and
# operators that record being called: exact copies of every pg_catalog
# signature of each function, and each operator for every pair of the
# common types (so an exact match such as *(bigint, numeric) exists where
# pg_catalog's needs an implicit cast).  The lists are generated from the
# installed extension script.  Each planted function bumps a sequence
# (nextval survives the rollback of whatever called it) and logs itself.
#
#  1. planted in public before CREATE EXTENSION: the superuser creates the
#     extension, reads the status views, expands, backfills to completion,
#     validates; nothing planted ever ran and no extension object depends on
#     a planted one;
#  2. planted in the attacker's own schema after CREATE EXTENSION, with the
#     database's search_path (so every session and every worker) pointing
#     there first: the same, again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('planted');
$node->init;
$node->start;

my ($sharedir) = $node->config_data('--sharedir');
my $script = slurp_file("$sharedir/extension/migrate_ext--0.1.sql");
$script =~ s{/\*.*?\*/}{}gs;		# comments
$script =~ s{--[^\n]*}{}g;
my $code = $script;
$code =~ s{'(?:[^']|'')*'}{''}g;	# string literals

# Every name followed by "(" that pg_catalog has as a plain function.
my %called = map { lc($_) => 1 } ($code =~ /\b([A-Za-z_][A-Za-z0-9_]*)\s*\(/g);
# Every operator: written as OPERATOR(pg_catalog.X), or bare.
my %ops = map { $_ => 1 } ($code =~ /OPERATOR\(pg_catalog\.([^)]+)\)/g);
(my $bare = $code) =~ s/OPERATOR\(pg_catalog\.[^)]+\)//g;
$bare =~ s/::/ /g;
$bare =~ s/=>/ /g;
$ops{$_} = 1 for ($bare =~ m{([-+*/<>=~!@#%^&|`?]+)}g);
delete $ops{$_} for grep { !/^[-+*\/<>=~!@#%^&|`?]+$/ } keys %ops;
# and those every expression could reach for even if the script spelled none
$ops{$_} = 1 for qw(= <> < > <= >= + - * / || ~~);
my @types = ('smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision',
	'text', 'name', 'oid', '"char"', 'boolean', 'timestamp with time zone',
	'interval', 'text[]', 'jsonb', 'regclass');
my %cmp = map { $_ => 1 } qw(= <> < > <= >=);

$node->safe_psql('postgres', q{
CREATE ROLE attacker LOGIN;
CREATE DATABASE victim;
});
$node->safe_psql('victim', q{
GRANT CREATE ON SCHEMA public TO PUBLIC;	-- as PostgreSQL 14 and older had it
CREATE SCHEMA evil AUTHORIZATION attacker;
CREATE SEQUENCE public.trap_hits;
CREATE TABLE public.trap_log (what text, by_role name DEFAULT current_user);
ALTER SEQUENCE public.trap_hits OWNER TO attacker;
ALTER TABLE public.trap_log OWNER TO attacker;
GRANT ALL ON public.trap_hits, public.trap_log TO PUBLIC;
});

# Function names to copy: those the script calls that pg_catalog has.
my $names = join(',', map { "'$_'" } sort keys %called);
my @funcs = split /\n/, $node->safe_psql('victim', qq{
SET search_path = pg_catalog;
SELECT p.proname || '|' || pg_get_function_identity_arguments(p.oid) || '|' || pg_get_function_result(p.oid)
  FROM pg_proc p
 WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname IN ($names)
   AND p.prokind = 'f' AND NOT p.proretset
   AND NOT EXISTS (SELECT FROM unnest(p.proargtypes::oid[]) a
				   WHERE a IN ('internal'::regtype, 'cstring'::regtype, '"any"'::regtype))
   AND p.prorettype NOT IN ('internal'::regtype, 'cstring'::regtype, 'trigger'::regtype)
 ORDER BY 1});
cmp_ok(scalar(@funcs), '>=', 10, 'the script calls pg_catalog functions: ' . scalar(@funcs) . ' signatures to plant');
ok(exists $called{now} && exists $called{round}, 'now() and round() are among them');
ok($ops{'*'} && $ops{'/'} && $ops{'='}, 'and *, / and = among the operators');

# The trap: a plpgsql body that records the call and returns NULL.
sub trap_body
{
	my ($what) = @_;
	$what =~ s/'/''/g;
	return "LANGUAGE plpgsql AS \$\$BEGIN PERFORM pg_catalog.nextval('public.trap_hits'); "
	  . "INSERT INTO public.trap_log (what) VALUES ('$what'); RETURN NULL; END\$\$";
}

sub plant
{
	my ($schema) = @_;
	my @sql;
	my $n = 0;
	for my $f (@funcs)
	{
		my ($name, $args, $result) = split /\|/, $f, 3;
		push @sql, "CREATE FUNCTION $schema.$name($args) RETURNS $result "
		  . trap_body("$name($args)") . ";";
	}
	for my $op (sort keys %ops)
	{
		for my $l (@types)
		{
			for my $r (@types)
			{
				$n++;
				my $ret = $cmp{$op} ? 'boolean' : $l;
				push @sql,
				  "CREATE FUNCTION $schema.trap_op$n(l $l, r $r) RETURNS $ret "
				  . trap_body("$l $op $r") . ";",
				  "CREATE OPERATOR $schema.$op (FUNCTION = $schema.trap_op$n, "
				  . "LEFTARG = $l, RIGHTARG = $r);";
			}
		}
	}
	# one transaction; a signature the attacker may not create is skipped
	my $body = join("\n", map {
		(my $s = $_) =~ s/'/''/g;
		"BEGIN EXECUTE '$s'; EXCEPTION WHEN OTHERS THEN NULL; END;"
	} @sql);
	$node->safe_psql('victim', "SET ROLE attacker; DO \$plant\$BEGIN\n$body\nEND\$plant\$;");
	return $node->safe_psql('victim', qq{
SET search_path = pg_catalog;
SELECT (SELECT count(*) FROM pg_proc WHERE pronamespace = '$schema'::regnamespace
		  AND proowner = 'attacker'::regrole)
	 || ' ' || (SELECT count(*) FROM pg_operator WHERE oprnamespace = '$schema'::regnamespace
		  AND oprowner = 'attacker'::regrole)});
}

sub hits
{
	return $node->safe_psql('victim',
		"SET search_path = pg_catalog; SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.trap_hits");
}

# No extension object (view rule, default, constraint, index, function)
# depends on a function or operator the attacker owns.
sub bound_to_planted
{
	return $node->safe_psql('victim', q{
SET search_path = pg_catalog;
SELECT count(*) FROM pg_depend d
 WHERE ((d.refclassid = 'pg_proc'::regclass
		 AND d.refobjid IN (SELECT oid FROM pg_proc WHERE proowner = 'attacker'::regrole))
	 OR (d.refclassid = 'pg_operator'::regclass
		 AND d.refobjid IN (SELECT oid FROM pg_operator WHERE oprowner = 'attacker'::regrole)))
   AND NOT (d.classid = 'pg_operator'::regclass
			AND d.objid IN (SELECT oid FROM pg_operator WHERE oprowner = 'attacker'::regrole))});
}

# Expand, backfill to completion, validate, read everything: as a superuser,
# in a session with the database's search_path.  The test's own glue uses
# no unqualified operator (the planted ones would catch it, not migrate_ext).
sub migrate
{
	my ($tbl) = @_;
	my $eq = 'OPERATOR(pg_catalog.=)';
	my $gt = 'OPERATOR(pg_catalog.>)';
	return $node->safe_psql('victim', qq{
CREATE TABLE $tbl (id int PRIMARY KEY, v int);
INSERT INTO $tbl SELECT g, g FROM generate_series(1, 3000) g;
SELECT mig_expand('$tbl', 'v', type => 'bigint') $gt 0;
SELECT mig_backfill('$tbl', batch_size => 500) $gt 0;
SET client_min_messages = warning;
SELECT mig_wait('$tbl');
SELECT bool_and(passed) FROM mig_validate('$tbl');
SELECT phase, state, rows_done, percent FROM mig_status WHERE table_name $eq '$tbl';
SELECT phase, state FROM mig_progress('$tbl');
SELECT count(*) FROM mig_history WHERE table_name $eq '$tbl';
SELECT count(*) FROM migrate_ext.jobs j JOIN migrate_ext.column_pairs c ON j.relid $eq c.relid
 WHERE j.relid $eq '$tbl'::regclass AND j.lower_key IS NOT NULL AND c.up_src IS NULL;
SELECT mig_checklist('$tbl') IS NOT NULL;
SELECT count(*) FROM $tbl WHERE _mig_new_v IS NULL OR _mig_new_v OPERATOR(pg_catalog.<>) v::bigint;
});
}

my $expected = "t\nt\ndone\nt\nvalidated|done|3000|100.0\nvalidated|done\n1\n1\nt\n0";

# 1. planted in public before CREATE EXTENSION
my $planted = plant('public');
note("planted in public: $planted (functions operators)");
like($planted, qr/^\d{3,} \d{3,}$/, 'hundreds of functions and operators planted in public');
$node->safe_psql('victim', 'CREATE EXTENSION migrate_ext');
is(bound_to_planted(), '0', 'no extension object is bound to a planted function or operator');
is(migrate('t_before'), $expected,
	'superuser: status readable, backfill done, validated, every row right');
is(hits(), '0', 'no planted function ran')
  or diag($node->safe_psql('victim', 'SELECT what, by_role FROM public.trap_log'));

# 2. planted in the attacker's schema after CREATE EXTENSION, first in the
#    search_path of every session and worker of the database
$planted = plant('evil');
note("planted in evil: $planted (functions operators)");
$node->safe_psql('postgres',
	'ALTER DATABASE victim SET search_path = evil, pg_catalog, public');
is(migrate('t_after'), $expected,
	'with evil first in search_path: status readable, backfill done, validated');
is(hits(), '0', 'no planted function ran')
  or diag($node->safe_psql('victim', 'SELECT what, by_role FROM public.trap_log'));
is($node->safe_psql('victim', 'SELECT count(*) FROM mig_status'), '2',
	'mig_status still reads both migrations');

# the trap works: an unqualified call under this search_path does hit it
$node->safe_psql('victim', 'SELECT now()');
cmp_ok(hits(), '>', 0, 'an unqualified now() under that search_path runs the planted one');

$node->stop;
done_testing();
