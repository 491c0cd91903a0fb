# Behind PgBouncer (Debian's package) in transaction pooling mode: the
# dual-write rules hold for old- and new-version clients, and of the ways to
# mark a client as new-version, those that belong to the transaction or the
# role survive pooling (ALTER ROLE ... SET, SET LOCAL, the per-row "auto"
# rules) while a session SET does not: it stays on the server connection,
# leaks to the next client that gets it, and is lost to the next one's SET.
#
# One server connection per pool (default_pool_size = 1), so that which
# client runs on which server connection is known.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $pgbouncer = (grep { -x } '/usr/sbin/pgbouncer', '/usr/bin/pgbouncer')[0]
  or die "pgbouncer is not installed (Debian package pgbouncer; test/lib.sh installs it)";

my $node = mig_node('pooler', setup => q{
CREATE ROLE app_old LOGIN;
CREATE ROLE app_new LOGIN;
CREATE ROLE app LOGIN;
ALTER ROLE app_new SET migrate_ext.writer = 'new';
-- t_auto: the old column has no default, so "auto" tells the two apart per row
CREATE TABLE t_auto (id int PRIMARY KEY, v text);
-- t_def: the old column has a DEFAULT, so a new-version INSERT sets both
-- sides; "auto" must reject it, only a client marked new is right
CREATE TABLE t_def (id int PRIMARY KEY, v text NOT NULL DEFAULT 'UNSET');
GRANT ALL ON t_auto, t_def TO app_old, app_new, app;
SELECT mig_expand('t_auto', 'v', new_col => 'w', up => 'lower(v)', down => 'upper(w)');
SELECT mig_expand('t_def', 'v', new_col => 'w', up => 'lower(v)', down => 'upper(w)');
GRANT ALL ON t_auto, t_def TO app_old, app_new, app;
});

# --- PgBouncer, transaction pooling ------------------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir('pgbouncer');
my $port = PostgreSQL::Test::Cluster::get_free_port();
my ($host, $pgport) = ($node->host, $node->port);
PostgreSQL::Test::Utils::append_to_file("$dir/users.txt",
	qq{"app_old" ""\n"app_new" ""\n"app" ""\n});
PostgreSQL::Test::Utils::append_to_file("$dir/pgbouncer.ini", qq{
[databases]
postgres = host=$host port=$pgport dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 50
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
});
my ($bout, $berr) = ('', '');
my $bouncer = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ], '>', \$bout, '2>', \$berr);

sub client
{
	my $user = shift;
	# the last -d wins: PgBouncer's address, not the server's
	return $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-d', "host=127.0.0.1 port=$port user=$user dbname=postgres connect_timeout=5" ]);
}

# Wait until PgBouncer accepts connections.
my $up = 0;
for (1 .. 100)
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $node->installed_command('psql'), '-XAtq', '-d',
		"host=127.0.0.1 port=$port user=app dbname=postgres connect_timeout=2", '-c', 'SELECT 1' ],
		'>', \$out, '2>', \$err);
	if ($out =~ /^1$/m) { $up = 1; last; }
	select(undef, undef, undef, 0.1);
}
ok($up, 'PgBouncer is up, transaction pooling') or diag("pgbouncer: $berr");

# on(client, sql): the output; an error (stderr) makes it "ERROR: ...".
sub on
{
	my ($c, $sql) = @_;
	my $out = $c->query($sql);
	if ($c->{stderr} ne '')
	{
		my $e = $c->{stderr};
		$c->{stderr} = '';
		chomp $e;
		return $e;
	}
	chomp $out;
	return $out;
}

# One backend per pool: each client's transaction runs on the same server
# connection as every other client's of that role.
my $old = client('app_old');
my $new = client('app_new');
my $a1 = client('app');
my $a2 = client('app');
my $pid1 = on($a1, 'SELECT pg_backend_pid()');
is(on($a2, 'SELECT pg_backend_pid()'), $pid1, 'two clients of one role share the server connection');

