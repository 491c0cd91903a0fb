/*-------------------------------------------------------------------------
 *
 * report.c
 *	  What a DBA looks at: the progress bar of mig_status, mig_wait's
 *	  progress lines, and mig_checklist's markdown runbook.
 *
 * Every figure is derived by the view migrate_ext.progress (30_report.sql)
 * from the catalog, so status, wait and checklist always agree.  None of it
 * touches the migrating table or takes a lock stronger than AccessShareLock
 * on migrate_ext's own tables: reading status never waits for the backfill
 * worker (which updates its job row in every batch) nor makes it wait.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "migrate_ext.h"

PG_FUNCTION_INFO_V1(mig_progress_bar);
PG_FUNCTION_INFO_V1(mig_arrow);
PG_FUNCTION_INFO_V1(mig_migration_of);
PG_FUNCTION_INFO_V1(mig_wait);
PG_FUNCTION_INFO_V1(mig_checklist);
PG_FUNCTION_INFO_V1(mig_lock_key);

/* Cells of the progress bar: wide enough to read, narrow enough for psql. */
#define BAR_CELLS		20

/* mig_wait polls every WAIT_POLL_MS and prints a line every WAIT_REPORT_MS. */
#define WAIT_POLL_MS	500
#define WAIT_REPORT_MS	5000

/*
 * A job that claims to be running while nobody holds its worker's lock reads
 * "interrupted"; a worker that was just started may not have taken its lock
 * yet, so mig_wait believes it only after this long.
 */
#define WAIT_INTERRUPTED_GRACE_MS 2000


static bool
utf8_database(void)
{
	return GetDatabaseEncoding() == PG_UTF8;
}

/*
 * migrate_ext.progress_bar(percent): a fixed-width bar, block glyphs in a
 * UTF8 database and '#' / '.' elsewhere (the glyphs exist in no other
 * server encoding).  psql counts either as one cell per character, so the
 * column stays aligned.
 */
Datum
mig_progress_bar(PG_FUNCTION_ARGS)
{
	double		percent;
	int			full;
	StringInfoData buf;

	percent = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
												 PG_GETARG_DATUM(0)));
	full = (int) (Max(0.0, Min(percent, 100.0)) * BAR_CELLS / 100.0);
	initStringInfo(&buf);
	for (int i = 0; i < BAR_CELLS; i++)
	{
		if (utf8_database())
			appendStringInfoString(&buf, i < full ? "\u2588" : "\u2591");
		else
			appendStringInfoChar(&buf, i < full ? '#' : '.');
	}
	PG_RETURN_TEXT_P(cstring_to_text(buf.data));
}

/* migrate_ext.arrow(): what separates old and new column names. */
Datum
mig_arrow(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(utf8_database() ? "\u2192" : "->"));
}

/*
 * The id of the table's latest migration in any phase; an error when the
 * table never had one.
 */
static int64
migration_of(Oid relid)
{
	MigMigration *m = mig_catalog_latest(relid);

	if (m == NULL && get_rel_name(relid) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (m == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" has no migration", get_rel_name(relid)),
				 errhint("Start one with mig_expand().")));
	return m->id;
}

/* migrate_ext.migration_of(tbl): for mig_progress. */
Datum
mig_migration_of(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(migration_of(PG_GETARG_OID(0)));
}

/*
 * migrate_ext.lock_key(kind): the first int4 key of an advisory lock the
 * extension takes, so that SQL (the status view, tests, a DBA's query on
 * pg_locks) never spells the number.  'job': a worker holds (key, job id)
 * for its whole life; 'gate': whoever starts a worker holds (key, job id)
 * until its transaction ends; 'vacuum': a backfill's VACUUM of a heap holds
 * (key, relid) while it runs.
 */
Datum
mig_lock_key(PG_FUNCTION_ARGS)
{
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	LOCKTAG		tag;

	if (strcmp(kind, "job") == 0)
		mig_job_locktag(&tag, MIG_JOB_LOCK_LIVENESS, 0);
	else if (strcmp(kind, "gate") == 0)
		mig_job_locktag(&tag, MIG_JOB_LOCK_GATE, 0);
	else if (strcmp(kind, "vacuum") == 0)
		mig_job_locktag(&tag, MIG_JOB_LOCK_VACUUM, 0);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown migrate_ext lock \"%s\"", kind),
				 errhint("Use \"job\" (a worker's liveness), \"gate\" (a worker's start) or \"vacuum\" (a backfill's VACUUM of a table).")));
	/* job.c defines the keys; the first int4 key is the tag's second field */
	PG_RETURN_INT32((int32) tag.locktag_field2);
}

