# Five migrations of the shop fixture, end to end, under a pgbench write
# load and a reader loop on the views:
#
#   shop.customer.id      int -> bigint (foreign keys in, a self reference,
#                         nested and diamond views, column grants)
#   shop.customer.phone   renamed phone_number
#   shop.customer.name    text -> varchar(200), exposed through the views
#   shop.orders.is_open   a keep_old addition computed from status
#   shop.product.sku      varchar(20) -> varchar(64), no rewrite
#
# Afterwards: every validation passed with 0 rows diverged; updated_at of
# the rows the load never touched is unchanged and the audit trail holds
# exactly the load's own writes (the backfills fired no trigger); pg_dump -s
# of schema shop is the same but for the intended changes (so every view,
# grant, comment, constraint and index came through); the readers of the
# views never waited more than about a second, and never failed.
#
# The materialized view of the fixture (on customer.id, with a unique index,
# a grant and a comment) is read by the readers too: contract rebuilds it
# beside the old one on the new column and swaps it in by rename; afterwards
# its rows are those of a fresh REFRESH, its index, grant and comment are
# there.
use strict;
use warnings;
use File::Basename qw(dirname);
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fixture = dirname(__FILE__) . '/../fixtures/shop.sql';
my $load_seconds = 60;

my $node = PostgreSQL::Test::Cluster->new('shop_e2e');
$node->init;
$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'migrate_ext'
max_worker_processes = 16
max_connections = 30
));
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION migrate_ext');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', $fixture ],
	'the fixture loads');

# the application's own additions: a varchar to widen, a view and a grant on it
$node->safe_psql('postgres', q{
	GRANT SELECT ON shop.customer_totals TO shop_reader;
	COMMENT ON MATERIALIZED VIEW shop.customer_totals IS 'what each customer spent';
	ALTER TABLE shop.product ALTER COLUMN sku TYPE varchar(20);
	CREATE VIEW shop.product_catalog AS SELECT id, sku, price_cents FROM shop.product;
	GRANT SELECT ON shop.product_catalog TO shop_reader;
	COMMENT ON COLUMN shop.product.sku IS 'stock keeping unit';
	CREATE SEQUENCE shop.load_order_id START 100001;
	TRUNCATE shop.audit;
	VACUUM ANALYZE;
});

sub dump_shop
{
	my $dump = `pg_dump -s --schema=shop -h '${\$node->host}' -p ${\$node->port} postgres 2>&1`;
	die "pg_dump failed: $dump" if $?;
	# a line's place in a CREATE TABLE (and its trailing comma) is column
	# order, which a migration changes (the new column comes last)
	my %lines;
	for my $l (split /\n/, $dump)
	{
		next if $l =~ /^--/ || $l =~ /^\s*$/ || $l =~ /^\\(un)?restrict /;
		$l =~ s/,$//;
		$lines{$l}++;
	}
	return \%lines;
}
my $dump_before = dump_shop();
my $product_node = $node->safe_psql('postgres', q{SELECT pg_relation_filenode('shop.product')});

# --- the load: old-version writers, and readers of the views ---
my $dir = $node->basedir;
open my $fh, '>', "$dir/write.sql" or die;
print $fh q{
\set c random(1, 1500)
\set o random(1, 3000)
\set r random(1, 10)
BEGIN;
UPDATE shop.customer SET loyalty_points = (:c % 97)::text, name = 'Customer ' || :c WHERE id = :c;
UPDATE shop.orders SET status = CASE WHEN status = 'open' THEN 'shipped' ELSE 'open' END WHERE id = :o;
INSERT INTO shop.orders (id, customer_id, status, placed_at)
	SELECT nextval('shop.load_order_id'), :c, 'open', '2024-06-01 00:00:00+00' WHERE :r = 1;
COMMIT;
};
close $fh;
open $fh, '>', "$dir/read.sql" or die;
print $fh q{
\set c random(1, 3000)
\set p random(1, 200)
SELECT * FROM shop.customer_overview WHERE id = :c;
SELECT * FROM shop.active_customer WHERE id = :c;
SELECT * FROM shop.product_catalog WHERE id = :p;
SELECT * FROM shop.customer_totals WHERE customer_id = :c;
};
close $fh;

