/*-------------------------------------------------------------------------
 *
 * expr.c
 *	  Parse, cook and deparse the up, down and check expressions.
 *
 * An expression is cooked once, at expand time, against the table, exactly
 * as cookDefault() and cookConstraint() in heap.c cook a generated column or
 * a CHECK constraint: the same restrictions (no subqueries, aggregates,
 * window or set-returning functions), coercion to the column's type, and
 * collations assigned; and, stricter than a generated column, the rules of
 * mig_check_expr() (immutable, no system, whole-row or generated columns).
 * The cooked tree is stored; it refers to columns by attribute number and
 * to functions by OID, so neither a later search_path nor a renamed column
 * changes what it computes.  Every error is raised
 * here, at expand time, never at the first write.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/heap.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/regproc.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

#include "migrate_ext.h"

typedef struct ExprErrorContext
{
	const char *what;			/* "up", "down" or "check" */
	const char *src;
} ExprErrorContext;

/*
 * Errors from the parser carry a position into the expression text, not
 * into the statement the client sent (a call of mig_expand); move it to the
 * internal query, as functions.c does for SQL function bodies, so that psql
 * points at the right character.
 */
static void
expr_error_callback(void *arg)
{
	ExprErrorContext *ctx = (ExprErrorContext *) arg;
	int			pos = geterrposition();

	if (pos > 0)
	{
		errposition(0);
		internalerrposition(pos);
		internalerrquery(ctx->src);
	}
	errcontext("%s expression \"%s\"", ctx->what, ctx->src);
}

/*
 * Parse one SQL expression.  The PL/pgSQL expression mode parses exactly
 * one SELECT target list and nothing after it, so text that tries to end
 * the expression and smuggle in a second statement is a syntax error; a
 * FROM, WHERE or similar clause is rejected here.
 */
static Node *
parse_one_expr(const char *src, const char *what)
{
	List	   *raw;
	SelectStmt *stmt;
	ResTarget  *rt;

	raw = raw_parser(src, RAW_PARSE_PLPGSQL_EXPR);
	if (list_length(raw) != 1 || !IsA(linitial_node(RawStmt, raw)->stmt, SelectStmt))
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("%s expression must be a single expression", what)));
	stmt = (SelectStmt *) linitial_node(RawStmt, raw)->stmt;
	if (list_length(stmt->targetList) != 1 ||
		stmt->distinctClause || stmt->intoClause || stmt->fromClause ||
		stmt->whereClause || stmt->groupClause || stmt->havingClause ||
		stmt->windowClause || stmt->sortClause || stmt->limitOffset ||
		stmt->limitCount || stmt->lockingClause || stmt->withClause ||
		stmt->op != SETOP_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("%s expression must be a single expression over the table's columns",
						what),
				 errhint("Write the expression alone, as in a CHECK constraint: no FROM, WHERE or list.")));
	rt = linitial_node(ResTarget, stmt->targetList);
	if (rt->name != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("%s expression must not have an alias", what)));
	return rt->val;
}

/* What mig_check_expr walks with. */
typedef struct ExprCheck
{
	Relation	rel;
	const char *what;
	ParseState *pstate;			/* for error positions; may be NULL */
	Oid			bad_func;		/* scratch for the function checker */
} ExprCheck;

static bool
not_immutable(Oid funcid, void *context)
{
	ExprCheck  *ck = (ExprCheck *) context;

	if (func_volatile(funcid) == PROVOLATILE_IMMUTABLE)
		return false;
	ck->bad_func = funcid;
	return true;
}

static bool
is_zoned(Oid typid)
{
	return typid == TIMESTAMPTZOID || typid == TIMETZOID;
}

static bool
is_unzoned(Oid typid)
{
	return typid == TIMESTAMPOID || typid == TIMEOID || typid == DATEOID;
}

/*
 * Does the function convert between a zoned and an unzoned time type (and
 * so depend on the session's TimeZone)?
 */
static bool
is_zone_conversion(Oid funcid)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	Form_pg_proc proc;
	bool		zoned;
	bool		unzoned;

	if (!HeapTupleIsValid(tup))
		return false;
	proc = (Form_pg_proc) GETSTRUCT(tup);
	zoned = is_zoned(proc->prorettype);
	unzoned = is_unzoned(proc->prorettype);
	for (int i = 0; i < proc->pronargs; i++)
	{
		zoned |= is_zoned(proc->proargtypes.values[i]);
		unzoned |= is_unzoned(proc->proargtypes.values[i]);
	}
	ReleaseSysCache(tup);
	return zoned && unzoned;
}

