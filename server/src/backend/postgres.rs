//! The PostgreSQL board store: persistent rooms' settings and compacted boards in a real
//! database that operators back up and replicate, apart from the ephemeral Redis.
//!
//! Tables (created by the migrations in `server/migrations/`, applied at start-up):
//! - `balint_boards (room, settings, board, saved_at)`: one row per persistent room, replaced
//!   whole at every save (an upsert is atomic: a reader sees the old row or the new one).
//! - `balint_deleted_rooms (room, deleted_at)`: the tombstones of deleted rooms, ids only.
//! - `balint_migrations (version, applied_at)`: which migrations ran.
//!
//! Nothing of an ephemeral room is ever written here. The tables live in the first schema of
//! the connection's `search_path` (PostgreSQL's default puts a schema named like the role
//! first), so the role the server uses needs no right outside its own schema.
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

/// The migrations, in order: `(version, SQL)`. Each runs once, in one transaction.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../migrations/0001_boards.sql"))];

/// The advisory lock that serializes start-ups, so two nodes starting at once do not both
/// apply a migration. An arbitrary constant, the same for every node.
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
    /// transaction as its record in `balint_migrations`.
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
            transaction
                .batch_execute(
                    "CREATE TABLE balint_migrations (
                        version integer PRIMARY KEY,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )",
                )
                .await
                .map_err(|e| migrate(&e))?;
        }
        let row = transaction
            .query_one("SELECT coalesce(max(version), 0) FROM balint_migrations", &[])
            .await
            .map_err(|e| migrate(&e))?;
        let applied: i32 = row.get(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > applied) {
            transaction.batch_execute(sql).await.map_err(|e| migrate(&e))?;
            transaction
                .execute("INSERT INTO balint_migrations (version) VALUES ($1)", &[version])
                .await
                .map_err(|e| migrate(&e))?;
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
