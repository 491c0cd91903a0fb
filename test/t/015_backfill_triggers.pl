# The backfill changes nothing but the new column(s): on the shop fixture
# (an updated_at BEFORE UPDATE trigger and an audit AFTER trigger on
# shop.customer, foreign keys in and out) a default backfill fires none of
# the table's other triggers, a deferred constraint trigger included, and
# foreign keys stay enforced; abort leaves every other column as it was;
# fire_triggers => true (or mig_set) makes them fire.
use strict;
use warnings;
use File::Basename qw(dirname);
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fixture = dirname(__FILE__) . '/../fixtures/shop.sql';

my $node = PostgreSQL::Test::Cluster->new('bf_triggers');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'migrate_ext'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION migrate_ext');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', $fixture ],
	'the fixture loads');

# a deferred constraint trigger, and one ENABLE REPLICA, writing a log
$node->safe_psql('postgres', q{
	CREATE TABLE shop.trig_log (kind text, id int);
	CREATE FUNCTION shop.log_row() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO shop.trig_log VALUES (TG_ARGV[0], NEW.id);
		RETURN NULL;
	END $$;
	CREATE CONSTRAINT TRIGGER customer_deferred AFTER UPDATE ON shop.customer
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION shop.log_row('deferred');
	CREATE TRIGGER orders_updated_log AFTER UPDATE ON shop.orders
		FOR EACH ROW EXECUTE FUNCTION shop.log_row('orders');
});

# every column the application wrote, row by row
my $customer_cols = q{md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', id, email, name, phone,
	status, region_id, referred_by, loyalty_points, created_at, updated_at), ',' ORDER BY id))
	FROM shop.customer};
my $orders_cols = q{md5(string_agg(format('%s|%s|%s|%s|%s', id, customer_id, status, placed_at,
	updated_at), ',' ORDER BY id)) FROM shop.orders};
my $customers_before = $node->safe_psql('postgres', "SELECT $customer_cols");
my $orders_before = $node->safe_psql('postgres', "SELECT $orders_cols");

sub backfill
{
	my ($tbl, $args) = @_;
	$node->safe_psql('postgres', "SELECT mig_backfill('$tbl'$args)");
	is(wait_job_ended($node, $tbl), 'done', "the backfill of $tbl$args is done");
}

# --- default: no other trigger fires ---
$node->safe_psql('postgres', q{
	SELECT mig_expand('shop.customer', 'email', type => 'text', up => 'lower(email)');
	SELECT mig_expand('shop.orders', 'status', type => 'varchar(20)', up => 'upper(status)');
});
backfill('shop.customer', ', batch_size => 500');
backfill('shop.orders', '');
is($node->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE _mig_new_email IS NOT DISTINCT FROM lower(email)) FROM shop.customer}),
	'3000', 'every customer backfilled');
is($node->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE _mig_new_status IS NOT DISTINCT FROM upper(status)) FROM shop.orders}),
	'6000', 'every order backfilled');
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.customer WHERE updated_at <> '2024-01-01 00:00:00+00'}),
	'0', 'updated_at of no customer changed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.orders WHERE updated_at <> '2024-01-01 00:00:00+00'}),
	'0', 'updated_at of no order changed');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.audit'), '0', 'the audit trail got no backfill rows');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.trig_log'), '0',
	'neither the deferred constraint trigger nor the plain AFTER trigger fired');
is($node->safe_psql('postgres', "SELECT $customer_cols"), $customers_before, 'every other customer column as it was');
is($node->safe_psql('postgres', "SELECT (" . job_row('shop.customer') . ").fire_triggers"), 'f',
	'the job row says triggers were skipped');

# the batches' session_replication_role did not leak: foreign keys hold,
# client writes fire the triggers, and the trigger keeps the pair in step
my ($ret, $out, $err) = $node->psql('postgres',
	q{INSERT INTO shop.orders (id, customer_id, placed_at) VALUES (99999, 424242, now())});
like($err, qr/violates foreign key constraint/, 'foreign key from orders still enforced');
($ret, $out, $err) = $node->psql('postgres', q{DELETE FROM shop.product WHERE id = 1});
like($err, qr/violates foreign key constraint/, 'foreign key to product still enforced');
$node->safe_psql('postgres', q{UPDATE shop.customer SET email = 'New@Example.com' WHERE id = 1});
is($node->safe_psql('postgres', q{SELECT _mig_new_email, updated_at > '2024-01-02' FROM shop.customer WHERE id = 1}),
	'new@example.com|t', 'a client write fires updated_at and dual-write');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.audit'), '1', 'and the audit trigger');
is($node->safe_psql('postgres', q{SELECT string_agg(kind, ',') FROM shop.trig_log}), 'deferred',
	'and the deferred constraint trigger, at commit');

