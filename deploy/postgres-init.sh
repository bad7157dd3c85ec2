#!/bin/sh
# Run once by the postgres image when its volume is empty (docker-entrypoint-initdb.d), as the
# superuser: creates the role the Balint Room nodes use. That role may log in to the `balint`
# database and owns the schema `balint` (the first of its search_path, being named like it),
# where the nodes create their tables at start-up (the migrations in server/migrations/) and
# read and write them. It has no right anywhere else: not superuser, cannot create databases
# or roles, cannot create anything in `public`, cannot connect to other databases.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$BALINT_DB_PASSWORD" <<'SQL'
CREATE ROLE balint LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
REVOKE ALL ON DATABASE balint FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
GRANT CONNECT ON DATABASE balint TO balint;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA balint AUTHORIZATION balint;
SQL
