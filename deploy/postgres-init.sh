#!/bin/sh
# Sets up the database of Balint Room's PostgreSQL board store, or brings it up to date.
#
# Run by the postgres image on its first start (an empty volume), from
# /docker-entrypoint-initdb.d, as the superuser; run it again, the same way, before upgrading
# the nodes to a version with a new migration:
#
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-balint.sh
#
# It runs psql (15 or later) as the superuser $POSTGRES_USER in the database $POSTGRES_DB
# (psql's PGHOST, PGPORT and PGPASSWORD say where, as for any psql), and leaves there:
#
# - the owner role $BALINT_DB_OWNER (default balint_owner): cannot log in; owns the schema
#   $BALINT_DB_SCHEMA (default balint) and every table in it. The migrations run as this role.
# - the login role $BALINT_DB_ROLE (default balint), with the password $BALINT_DB_PASSWORD
#   (needed only when the role is created; an existing role keeps its password), for the
#   nodes. It may connect to this database, use the schema (its search_path), and SELECT,
#   INSERT, UPDATE and DELETE the rows of its tables (only read balint_migrations), and use
#   their sequences; nothing else. It owns nothing, so it cannot create, alter or drop a
#   table; it cannot create a schema, a temporary table or a large object; it is not
#   superuser and cannot create databases or roles.
# - no right for PUBLIC on the database, nor on its schema `public`; and unless
#   BALINT_DB_CLOSE_OTHER_DATABASES=no, no CONNECT or TEMPORARY for PUBLIC on the cluster's
#   other databases either (`postgres`, `template1`), so the login role cannot connect to
#   them. Set it to `no` on a cluster shared with other applications that rely on PUBLIC's
#   CONNECT, and keep the role out of their databases in pg_hba.conf instead.
#
# Then it applies, as the owner role, each migration of $BALINT_MIGRATIONS_DIR (default
# /balint/migrations, where docker-compose.yml mounts server/migrations/ read-only) that is
# not recorded in balint_migrations yet: the files NNNN_*.sql in order, each in a transaction
# of its own with its record, under the advisory lock the nodes take for the same (see
# server/src/backend/postgres.rs). It holds no SQL of the migrations itself.
#
# Every step is idempotent: run again, it creates what is missing, sets the roles' attributes
# and memberships and their rights on the database, the schema and its tables back to the
# above, and applies only the migrations not applied yet. A database set up before the owner
# role existed (the login role owning the schema and its tables) is converted: whatever the
# login role owns in it passes to the owner role.
set -eu

admin="${POSTGRES_USER:?set POSTGRES_USER to the superuser}"
database="${POSTGRES_DB:?set POSTGRES_DB to the database of the board store}"
login="${BALINT_DB_ROLE:-balint}"
owner="${BALINT_DB_OWNER:-balint_owner}"
schema="${BALINT_DB_SCHEMA:-balint}"
migrations="${BALINT_MIGRATIONS_DIR:-/balint/migrations}"
close_others="${BALINT_DB_CLOSE_OTHER_DATABASES:-yes}"

fail() {
  echo "postgres-init.sh: $*" >&2
  exit 1
}

[ "$login" != "$owner" ] || fail "the login role and the owner role must differ (BALINT_DB_ROLE, BALINT_DB_OWNER)"
[ "$login" != "$admin" ] && [ "$owner" != "$admin" ] || fail "the superuser cannot be the login or the owner role"
case "$close_others" in
  yes) close_others=on ;;
  no) close_others=off ;;
  *) fail "BALINT_DB_CLOSE_OTHER_DATABASES must be yes or no" ;;
esac
[ -f "$migrations/balint_migrations.sql" ] ||
  fail "no migrations in $migrations (mount server/migrations/ there, or set BALINT_MIGRATIONS_DIR)"

run_psql() {
  psql -X -q -v ON_ERROR_STOP=1 --username "$admin" --dbname "$database" \
    -v database="$database" -v login="$login" -v owner="$owner" -v schema="$schema" "$@"
}

