-- The dual-write rules, row by row (SPEC: "Dual-write rules")
-- A rename with both names live: name -> full_name; up and down are identity.
CREATE TABLE people (id int PRIMARY KEY, name text, note text);
INSERT INTO people VALUES (1, 'Ann', 'seed');
SELECT mig_expand('people', 'name', new_col => 'full_name') > 0 AS ok;
UPDATE people SET name = name;	-- touch: fills the new column
SELECT * FROM people;

-- auto, INSERT: only the old side written -> new from up
INSERT INTO people (id, name) VALUES (2, 'Bob');
-- auto, INSERT: only the new side written -> old from down
INSERT INTO people (id, full_name) VALUES (3, 'Cid');
-- auto, INSERT: both written and agreeing -> kept
INSERT INTO people (id, name, full_name) VALUES (4, 'Dee', 'Dee');
-- auto, INSERT: both written, disagreeing -> rejected, never overwritten
INSERT INTO people (id, name, full_name) VALUES (5, 'Eve', 'Evelyn');
SELECT * FROM people ORDER BY id;

-- auto, UPDATE: only old changed -> new recomputed
UPDATE people SET name = 'Ann Old' WHERE id = 1;
-- auto, UPDATE: only new changed -> old from down
UPDATE people SET full_name = 'Bob New' WHERE id = 2;
-- auto, UPDATE: both changed, agreeing -> kept
UPDATE people SET name = 'Cid Both', full_name = 'Cid Both' WHERE id = 3;
-- auto, UPDATE: both changed, disagreeing -> rejected
UPDATE people SET name = 'Dee A', full_name = 'Dee B' WHERE id = 4;
-- auto, UPDATE: an ORM that writes every column, only one of them changed
UPDATE people SET name = name, full_name = 'Dee ORM' WHERE id = 4;
-- auto, UPDATE: another column only -> the pair stays as it is
UPDATE people SET note = 'touched' WHERE id IN (1, 2);
SELECT * FROM people ORDER BY id;

-- writer = old: the new side is always recomputed, whatever was written to it
SET migrate_ext.writer = 'old';
UPDATE people SET full_name = 'ignored' WHERE id = 1;
INSERT INTO people (id, name, full_name) VALUES (6, 'Fay', 'also ignored');
-- writer = new: the old side is always recomputed by down
SET migrate_ext.writer = 'new';
UPDATE people SET name = 'ignored too' WHERE id = 2;
INSERT INTO people (id, name, full_name) VALUES (7, 'wrong', 'Gus');
RESET migrate_ext.writer;
SELECT * FROM people ORDER BY id;
SHOW migrate_ext.writer;
SET migrate_ext.writer = 'sideways';

-- COPY goes through the trigger, both ways
COPY people (id, name) FROM stdin;
8	Hal
\.
COPY people (id, full_name) FROM stdin;
9	Ivy
\.
-- INSERT ... ON CONFLICT: the insert and the update arm
INSERT INTO people (id, name) VALUES (9, 'Ivy Upsert') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name;
INSERT INTO people (id, full_name) VALUES (10, 'Jo') ON CONFLICT (id) DO NOTHING;
INSERT INTO people (id, full_name) VALUES (8, 'Hal Upsert') ON CONFLICT (id) DO UPDATE SET full_name = EXCLUDED.full_name;
SELECT * FROM people WHERE id >= 8 ORDER BY id;

-- the pair never diverges
SELECT count(*) AS diverged FROM people WHERE full_name IS DISTINCT FROM name;

-- A transform with no down: writing the new column alone is rejected
CREATE TABLE logins (id int PRIMARY KEY, email text);
SELECT mig_expand('logins', 'email', new_col => 'email_lc', up => 'lower(email)') > 0 AS ok;
INSERT INTO logins (id, email) VALUES (1, 'A@B.C');
INSERT INTO logins (id, email_lc) VALUES (2, 'x@y');
UPDATE logins SET email_lc = 'other' WHERE id = 1;
SET migrate_ext.writer = 'new';
UPDATE logins SET email = 'Q@R' WHERE id = 1;
RESET migrate_ext.writer;
-- both sides written and agreeing is fine without a down
INSERT INTO logins (id, email, email_lc) VALUES (3, 'C@D', 'c@d');
SELECT * FROM logins ORDER BY id;

-- A lossy transform with a down: a new-side write must survive the round trip
CREATE TABLE handles (id int PRIMARY KEY, handle text);
SELECT mig_expand('handles', 'handle', new_col => 'handle_lc', up => 'lower(handle)',
                  down => 'handle_lc') > 0 AS ok;
INSERT INTO handles (id, handle_lc) VALUES (1, 'fine');
INSERT INTO handles (id, handle_lc) VALUES (2, 'NotLower');
SELECT * FROM handles ORDER BY id;

-- A new-version INSERT into a table whose old column has a DEFAULT:
-- both sides end up set and disagree, so auto refuses and says what to do
CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL DEFAULT 'open');
SELECT mig_expand('tickets', 'status', new_col => 'state') > 0 AS ok;
INSERT INTO tickets (id, state) VALUES (1, 'closed');
SET migrate_ext.writer = 'new';
INSERT INTO tickets (id, state) VALUES (1, 'closed');
RESET migrate_ext.writer;
-- the NOT NULL of the old column is met by down before it is checked
INSERT INTO tickets (id, status, state) VALUES (2, 'open', 'open');
SELECT * FROM tickets ORDER BY id;

-- The trigger fires after the table's other BEFORE triggers and sees their row
CREATE TABLE notes (id int PRIMARY KEY, body text);
CREATE FUNCTION notes_trim() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN NEW.body := trim(NEW.body); RETURN NEW; END$$;
CREATE TRIGGER a_trim BEFORE INSERT OR UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION notes_trim();
SELECT mig_expand('notes', 'body', new_col => 'body_upper', up => 'upper(body)') > 0 AS ok;
INSERT INTO notes (id, body) VALUES (1, '  padded  ');
SELECT id, '[' || body || ']' AS body, '[' || body_upper || ']' AS body_upper FROM notes;

-- NULLs: an old NULL gives up(NULL); stable functions are refused (their
-- result depends on session settings), immutable ones allowed
CREATE TABLE events (id int PRIMARY KEY, at_text text);
SELECT mig_expand('events', 'at_text', new_col => 'at', type => 'date',
                  up => 'to_date(at_text, ''YYYY-MM-DD'')') > 0 AS ok;
SELECT mig_expand('events', 'at_text', new_col => 'at', type => 'date',
                  up => 'make_date(split_part(at_text, ''-'', 1)::int, split_part(at_text, ''-'', 2)::int, split_part(at_text, ''-'', 3)::int)') > 0 AS ok;
INSERT INTO events VALUES (1, '2024-02-29'), (2, NULL);
SELECT * FROM events ORDER BY id;
