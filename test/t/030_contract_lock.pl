# mig_contract next to a long-running reader: nobody else waits behind it
# for more than about a second, it fails clearly (55P03) and changes nothing
# while the reader holds the table, and succeeds once the reader is gone.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('contract', setup => q{
CREATE TABLE orders (id serial PRIMARY KEY, note text);
CREATE TABLE items (id serial PRIMARY KEY, order_id int REFERENCES orders, qty int);
INSERT INTO orders (note) SELECT 'o' || g FROM generate_series(1, 20000) g;
INSERT INTO items (order_id, qty) SELECT g % 20000 + 1, g FROM generate_series(1, 40000) g;
SELECT mig_expand('orders', 'id', type => 'bigint');
SET migrate_ext.writer = 'old';
UPDATE orders SET id = id;
RESET migrate_ext.writer;
SELECT bool_and(passed) AS validated FROM mig_validate('orders');
SELECT mig_cutover('orders');

-- The probe: short transactions that read and write the table, each timed
-- on the server; the worst wait is kept.
CREATE TABLE probe_result (worst interval, iterations int, errors int);
CREATE PROCEDURE probe(seconds float8) LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + seconds * interval '1 second';
	t0 timestamptz;
	worst interval := '0';
	n int := 0;
BEGIN
	LOOP
		t0 := clock_timestamp();
		PERFORM count(*) FROM orders WHERE id = 5;
		INSERT INTO orders (note) VALUES ('probe');
		worst := greatest(worst, clock_timestamp() - t0);
		n := n + 1;
		COMMIT;
		PERFORM pg_sleep(0.01);
		COMMIT;
		EXIT WHEN clock_timestamp() > deadline;
	END LOOP;
	INSERT INTO probe_result VALUES (worst, n, 0);
END $$;
});

my $connstr = $node->connstr('postgres');
my ($probe_out, $probe_err) = ('', '');
my $probe = IPC::Run::start(
	[ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $connstr, '-c', 'CALL probe(14)' ],
	'>', \$probe_out, '2>', \$probe_err);

# The reader: an open transaction that has read the table and holds its
# ACCESS SHARE lock.
my $reader = $node->background_psql('postgres');
$reader->query_safe('BEGIN');
$reader->query_safe('SELECT count(*) FROM orders');

# mig_contract while the reader stays: it must give up, clearly.
$ENV{PGOPTIONS} = '-c migrate_ext.lock_retries=5';
my ($out, $err) = ('', '');
IPC::Run::run(
	[ 'psql', '-X', '-v', 'VERBOSITY=verbose', '-d', $connstr,
	  '-c', "SELECT mig_contract('orders')" ],
	'>', \$out, '2>', \$err);
like($err, qr/ERROR:\s+55P03: could not lock table "orders"/,
	'contract fails with 55P03 while a reader holds the table');
like($err, qr/Nothing was changed/, 'and says that nothing was changed');
is($node->safe_psql('postgres',
		"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'id'"),
	'integer', 'the old column is untouched');
is($node->safe_psql('postgres',
		"SELECT phase FROM migrate_ext.migration WHERE relid = 'orders'::regclass ORDER BY id DESC LIMIT 1"),
	'cutover', 'the migration is still cut over');
is($reader->query_safe('SELECT 1'), '1', 'the reader was never disturbed');

# Once the reader is gone, contract goes through.
$reader->query_safe('COMMIT');
$reader->quit;
($out, $err) = ('', '');
my $ok = IPC::Run::run(
	[ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $connstr,
	  '-c', "SELECT mig_contract('orders')" ],
	'>', \$out, '2>', \$err);
ok($ok, 'contract succeeds once the reader has ended') or diag($err);
like($err, qr/table "orders" is contracted/, 'its progress was reported');
delete $ENV{PGOPTIONS};

$probe->finish;
is($probe_err, '', 'the probe never failed');
my ($worst, $iterations) = split /\|/, $node->safe_psql('postgres',
	'SELECT extract(epoch FROM worst), iterations FROM probe_result');
cmp_ok($iterations, '>', 50, 'the probe kept running');
cmp_ok($worst, '<', 1.5, "no query of the probe waited more than 1.5 s (worst $worst s)");

is($node->safe_psql('postgres', q{
SELECT format_type(a.atttypid, a.atttypmod) || ' ' || i.indisprimary || ' ' || c.convalidated
  FROM pg_attribute a, pg_index i, pg_constraint c
 WHERE a.attrelid = 'orders'::regclass AND a.attname = 'id'
   AND i.indrelid = a.attrelid AND i.indisprimary
   AND c.conrelid = 'items'::regclass AND c.contype = 'f'}),
	'bigint true true', 'id is a bigint primary key, and the foreign key is valid');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT FROM items i WHERE i.order_id = o.id) AND note <> 'probe'"),
	'0', 'no order was lost');

$node->stop;
done_testing();
