# The backfill's VACUUMs (README "Space: it does not double the table"): one
# every 5% of the rows written (at least 10,000), one at a time, none skipped,
# the last one over before the job is done; the space they free is reused,
# so the heap stays near its compact size where one UPDATE leaves it 1.7x;
# an adaptive batch is never larger than the VACUUM cadence.  Pages and
# counts only, no timing.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = mig_node('bf_space', conf => "autovacuum = off\n");

# rows of ~60 bytes that the new column makes ~40% wider, as in the benchmark
my $fill = q{
	INSERT INTO %s SELECT g, initcap(substr(md5(g::text), 1, 6)) || '.' || upper(substr(md5(g::text), 7, 3))
	  || g || '@Example.COM' FROM generate_series(1, %d) g};
for my $t (qw(bf plain))
{
	$node->safe_psql('postgres', qq{
		CREATE TABLE $t (id bigint PRIMARY KEY, email text) WITH (autovacuum_enabled = false);
		@{[ sprintf($fill, $t, 60000) ]};
		VACUUM ANALYZE $t;
	});
}

# 60,000 rows in fixed batches of 2,500: a VACUUM after every 10,000 rows
# written, six in all, the sixth in flight when the walk ends; the job waits
# for it, then runs its last one (which may truncate the table)
my $vacuumed = $node->safe_psql('postgres',
	"SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'bf'");
$node->safe_psql('postgres', q{
	SELECT mig_expand('bf', 'email', new_col => 'new', up => 'lower(email)');
	SELECT mig_backfill('bf', batch_size => 2500);
});
is(wait_job_ended($node, 'bf'), 'done', 'the backfill is done');
is($node->safe_psql('postgres', "SELECT (" . job_row('bf') . ").vacuums"), '7',
	'a VACUUM every 10,000 rows written, and the last one');
is($node->safe_psql('postgres', "SELECT vacuum_count - $vacuumed FROM pg_stat_user_tables WHERE relname = 'bf'"),
	'7', 'each of them ran (none skipped because another was still at it), the last one before the job was done');
is($node->safe_psql('postgres', "SELECT count(*) FROM bf WHERE new IS DISTINCT FROM lower(email)"),
	'0', 'every row filled');

# ranges of one heap walked by two workers: each range's VACUUM is over
# before its slice is done, and the last worker runs the table's last
# VACUUM (which may truncate it) before the job is done, as a serial walk
$node->safe_psql('postgres', qq{
	CREATE TABLE par (id bigint PRIMARY KEY, email text) WITH (autovacuum_enabled = false);
	@{[ sprintf($fill, 'par', 60000) ]};
	VACUUM ANALYZE par;
	SELECT mig_expand('par', 'email', new_col => 'new', up => 'lower(email)');
	SELECT mig_backfill('par', batch_size => 2500, parallel => 2);
});
is(wait_job_ended($node, 'par'), 'done', 'the parallel backfill of one heap is done');
my $par = job_row('par');
is($node->safe_psql('postgres', qq{
	SELECT ($par).vacuums - count(*) FROM migrate_ext.job_slices WHERE job_id = ($par).id}),
	'1', 'one VACUUM per range, and one last VACUUM of the table');
is($node->safe_psql('postgres', qq{
	SELECT s.last_vacuum >= (SELECT max(updated_at) FROM migrate_ext.job_slice WHERE job_id = ($par).id)
	   AND s.last_vacuum <= ($par).finished_at
	  FROM pg_stat_user_tables s WHERE s.relname = 'par'}),
	't', 'the last VACUUM ran after every range was done, and was over before the job was done');
is($node->safe_psql('postgres', "SELECT count(*) FROM par WHERE new IS DISTINCT FROM lower(email)"),
	'0', 'every row of the ranges filled');

# the same rows, one UPDATE
$node->safe_psql('postgres', q{
	ALTER TABLE plain ADD COLUMN new text;
	UPDATE plain SET new = lower(email);
});
my %pages;
for my $t (qw(bf plain))
{
	$pages{$t} = $node->safe_psql('postgres', "SELECT pg_relation_size('$t') / 8192");
	$node->safe_psql('postgres', "VACUUM FULL $t");
	$pages{"${t}_compact"} = $node->safe_psql('postgres', "SELECT pg_relation_size('$t') / 8192");
}
note("heap pages: backfill $pages{bf} (compact $pages{bf_compact}), UPDATE $pages{plain} (compact $pages{plain_compact})");
cmp_ok($pages{plain}, '>', 1.5 * $pages{plain_compact}, 'one UPDATE leaves the heap more than 1.5x its compact size');
cmp_ok($pages{bf}, '<=', 1.25 * $pages{bf_compact},
	'the backfill reuses the space its VACUUMs free: at most 1.25x the compact size');

# adaptive batches never outgrow the VACUUM cadence (10,000 rows here)
$node->safe_psql('postgres', q{
	CREATE TABLE small (id bigint PRIMARY KEY, email text) WITH (autovacuum_enabled = false);
} . sprintf($fill, 'small', 40000) . q{;
	SELECT mig_expand('small', 'email', new_col => 'new', up => 'lower(email)');
	SELECT mig_backfill('small', target_batch_ms => 5000);
});
is(wait_job_ended($node, 'small'), 'done', 'the adaptive backfill is done');
is($node->safe_psql('postgres', "SELECT (" . job_row('small') . ").batch_size <= 10000"), 't',
	'its batches grew no larger than the VACUUM cadence');
cmp_ok($node->safe_psql('postgres', "SELECT (" . job_row('small') . ").batches"), '>=', 4,
	'so 40,000 rows took at least four batches');

$node->stop;
done_testing();
