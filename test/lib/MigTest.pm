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
package MigTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(job_row latest_job wait_job_ended mig_node);

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

1;
