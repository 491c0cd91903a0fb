# A logical-replication subscriber's own migration: the apply worker runs
# with session_replication_role = replica, which skips ordinarily enabled
# triggers.  The dual-write trigger is ENABLE ALWAYS, so every replicated
# INSERT and UPDATE after expand still reaches the new column.  The
# publisher's expand of a published table names the publication.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pub = PostgreSQL::Test::Cluster->new('pub');
$pub->init(allows_streaming => 'logical');
$pub->start;
my $sub = PostgreSQL::Test::Cluster->new('sub');
$sub->init;
$sub->append_conf('postgresql.conf', "shared_preload_libraries = 'migrate_ext'");
$sub->start;

$pub->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, email text);
	INSERT INTO t SELECT g, 'Mail' || g || '@X' FROM generate_series(1, 100) g;
	CREATE PUBLICATION p FOR TABLE t;
});
$sub->safe_psql('postgres', q{
	CREATE EXTENSION migrate_ext;
	CREATE TABLE t (id int PRIMARY KEY, email text);
});
my $connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres', "CREATE SUBSCRIPTION s CONNECTION '$connstr' PUBLICATION p");
$sub->wait_for_subscription_sync($pub, 's');

$sub->safe_psql('postgres', q{SELECT mig_expand('t', 'email', up => 'lower(email)')});
$pub->safe_psql('postgres', q{
	INSERT INTO t SELECT g, 'New' || g || '@Y' FROM generate_series(101, 150) g;
	UPDATE t SET email = 'Changed' || id || '@Z' WHERE id % 10 = 0;
});
$pub->wait_for_catchup('s');

is($sub->safe_psql('postgres', q{SELECT count(*) FROM t WHERE id > 100}), '50',
	'replicated inserts arrived');
is($sub->safe_psql('postgres',
	q{SELECT count(*) FROM t WHERE (id > 100 OR id % 10 = 0) AND _mig_new_email IS DISTINCT FROM lower(email)}),
	'0', 'every replicated write after expand was dual-written by the apply worker');

# the publisher's own expand warns about its subscribers
$pub->safe_psql('postgres', q{CREATE EXTENSION migrate_ext});
my ($ret, $out, $err) = $pub->psql('postgres', q{SELECT mig_expand('t', 'email', up => 'upper(email)')});
like($err, qr/NOTICE:  table "t" is published by p/, 'expand on the publisher names the publication');

ok(!$sub->log_contains(qr/terminated by signal/) && !$pub->log_contains(qr/terminated by signal/),
	'no backend crashed');
$sub->stop;
$pub->stop;
done_testing();
