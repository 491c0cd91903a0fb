# migrate_ext: zero-downtime column migrations, inside PostgreSQL.
#
#   make            build
#   make install    install into the server found by pg_config
#   make test       the whole suite (pg_regress, isolation, TAP) against
#                   throwaway servers; installs what is missing when root
#   make demo       a throwaway server and a real migration of a generated table
#   make bench      the benchmarks (see doc/bench.md)
#   make valgrind   a single-user backend under valgrind through the trigger's paths

EXTENSION = migrate_ext
EXTVERSION = 0.1
MODULE_big = migrate_ext
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# The SQL face is assembled from one piece per concern (src/sql/NN_*.sql).
DATA_built = $(EXTENSION)--$(EXTVERSION).sql
SQL_PIECES = $(sort $(wildcard src/sql/*.sql))

PG_CPPFLAGS = -I$(srcdir)/src
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

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PIECES)
	cat $^ > $@

.PHONY: test demo bench valgrind tmp_check_dir
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
