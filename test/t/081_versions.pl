# The version comes from one place, the control file's default_version: the
# Makefile builds migrate_ext--<it>.sql from it, and META.json (PGXN) and
# debian/changelog must say the same. Every released version (from
# src/upgrade/RELEASES) has an update path to it.
use strict;
use warnings;
use Test::More;

my $src = $ENV{TESTDIR} or die "TESTDIR is not set (run through make installcheck)";
sub slurp { my $f = shift; open my $fh, '<', $f or die "$f: $!"; local $/; return <$fh>; }

my ($v) = slurp("$src/migrate_ext.control") =~ /^default_version\s*=\s*'([^']+)'/m;
ok(defined $v, "default_version in migrate_ext.control: $v");
ok(-f "$src/migrate_ext--$v.sql", "the Makefile built migrate_ext--$v.sql");

# PGXN wants semantic versions: 0.2 is 0.2.0.
(my $semver = $v) =~ s/^(\d+\.\d+)$/$1.0/;
my $meta = slurp("$src/META.json");
my ($meta_v) = $meta =~ /^   "version"\s*:\s*"([^"]+)"/m;
is($meta_v, $semver, 'META.json version');
my ($prov_v) = $meta =~ /"provides".*?"version"\s*:\s*"([^"]+)"/s;
is($prov_v, $semver, 'META.json provides migrate_ext version');

my ($deb_v) = slurp("$src/debian/changelog") =~ /^migrate-ext \(([^)]+)\)/;
(my $deb_upstream = $deb_v) =~ s/-[^-]*$//;
is($deb_upstream, $v, "debian/changelog's latest entry ($deb_v)");

# From every release, ALTER EXTENSION ... UPDATE finds a path to $v.
my %step;
for (glob("$src/migrate_ext--*--*.sql"))
{
	my ($from, $to) = m{migrate_ext--([^/]+)--([^/]+)\.sql$} or next;
	$step{$from} = $to;
}
for (grep { /^\d/ } split /\n/, slurp("$src/src/upgrade/RELEASES"))
{
	my ($r) = split /\s+/;
	next if $r eq $v;
	my ($at, $n) = ($r, 0);
	$at = $step{$at} while defined $step{$at} && $at ne $v && $n++ < 50;
	is($at, $v, "release $r updates to $v");
}
done_testing();