/* A duration the way gh-ost prints it: 44s, 2m05s, 1h02m03s. */
static void
append_duration(StringInfo buf, double secs)
{
	int64		s = (int64) ceil(secs);

	if (s >= 3600)
		appendStringInfo(buf, INT64_FORMAT "h%02dm%02ds", s / 3600,
						 (int) (s % 3600 / 60), (int) (s % 60));
	else if (s >= 60)
		appendStringInfo(buf, "%dm%02ds", (int) (s / 60), (int) (s % 60));
	else
		appendStringInfo(buf, "%ds", (int) s);
}

/* One row of migrate_ext.progress, as mig_wait and mig_checklist use it. */
typedef struct Progress
{
	char	   *table_name;
	char	   *phase;
	int64		job_id;			/* 0: no job */
	char	   *state;			/* derived: "interrupted" when nobody runs it */
	char	   *stored_state;	/* as the job row says */
	char	   *throttle_reason;
	int64		rows_done;
	int64		rows_seen;
	bool		has_total;
	int64		rows_total;
	bool		total_exact;
	bool		has_percent;
	double		percent;
	bool		has_rate;
	double		rate;			/* rate_recent, else rate_avg */
	bool		has_rate_avg;
	double		rate_avg;
	bool		has_eta;
	double		eta_secs;
	int			batch_size;
	int64		batches;
	int64		retries;
	char	   *last_error;
	char	   *last_sqlstate;
	char	   *started_at;
	int			fkeys_to_finish;	/* left by a swap (contract_worker.c) */
	bool		fkeys_finishing;	/* a worker is on them */
} Progress;

static bool
get_float(HeapTuple tup, TupleDesc desc, int col, double *out)
{
	char	   *s = SPI_getvalue(tup, desc, col);

	if (s == NULL)
		return false;
	*out = strtod(s, NULL);
	return true;
}

static int64
get_int64(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *s = SPI_getvalue(tup, desc, col);

	return s ? strtoi64(s, NULL, 10) : 0;
}

static char *
get_string(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *s = SPI_getvalue(tup, desc, col);

	return s ? pstrdup(s) : NULL;
}

/*
 * Read a migration's progress row, in a snapshot of its own (SPI takes a
 * fresh one per statement in READ COMMITTED).  The result lives in the
 * caller's memory context.
 */
