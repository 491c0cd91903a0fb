/*-------------------------------------------------------------------------
 *
 * contract.h
 *	  What the files of mig_contract share: the plan, and the DSM segment
 *	  between the caller and its background worker.
 *
 * contract_plan.c works out a ContractPlan from the catalog; contract.c (the
 * caller) computes one to check before it starts the worker, and
 * contract_worker.c computes it again and carries it out; contract_views.c
 * carries the dependent views, contract_undo.c records and removes what an
 * unfinished contract added, contract_gate.c is the gate before the point
 * of no return, contract_predict.c turns the plan into validation's
 * checks (for validate.c), and contract_partition.c says how the finish
 * reads a partitioned table.  Private to those files and validate.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CONTRACT_H
#define CONTRACT_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/parsenodes.h"
#include "storage/spin.h"
#include "utils/relcache.h"

#include "migrate_ext.h"

/*
 * What the caller and the worker share, at the start of the DSM segment;
 * the shm_mq follows it.
 */
typedef struct ContractShared
{
	slock_t		mutex;
	Oid			relid;
	int64		migration_id;
	bool		force;
	bool		finish;			/* contracted already: only finish what the
								 * swap left recorded (the foreign keys that
								 * reference the table, see contract_undo.c) */
	/* the caller's lock ladder settings, which the worker adopts */
	int			lock_timeout_ms;
	int			lock_timeout_max_ms;
	int			lock_retries;
	bool		done;			/* set by the worker once contracted */
	bool		caller_gone;	/* set when the caller stops waiting */
} ContractShared;

/* An index of the old column, and its copy on the new one. */
typedef struct ContractIndex
{
	Oid			oldoid;
	char	   *oldname;
	char	   *tmpname;		/* the copy's name until the swap */
	char		contype;		/* CONSTRAINT_PRIMARY, _UNIQUE or 0 */
	char	   *conname;
	bool		deferrable;
	bool		deferred;
	bool		replident;
	bool		clustered;
	IndexStmt  *stmt;			/* CREATE INDEX CONCURRENTLY of the copy */
	/* on a partitioned table (contract_partition.c) */
	Oid			relid;			/* the table of a part; 0: the plan's */
	char	   *attach_to;		/* a part: its parent level's copy, qualified */
	bool		leaf;			/* a part on a leaf (built concurrently) */
	List	   *parts;			/* of ContractIndex *, the sub-levels' and
								 * leaves' copies, deepest first */
} ContractIndex;

/* A foreign key from or to the old column, and its copy. */
typedef struct ContractFkey
{
	Oid			conoid;			/* the old foreign key */
	char	   *oldname;
	char	   *tmpname;
	Oid			conrelid;		/* the referencing table */
	Oid			confrelid;		/* the referenced table */
	char	   *conrel;			/* qualified name of conrelid */
	char	   *adddef;			/* ALTER TABLE ... ADD the copy NOT VALID */
	bool		at_swap;		/* to a partitioned table: added in the swap,
								 * validated after it */
} ContractFkey;

/* A CHECK constraint of the old column, re-stated on the new one. */
typedef struct ContractCheck
{
	char	   *oldname;
	char	   *tmpname;		/* the copy's name until the swap */
	bool		noinherit;
	Node	   *expr;			/* on the new column */
	char	   *sql;
} ContractCheck;

/* A new column and what it takes over from its old column. */
typedef struct ContractColumn
{
	MigPair    *pair;
	char	   *oldname;
	char	   *newname;		/* current name */
	char	   *finalname;		/* name after the swap */
	bool		not_null;
	char	   *nn_check;		/* the CHECK that proves NOT NULL */
	char	   *check_tmp;		/* the check_expr asked for at expand */
	char	   *check_sql;
	Node	   *default_expr;	/* the old column's default, cooked */
	char	   *default_sql;
	Oid			owned_seq;		/* a serial's sequence, OWNED BY the old column */
	bool		widen_seq;		/* ... whose type is narrower than the column */
	Oid			ident_seq;		/* an identity's sequence */
	char		identity;
	char	   *comment;
	Oid			old_typid;
	Oid			new_typid;
	bool		has_acl;		/* column privileges to copy */
	List	   *options;		/* attoptions, of DefElem */
	int			stattarget;		/* -1: the default */
	char		storage;		/* 0: the type's default */
	char		compression;	/* 0: the default */
} ContractColumn;

