/*
 * The dry run (preflight.c): the rows a migration would choke on, found
 * before mig_expand, changing nothing.
 */
CREATE FUNCTION mig_preflight(tbl pg_catalog.regclass, col pg_catalog.name,
							  type pg_catalog.text DEFAULT NULL,
							  up pg_catalog.text DEFAULT NULL,
							  not_null pg_catalog.bool DEFAULT false,
							  check_expr pg_catalog.text DEFAULT NULL)
	RETURNS TABLE (check_name pg_catalog.text, passed pg_catalog.bool,
				   failing pg_catalog.int8, detail pg_catalog.text)
	AS 'MODULE_PATHNAME', 'mig_preflight' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mig_preflight IS
	'a dry run of mig_expand that changes nothing: the rows whose up would fail or violate not_null, check_expr or a unique index, with counts and example keys';
