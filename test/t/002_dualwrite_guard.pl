# The pair never diverges and the server never crashes (issue 9):
#  - the backfill's "do not propagate" applies only to its own batch UPDATE
#    of its own table: an AFTER UPDATE trigger of the backfilled table that
#    updates a second migrating table, or the table itself, loses nothing;
#  - DROP COLUMN / ALTER COLUMN TYPE of a protected column is refused, and
#    if the protection is removed behind migrate_ext's back the trigger
#    re-checks the column types when it rebuilds its cache and fails cleanly
#    instead of storing a wrong-typed value or crashing;
#  - a logical-replication-style session (session_replication_role =
#    replica) still goes through the trigger;
#  - no backend died of a signal.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('guard');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'migrate_ext'");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION migrate_ext;
	-- b: a counter table with its own migration; new-version clients write both sides
	CREATE TABLE b (id int PRIMARY KEY, n int);
	SELECT mig_expand('b', 'n', type => 'bigint');
	INSERT INTO b VALUES (1, 0);
	-- a: backfilled; every row it updates bumps b's counter
	CREATE TABLE a (id int PRIMARY KEY, v int);
	INSERT INTO a SELECT g, g FROM generate_series(1, 1000) g;
	CREATE FUNCTION a_bump() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		UPDATE public.b SET n = n + 1, _mig_new_n = _mig_new_n + 1 WHERE id = 1;
		RETURN NULL;
	END $$;
	CREATE TRIGGER a_bump AFTER UPDATE ON a FOR EACH ROW EXECUTE FUNCTION a_bump();
	SELECT mig_expand('a', 'v', type => 'bigint');
	-- c: backfilled; every row it updates bumps a counter row of c itself
	CREATE TABLE c (id int PRIMARY KEY, v int, hits int NOT NULL DEFAULT 0);
	INSERT INTO c SELECT g, g FROM generate_series(0, 500) g;
	CREATE FUNCTION c_bump() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF pg_trigger_depth() = 1 AND NEW.id <> 0 THEN
			UPDATE public.c SET hits = hits + 1, _mig_new_v = _mig_new_v WHERE id = 0;
		END IF;
		RETURN NULL;
	END $$;
	CREATE TRIGGER c_bump AFTER UPDATE ON c FOR EACH ROW EXECUTE FUNCTION c_bump();
	SELECT mig_expand('c', 'v', type => 'bigint');
	UPDATE c SET v = v WHERE id = 0;	-- the counter row is right before the backfill
});

# fire_triggers: by default the backfill fires none of the table's other triggers
$node->safe_psql('postgres', q{SELECT mig_backfill('a', batch_size => 100, fire_triggers => true)});
is($node->safe_psql('postgres', q{SELECT mig_wait('a', '120s')}), 'done', 'backfill of a done');
is($node->safe_psql('postgres', q{SELECT n || ',' || _mig_new_n FROM b}), '1000,1000',
	'a trigger updating another migrating table during a backfill loses no update');

$node->safe_psql('postgres', q{SELECT mig_backfill('c', batch_size => 50, fire_triggers => true)});
is($node->safe_psql('postgres', q{SELECT mig_wait('c', '120s')}), 'done', 'backfill of c done');
is($node->safe_psql('postgres', q{SELECT hits FROM c WHERE id = 0}), '500',
	'a trigger updating its own table during a backfill loses no update');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM c WHERE _mig_new_v IS DISTINCT FROM v::bigint}), '0',
	'no row of c diverged');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM a WHERE _mig_new_v IS DISTINCT FROM v::bigint}), '0',
	'no row of a diverged');

# replica role: the trigger is ENABLE ALWAYS
$node->safe_psql('postgres', q{
	SET session_replication_role = replica;
	UPDATE a SET v = -v WHERE id <= 10;
});
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM a WHERE _mig_new_v IS DISTINCT FROM v::bigint}), '0',
	'writes under session_replication_role = replica are dual-written');

# a retype of a protected column is refused, naming the migration and mig_abort
my $session = $node->background_psql('postgres', on_error_stop => 0);
my ($ret, $out, $err) = $node->psql('postgres', q{ALTER TABLE a ALTER COLUMN _mig_new_v TYPE text});
isnt($ret, 0, 'ALTER COLUMN TYPE of the new column refused');
like($err, qr/uses it.*mig_abort/s, '... naming the migration and mig_abort');
($ret, $out, $err) = $node->psql('postgres', q{ALTER TABLE a DROP COLUMN v});
like($err, qr/cannot drop column "v"/, 'DROP COLUMN of the old column refused');

# the protection removed behind migrate_ext's back: the cached trigger of a
# live session, and a fresh one, fail cleanly
$session->query_safe(q{INSERT INTO a VALUES (2001, 2001)});
$node->safe_psql('postgres', q{
	ALTER EVENT TRIGGER migrate_ext_guard_start DISABLE;
	DELETE FROM pg_depend WHERE classid = 'pg_trigger'::regclass AND objid IN
		(SELECT oid FROM pg_trigger WHERE tgname = 'zz_migrate_ext_dualwrite');
	ALTER TABLE a ALTER COLUMN _mig_new_v TYPE text;
	ALTER TABLE b ALTER COLUMN n TYPE text;
	ALTER EVENT TRIGGER migrate_ext_guard_start ENABLE;
});
$out = $session->query(q{INSERT INTO a VALUES (2002, 2002)});
like($session->{stderr}, qr/changed type since the migration began/,
	'a cached session fails cleanly after the new column was retyped');
($ret, $out, $err) = $node->psql('postgres', q{INSERT INTO a VALUES (2003, 2003)});
like($err, qr/column "_mig_new_v" of table "a" changed type/, 'so does a new session');
($ret, $out, $err) = $node->psql('postgres', q{UPDATE b SET n = '5'});
like($err, qr/column "n" of table "b" changed type/, 'retyped old column: clean error');
$session->{stderr} = '';
is($session->query_safe(q{SELECT 1}), '1', 'the session survives');
$session->quit;
is($node->safe_psql('postgres', q{SELECT count(*) FROM a WHERE id > 2001}), '0',
	'no row stored with a wrong type');

ok(!$node->log_contains(qr/terminated by signal/), 'no backend crashed');
$node->stop;
done_testing();