/* Everything mig_contract will do, computed from the catalog. */
typedef struct ContractPlan
{
	Oid			relid;
	int64		migration_id;
	char	   *nspname;
	char	   *relname;
	char	   *qname;
	char	   *new_type_name;	/* for sequences: the new column's type */
	List	   *columns;		/* of ContractColumn * */
	List	   *dropcols;		/* names of the old columns */
	List	   *indexes;		/* of ContractIndex * */
	List	   *fkeys;			/* of ContractFkey * */
	List	   *lockrels;		/* OIDs locked for the swap */
	struct AttrMap *map;		/* old attnum -> new (0 for a split) */
	List	   *blockers;		/* descriptions of what would stop contract */
	List	   *checkoids;		/* CHECK constraints of the old columns */
	List	   *viewdirect;		/* views reading an old column */
	List	   *views;			/* every view to carry, shallowest first */
	List	   *view_reads;		/* per view of views: the views of views it
								 * reads (List * of OIDs) */
	List	   *view_replace;	/* views re-pointed in place by CREATE OR
								 * REPLACE (their shape does not change) */
	List	   *view_keep;		/* views not dropped and created again: those
								 * of view_replace, and those only above them */
	List	   *matviews;		/* materialized views rebuilt beside the old
								 * ones before the swap, shallowest first */
	List	   *view_copies;	/* views created again that such a rebuilt
								 * materialized view reads: built beside too */
	List	   *checks;			/* of ContractCheck * */
	List	   *leaves;			/* a partitioned table's leaf partitions */
} ContractPlan;

/* A check of mig_validate that predicts contract: failing 0 is a pass. */
typedef struct MigPrediction
{
	char	   *name;
	int64		failing;
	char	   *detail;
} MigPrediction;

/* contract_predict.c, for validate.c */
extern List *mig_contract_predict(Relation rel, MigMigration *m,
								  const char *user_path);

/* contract_gate.c */
extern void mig_finish_gate(Relation rel, MigMigration *m, bool force,
							const char *what);

/* contract_views.c */
extern char *mig_contract_copy_name(const char *name, Oid oid);
extern void mig_contract_plan_views(ContractPlan *plan, List *direct);
extern Oid	mig_rule_view(Oid ruleoid, bool *is_return, char *relkind);
extern List *mig_contract_capture_views(ContractPlan *plan, StringInfo drop_sql);
extern void mig_contract_recreate_views(ContractPlan *plan, List *views);
extern void mig_contract_predict_views(ContractPlan *plan);
extern Oid	mig_contract_build_copy(ContractPlan *plan, Oid relid, List *from,
									List *to);
extern void mig_contract_append_grants(StringInfo out, const char *qname,
									   const char *col);

/* contract_undo.c */
extern void mig_contract_record(int64 migration_id, Oid classid, Oid objid,
								Oid relid);
extern bool mig_contract_recorded(int64 migration_id, Oid classid, Oid objid);

/* An object recorded in migrate_ext.contract_object. */
typedef struct ContractObject
{
	Oid			classid;
	Oid			objid;
	Oid			relid;
} ContractObject;

extern List *mig_contract_recorded_list(int64 migration_id);

/* contract_partition.c */
extern List *mig_partition_leaves(Oid relid, LOCKMODE lockmode);
extern char *mig_partition_from(Oid relid);
extern const char *mig_partition_ctid_key(Oid relid);
extern void mig_partition_plan(ContractPlan *plan);
extern void mig_partition_swap(ContractPlan *plan);
extern void mig_partition_fkey_rename_sql(ContractFkey *fk, StringInfo sql);
extern const char *mig_partition_fkey_body(ContractFkey *fk);
extern void mig_partition_rename_sql(ContractPlan *plan, ContractIndex *ci,
									 StringInfo sql);

/* contract_plan.c */
extern ContractPlan *mig_contract_plan_build(Relation rel, MigMigration *m);
extern ContractPlan *mig_contract_plan(Relation rel, MigMigration *m,
									   bool force);

/* contract_worker.c: the worker's entry point, started by name */
extern PGDLLEXPORT void mig_contract_worker_main(Datum main_arg);
extern PGDLLEXPORT void mig_contract_finish_main(Datum main_arg);

#endif							/* CONTRACT_H */