static void
read_progress(int64 migration_id, Progress *p)
{
	MemoryContext callercxt = CurrentMemoryContext;
	Oid			argtype = INT8OID;
	Datum		arg = Int64GetDatum(migration_id);
	HeapTuple	tup;
	TupleDesc	desc;
	double		d;

	SPI_connect();
	if (mig_catalog_query("SELECT g.table_name, g.phase, g.job_id, g.state, j.state, "
							  "g.throttle_reason, g.rows_done, g.rows_seen, g.rows_total, "
							  "g.rows_total_exact, g.percent, "
							  "coalesce(g.rate_recent, g.rate_avg), g.rate_avg, "
							  "extract(epoch FROM g.eta), g.batch_size, g.batches, g.retries, "
							  "g.last_error, g.last_sqlstate, "
							  "to_char(g.started_at, 'YYYY-MM-DD HH24:MI:SSOF'), g.relid, "
							  "g.fkeys_to_finish, g.fkeys_finishing "
							  "FROM migrate_ext.progress g "
							  "LEFT JOIN migrate_ext.job j ON j.id = g.job_id "
							  "WHERE g.migration_id OPERATOR(pg_catalog.=) $1",
							  1, &argtype, &arg, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "migration " INT64_FORMAT " not found in migrate_ext.progress",
			 migration_id);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	MemoryContextSwitchTo(callercxt);
	memset(p, 0, sizeof(*p));
	p->table_name = get_string(tup, desc, 1);
	{
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(tup, desc, 21, &isnull));

		/* named as the caller's search_path names it, not the pinned one */
		if (!isnull && SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
			p->table_name = DatumGetCString(DirectFunctionCall1(regclassout,
																ObjectIdGetDatum(relid)));
	}
	p->phase = get_string(tup, desc, 2);
	p->job_id = get_int64(tup, desc, 3);
	p->state = get_string(tup, desc, 4);
	p->stored_state = get_string(tup, desc, 5);
	p->throttle_reason = get_string(tup, desc, 6);
	p->rows_done = get_int64(tup, desc, 7);
	p->rows_seen = get_int64(tup, desc, 8);
	p->has_total = get_float(tup, desc, 9, &d);
	p->rows_total = p->has_total ? (int64) d : 0;
	p->total_exact = SPI_getvalue(tup, desc, 10) != NULL &&
		strcmp(SPI_getvalue(tup, desc, 10), "t") == 0;
	p->has_percent = get_float(tup, desc, 11, &p->percent);
	p->has_rate = get_float(tup, desc, 12, &p->rate);
	p->has_rate_avg = get_float(tup, desc, 13, &p->rate_avg);
	p->has_eta = get_float(tup, desc, 14, &p->eta_secs);
	p->batch_size = (int) get_int64(tup, desc, 15);
	p->batches = get_int64(tup, desc, 16);
	p->retries = get_int64(tup, desc, 17);
	p->last_error = get_string(tup, desc, 18);
	p->last_sqlstate = get_string(tup, desc, 19);
	p->started_at = get_string(tup, desc, 20);
	p->fkeys_to_finish = (int) get_int64(tup, desc, 22);
	p->fkeys_finishing = SPI_getvalue(tup, desc, 23) != NULL &&
		strcmp(SPI_getvalue(tup, desc, 23), "t") == 0;
	SPI_finish();
}

/* "1234/~5000 24.7%": rows covered of the total, "~" while estimated. */
static void
append_rows(StringInfo buf, const Progress *p)
{
	appendStringInfo(buf, INT64_FORMAT "/", p->rows_seen);
	if (p->has_total)
		appendStringInfo(buf, "%s" INT64_FORMAT, p->total_exact ? "" : "~", p->rows_total);
	else
		appendStringInfoChar(buf, '?');
	if (p->has_percent)
		appendStringInfo(buf, " %.1f%%", p->percent);
}

static bool
state_is_final(const char *state)
{
	JobState	s = mig_job_state_parse(state);

	return mig_job_state_ended(s) || s == JOB_INTERRUPTED;
}

/*
 * The status line of mig_wait, in the spirit of gh-ost's:
 *	 users: 1234567/5000000 24.7%; 85012 rows/s; ETA 44s; batch 8000; state running
 */
static char *
progress_line(const Progress *p)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s: ", p->table_name);
	append_rows(&buf, p);
	if (p->has_rate)
		appendStringInfo(&buf, "; %.0f rows/s", p->rate);
	else
		appendStringInfoString(&buf, "; ? rows/s");
	appendStringInfoString(&buf, "; ETA ");
	if (p->has_eta)
		append_duration(&buf, p->eta_secs);
	else
		appendStringInfoString(&buf, state_is_final(p->state) ? "-" : "?");
	appendStringInfo(&buf, "; batch %d; state %s", p->batch_size, p->state);
	if (p->throttle_reason)
		appendStringInfo(&buf, " (%s)", p->throttle_reason);
	return buf.data;
}

/*
 * mig_wait(tbl, timeout)
 *
 * Blocks until the table's backfill job ends (done, failed, cancelled or
 * interrupted) or the timeout passes, printing a progress line every few
 * seconds; returns the job's state.  Each poll reads the job row in a fresh
 * snapshot, and between polls this backend advertises no xmin, so waiting
 * for a long backfill does not hold back vacuum.  That needs READ
 * COMMITTED: in REPEATABLE READ the job row would never change.
 */