# --- abort leaves every other column exactly as the application left it ---
$node->safe_psql('postgres', q{
	SELECT mig_abort('shop.customer');
	SELECT mig_abort('shop.orders');
	SET session_replication_role = replica;
	UPDATE shop.customer SET updated_at = '2024-01-01 00:00:00+00', email = 'customer1@example.com' WHERE id = 1;
	RESET session_replication_role;
	TRUNCATE shop.audit, shop.trig_log;
});
is($node->safe_psql('postgres', "SELECT $customer_cols"), $customers_before, 'after abort: customers unchanged');
is($node->safe_psql('postgres', "SELECT $orders_cols"), $orders_before, 'after abort: orders unchanged');

# --- fire_triggers => true: they fire, as a plain UPDATE would ---
$node->safe_psql('postgres',
	q{SELECT mig_expand('shop.customer', 'email', type => 'text', up => 'lower(email)')});
backfill('shop.customer', ', fire_triggers => true');
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.customer WHERE updated_at = '2024-01-01 00:00:00+00'}),
	'0', 'fire_triggers: updated_at set on every customer');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT row_id) FROM shop.audit WHERE op = 'UPDATE'}),
	'3000|3000', 'fire_triggers: one audit row per customer');
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.trig_log WHERE kind = 'deferred'}),
	'3000', 'fire_triggers: the deferred constraint trigger fired at each commit');
is($node->safe_psql('postgres', "SELECT (" . job_row('shop.customer') . ").fire_triggers"), 't',
	'the job row says so');

# --- mig_set (any case) switches it from the next batch ---
$node->safe_psql('postgres', q{
	SELECT mig_abort('shop.customer');
	TRUNCATE shop.audit, shop.trig_log;
	SELECT mig_expand('shop.customer', 'email', type => 'text', up => 'lower(email)');
	SELECT mig_backfill('shop.customer', batch_size => 100, sleep_ms => 100);
});
$node->poll_query_until('postgres', "SELECT (" . job_row('shop.customer') . ").rows_done >= 300")
  or die 'no progress';
$node->safe_psql('postgres', q{
	SELECT mig_set('shop.customer', 'Fire_Triggers', 'on');
	SELECT mig_set('shop.customer', 'SLEEP_MS', '0');
});
is(wait_job_ended($node, 'shop.customer'), 'done', 'the backfill with fire_triggers set midway is done');
my ($audited) = $node->safe_psql('postgres', q{SELECT count(*) FROM shop.audit});
ok($audited > 0 && $audited < 3000, "mig_set fire_triggers: only the later batches fired ($audited rows)");
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM shop.customer WHERE _mig_new_email IS DISTINCT FROM lower(email)}),
	'0', 'every customer backfilled');

# --- the dual-write trigger ENABLE (origin) rather than ALWAYS: refused ---
$node->safe_psql('postgres', q{
	SET client_min_messages = error;
	ALTER TABLE shop.customer ENABLE TRIGGER zz_migrate_ext_dualwrite;
	SELECT mig_backfill('shop.customer');
});
is(wait_job_ended($node, 'shop.customer'), 'failed', 'a dual-write trigger not ENABLE ALWAYS fails the job');
like($node->safe_psql('postgres', "SELECT (" . job_row('shop.customer') . ").last_error"),
	qr/no longer ENABLE ALWAYS.*ENABLE ALWAYS TRIGGER/, 'and says how to fix it');

# --- a user trigger ENABLE ALWAYS would fire under replica: it needs fire_triggers ---
$node->safe_psql('postgres', q{
	SET client_min_messages = error;
	ALTER TABLE shop.customer ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
	SELECT mig_abort('shop.customer');
	TRUNCATE shop.audit, shop.trig_log;
	ALTER TABLE shop.customer ENABLE ALWAYS TRIGGER customer_audit;
	SELECT mig_expand('shop.customer', 'email', type => 'text', up => 'lower(email)');
	SELECT mig_backfill('shop.customer');
});
is(wait_job_ended($node, 'shop.customer'), 'failed', 'an ENABLE ALWAYS user trigger fails the default job');
like($node->safe_psql('postgres', "SELECT (" . job_row('shop.customer') . ").last_sqlstate || ' ' || (" . job_row('shop.customer') . ").last_error"),
	qr/^55000 table "customer" has trigger "customer_audit" ENABLE ALWAYS, which would run under the session_replication_role = replica.*fire_triggers/,
	'naming the trigger and fire_triggers');
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.audit}) . '|'
	. $node->safe_psql('postgres', q{SELECT count(*) FROM shop.customer WHERE _mig_new_email IS NOT NULL}),
	'0|0', 'before writing anything');
$node->safe_psql('postgres', q{
	SELECT mig_set('shop.customer', 'fire_triggers', 'true');
	SELECT mig_resume('shop.customer');
});
is(wait_job_ended($node, 'shop.customer'), 'done', 'with fire_triggers it goes on');
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.audit WHERE op = 'UPDATE'}), '3000',
	'and the trigger fired for every row, as asked');

$node->stop;
done_testing();
