# Reading status never waits: mig_status, mig_progress, mig_history and
# mig_checklist answer under a short statement_timeout while other sessions
# hold row locks on the table, hold an ACCESS EXCLUSIVE lock on it, hold the
# job row locked the way the backfill worker does in every batch, and while
# a writer commits changes to the table and the job row; and each read sees
# the latest committed progress.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $node = mig_node('report', setup => q{
	CREATE TABLE users (id int PRIMARY KEY, email text);
	INSERT INTO users SELECT g, 'U' || g || '@X.org' FROM generate_series(1, 1000) g;
	SELECT mig_expand('users', 'email', up => 'lower(email)');
	INSERT INTO migrate_ext.job (migration_id, state, dboid, role_oid, login_oid,
								 rows_total, rows_seen, rows_done, batches, active_seconds)
	SELECT m.id, 'running', d.oid, 10, 10, 1000, 0, 0, 1, 1
	  FROM migrate_ext.migration m, pg_database d WHERE d.datname = current_database();
});
my $job = $node->safe_psql('postgres', 'SELECT max(id) FROM migrate_ext.job');

# Every status read, each under a statement_timeout that a lock wait would hit.
my @reads = (
	'SELECT count(*) FROM mig_status',
	q{SELECT rows_seen FROM mig_progress('users')},
	'SELECT count(*) FROM mig_history',
	q{SELECT length(mig_checklist('users')) > 0});

sub read_all
{
	my ($what) = @_;
	foreach my $sql (@reads)
	{
		my ($ret, $out, $err) = $node->psql('postgres',
			"SET statement_timeout = '2s'; $sql");
		is($ret, 0, "$what: $sql answers") or diag($err);
	}
}

# Row locks on the table, the table locked ACCESS EXCLUSIVE, the job row
# locked mid-batch: each held by another session while status is read.
my %holders = (
	'row locks on the table' => 'WITH l AS (SELECT id FROM users FOR UPDATE) SELECT count(*) FROM l',
	'ACCESS EXCLUSIVE on the table' => 'LOCK TABLE users IN ACCESS EXCLUSIVE MODE',
	'the job row locked by a batch' =>
	  "UPDATE migrate_ext.job SET rows_seen = 500 WHERE id = $job");
foreach my $what (sort keys %holders)
{
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('BEGIN');
	$holder->query_safe($holders{$what});
	read_all("while another session holds $what");
	$holder->query_safe('ROLLBACK');
	$holder->quit;
}

# A writer that keeps changing the table and, as the worker does, commits
# its progress with each batch; the reader sees the progress move.
my $writer = $node->background_psql('postgres', on_error_stop => 0);
$writer->query_until(qr/started/, qq{
	\\echo started
	DO \$\$
	BEGIN
		FOR i IN 1..100000 LOOP
			UPDATE users SET email = email WHERE id BETWEEN (i % 10) * 100 + 1 AND (i % 10) * 100 + 100;
			UPDATE migrate_ext.job SET rows_seen = i, updated_at = now() WHERE id = $job;
			COMMIT;
			PERFORM pg_sleep(0.005);
		END LOOP;
	END \$\$;
});
$node->poll_query_until('postgres',
	q{SELECT rows_seen > 0 FROM mig_progress('users')})
  or die 'the writer did not start';
my $first = $node->safe_psql('postgres', q{SELECT rows_seen FROM mig_progress('users')});
read_all('while a writer is active');
$node->poll_query_until('postgres',
	qq{SELECT rows_seen > $first FROM mig_progress('users')})
  or die 'progress did not move';
pass('each status read sees the latest committed progress');

# The writer keeps row locks for a few milliseconds in every batch; a
# validation reads past them too.
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET statement_timeout = '10s'; SELECT count(*) FROM mig_validate('users')});
is($ret, 0, 'mig_validate runs beside the writer') or diag($err);
is($out, '5', 'with its five checks (three on rows, evaluates, contract_blockers)');

$node->safe_psql('postgres',
	q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'DO %'});
$writer->quit;
$node->stop;
done_testing();