Datum
mig_wait(PG_FUNCTION_ARGS)
{
	Oid			relid;
	int64		migration_id;
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz deadline = 0;
	TimestampTz next_report = 0;
	TimestampTz interrupted_since = 0;
	Progress	p;
	MemoryContext pollcxt;
	MemoryContext oldcxt;
	text	   *result;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl must not be NULL")));
	relid = PG_GETARG_OID(0);
	if (!PG_ARGISNULL(1))
	{
		Interval   *iv = PG_GETARG_INTERVAL_P(1);
		double		usecs;

		usecs = iv->time + ((double) iv->month * DAYS_PER_MONTH + iv->day) * USECS_PER_DAY;
		if (usecs < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must not be negative")));
		deadline = start + (TimestampTz) Min(usecs, (double) PG_INT64_MAX / 2);
	}
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("mig_wait cannot wait in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("The transaction's snapshot would never see the job progress."),
				 errhint("Call it outside a transaction block or in a READ COMMITTED transaction.")));

	/*
	 * Each poll reads into a context reset before the next one, so a wait
	 * of hours uses the memory of one poll.
	 */
	pollcxt = AllocSetContextCreate(CurrentMemoryContext, "mig_wait poll",
									ALLOCSET_SMALL_SIZES);
	migration_id = migration_of(relid);
	oldcxt = MemoryContextSwitchTo(pollcxt);
	read_progress(migration_id, &p);
	if (p.job_id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration of table \"%s\" has no backfill job to wait for",
						get_rel_name(relid)),
				 errhint("Start one with mig_backfill().")));

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		bool		final;
		bool		timed_out;

		/* the job row was read in a snapshot we are done with */
		mig_release_xmin();

		/* a job interrupted by the book is final; one that only looks it, later */
		final = state_is_final(p.state);
		if (mig_job_state_parse(p.state) == JOB_INTERRUPTED &&
			mig_job_state_parse(p.stored_state) != JOB_INTERRUPTED)
		{
			if (interrupted_since == 0)
				interrupted_since = now;
			final = TimestampDifferenceExceeds(interrupted_since, now,
											   WAIT_INTERRUPTED_GRACE_MS);
		}
		else
			interrupted_since = 0;
		timed_out = deadline != 0 && now >= deadline;

		if (final || timed_out || now >= next_report)
		{
			ereport(NOTICE, (errmsg_internal("%s", progress_line(&p))));
			next_report = TimestampTzPlusMilliseconds(now, WAIT_REPORT_MS);
		}
		if (final || timed_out)
			break;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 deadline == 0 ? WAIT_POLL_MS :
						 Max(1, Min(WAIT_POLL_MS, (deadline - now + 999) / 1000)),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(pollcxt);
		read_progress(migration_id, &p);
	}
	MemoryContextSwitchTo(oldcxt);
	result = cstring_to_text(p.state);
	MemoryContextDelete(pollcxt);
	PG_RETURN_TEXT_P(result);
}

/* ---------------------------------------------------------------- */
/* mig_checklist												    */
/* ---------------------------------------------------------------- */

/* What the checklist needs to know, read once. */
typedef struct ChecklistState
{
	MigMigration *m;
	Progress	prog;
	const char *tbl;			/* the table as mig_* calls name it */
	const char *abort_cmd;		/* the mig_abort call, as markdown code */
	bool		aborted;
	bool		contracted;
	bool		keep;			/* keep_old: contract keeps the old column */
	bool		live_job;		/* a job of the migration still runs */
	bool		backfill_done;	/* its latest job is done */
	bool		trigger_ok;		/* the dual-write trigger fires */
	int			reached;		/* rank of the phase now, or reached before an abort */
	char	   *reached_at[MIG_PHASE_COUNT];	/* "<time> by <role>" per phase */
	bool		new_cols_exist;
	char		trigger;		/* tgenabled, '\0' when missing */
	int64		val_run;		/* 0: never validated */
	bool		val_exact;
	bool		val_passed;
} ChecklistState;

static void
tick(StringInfo buf, bool done, const char *fmt,...) pg_attribute_printf(3, 4);

/* "- [x] text" */
static void
tick(StringInfo buf, bool done, const char *fmt,...)
{
	va_list		args;
	char		line[1024];

	va_start(args, fmt);
	vsnprintf(line, sizeof(line), fmt, args);
	va_end(args);
	appendStringInfo(buf, "- [%c] %s\n", done ? 'x' : ' ', line);
}

