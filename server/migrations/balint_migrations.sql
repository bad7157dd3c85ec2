-- The record of which migrations ran: the version of each file NNNN_*.sql beside this one
-- (its number) that was applied, in the same transaction as the migration itself. Not a
-- migration: the server creates this table at start-up when it is missing, and so does
-- deploy/postgres-init.sh, as the schema's owner.
CREATE TABLE balint_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