login_exists=$(run_psql -At <<'SQL'
SELECT count(*) FROM pg_roles WHERE rolname = :'login';
SQL
)
if [ "$login_exists" = 0 ] && [ -z "${BALINT_DB_PASSWORD:-}" ]; then
  fail "set BALINT_DB_PASSWORD: the role $login is created with it"
fi

# The roles, the schema and the rights, in one transaction.
run_psql -v close_others="$close_others" -v bookkeeping="$migrations/balint_migrations.sql" <<'SQL'
BEGIN;
-- From the environment, not the command line, which other local users can read.
\getenv password BALINT_DB_PASSWORD

SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') AS create_owner,
       NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'login') AS create_login,
       NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = :'schema') AS create_schema \gset
\if :create_owner
CREATE ROLE :"owner" NOLOGIN;
\endif
\if :create_login
CREATE ROLE :"login" LOGIN PASSWORD :'password';
\endif
-- Whatever the roles were given before (by hand, or by an older version of this script).
ALTER ROLE :"owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE :"login" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
-- Nor rights through other roles.
SELECT format('REVOKE %I FROM %I', granted.rolname, member.rolname)
  FROM pg_auth_members
  JOIN pg_roles AS granted ON granted.oid = pg_auth_members.roleid
  JOIN pg_roles AS member ON member.oid = pg_auth_members.member
 WHERE member.rolname IN (:'login', :'owner') \gexec
\if :create_schema
CREATE SCHEMA :"schema" AUTHORIZATION :"owner";
\endif
-- The login role owns nothing here (before the owner role, it owned the schema and tables).
REASSIGN OWNED BY :"login" TO :"owner";
ALTER SCHEMA :"schema" OWNER TO :"owner";

-- This database: CONNECT for the login role; nothing for anyone else (no TEMPORARY either).
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
REVOKE ALL ON DATABASE :"database" FROM :"login", :"owner";
GRANT CONNECT ON DATABASE :"database" TO :"login";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
-- Large objects would be storage outside the tables.
REVOKE EXECUTE ON FUNCTION lo_creat(integer), lo_create(oid), lo_from_bytea(oid, bytea) FROM PUBLIC;
\if :close_others
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', datname)
  FROM pg_database WHERE datname <> current_database() AND datallowconn ORDER BY datname \gexec
\endif

-- The schema: usage only; its tables (and those of every later migration, through the
-- default privileges) for reading and writing rows.
REVOKE ALL ON SCHEMA :"schema" FROM PUBLIC, :"login";
GRANT USAGE ON SCHEMA :"schema" TO :"login";
ALTER ROLE :"login" IN DATABASE :"database" SET search_path TO :"schema";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"login";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema" GRANT USAGE ON SEQUENCES TO :"login";

-- The record of applied migrations, as the server creates it when missing.
SET LOCAL ROLE :"owner";
SET LOCAL search_path TO :"schema";
SELECT to_regclass('balint_migrations') IS NULL AS create_bookkeeping \gset
\if :create_bookkeeping
\i :bookkeeping
\endif
RESET ROLE;

REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM PUBLIC, :"login";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA :"schema" TO :"login";
REVOKE INSERT, UPDATE, DELETE ON :"schema".balint_migrations FROM :"login";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM PUBLIC, :"login";
GRANT USAGE ON ALL SEQUENCES IN SCHEMA :"schema" TO :"login";

COMMIT;
SQL

# The migrations not applied yet, in order, as the owner role. 108170570198644 is
# MIGRATION_LOCK in server/src/backend/postgres.rs: a node starting meanwhile waits.
for file in "$migrations"/[0-9][0-9][0-9][0-9]_*.sql; do
  [ -f "$file" ] || continue
  name=$(basename "$file")
  run_psql -v file="$file" -v name="$name" -v version="${name%%_*}" <<'SQL'
BEGIN;
SELECT pg_advisory_xact_lock(108170570198644) AS locked \gset
SET LOCAL ROLE :"owner";
SET LOCAL search_path TO :"schema";
SELECT NOT EXISTS (SELECT FROM balint_migrations WHERE version >= :'version'::integer) AS pending \gset
\if :pending
\i :file
INSERT INTO balint_migrations (version) VALUES (:'version'::integer);
\echo postgres-init.sh: applied :name
\endif
COMMIT;
SQL
done
