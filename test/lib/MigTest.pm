# test/lib/MigTest.pm: helpers the TAP tests share, written once.
#
#   use FindBin;
#   use lib "$FindBin::RealBin/../lib";
#   use MigTest;
#
#   job_row($tbl)                  SQL for the table's latest job row, as a
#                                  row value: "SELECT (" . job_row('t') . ").state"
#   latest_job($tbl)               the same without a table: the latest job of all
#   wait_job_ended($node, $tbl)    wait until that job is no longer running,
#                                  throttled or interrupted; returns its state
#   mig_node($name, %opt)          a started cluster with migrate_ext in
#                                  shared_preload_libraries (and 16 worker
#                                  slots), the extension created in database
#                                  postgres. Options: init => { ... } passed to
#                                  init(), conf => more postgresql.conf lines,
#                                  setup => SQL run after CREATE EXTENSION
#   mig_partition_tree($node, $columns, %opt)
#                                  the partitioned table the partition tests
#                                  share, created in database postgres:
#                                  ev ($columns) by RANGE (created_at), whose
#                                  columns must include created_at date; a
#                                  plain leaf ev_1 (2020), a HASH level ev_2
#                                  (2021: ev_2a, ev_2b), a LIST level ev_3
#                                  (2022: ev_3a for Jan 1-2, default ev_3d),
#                                  default ev_d. Options: name => another
#                                  name than ev (its partitions named alike),
#                                  db. Returns its leaves, in order.
#   mig_pgbench($node, $script, %opt)
#                                  start pgbench in the background on database
#                                  postgres with $script (pgbench's own
#                                  language) as its only transaction;
#                                  options clients (default 3), threads (1),
#                                  seconds (10). Returns the IPC::Run handle
#                                  ($h->finish, then $h->result(0) is 0 when
#                                  every transaction ran) and references to
#                                  pgbench's stderr and stdout.
#   mig_contract_paused($node, $tbl, $step, $pgoptions)
#                                  start mig_contract($tbl) in the background
#                                  with its worker told to stop after $step
#                                  (migrate_ext.test_pause: it waits for
#                                  advisory lock 7387, which a session holds),
#                                  and wait until it waits there. Returns the
#                                  IPC::Run handle, the holding session, a
#                                  reference to psql's stderr, the worker's pid
#   mig_contract_unpause($node)    reset migrate_ext.test_pause
#   mig_crash($node, $how, $pid)   'kill': kill -9 $pid and wait until the
#                                  restarted server takes connections (needs
#                                  restart_after_crash = on); 'immediate': an
#                                  immediate shutdown, then a start
package MigTest;

use strict;
use warnings;
use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(job_row latest_job wait_job_ended mig_node mig_partition_tree mig_pgbench
	mig_pgbench_mix
	mig_contract_paused mig_contract_unpause mig_crash);

sub job_row
{
	my ($tbl) = @_;
	return latest_job() unless defined $tbl;
	return "(SELECT j FROM migrate_ext.job j JOIN migrate_ext.migration m ON m.id = j.migration_id"
	  . " WHERE m.relid = '$tbl'::regclass ORDER BY j.id DESC LIMIT 1)";
}

sub latest_job
{
	return "(SELECT j FROM migrate_ext.job j ORDER BY id DESC LIMIT 1)";
}

sub wait_job_ended
{
	my ($node, $tbl, $db) = @_;
	$db //= 'postgres';
	my $j = job_row($tbl);
	$node->poll_query_until($db,
		"SELECT ($j).state NOT IN ('running', 'throttled', 'interrupted')")
	  or die 'the backfill' . (defined $tbl ? " of $tbl" : '') . ' did not end';
	return $node->safe_psql($db, "SELECT ($j).state");
}

