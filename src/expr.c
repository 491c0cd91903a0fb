/*-------------------------------------------------------------------------
 *
 * expr.c
 *	  Parse, cook and deparse the up, down and check expressions.
 *
 * An expression is cooked once, at expand time, against the table, exactly
 * as cookDefault() and cookConstraint() in heap.c cook a generated column or
 * a CHECK constraint: the same restrictions (no subqueries, aggregates,
 * window or set-returning functions), coercion to the column's type, and
 * collations assigned.  The cooked tree is stored; it refers to columns by
 * attribute number and to functions by OID, so neither a later search_path
 * nor a renamed column changes what it computes.  Every error is raised
 * here, at expand time, never at the first write.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

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
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"

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

/*
 * Cook an expression against the table: the result is of type typid
 * (typmod) or, with is_check, boolean.  Volatile functions are rejected:
 * the trigger, the backfill and the validation must all compute the same
 * value from the same row.
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

	if (contain_volatile_functions(expr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("%s expression must not call volatile functions", what),
				 errdetail("The trigger, the backfill and the validation must all compute the same value from the same row."),
				 parser_errposition(pstate, exprLocation(raw))));

	free_parsestate(pstate);
	error_context_stack = errcallback.previous;
	return expr;
}

/*
 * The default up (or down): the column cast to the other side's type, with
 * the rules of an explicit cast, as "col::type" would be.
 */
Node *
mig_default_cast(Relation rel, AttrNumber attnum, Oid typid, int32 typmod)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	Node	   *var;
	Node	   *expr;

	var = (Node *) makeVar(1, attnum, att->atttypid, att->atttypmod,
						   att->attcollation, 0);
	expr = coerce_to_target_type(NULL, var, att->atttypid, typid, typmod,
								 COERCION_EXPLICIT, COERCE_EXPLICIT_CAST, -1);
	if (expr == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CANNOT_COERCE),
				 errmsg("column \"%s\" of type %s cannot be cast to type %s",
						NameStr(att->attname), format_type_be(att->atttypid),
						format_type_with_typemod(typid, typmod)),
				 errhint("Give an up expression that computes the new value, and a down expression for the way back.")));
	assign_expr_collations(NULL, expr);
	if (contain_volatile_functions(expr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("the cast from %s to %s is volatile",
						format_type_be(att->atttypid), format_type_with_typemod(typid, typmod)),
				 errhint("Give an up expression that computes the new value.")));
	return expr;
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