static void
refuse_function(ExprCheck *ck, Node *node)
{
	char		vol = func_volatile(ck->bad_func);

	if (is_zone_conversion(ck->bad_func))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("%s expression must be immutable", ck->what),
				 errdetail("Function %s converts between time zones by the session's TimeZone setting, so sessions in different zones and the backfill would compute different values from the same row.",
						   format_procedure(ck->bad_func)),
				 errhint("Name the zone: write (column AT TIME ZONE '%s') to convert as this database does ('%s' is its TimeZone).",
						 GetConfigOptionResetString("TimeZone"),
						 GetConfigOptionResetString("TimeZone")),
				 parser_errposition(ck->pstate, exprLocation(node))));
	if (ck->bad_func == F_TEXTANYCAT || ck->bad_func == F_ANYTEXTCAT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("%s expression must be immutable", ck->what),
				 errdetail("|| between text and a value of another type is stable: it prints that value by its type's output function, which may depend on session settings."),
				 errhint("Cast the other operand to text explicitly, as in col::text."),
				 parser_errposition(ck->pstate, exprLocation(node))));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
			 errmsg("%s expression must be immutable", ck->what),
			 errdetail("Function %s is %s: its result can depend on session settings, on the time or on what tables hold, so the trigger in each session, the backfill and the validation could compute different values from the same row.",
					   format_procedure(ck->bad_func),
					   vol == PROVOLATILE_STABLE ? "stable" : "volatile"),
			 errhint("Use only immutable functions and casts; to parse text as a date or a time, use an explicit immutable function of your own that fixes the format."),
			 parser_errposition(ck->pstate, exprLocation(node))));
}

/*
 * The rules for an up, down or check expression, beyond what the parser
 * enforces for a generated column: deterministic (immutable, except a cast
 * to or from an enum through text, which depends only on the enum's
 * catalog), and no
 * system column, whole-row reference or stored generated column (a BEFORE
 * trigger sees the generated value stale or NULL).  Children are checked
 * before their parent.
 */
static bool
check_walker(Node *node, ExprCheck *ck)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var))
	{
		Var		   *var = (Var *) node;

		if (var->varattno <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("%s expression must not read %s", ck->what,
							var->varattno == 0 ? "the whole row" : "a system column"),
					 errdetail("It may read only the table's ordinary columns, by name."),
					 parser_errposition(ck->pstate, var->location)));
		if (TupleDescAttr(RelationGetDescr(ck->rel), var->varattno - 1)->attgenerated)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("%s expression must not read generated column \"%s\"", ck->what,
							NameStr(TupleDescAttr(RelationGetDescr(ck->rel), var->varattno - 1)->attname)),
					 errdetail("The dual-write trigger runs before the generated value is computed."),
					 errhint("Repeat the generation expression instead."),
					 parser_errposition(ck->pstate, var->location)));
		return false;
	}
	/* innermost first, so that the error names the function at fault */
	if (expression_tree_walker(node, check_walker, (void *) ck))
		return true;
	if (IsA(node, SQLValueFunction) || IsA(node, NextValueExpr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("%s expression must be immutable", ck->what),
				 errdetail("It reads the session's state (the time, the user or a sequence), so the trigger in each session, the backfill and the validation would compute different values from the same row."),
				 parser_errposition(ck->pstate, exprLocation(node))));
	if (IsA(node, CoerceViaIO))
	{
		/* the I/O of an enum depends only on the enum's catalog */
		CoerceViaIO *io = (CoerceViaIO *) node;
		Oid			argtype = exprType((Node *) io->arg);
		Oid			func;
		Oid			ioparam;
		bool		isvarlena;

		getTypeOutputInfo(argtype, &func, &isvarlena);
		if (!type_is_enum(argtype) && not_immutable(func, ck))
			refuse_function(ck, node);
		getTypeInputInfo(io->resulttype, &func, &ioparam);
		if (!type_is_enum(io->resulttype) && not_immutable(func, ck))
			refuse_function(ck, node);
	}
	else if (check_functions_in_node(node, not_immutable, ck))
		refuse_function(ck, node);
	return false;
}

void
mig_check_expr(Relation rel, Node *expr, const char *what, ParseState *pstate)
{
	ExprCheck	ck;

	ck.rel = rel;
	ck.what = what;
	ck.pstate = pstate;
	ck.bad_func = InvalidOid;
	(void) check_walker(expr, &ck);
}

/*
 * Cook an expression against the table: the result is of type typid
 * (typmod) or, with is_check, boolean.  It must be deterministic (see
 * mig_check_expr): the trigger, the backfill and the validation must all
 * compute the same value from the same row.
 */