my @conn = ('-h', $node->host, '-p', $node->port, 'postgres');
my ($wout, $werr, $rout, $rerr) = ('', '', '', '');
my $writers = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '3', '-j', '1', '-T', $load_seconds, '-f', "$dir/write.sql", @conn ],
	'>', \$wout, '2>', \$werr);
my $readers = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '2', '-j', '1', '-T', $load_seconds, '-f', "$dir/read.sql",
	  '--log', "--log-prefix=$dir/readlog", @conn ],
	'>', \$rout, '2>', \$rerr);
sleep(2);

# One migration, expand to contract; every step checked.
sub lifecycle
{
	my ($tbl, $what, $expand) = @_;
	$node->safe_psql('postgres', "SELECT $expand");
	$node->safe_psql('postgres', "SELECT mig_backfill('$tbl', batch_size => 500)");
	is(wait_job_ended($node, $tbl), 'done', "$what: the backfill is done");
	is($node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE NOT passed) || '|' || coalesce(sum(failing), 0) FROM mig_validate('$tbl')"),
		'0|0', "$what: validation passed, 0 rows diverged")
	  or diag($node->safe_psql('postgres',
		"SELECT check_name, failing, detail FROM mig_validate('$tbl') WHERE NOT passed"));
	$node->safe_psql('postgres', "SELECT mig_cutover('$tbl')");
	$node->safe_psql('postgres', "SELECT mig_contract('$tbl')");
	is($node->safe_psql('postgres',
		"SELECT phase FROM migrate_ext.migration WHERE relid = '$tbl'::regclass ORDER BY id DESC LIMIT 1"),
		'contracted', "$what: contracted");
}

lifecycle('shop.customer', 'customer.id int -> bigint',
	q{mig_expand('shop.customer', 'id', type => 'bigint')});
lifecycle('shop.customer', 'customer.phone renamed',
	q{mig_expand('shop.customer', 'phone', new_col => 'phone_number')});
lifecycle('shop.customer', 'customer.name text -> varchar(200)',
	q{mig_expand('shop.customer', 'name', type => 'varchar(200)')});
lifecycle('shop.orders', 'orders.is_open keep_old',
	q{mig_expand('shop.orders', 'status', new_col => 'is_open', type => 'boolean',
		up => 'status = ''open''', not_null => true, new_default => 'true', keep_old => true)});

# the no-rewrite widening: one statement, recorded as contracted at once
$node->safe_psql('postgres', q{SELECT mig_expand('shop.product', 'sku', type => 'varchar(64)')});
is($node->safe_psql('postgres', q{SELECT pg_relation_filenode('shop.product')}), $product_node,
	'product.sku widened without a rewrite (same relfilenode)');
like($node->safe_psql('postgres',
	q{SELECT phase || ' ' || (phases->-1->>'detail') FROM mig_history WHERE table_name = 'shop.product'}),
	qr/^contracted no rewrite: column sku changed from character varying\(20\) to character varying\(64\)/,
	'and recorded in mig_history');

$writers->finish;
$readers->finish;
is($writers->result(0), 0, 'the writers never failed') or diag($werr);
is($readers->result(0), 0, 'the readers of the views never failed') or diag($rerr);
my ($txns) = $wout =~ /number of transactions actually processed: (\d+)/;
ok($txns && $txns > 0, "the writers wrote ($txns transactions)");

# --- the backfills changed nothing but the new columns ---
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM shop.customer WHERE id > 1500 AND updated_at <> '2024-01-01 00:00:00+00'}),
	'0', 'updated_at of every customer the load never touched is unchanged');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM shop.orders WHERE id BETWEEN 3001 AND 6000 AND updated_at <> '2024-01-01 00:00:00+00'}),
	'0', 'updated_at of every order the load never touched is unchanged');
is($node->safe_psql('postgres', q{SELECT count(*) || '|' || count(*) FILTER (WHERE row_id > 1500 OR op <> 'UPDATE') FROM shop.audit}),
	"$txns|0", 'the audit trail holds one row per write of the load and none from a backfill');

