//! The PostgreSQL board store: persistent rooms' settings and compacted boards in a real
//! database that operators back up and replicate, apart from the ephemeral Redis.
//!
//! Tables (created by the migrations in `server/migrations/`, applied at start-up):
//! - `balint_boards (room, settings, board, saved_at)`: one row per persistent room, replaced
//!   whole at every save (an upsert is atomic: a reader sees the old row or the new one).
//! - `balint_deleted_rooms (room, deleted_at)`: the tombstones of deleted rooms, ids only.
//! - `balint_migrations (version, applied_at)`: which migrations ran
//!   (`server/migrations/balint_migrations.sql`).
//!
//! Nothing of an ephemeral room is ever written here. The tables live in the first schema of
//! the connection's `search_path`. The role the server uses may own that schema (it then
//! applies new migrations itself), or only read and write the rows of its tables, as
//! `deploy/postgres-init.sh` sets it up: the migrations are then applied by the schema's owner
//! (that script), before the nodes start; a node that finds one pending and may not apply it
//! refuses to start, and says so.
//!
//! The connection is plain TCP, without TLS: see "PostgreSQL" in README.md for how to cross
//! an untrusted network. The connection string carries a password, so it never reaches a log
//! line or an error message: errors here say what failed, never where.

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::{BoxFuture, FutureExt};
use tokio_postgres::NoTls;

use super::{BackendError, BackendResult, BoardStore, StoredBoard};

/// The migrations, in order: `(version, file, SQL)`, the version being the number the file's
/// name starts with. Each runs once, in one transaction. `deploy/postgres-init.sh` applies the
/// same files, read from the directory.
const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "0001_boards.sql", include_str!("../../migrations/0001_boards.sql"))];

/// The table recording which migrations ran, created when missing.
const BOOKKEEPING: &str = include_str!("../../migrations/balint_migrations.sql");

/// The advisory lock that serializes start-ups, so two nodes starting at once do not both
/// apply a migration. An arbitrary constant, the same for every node, and for
/// `deploy/postgres-init.sh` (108170570198644).
const MIGRATION_LOCK: i64 = 0x6261_6c69_6e74;

/// Persistent boards in PostgreSQL, through a small connection pool.
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
}

/// Maps any PostgreSQL or pool failure to a [`BackendError`] whose text names the failure
/// only (tokio-postgres and the pool never include the connection string in theirs).
fn failed(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> BackendError {
    move |e| BackendError::Postgres(format!("{what}: {e}"))
}

/// The refusal of a start-up step the role has no right to (`what`, then why and what to
/// do), when `e` is PostgreSQL's "insufficient privilege"; `None` for any other failure.
fn not_allowed(e: &tokio_postgres::Error, what: &str) -> Option<BackendError> {
    let db = e.as_db_error().filter(|db| db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)?;
    let why = db.message();
    Some(BackendError::Postgres(format!(
        "{what}, and this PostgreSQL role may not change the tables ({why}): apply the migrations \
         as the schema's owner first (deploy/postgres-init.sh does; see \"Upgrading\" in README.md), \
         then start the node"
    )))
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgresql://user:password@host:port/database`,
    /// or the key=value form), with at most `pool_size` connections, and applies the
    /// migrations it has not applied yet. Each call to the database gives up after `timeout`.
    ///
    /// A refusal says what failed, never the URL.
    pub async fn connect(url: &str, pool_size: usize, timeout: Duration) -> BackendResult<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            BackendError::Postgres(
                "the PostgreSQL URL is not valid (expected postgresql://user:password@host:port/database)".to_owned(),
            )
        })?;
        config.connect_timeout(timeout);
        config.application_name("balint-room");
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| failed("cannot set up the PostgreSQL pool")(&e))?;
        let store = PostgresStore { pool, timeout };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not applied yet, under an advisory lock, each in the same
    /// transaction as its record in `balint_migrations`. A role that may only read and write
    /// the tables starts when every migration is applied, and is refused with the reason and
    /// the remedy when one is pending.
    async fn migrate(&self) -> BackendResult<()> {
        let mut client = self.pool.get().await.map_err(|e| failed("cannot reach PostgreSQL")(&e))?;
        let transaction = client.transaction().await.map_err(|e| failed("cannot start a transaction")(&e))?;
        let migrate = failed("cannot apply the database migrations");
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| migrate(&e))?;
        // Created only when missing, so that a role limited to reading and writing the
        // tables (migrations applied by their owner) starts as well.
        let known: bool = transaction
            .query_one("SELECT to_regclass('balint_migrations') IS NOT NULL", &[])
            .await
            .map_err(|e| migrate(&e))?
            .get(0);
        if !known {
            transaction.batch_execute(BOOKKEEPING).await.map_err(|e| {
                not_allowed(&e, "the table balint_migrations is missing").unwrap_or_else(|| migrate(&e))
            })?;
        }
        let row = transaction
            .query_one("SELECT coalesce(max(version), 0) FROM balint_migrations", &[])
            .await
            .map_err(|e| migrate(&e))?;
        let applied: i32 = row.get(0);
        for (version, file, sql) in MIGRATIONS.iter().filter(|(version, _, _)| *version > applied) {
            let refused = |e: tokio_postgres::Error| {
                not_allowed(&e, &format!("the database migration {file} is pending")).unwrap_or_else(|| migrate(&e))
            };
            transaction.batch_execute(sql).await.map_err(refused)?;
            transaction
                .execute("INSERT INTO balint_migrations (version) VALUES ($1)", &[version])
                .await
                .map_err(refused)?;
            tracing::info!(version, "database migration applied");
        }
        transaction.commit().await.map_err(|e| migrate(&e))
    }

    /// Runs `work` with a pooled connection, giving up after the store's timeout.
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, tokio_postgres::Error>,
    ) -> BackendResult<T> {
        let attempt = async {
            let client = self.pool.get().await.map_err(|e| failed("cannot reach PostgreSQL")(&e))?;
            work(&client).await.map_err(|e| failed("PostgreSQL refused a query")(&e))
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| BackendError::Postgres("PostgreSQL did not answer in time".to_owned()))?
    }
}