Node *
mig_cook_expr(Relation rel, const char *src, const char *what,
			  Oid typid, int32 typmod, bool is_check)
{
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	ExprErrorContext ectx;
	ErrorContextCallback errcallback;
	Node	   *raw;
	Node	   *expr;
	Oid			exprtype;

	ectx.what = what;
	ectx.src = src;
	errcallback.callback = expr_error_callback;
	errcallback.arg = &ectx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	raw = parse_one_expr(src, what);

	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = src;
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   NULL, false, true);
	addNSItemToQuery(pstate, nsitem, true, true, true);

	if (is_check)
	{
		expr = transformExpr(pstate, raw, EXPR_KIND_CHECK_CONSTRAINT);
		expr = coerce_to_boolean(pstate, expr, "CHECK");
	}
	else
	{
		Node	   *coerced;

		expr = transformExpr(pstate, raw, EXPR_KIND_GENERATED_COLUMN);
		exprtype = exprType(expr);
		coerced = coerce_to_target_type(pstate, expr, exprtype, typid, typmod,
										COERCION_ASSIGNMENT,
										COERCE_IMPLICIT_CAST, -1);
		if (coerced == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("%s expression is of type %s but the column it computes is of type %s",
							what, format_type_be(exprtype),
							format_type_with_typemod(typid, typmod)),
					 errhint("Rewrite the expression or cast it, as in (%s)::%s.",
							 src, format_type_with_typemod(typid, typmod)),
					 parser_errposition(pstate, exprLocation(raw))));
		expr = coerced;
	}
	assign_expr_collations(pstate, expr);

	mig_check_expr(rel, expr, what, pstate);

	free_parsestate(pstate);
	error_context_stack = errcallback.previous;
	return expr;
}

/*
 * The default up (or down): the column cast to the other side's type with
 * the rules of an explicit cast ("col::type"), but its length or precision
 * (the typmod) applied as an assignment applies it, as ALTER TABLE ...
 * TYPE does: an explicit cast to varchar(3) or char(3) or bit(3) silently
 * cuts a longer value, which, once contract drops the old column, would
 * lose data without a word.  Applied by assignment, a value that does not
 * fit is an error (22001), which mig_preflight and mig_validate report,
 * and the way out is an up that says what to do with it.
 */
Node *
mig_default_cast(Relation rel, AttrNumber attnum, Oid typid, int32 typmod)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	Node	   *var;
	Node	   *expr;

	var = (Node *) makeVar(1, attnum, att->atttypid, att->atttypmod,
						   att->attcollation, 0);
	expr = coerce_to_target_type(NULL, var, att->atttypid, typid, -1,
								 COERCION_EXPLICIT, COERCE_EXPLICIT_CAST, -1);
	if (expr != NULL && typmod >= 0)
		expr = coerce_to_target_type(NULL, expr, typid, typid, typmod,
									 COERCION_ASSIGNMENT, COERCE_IMPLICIT_CAST, -1);
	if (expr == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CANNOT_COERCE),
				 errmsg("column \"%s\" of type %s cannot be cast to type %s",
						NameStr(att->attname), format_type_be(att->atttypid),
						format_type_with_typemod(typid, typmod)),
				 errhint("Give an up expression that computes the new value, and a down expression for the way back.")));
	assign_expr_collations(NULL, expr);
	mig_check_expr(rel, expr, "default cast", NULL);
	return expr;
}

/*
 * Cook new_default, the default the new column gets at contract, exactly
 * as ALTER TABLE ... SET DEFAULT would (cookDefault: no column references,
 * coerced to the new column's type), so that one that does not fit is an
 * error at expand, not at contract.  A default may be volatile (now(),
 * nextval()): it runs at INSERT time, never in the trigger or the backfill.
 */
Node *
mig_cook_default(Relation rel, const char *src, Oid typid, int32 typmod,
				 const char *attname)
{
	ParseState *pstate;
	ExprErrorContext ectx;
	ErrorContextCallback errcallback;
	Node	   *expr;

	ectx.what = "new_default";
	ectx.src = src;
	errcallback.callback = expr_error_callback;
	errcallback.arg = &ectx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = src;
	expr = cookDefault(pstate, parse_one_expr(src, "new_default"), typid, typmod,
					   attname, '\0');
	Assert(expr != NULL);
	free_parsestate(pstate);
	error_context_stack = errcallback.previous;
	return expr;
}

typedef struct SubstContext
{
	AttrNumber	attnum;
	Node	   *replacement;
} SubstContext;

static Node *
subst_mutator(Node *node, SubstContext *ctx)
{
	if (node == NULL)
		return NULL;
	if (IsA(node, Var) && ((Var *) node)->varlevelsup == 0 &&
		((Var *) node)->varattno == ctx->attnum)
		return copyObject(ctx->replacement);
	return expression_tree_mutator(node, subst_mutator, (void *) ctx);
}

/*
 * A copy of expr with every reference to column attnum (of the expression's
 * own level) replaced by a copy of replacement.  Written once for preflight
 * (up() applied to the old value, down(up(x))) and validation (the
 * round-trip check), which must build the same expression.
 */
Node *
mig_subst_column(Node *expr, AttrNumber attnum, Node *replacement)
{
	SubstContext ctx;

	ctx.attnum = attnum;
	ctx.replacement = replacement;
	return subst_mutator(expr, &ctx);
}

/*
 * SQL text for a cooked expression over the table, for the statements that
 * the backfill and the validation run and for display.  Function and
 * operator names come out schema-qualified wherever the current search_path
 * would not find them, so callers run the text with search_path set to
 * pg_catalog, as pg_dump does.
 */
char *
mig_deparse(Node *expr, Oid relid)
{
	return deparse_expression(expr, deparse_context_for(get_rel_name(relid), relid),
							  false, false);
}