/* Markdown table cells must not contain a pipe or a newline. */
static char *
cell(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (; s && *s; s++)
	{
		if (*s == '|')
			appendStringInfoString(&buf, "\\|");
		else if (*s == '\n')
			appendStringInfoChar(&buf, ' ');
		else
			appendStringInfoChar(&buf, *s);
	}
	return buf.data;
}

static bool
reached(const ChecklistState *cs, MigPhase phase)
{
	return cs->reached >= phase;
}

/*
 * Who last moved the migration to each phase, and how far it is: its phase,
 * or for an aborted one the furthest it got (a failed validation moves a
 * migration back, so that is not the furthest ever logged).
 */
static void
read_phase_log(ChecklistState *cs)
{
	MemoryContext callercxt = CurrentMemoryContext;
	Oid			argtype = INT8OID;
	Datum		arg = Int64GetDatum(cs->m->id);
	int			prev = MIG_PHASE_EXPANDED;

	SPI_connect();
	if (mig_catalog_query("SELECT phase, to_char(at, 'YYYY-MM-DD HH24:MI:SSOF') || ' by ' || by_role "
							  "FROM migrate_ext.phase_log WHERE migration_id OPERATOR(pg_catalog.=) $1 ORDER BY at",
							  1, &argtype, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.phase_log");
	cs->reached = cs->m->phase;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MigPhase	phase = mig_phase_parse(SPI_getvalue(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc, 1));

		cs->reached_at[phase] = MemoryContextStrdup(callercxt,
													SPI_getvalue(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc, 2));
		if (phase != MIG_PHASE_ABORTED)
			prev = phase;
	}
	if (cs->m->phase == MIG_PHASE_ABORTED)
		cs->reached = prev;
	SPI_finish();
}

/* Are the new columns there, and is the trigger present and enabled? */
static void
read_table_state(ChecklistState *cs)
{
	ListCell   *lc;

	cs->new_cols_exist = true;
	foreach(lc, cs->m->pairs)
	{
		MigPair    *pair = lfirst(lc);
		HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(cs->m->relid),
										  Int16GetDatum(pair->new_attnum));

		if (!HeapTupleIsValid(tup))
			cs->new_cols_exist = false;
		else
		{
			if (((Form_pg_attribute) GETSTRUCT(tup))->attisdropped)
				cs->new_cols_exist = false;
			ReleaseSysCache(tup);
		}
	}
	cs->trigger = mig_trigger_tgenabled(cs->m->relid);
}

