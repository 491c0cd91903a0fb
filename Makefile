# migrate_ext: zero-downtime column migrations, inside PostgreSQL.
#
#   make            build
#   make install    install into the server found by pg_config
#   make test       the whole suite (pg_regress, isolation, TAP) against
#                   throwaway servers; installs what is missing when root
#   make demo       a throwaway server and a real migration of a generated table
#   make bench      the benchmarks (see doc/bench.md)
#   make valgrind   a single-user backend under valgrind through the trigger's paths,
#                   then a whole server through the backfill and contract workers
#   make package-test  build the Debian package in a clean copy, install it,
#                   and run pg_regress against the installed files (debian/)

EXTENSION = migrate_ext
# The version lives in one place, the control file's default_version; META.json
# and debian/changelog must agree (test/t/081_versions.pl checks).
EXTVERSION := $(shell sed -n -E "s/^default_version[[:space:]]*=[[:space:]]*'([^']+)'.*/\1/p" $(EXTENSION).control)
MODULE_big = migrate_ext
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
# every object depends on every header: a changed struct never mixes layouts
HEADERS = $(wildcard src/*.h)

# The SQL face is assembled from one piece per concern (src/sql/NN_*.sql).
DATA_built = $(EXTENSION)--$(EXTVERSION).sql
SQL_PIECES = $(sort $(wildcard src/sql/*.sql))

# Update scripts: one per src/upgrade/FROM--TO.sql (the catalog delta), made
# by src/upgrade/sqlface.pl; the step that ends at EXTVERSION also re-creates
# every function and view from SQL_PIECES.  src/upgrade/RELEASES says which
# commit each released version was built from.
UPGRADE_DELTAS = $(sort $(wildcard src/upgrade/*--*.sql))
UPGRADE_SCRIPTS = $(patsubst src/upgrade/%.sql,$(EXTENSION)--%.sql,$(UPGRADE_DELTAS))
DATA_built += $(UPGRADE_SCRIPTS)

# MIGRATE_EXT_VERSION: the version the library was built as, for the C code
# to compare with pg_extension.extversion (a library newer than its catalog
# runs between a package upgrade and ALTER EXTENSION ... UPDATE).
PG_CPPFLAGS = -I$(srcdir)/src -DMIGRATE_EXT_VERSION='"$(EXTVERSION)"'
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
	-Wno-sign-compare -Wno-clobbered

# pg_regress: every sql/*.sql is a test, run in name order.
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --temp-instance=tmp_check/regress --temp-config=$(srcdir)/test/test.conf \
	--load-extension=$(EXTENSION)

# isolation: every test/isolation/specs/*.spec.
ISOLATION = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=output_iso \
	--temp-instance=tmp_check/isolation --temp-config=$(srcdir)/test/test.conf \
	--load-extension=$(EXTENSION)

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# pg_regress creates the temp instances' directories but not their parent
REGRESS_PREP = tmp_check_dir

EXTRA_CLEAN = $(DATA_built) results output_iso tmp_check regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

ifeq ($(EXTVERSION),)
$(error no default_version in $(EXTENSION).control)
endif

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PIECES)
	cat $^ > $@

# The last step (to EXTVERSION) re-creates the code; earlier ones are deltas.
$(EXTENSION)--%.sql: src/upgrade/%.sql src/upgrade/sqlface.pl $(SQL_PIECES)
	perl src/upgrade/sqlface.pl $< $(if $(filter %--$(EXTVERSION),$*),$(SQL_PIECES)) > $@.tmp
	mv $@.tmp $@

.PHONY: test demo bench valgrind tmp_check_dir package-test
tmp_check_dir:
	@mkdir -p tmp_check

test:
	@bash test/run.sh

demo:
	@bash bench/demo.sh

bench:
	@bash bench/run.sh

valgrind:
	@bash test/valgrind.sh
	@VG_PARTS="workers contract" bash test/valgrind_workers.sh

package-test:
	@bash test/package.sh

$(OBJS): $(HEADERS)
