/*
 * The guard (guard.c): event triggers that keep the columns of an active
 * migration from being dropped or retyped, refuse a BEFORE trigger that
 * would fire after the dual-write trigger, and record in the catalog an
 * ALTER TABLE that leaves the dual-write trigger other than ENABLE ALWAYS.
 */
CREATE FUNCTION migrate_ext.guard_ddl_start() RETURNS event_trigger
	AS 'MODULE_PATHNAME', 'mig_guard_ddl_start' LANGUAGE C;
CREATE FUNCTION migrate_ext.guard_ddl_end() RETURNS event_trigger
	AS 'MODULE_PATHNAME', 'mig_guard_ddl_end' LANGUAGE C;

CREATE EVENT TRIGGER migrate_ext_guard_start ON ddl_command_start
	WHEN TAG IN ('ALTER TABLE', 'DROP TRIGGER')
	EXECUTE FUNCTION migrate_ext.guard_ddl_start();
CREATE EVENT TRIGGER migrate_ext_guard_end ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER')
	EXECUTE FUNCTION migrate_ext.guard_ddl_end();

/* sql_drop: a dropped table aborts its active migration. */
CREATE FUNCTION migrate_ext.guard_sql_drop() RETURNS event_trigger
	AS 'MODULE_PATHNAME', 'mig_guard_sql_drop' LANGUAGE C;
CREATE EVENT TRIGGER migrate_ext_guard_drop ON sql_drop
	EXECUTE FUNCTION migrate_ext.guard_sql_drop();
