# mig_preflight on the shop fixture (test/fixtures/shop.sql, loaded with
# psql -f as an application's schema would be) while a client keeps
# writing to the table being checked: the writer never waits on a lock
# (lock_timeout 1s would fail it), the preflight names the dirty rows, and
# nothing changes: pg_dump -s of the schema is identical, the rows the
# writer does not touch keep their versions, and the audit trigger saw only
# the writer.
use strict;
use warnings;
use File::Basename qw(dirname);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fixture = dirname(__FILE__) . '/../fixtures/shop.sql';

my $node = PostgreSQL::Test::Cluster->new('preflight');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'migrate_ext'");
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION migrate_ext');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', $fixture ],
	'the fixture loads with psql -f');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.customer'), '3000', 'with its rows');

# an up slow enough (about a millisecond a row) for the writer to run beside it
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.slow_int(v text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
	BEGIN
		PERFORM pg_sleep(0.0005);
		RETURN v::int;
	END $$;
	CREATE TABLE writer_stop ();
	CREATE TABLE writer_log (n int, ms float8);
});

my $dump_file = $node->basedir . '/shop_schema';
sub dump_schema
{
	my ($suffix) = @_;
	$node->command_ok(
		[ 'pg_dump', '-s', '-n', 'shop', '-d', $node->connstr('postgres'), '-f', "$dump_file.$suffix" ],
		"pg_dump -s of schema shop ($suffix)");
	my $dump = slurp_file("$dump_file.$suffix");

	# pg_dump guards its script with a random \restrict key per run
	$dump =~ s/^\\(un)?restrict .*$//mg;
	return $dump;
}
my $untouched = q{SELECT md5(string_agg(format('%s %s %s', ctid, xmin, c), ',' ORDER BY id))
	FROM shop.customer c WHERE id <= 2900};

my $schema_before = dump_schema('before');
my $rows_before = $node->safe_psql('postgres', $untouched);

# The writer: customers 2901..3000 (no dirty loyalty_points there) and
# orders, one short transaction at a time, each timed.
my $writer = $node->background_psql('postgres', on_error_stop => 0);
$writer->query_until(qr/started/, q{
	\echo started
	SET lock_timeout = '1s';
	DO $$
	DECLARE
		t0 timestamptz;
		n int := 0;
	BEGIN
		WHILE NOT EXISTS (SELECT FROM writer_stop) LOOP
			n := n + 1;
			t0 := clock_timestamp();
			UPDATE shop.customer SET name = 'Customer ' || id || ' v' || n WHERE id = 2901 + n % 100;
			INSERT INTO shop.orders (id, customer_id, placed_at) VALUES (100000 + n, 2901 + n % 100, now());
			DELETE FROM shop.orders WHERE id = 100000 + n - 5;
			INSERT INTO writer_log VALUES (n, extract(epoch FROM clock_timestamp() - t0) * 1000);
			COMMIT;
			PERFORM pg_sleep(0.002);
		END LOOP;
	END $$;
	\echo finished
});
$node->poll_query_until('postgres', 'SELECT count(*) > 10 FROM writer_log')
  or die 'the writer did not start';

my $result = $node->safe_psql('postgres', q{
	SELECT string_agg(format('%s %s %s', check_name, passed, failing), ', ' ORDER BY check_name)
	  FROM mig_preflight('shop.customer', 'loyalty_points', 'integer', up => 'public.slow_int(loyalty_points)')});
is($result, 'up f 12', 'preflight names the 12 rows whose up fails, beside the writer');
my $writes_during = $node->safe_psql('postgres', 'SELECT count(*) FROM writer_log');
$result = $node->safe_psql('postgres', q{
	SELECT string_agg(format('%s %s %s', check_name, passed, failing), ', ' ORDER BY check_name)
	  FROM mig_preflight('shop.customer', 'email', up => 'lower(email)')});
is($result, 'not_null t 0, unique:customer_email_key f 24, up t 0',
	'and the 24 emails that collide under lower()');

$node->safe_psql('postgres', 'INSERT INTO writer_stop DEFAULT VALUES');
$writer->query_until(qr/finished/, '');
$writer->quit;

my ($writes, $max_ms) = split /\|/, $node->safe_psql('postgres',
	'SELECT count(*), round(max(ms)) FROM writer_log');
cmp_ok($writes_during, '>', 100, "the writer committed $writes_during transactions meanwhile");
cmp_ok($max_ms, '<', 1000, "none took a second (longest $max_ms ms)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.audit WHERE op = 'UPDATE'}),
	$writes, 'the audit trigger saw the writer\'s updates and nothing else');

is(dump_schema('after'), $schema_before, 'pg_dump -s of schema shop is unchanged');
is($node->safe_psql('postgres', $untouched), $rows_before,
	'rows the writer did not touch keep their versions');
is($node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.migration'), '0',
	'no migration recorded');

$node->stop;
done_testing();