# --- the data: the new columns hold what the old ones did ---
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE name <> 'Customer ' || id) || '|' ||
		   count(*) FILTER (WHERE (id % 3 = 0) <> (phone_number IS NOT NULL))
	  FROM shop.customer}), '0|0', 'names and phone numbers as they were');
# (after contract is_open is no longer computed: the load's later writes of
# status leave it alone, so only the orders the load never touched tell)
is($node->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE is_open IS DISTINCT FROM (status = 'open')) FROM shop.orders
	   WHERE id BETWEEN 3001 AND 6000}),
	'0', 'orders.is_open = (status = open) on every row the load never touched');
$node->safe_psql('postgres',
	q{INSERT INTO shop.orders (id, customer_id, placed_at) VALUES (999999, 1, now())});
is($node->safe_psql('postgres', q{SELECT status, is_open FROM shop.orders WHERE id = 999999}), 'open|t',
	'after contract is_open is a plain column with its new_default');

# --- the materialized view came through: rows, unique index, grant, comment ---
is($node->safe_psql('postgres', q{
	CREATE TEMP TABLE totals_then AS SELECT * FROM shop.customer_totals;
	REFRESH MATERIALIZED VIEW CONCURRENTLY shop.customer_totals;
	SELECT (SELECT count(*) FROM totals_then) || '|' ||
		   (SELECT count(*) FROM (SELECT * FROM totals_then EXCEPT SELECT * FROM shop.customer_totals) a) || '|' ||
		   (SELECT count(*) FROM (SELECT * FROM shop.customer_totals EXCEPT SELECT * FROM totals_then) b)}),
	'3000|0|0', 'the materialized view holds the rows of a fresh REFRESH');
is($node->safe_psql('postgres', q{
	SELECT format_type(atttypid, atttypmod) FROM pg_attribute
	 WHERE attrelid = 'shop.customer_totals'::regclass AND attname = 'customer_id'}),
	'bigint', 'its customer_id is bigint, like customer.id');
is($node->safe_psql('postgres', q{
	SELECT string_agg(pg_get_indexdef(indexrelid), '; ') FROM pg_index
	 WHERE indrelid = 'shop.customer_totals'::regclass}),
	'CREATE UNIQUE INDEX customer_totals_customer ON shop.customer_totals USING btree (customer_id)',
	'its unique index is there (REFRESH CONCURRENTLY above needed it)');
is($node->safe_psql('postgres', q{
	SELECT has_table_privilege('shop_reader', 'shop.customer_totals', 'SELECT') || '|' ||
		   obj_description('shop.customer_totals'::regclass, 'pg_class')}),
	'true|what each customer spent', 'its grant and comment are there');

# --- the schema: the same, but for the intended changes ---
my $dump_after = dump_shop();
my @gone = sort grep { ($dump_before->{$_} // 0) > ($dump_after->{$_} // 0) } keys %$dump_before;
my @came = sort grep { ($dump_after->{$_} // 0) > ($dump_before->{$_} // 0) } keys %$dump_after;
is_deeply(\@gone, [
	'    id integer NOT NULL',
	'    name text NOT NULL',
	'    phone shop.phone',
	'    sku character varying(20) NOT NULL',
], 'pg_dump -s: only the changed columns went') or diag(join("\n", 'gone:', @gone, 'came:', @came));
is_deeply(\@came, [
	'    id bigint NOT NULL',
	'    is_open boolean DEFAULT true NOT NULL',
	'    name character varying(200) NOT NULL',
	'    phone_number shop.phone',
	'    sku character varying(64) NOT NULL',
], 'pg_dump -s: only the changed columns came') or diag(join("\n", 'gone:', @gone, 'came:', @came));

# --- the readers never waited more than about a second ---
my $max_us = 0;
for my $log (glob("$dir/readlog*"))
{
	open my $lf, '<', $log or die;
	while (<$lf>)
	{
		my @f = split;
		$max_us = $f[2] if $f[2] > $max_us;
	}
}
note(sprintf('longest read of a view: %.0f ms', $max_us / 1000));
ok($max_us > 0 && $max_us < 1500000, sprintf('no read of a view took more than 1.5 s (longest %.0f ms)', $max_us / 1000));

$node->stop;
done_testing();
