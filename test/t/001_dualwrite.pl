# The dual-write trigger across sessions and server set-ups:
#  - a long-lived session's cached trigger state follows DDL done by another
#    session (a pair added, the migration aborted);
#  - the library works loaded on demand, without shared_preload_libraries;
#  - a NOLOGIN role that owns the table, reached with SET ROLE, can migrate it;
#  - pg_dump keeps the migration catalog (pg_extension_config_dump).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('plain');
$node->init;
# deliberately NOT preloaded: the trigger must load the library itself
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION migrate_ext;
	CREATE TABLE users (id int PRIMARY KEY, email text, name text);
	INSERT INTO users VALUES (1, 'A@X', 'Ann Lee');
	SELECT mig_expand('users', 'email', up => 'lower(email)');
});

# a session that has already run the trigger, and so cached its state
my $writer = $node->background_psql('postgres');
$writer->query_safe(q{INSERT INTO users VALUES (2, 'B@X', 'Bob Ray')});
is($node->safe_psql('postgres', 'SELECT _mig_new_email FROM users WHERE id = 2'),
	'b@x', 'trigger works with the library loaded on demand');

# another session adds a second pair to the same migration
$node->safe_psql('postgres', q{
	SELECT mig_expand('users', 'name', new_col => 'first_name', up => 'split_part(name, '' '', 1)');
});
$writer->query_safe(q{INSERT INTO users VALUES (3, 'C@X', 'Cy Doe')});
is($node->safe_psql('postgres', q{SELECT _mig_new_email || ',' || first_name FROM users WHERE id = 3}),
	'c@x,Cy', 'the cached session picks up a pair added by another session');

# another session replaces a function the up expression inlined
$node->safe_psql('postgres', q{
	CREATE TABLE t2 (id int PRIMARY KEY, v text);
	CREATE FUNCTION norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower($1)';
	SELECT mig_expand('t2', 'v', new_col => 'v2', up => 'norm(v)');
});
$writer->query_safe(q{INSERT INTO t2 VALUES (1, 'X')});
$node->safe_psql('postgres',
	q{CREATE OR REPLACE FUNCTION norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT upper($1)'});
$writer->query_safe(q{INSERT INTO t2 VALUES (2, 'y')});
is($node->safe_psql('postgres', q{SELECT string_agg(v2, ',' ORDER BY id) FROM t2}),
	'x,Y', 'the cached session recompiles after CREATE OR REPLACE FUNCTION');

# another session aborts: the cached session's writes go on, untouched
$node->safe_psql('postgres', q{SELECT mig_abort('users')});
$writer->query_safe(q{INSERT INTO users VALUES (4, 'D@X', 'Di Fox')});
is($node->safe_psql('postgres', q{SELECT email FROM users WHERE id = 4}),
	'D@X', 'writes after another session aborted the migration');
$writer->quit;

# a NOLOGIN owner role, reached with SET ROLE by a login role that is a member
$node->safe_psql('postgres', q{
	CREATE ROLE app_owner NOLOGIN;
	CREATE ROLE deployer LOGIN IN ROLE app_owner;
	CREATE TABLE owned (id int PRIMARY KEY, code text);
	ALTER TABLE owned OWNER TO app_owner;
	INSERT INTO owned VALUES (1, 'abc');
});
my ($ret, $out, $err) = $node->psql('postgres', q{
	SET ROLE app_owner;
	SELECT mig_expand('owned', 'code', up => 'upper(code)') > 0;
	INSERT INTO owned VALUES (2, 'def');
	SELECT _mig_new_code FROM owned WHERE id = 2;
}, extra_params => [ '-U', 'deployer' ]);
is($ret, 0, 'NOLOGIN owner via SET ROLE can expand') or diag($err);
like($out, qr/^t\nDEF$/m, 'and its writes are dual-written');
$node->safe_psql('postgres', q{CREATE ROLE outsider LOGIN; GRANT ALL ON owned TO outsider});
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT mig_expand('owned', 'id', type => 'bigint')},
	extra_params => [ '-U', 'outsider' ]);
like($err, qr/must be owner of table owned/, 'a role with every privilege but ownership is refused');

# pg_dump keeps the catalog rows (the audit trail)
my $dump = `pg_dump -p @{[ $node->port ]} -h @{[ $node->host ]} --data-only -t 'migrate_ext.*' postgres`;
like($dump, qr/COPY migrate_ext\.migration/, 'pg_dump dumps migrate_ext.migration');
like($dump, qr/public\.users\s+aborted/, 'with the aborted migration of users in it');

$node->stop;
done_testing();