/* The last validation: a summary line and its checks as a markdown table. */
static void
append_validation(StringInfo buf, ChecklistState *cs)
{
	Oid			argtype = INT8OID;
	Datum		arg = Int64GetDatum(cs->m->id);
	uint64		n;

	SPI_connect();
	if (mig_catalog_query("SELECT run, sample, rows_checked, "
							  "to_char(at, 'YYYY-MM-DD HH24:MI:SSOF') || ' by ' || by_role, "
							  "check_name, passed, failing, detail "
							  "FROM migrate_ext.validation WHERE migration_id OPERATOR(pg_catalog.=) $1 AND run = "
							  "(SELECT max(run) FROM migrate_ext.validation WHERE migration_id OPERATOR(pg_catalog.=) $1) "
							  "ORDER BY ord",
							  1, &argtype, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.validation");
	n = SPI_processed;
	cs->val_run = 0;
	cs->val_passed = true;
	if (n == 0)
		appendStringInfoString(buf, "\nLast validation: none yet.\n");
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		passed = strcmp(SPI_getvalue(tup, desc, 6), "t") == 0;

		if (i == 0)
		{
			char	   *sample = SPI_getvalue(tup, desc, 2);

			cs->val_run = get_int64(tup, desc, 1);
			cs->val_exact = sample == NULL;
			appendStringInfo(buf, "\nLast validation: run " INT64_FORMAT ", %s%s, %s rows checked, %s.\n\n",
							 cs->val_run, sample ? "sample of " : "exact",
							 sample ? sample : "", SPI_getvalue(tup, desc, 3),
							 SPI_getvalue(tup, desc, 4));
			appendStringInfoString(buf, "| check | passed | failing | detail |\n"
								   "|---|---|---|---|\n");
		}
		cs->val_passed &= passed;
		appendStringInfo(buf, "| %s | %s | %s | %s |\n",
						 cell(SPI_getvalue(tup, desc, 5)), passed ? "yes" : "**no**",
						 SPI_getvalue(tup, desc, 7), cell(SPI_getvalue(tup, desc, 8)));
	}
	SPI_finish();
}

static void
append_pairs(StringInfo buf, ChecklistState *cs)
{
	ListCell   *lc;

	foreach(lc, cs->m->pairs)
	{
		MigPair    *pair = lfirst(lc);

		appendStringInfo(buf, "- Column: `%s` %s `%s` (%s%s), up: `%s`, down: %s%s%s%s%s\n",
						 pair->old_col, utf8_database() ? "\u2192" : "->", pair->new_col,
						 pair->new_type, pair->in_place ? ", takes the old name at contract" : "",
						 pair->up_src ? pair->up_src : "the default cast",
						 pair->down ? "`" : "none (no reverse sync)",
						 pair->down ? (pair->down_src ? pair->down_src : "the default cast") : "",
						 pair->down ? "`" : "",
						 pair->not_null ? ", NOT NULL" : "",
						 pair->check_src ? psprintf(", check: `%s`", pair->check_src) : "");
	}
}

/* The backfill's live figures. */
static void
append_figures(StringInfo buf, const Progress *p)
{
	if (p->job_id == 0)
	{
		appendStringInfoString(buf, "\nLive: no backfill job yet.\n");
		return;
	}
	appendStringInfo(buf, "\nLive: job " INT64_FORMAT " %s", p->job_id, p->state);
	if (p->throttle_reason)
		appendStringInfo(buf, " (%s)", p->throttle_reason);
	appendStringInfoString(buf, "; rows ");
	append_rows(buf, p);
	appendStringInfo(buf, ", " INT64_FORMAT " written", p->rows_done);
	if (p->has_rate)
		appendStringInfo(buf, "; %.0f rows/s", p->rate);
	if (p->has_rate_avg)
		appendStringInfo(buf, " (average %.0f)", p->rate_avg);
	if (p->has_eta)
	{
		appendStringInfoString(buf, "; ETA ");
		append_duration(buf, p->eta_secs);
	}
	appendStringInfo(buf, "; batch %d; " INT64_FORMAT " batches; " INT64_FORMAT " retries",
					 p->batch_size, p->batches, p->retries);
	if (p->started_at)
		appendStringInfo(buf, "; started %s", p->started_at);
	appendStringInfoString(buf, ".\n");
	if (p->last_error)
		appendStringInfo(buf, "Last error: %s%s%s%s\n",
						 p->last_sqlstate ? "[" : "", p->last_sqlstate ? p->last_sqlstate : "",
						 p->last_sqlstate ? "] " : "", p->last_error);
}

/* A section's heading, then its entry criteria follow. */
static void
begin_section(StringInfo buf, const char *title)
{
	appendStringInfo(buf, "\n## %s\n\nEntry:\n", title);
}

/* After the exit criteria: when the phase was reached, and by whom. */
static void
end_criteria(StringInfo buf, ChecklistState *cs, MigPhase phase)
{
	char	   *at = cs->reached_at[phase];

	appendStringInfoChar(buf, '\n');
	if (at && reached(cs, phase))
		appendStringInfo(buf, "Reached %s: %s.\n", mig_phase_name(phase), at);
}

/* The title, the pairs, the phase now and the point of no return. */
static void
checklist_header(StringInfo buf, ChecklistState *cs)
{
	appendStringInfo(buf, "# Migration " INT64_FORMAT " of table %s\n\n",
					 cs->m->id, cs->prog.table_name);
	append_pairs(buf, cs);
	appendStringInfo(buf, "- Phase: **%s**", mig_phase_name(cs->m->phase));
	if (cs->reached_at[cs->m->phase])
		appendStringInfo(buf, " (since %s)", cs->reached_at[cs->m->phase]);
	appendStringInfoString(buf, "\n");
	if (cs->aborted)
		appendStringInfoString(buf, "- Aborted: the new column(s) and the trigger were dropped; the old column was never touched. Nothing is left to do.\n");
	else if (cs->contracted)
		appendStringInfo(buf, "- Contracted: %s; the migration is complete and cannot be rolled back.\n",
						 cs->keep ? "dual-write ended, the old column kept (keep_old)" : "the old column is gone");
	else
		appendStringInfo(buf, "- Point of no return: **contract** (step 5) %s. Until then %s rolls everything back.\n",
						 cs->keep ? "ends dual-write and keeps the old column (keep_old)" : "drops the old column",
						 cs->abort_cmd);
}

/* 1. expand */
static void
checklist_expand(StringInfo buf, ChecklistState *cs)
{
	ListCell   *lc;

	begin_section(buf, "1. Expand");
	tick(buf, true, "no other active migration on the table");
	appendStringInfoString(buf, "\nExit:\n");
	foreach(lc, cs->m->pairs)
	{
		MigPair    *pair = lfirst(lc);

		tick(buf, cs->new_cols_exist && !cs->contracted && !cs->aborted,
			 "new column `%s` added", pair->new_col);
	}
	tick(buf, cs->trigger_ok && !cs->contracted && !cs->aborted,
		 "dual-write trigger `%s` present and enabled%s", MIG_TRIGGER_NAME,
		 cs->trigger == '\0' ? " (missing)" : cs->trigger_ok ? "" :
		 psprintf(" (tgenabled = '%c')", cs->trigger));
	end_criteria(buf, cs, MIG_PHASE_EXPANDED);
	appendStringInfo(buf, "Rollback: %s drops the trigger and the new column(s); the old column is untouched.\n",
					 cs->abort_cmd);
}

/* 2. backfill */
static void
checklist_backfill(StringInfo buf, ChecklistState *cs)
{
	const char *tbl = cs->tbl;

	begin_section(buf, "2. Backfill");
	tick(buf, reached(cs, MIG_PHASE_EXPANDED), "expanded: new column(s) and dual-write trigger in place");
	appendStringInfoString(buf, "\nExit:\n");
	tick(buf, cs->backfill_done || reached(cs, MIG_PHASE_BACKFILLED), "backfill job done");
	append_figures(buf, &cs->prog);
	end_criteria(buf, cs, MIG_PHASE_BACKFILLED);
	appendStringInfo(buf, "Command: `SELECT mig_backfill(%s);`, then `SELECT mig_wait(%s);` or `SELECT * FROM mig_progress(%s);`\n",
					 tbl, tbl, tbl);
	appendStringInfo(buf, "Rollback: `SELECT mig_cancel(%s);` stops the job (rows it wrote are harmless: the old column is still the source of truth); %s rolls back the migration.\n",
					 tbl, cs->abort_cmd);
}

/* 3. validate */
static void
checklist_validate(StringInfo buf, ChecklistState *cs)
{
	begin_section(buf, "3. Validate");
	tick(buf, (cs->backfill_done || reached(cs, MIG_PHASE_BACKFILLED)) && !cs->live_job,
		 "backfill done, no job running");
	append_validation(buf, cs);
	appendStringInfoString(buf, "\nExit:\n");
	tick(buf, cs->val_run != 0 && cs->val_exact && cs->val_passed,
		 "the last validation was exact and every check passed");
	tick(buf, reached(cs, MIG_PHASE_VALIDATED), "phase validated");
	end_criteria(buf, cs, MIG_PHASE_VALIDATED);
	appendStringInfo(buf, "Command: `SELECT * FROM mig_validate(%s);` (exact; `sample => n` checks n random rows and never validates)\n",
					 cs->tbl);
	appendStringInfo(buf, "Rollback: nothing to undo (validation changes no data); %s rolls back the migration.\n",
					 cs->abort_cmd);
}

/* 4. cut over */
static void
checklist_cutover(StringInfo buf, ChecklistState *cs)
{
	begin_section(buf, "4. Cut over");
	tick(buf, reached(cs, MIG_PHASE_VALIDATED), "phase validated (an exact validation passed)");
	tick(buf, cs->trigger_ok || cs->contracted, "dual-write trigger enabled");
	appendStringInfoString(buf, "\nExit:\n");
	tick(buf, reached(cs, MIG_PHASE_CUTOVER), "phase cutover: the new column is the source of truth, the old one still kept in sync");
	end_criteria(buf, cs, MIG_PHASE_CUTOVER);
	appendStringInfo(buf, "Command: `SELECT mig_cutover(%s);`\n", cs->tbl);
	appendStringInfo(buf, "Rollback: %s: the old column was kept in sync, so clients can go back to it.\n",
					 cs->abort_cmd);
}

/* 5. contract */
static void
checklist_contract(StringInfo buf, ChecklistState *cs)
{
	begin_section(buf, "5. Contract: the point of no return");
	tick(buf, reached(cs, MIG_PHASE_CUTOVER), "phase cutover");
	tick(buf, cs->val_run != 0 && cs->val_passed, "the last validation passed");
	appendStringInfoString(buf, "\nExit:\n");
	tick(buf, cs->contracted, cs->keep ? "phase contracted: the trigger removed, the old column kept" :
		 "phase contracted: the old column dropped, the trigger removed");
	if (cs->contracted && cs->prog.fkeys_to_finish > 0)
		tick(buf, false, "the foreign keys the swap moved to the new column finished: %d copies not yet validated or attached, %s",
			 cs->prog.fkeys_to_finish,
			 cs->prog.fkeys_finishing ? "a worker is finishing them now" :
			 "no worker is on them (run mig_contract again; the server also does after a restart)");
	end_criteria(buf, cs, MIG_PHASE_CONTRACTED);
	appendStringInfo(buf, "Command: `SELECT mig_contract(%s);`\n", cs->tbl);
	appendStringInfoString(buf, cs->keep ? "Rollback: none. Contract ends dual-write (keep_old): the new column is the application's own after it.\n" :
						   "Rollback: none. Contract drops the old column; after it only a restore from backup brings the old values back.\n");
}

/*
 * mig_checklist(tbl)
 *
 * The runbook of the table's latest migration as markdown: each phase with
 * its entry and exit criteria ticked from live state, the live figures, the
 * command to run and the way back, and the point of no return.  It reads
 * the catalog only and never locks the table, so it can be run at any time.
 */
Datum
mig_checklist(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	ChecklistState cs;
	StringInfoData buf;

	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(relid)),
				 errdetail("The runbook shows the migration's expressions, failing rows and errors, which only roles that can read the table may see."),
				 errhint("mig_status and mig_progress() show every role the migration's progress.")));
	/* as migrate_ext.can_read(): rows a policy hides stay hidden */
	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED &&
		!pg_class_ownercheck(relid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(relid)),
				 errdetail("Row-level security filters what this role reads of the table, and the runbook can quote any row (failing rows, errors, keys)."),
				 errhint("mig_status and mig_progress() show every role the migration's progress.")));
	memset(&cs, 0, sizeof(cs));
	cs.m = mig_catalog_by_id(migration_of(relid));
	read_progress(cs.m->id, &cs.prog);
	read_phase_log(&cs);
	read_table_state(&cs);
	cs.tbl = quote_literal_cstr(cs.prog.table_name);
	cs.abort_cmd = psprintf("`SELECT mig_abort(%s);`", cs.tbl);
	cs.aborted = cs.m->phase == MIG_PHASE_ABORTED;
	cs.contracted = cs.m->phase == MIG_PHASE_CONTRACTED;
	cs.keep = cs.m->pairs != NIL && ((MigPair *) linitial(cs.m->pairs))->keep_old;
	cs.live_job = cs.prog.job_id != 0 && !state_is_final(cs.prog.state);
	cs.backfill_done = cs.prog.job_id != 0 && mig_job_state_parse(cs.prog.state) == JOB_DONE;
	cs.trigger_ok = mig_trigger_fires(cs.trigger);

	initStringInfo(&buf);
	checklist_header(&buf, &cs);
	checklist_expand(&buf, &cs);
	checklist_backfill(&buf, &cs);
	checklist_validate(&buf, &cs);
	checklist_cutover(&buf, &cs);
	checklist_contract(&buf, &cs);

	PG_RETURN_TEXT_P(cstring_to_text(buf.data));
}

/*
 * migrate_ext.busy_sessions(): what a backfill of this database counts as
 * load right now, for a DBA wondering why a job says throttle_reason 'load'.
 */
PG_FUNCTION_INFO_V1(mig_busy_sessions);
Datum
mig_busy_sessions(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(mig_busy_sessions_count());
}