impl BoardStore for PostgresStore {
    fn save(&self, room: &str, stored: StoredBoard) -> BoxFuture<'_, BackendResult<()>> {
        let room = room.to_owned();
        async move {
            // One statement: atomic, and never for a deleted room (a late save from another
            // node must not bring a deleted board back).
            self.with_client(async |client| {
                client
                    .execute(
                        "INSERT INTO balint_boards (room, settings, board)
                         SELECT $1, $2, $3
                         WHERE NOT EXISTS (SELECT 1 FROM balint_deleted_rooms WHERE room = $1)
                         ON CONFLICT (room) DO UPDATE
                         SET settings = excluded.settings, board = excluded.board, saved_at = now()",
                        &[&room, &stored.settings.as_ref(), &stored.board.as_ref()],
                    )
                    .await
            })
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<StoredBoard>>> {
        let room = room.to_owned();
        async move {
            let row = self
                .with_client(async |client| {
                    client.query_opt("SELECT settings, board FROM balint_boards WHERE room = $1", &[&room]).await
                })
                .await?;
            Ok(row.map(|row| StoredBoard {
                settings: Bytes::from(row.get::<_, Vec<u8>>(0)),
                board: Bytes::from(row.get::<_, Vec<u8>>(1)),
            }))
        }
        .boxed()
    }

    fn delete(&self, room: &str) -> BoxFuture<'_, BackendResult<()>> {
        let room = room.to_owned();
        async move {
            // One statement, so the board and its tombstone change together.
            self.with_client(async |client| {
                client
                    .execute(
                        "WITH gone AS (DELETE FROM balint_boards WHERE room = $1)
                         INSERT INTO balint_deleted_rooms (room) VALUES ($1) ON CONFLICT (room) DO NOTHING",
                        &[&room],
                    )
                    .await
            })
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn is_deleted(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>> {
        let room = room.to_owned();
        async move {
            let row = self
                .with_client(async |client| {
                    client.query_opt("SELECT 1 FROM balint_deleted_rooms WHERE room = $1", &[&room]).await
                })
                .await?;
            Ok(row.is_some())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::{BOOKKEEPING, MIGRATIONS, MIGRATION_LOCK};

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

    #[test]
    fn the_server_applies_exactly_the_migration_files_that_the_init_script_applies() {
        // deploy/postgres-init.sh applies every `NNNN_*.sql` of the directory, numbered by its
        // name; the server, the files it was built with. They must be the same.
        let mut files: Vec<(i32, String, String)> = std::fs::read_dir(DIR)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql") && name.as_bytes().first().is_some_and(u8::is_ascii_digit))
            .map(|name| {
                let (number, _) = name.split_once('_').expect("NNNN_name.sql");
                assert!(number.len() == 4 && number.bytes().all(|b| b.is_ascii_digit()), "{name}: NNNN_name.sql");
                let sql = std::fs::read_to_string(format!("{DIR}/{name}")).unwrap();
                (number.parse().unwrap(), name, sql)
            })
            .collect();
        files.sort();
        let built: Vec<(i32, String, String)> =
            MIGRATIONS.iter().map(|(version, file, sql)| (*version, (*file).to_owned(), (*sql).to_owned())).collect();
        assert_eq!(built, files);
        assert_eq!(std::fs::read_to_string(format!("{DIR}/balint_migrations.sql")).unwrap(), BOOKKEEPING);
    }

    #[test]
    fn the_init_script_takes_the_nodes_migration_lock() {
        let script =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/postgres-init.sh")).unwrap();
        assert!(script.contains(&format!("pg_advisory_xact_lock({MIGRATION_LOCK})")), "the same lock");
    }
}