sub mig_node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opt{init} // {} });
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'migrate_ext'\nmax_worker_processes = 16\n"
		  . ($opt{conf} // ''));
	$node->start;
	$node->safe_psql('postgres', "CREATE EXTENSION migrate_ext;\n" . ($opt{setup} // ''));
	return $node;
}

sub mig_pgbench
{
	my ($node, $script, %opt) = @_;
	my $file = $node->basedir . '/mix.sql';
	open my $fh, '>', $file or die "could not write $file: $!";
	print $fh $script;
	close $fh;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'pgbench', '-n', '-c', $opt{clients} // 3, '-j', $opt{threads} // 1,
		  '-T', $opt{seconds} // 10, '-f', $file,
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
	return ($h, \$err, \$out);
}

# The client mix the backfill tests run on t(id, email, n) with sequence
# t_new_id: updates of the source column and of the row beside it, inserts
# and deletes, ids 1..$rows.
sub mig_pgbench_mix
{
	my ($rows) = @_;
	return qq{
\\set id random(1, $rows)
\\set r random(1, 10)
BEGIN;
UPDATE t SET email = 'Upd' || :id || '\@Example.COM', n = n + 1 WHERE id = :id;
UPDATE t SET n = n + 1 WHERE id = :id + 1;
INSERT INTO t (id, email) SELECT nextval('t_new_id'), 'New' || :r || '\@X.COM' WHERE :r <= 3;
DELETE FROM t WHERE id = :id + 2 AND :r = 1;
COMMIT;
};
}

sub mig_partition_tree
{
	my ($node, $columns, %opt) = @_;
	my $t = $opt{name} // 'ev';
	$node->safe_psql($opt{db} // 'postgres', qq{
CREATE TABLE $t ($columns) PARTITION BY RANGE (created_at);
CREATE TABLE ${t}_1 PARTITION OF $t FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE ${t}_2 PARTITION OF $t FOR VALUES FROM ('2021-01-01') TO ('2022-01-01')
	PARTITION BY HASH (created_at);
CREATE TABLE ${t}_2a PARTITION OF ${t}_2 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE ${t}_2b PARTITION OF ${t}_2 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE ${t}_3 PARTITION OF $t FOR VALUES FROM ('2022-01-01') TO ('2023-01-01')
	PARTITION BY LIST (created_at);
CREATE TABLE ${t}_3a PARTITION OF ${t}_3 FOR VALUES IN ('2022-01-01', '2022-01-02');
CREATE TABLE ${t}_3d PARTITION OF ${t}_3 DEFAULT;
CREATE TABLE ${t}_d PARTITION OF $t DEFAULT;});
	return map { "${t}_$_" } qw(1 2a 2b 3a 3d d);
}

sub mig_contract_paused
{
	my ($node, $t, $step, $pgoptions) = @_;
	$node->safe_psql('postgres', qq{ALTER SYSTEM SET migrate_ext.test_pause = '$step'; SELECT pg_reload_conf();});
	# a session-level lock, the session idle: no snapshot for the worker's
	# concurrent index builds to wait for
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('SELECT pg_advisory_lock(7387)');
	my ($out, $err) = ('', '');
	local $ENV{PGOPTIONS} = $pgoptions // '';
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-d', $node->connstr('postgres'), '-c', "SELECT mig_contract('$t')" ],
		'>', \$out, '2>', \$err);
	my $waiting = q{
		SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		 WHERE l.locktype = 'advisory' AND l.objid = 7387 AND NOT l.granted
		   AND a.application_name = 'migrate_ext contract'};
	$node->poll_query_until('postgres', "SELECT EXISTS ($waiting)")
	  or die "the worker did not stop after step $step: $err";
	return ($h, $holder, \$err, $node->safe_psql('postgres', $waiting));
}

sub mig_contract_unpause
{
	my ($node) = @_;
	$node->safe_psql('postgres', q{ALTER SYSTEM RESET migrate_ext.test_pause; SELECT pg_reload_conf();});
}

sub mig_crash
{
	my ($node, $how, $pid) = @_;
	if ($how eq 'kill')
	{
		my $offset = -s $node->logfile;
		kill 'KILL', $pid;
		$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
		# the postmaster restarts every backend: wait for it to take connections
		foreach (1 .. 600)
		{
			last if eval { $node->safe_psql('postgres', 'SELECT 1'); 1 };
			sleep 1;
		}
	}
	else
	{
		$node->stop('immediate');
		$node->start;
	}
}

1;