# --- "auto": per row, nothing to set ---------------------------------------------------
is(on($old, "INSERT INTO t_auto (id, v) VALUES (1, 'Old') RETURNING v, w"), 'Old|old',
	'auto: an old-version client writes v, the trigger fills w');
is(on($a1, "INSERT INTO t_auto (id, w) VALUES (2, 'new') RETURNING v, w"), 'NEW|new',
	'auto: a new-version client writes w, the trigger fills v');
is(on($a2, "UPDATE t_auto SET w = 'newer' WHERE id = 1 RETURNING v, w"), 'NEWER|newer',
	'auto: an UPDATE of w alone carries to v');
is(on($a1, "UPDATE t_auto SET v = 'Older' WHERE id = 2 RETURNING v, w"), 'Older|older',
	'auto: an UPDATE of v alone carries to w');
like(on($a1, "INSERT INTO t_def (id, w) VALUES (3, 'new')"), qr/ERROR: .*both written and disagree.*migrate_ext\.writer/s,
	'auto: a new-version INSERT into a table whose old column has a default is refused, not guessed');

# --- ALTER ROLE ... SET: every server connection of the role starts with it -------------------
is(on($new, 'SHOW migrate_ext.writer'), 'new', 'ALTER ROLE app_new SET: the pooled connection has it');
is(on($new, "INSERT INTO t_def (id, w) VALUES (4, 'new') RETURNING v, w"), 'NEW|new',
	'ALTER ROLE: the new-version INSERT is right');
is(on($new, "INSERT INTO t_def (id, w) VALUES (5, 'new2') RETURNING v, w"), 'NEW2|new2',
	'ALTER ROLE: and in the next transaction too');
is(on($old, "INSERT INTO t_def (id, v) VALUES (6, 'Old') RETURNING v, w"), 'Old|old',
	'the old-version role, pooled separately, keeps auto');
is(on($old, 'SHOW migrate_ext.writer'), 'auto', 'app_old: auto');

# --- SET LOCAL: the transaction's, gone at its end -----------------------------------------
is(on($a1, "BEGIN; SET LOCAL migrate_ext.writer = 'new'; INSERT INTO t_def (id, w) VALUES (7, 'local') RETURNING v, w; COMMIT;"),
	'LOCAL|local', 'SET LOCAL in the transaction: the new-version INSERT is right');
is(on($a2, 'SHOW migrate_ext.writer'), 'auto',
	'SET LOCAL does not leak to the next client of the server connection');
is(on($a1, "BEGIN; SELECT set_config('migrate_ext.writer', 'new', true); INSERT INTO t_def (id, w) VALUES (8, 'cfg') RETURNING v, w; COMMIT;"),
	"new\nCFG|cfg", "set_config(..., true), the same as SET LOCAL");

# --- a session SET does not survive transaction pooling ------------------------------------
on($a1, "SET migrate_ext.writer = 'new'");
is(on($a2, 'SHOW migrate_ext.writer'), 'new',
	"session SET: it stays on the server connection and leaks to another client");
like(on($a2, "INSERT INTO t_def (id, v) VALUES (9, 'Old') RETURNING v, w"), qr/ERROR: /,
	"session SET: the leaked setting makes an old-version client's INSERT fail (v recomputed from the NULL w)");
on($a2, "SET migrate_ext.writer = 'old'");
is(on($a1, 'SHOW migrate_ext.writer'), 'old',
	"session SET: the client that set it has lost it to another client's SET");
is(on($a1, "INSERT INTO t_def (id, w) VALUES (10, 'lost') RETURNING v, w"), 'UNSET|unset',
	"session SET: the new-version client's write is silently replaced (w recomputed from v's default)");
on($a1, 'RESET migrate_ext.writer');

# --- the rule behind it all holds on every row written right ----------------------------------
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT v, w FROM t_auto UNION ALL SELECT v, w FROM t_def WHERE id <> 10) s
	 WHERE w IS DISTINCT FROM lower(v)}),
	'0', 'every row written through the pooler has w = up(v)');

$_->quit for ($old, $new, $a1, $a2);
$bouncer->kill_kill;
$node->stop;
done_testing();
