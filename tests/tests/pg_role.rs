//! The PostgreSQL role the nodes use, as the Compose deployment sets it up: the script
//! `deploy/postgres-init.sh` runs as the superuser against a fresh database, as the postgres
//! image runs it on an empty volume; then a real node works as the role it made, and that
//! role is refused everything but reading and writing the rows of its tables.
//!
//! Each test starts a PostgreSQL cluster of its own (roles and the rights on databases belong
//! to a whole cluster, and the script takes PUBLIC's rights on the cluster's other databases,
//! so it must not run on the shared test server). They need PostgreSQL's programs and `psql`
//! (`scripts/test.sh` installs them), and fail, never skip, without them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use balint_e2e::process::{
    create_room, free_port, postgres_board, server_binary, stored_in_postgres, unloaded, NodeProcess, PostgresProcess,
};
use balint_e2e::YClient;
use tokio_postgres::error::SqlState;

const SECRET: &str = "a secret shared across restarts of the test node";
/// The password the script gives the login role. Trust authentication ignores it; it is here
/// to show that it never reaches a log line.
const PASSWORD: &str = "pw-of-the-nodes-role-never-logged";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `deploy/postgres-init.sh` as the postgres image does (the superuser `postgres`, the
/// database `balint`), with the migrations of `migrations`, and returns what it printed.
fn init_script(postgres: &PostgresProcess, migrations: &Path) -> String {
    let mut command = Command::new(repository().join("deploy").join("postgres-init.sh"));
    for variable in ["PGUSER", "PGDATABASE", "PGPASSWORD", "PGOPTIONS", "PGSERVICE", "PGSERVICEFILE"] {
        command.env_remove(variable);
    }
    command
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", postgres.port.to_string())
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", "balint")
        .env("BALINT_DB_PASSWORD", PASSWORD)
        .env("BALINT_MIGRATIONS_DIR", migrations)
        .stdin(Stdio::null());
    let out = command.output().expect("deploy/postgres-init.sh runs (it needs psql: scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "deploy/postgres-init.sh failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn migrations() -> PathBuf {
    repository().join("server").join("migrations")
}

/// The login role's URL, as the nodes of the Compose deployment have it.
fn nodes_url(postgres: &PostgresProcess) -> String {
    format!("postgresql://balint:{PASSWORD}@127.0.0.1:{}/balint", postgres.port)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The superuser, in `database`.
async fn superuser(postgres: &PostgresProcess, database: &str) -> tokio_postgres::Client {
    connect(&format!("postgresql://postgres@127.0.0.1:{}/{database}", postgres.port)).await.unwrap()
}

/// A fresh cluster with the empty database `balint`, as the postgres image has it before it
/// runs its init scripts.
async fn fresh_cluster() -> PostgresProcess {
    let postgres = PostgresProcess::start().expect("PostgreSQL is needed for this test (scripts/test.sh installs it)");
    superuser(&postgres, "postgres").await.batch_execute("CREATE DATABASE balint").await.unwrap();
    postgres
}

fn start(url: &str) -> NodeProcess {
    NodeProcess::start(&[
        "--secret",
        SECRET,
        "--idle-unload-secs",
        "1",
        "--board-store",
        "postgres",
        "--postgres-url",
        url,
    ])
    .unwrap()
}

/// A persistent room written on `node`, saved, unloaded and loaded back: its id, leader and
/// invitation tokens, and its board as read by a newcomer.
async fn save_and_load(node: &NodeProcess, url: &str, text: &str) -> (String, String, String, String) {
    let (id, leader, invite) = create_room(node, false).await;
    let mut writer = YClient::join(&node.ws_url(&id, &invite, "ada")).await.unwrap();
    writer.type_text(text).await.unwrap();
    stored_in_postgres(url, &id, text.as_bytes()).await;
    drop(writer);
    unloaded(node, &id).await;
    let reader = YClient::join(&node.ws_url(&id, &invite, "ben")).await.unwrap();
    (id, leader, invite, reader.notes())
}

/// The owners of the tables in the schema `balint`.
async fn table_owners(admin: &tokio_postgres::Client) -> Vec<(String, String)> {
    let rows = admin
        .query("SELECT tablename::text, tableowner::text FROM pg_tables WHERE schemaname = 'balint' ORDER BY 1", &[])
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

fn owned_by_owner_role(tables: &[&str]) -> Vec<(String, String)> {
    tables.iter().map(|table| ((*table).to_owned(), "balint_owner".to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_role_of_the_compose_deployment_can_only_read_and_write_its_tables() {
    let postgres = fresh_cluster().await;
    let printed = init_script(&postgres, &migrations());
    assert!(printed.contains("applied 0001_boards.sql"), "the repository's migrations are applied: {printed}");
    let url = nodes_url(&postgres);

    // The tables belong to the owner role, which cannot log in; the nodes' role is no
    // superuser and may create neither databases nor roles.
    let admin = superuser(&postgres, "balint").await;
    assert_eq!(
        table_owners(&admin).await,
        owned_by_owner_role(&["balint_boards", "balint_deleted_rooms", "balint_migrations"])
    );
    let attributes = |role: &'static str| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(
                    "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
                     FROM pg_roles WHERE rolname = $1",
                    &[&role],
                )
                .await
                .unwrap();
            (0..6).map(|i| row.get::<_, bool>(i)).collect::<Vec<_>>()
        }
    };
    assert_eq!(attributes("balint").await, [true, false, false, false, false, false]);
    let password: bool = admin
        .query_one("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'balint'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(password, "the nodes' role has its password");
    assert!(!printed.contains(PASSWORD), "the script does not print the password");
    assert_eq!(attributes("balint_owner").await, [false, false, false, false, false, false]);

    // A node as the nodes' role starts (the migrations are applied), and its persistent
    // rooms are saved, loaded and deleted.
    let node = start(&url);
    let (id, leader, _, loaded) = save_and_load(&node, &url, "the group's log. ").await;
    assert_eq!(loaded, "the group's log. ", "the board is loaded back from PostgreSQL");
    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/rooms/{id}", node.base()))
        .bearer_auth(&leader)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(postgres_board(&url, &id).await.unwrap().is_none(), "the board is deleted");
    let tombstones: i64 =
        admin.query_one("SELECT count(*) FROM balint.balint_deleted_rooms", &[]).await.unwrap().get(0);
    assert_eq!(tombstones, 1, "the deleted room's tombstone is written");
    let logs = node.logs.lock().unwrap().join("\n");
    assert!(!logs.contains(PASSWORD), "the connection string never reaches a log line");

    // Everything else is refused.
    let client = connect(&url).await.unwrap();
    let refused = [
        ("create a table", "CREATE TABLE intruder (x integer)"),
        ("create a table in public", "CREATE TABLE public.intruder (x integer)"),
        ("drop a table", "DROP TABLE balint_boards"),
        ("alter a table", "ALTER TABLE balint_boards ADD COLUMN intruder integer"),
        ("index a table", "CREATE INDEX intruder ON balint_boards (saved_at)"),
        ("empty a table", "TRUNCATE balint_deleted_rooms"),
        ("create a schema", "CREATE SCHEMA intruder"),
        ("create a temporary table", "CREATE TEMP TABLE intruder (x integer)"),
        ("create a function", "CREATE FUNCTION intruder() RETURNS integer LANGUAGE sql AS 'SELECT 1'"),
        ("create a large object", "SELECT lo_create(0)"),
        ("write a file", "COPY balint_boards TO '/tmp/balint-intruder'"),
        ("record a migration", "INSERT INTO balint_migrations (version) VALUES (9999)"),
        ("forget a migration", "DELETE FROM balint_migrations"),
        ("create a database", "CREATE DATABASE intruder"),
        ("create a role", "CREATE ROLE intruder"),
    ];
    for (what, sql) in refused {
        let error = client.batch_execute(sql).await.expect_err(what);
        assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{what}: {error:?}");
    }
    let applied: i64 = client.query_one("SELECT count(*) FROM balint_migrations", &[]).await.unwrap().get(0);
    assert_eq!(applied, 1, "the nodes' role reads the record of migrations");
    let intruders: i64 =
        admin.query_one("SELECT count(*) FROM pg_class WHERE relname = 'intruder'", &[]).await.unwrap().get(0);
    assert_eq!(intruders, 0);
    assert_eq!(
        table_owners(&admin).await,
        owned_by_owner_role(&["balint_boards", "balint_deleted_rooms", "balint_migrations"])
    );

    // It cannot connect to the cluster's other databases, and the owner role cannot log in.
    for database in ["postgres", "template1"] {
        let other = format!("postgresql://balint:{PASSWORD}@127.0.0.1:{}/{database}", postgres.port);
        let error = connect(&other).await.err().unwrap_or_else(|| panic!("connected to {database}"));
        assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{database}: {error:?}");
    }
    let owner = format!("postgresql://balint_owner@127.0.0.1:{}/balint", postgres.port);
    let error = connect(&owner).await.expect_err("the owner role cannot log in");
    assert_eq!(error.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_migration_is_applied_by_the_script_as_the_owner_and_a_node_refuses_to_start_while_one_is_pending() {
    let postgres = fresh_cluster().await;
    init_script(&postgres, &migrations());
    let url = nodes_url(&postgres);
    let admin = superuser(&postgres, "balint").await;

    // The next version's migrations: the repository's, and one more.
    let next = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(migrations()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), next.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(
        next.path().join("9999_notes.sql"),
        "CREATE TABLE balint_notes (room text PRIMARY KEY, note text NOT NULL);\n",
    )
    .unwrap();
    let printed = init_script(&postgres, next.path());
    assert!(printed.contains("applied 9999_notes.sql"), "{printed}");
    assert!(!printed.contains("0001_boards.sql"), "an applied migration is not applied again: {printed}");
    let printed = init_script(&postgres, next.path());
    assert!(!printed.contains("applied"), "nothing left to apply: {printed}");
    let versions: Vec<i32> = admin
        .query("SELECT version FROM balint.balint_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, [1, 9999]);

    // The new table belongs to the owner role too; the nodes' role reads and writes its rows,
    // and nothing more.
    assert_eq!(
        table_owners(&admin).await,
        owned_by_owner_role(&["balint_boards", "balint_deleted_rooms", "balint_migrations", "balint_notes"])
    );
    let client = connect(&url).await.unwrap();
    client.batch_execute("INSERT INTO balint_notes VALUES ('r1', 'a note')").await.unwrap();
    client.batch_execute("UPDATE balint_notes SET note = 'another note'").await.unwrap();
    let note: String = client.query_one("SELECT note FROM balint_notes", &[]).await.unwrap().get(0);
    assert_eq!(note, "another note");
    client.batch_execute("DELETE FROM balint_notes").await.unwrap();
    for sql in ["DROP TABLE balint_notes", "ALTER TABLE balint_notes ADD COLUMN intruder integer"] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {error:?}");
    }

    // A migration the nodes' role would have to apply itself: the node refuses to start, and
    // says why and what to do.
    admin.batch_execute("DELETE FROM balint.balint_migrations").await.unwrap();
    let mut child = Command::new(server_binary().unwrap())
        .args(["--bind", &format!("127.0.0.1:{}", free_port()), "--secret", SECRET])
        .args(["--board-store", "postgres", "--postgres-url", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started although a migration is pending");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("running on"), "{said}");
    assert!(said.contains("the database migration 0001_boards.sql is pending"), "{said}");
    assert!(said.contains("permission denied for schema balint"), "{said}");
    assert!(said.contains("as the schema's owner first (deploy/postgres-init.sh does"), "{said}");
    assert!(!said.contains(PASSWORD), "{said}");
    assert_eq!(
        table_owners(&admin).await,
        owned_by_owner_role(&["balint_boards", "balint_deleted_rooms", "balint_migrations", "balint_notes"]),
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_set_up_before_the_owner_role_is_handed_to_it_by_the_script_with_its_rooms() {
    let postgres = fresh_cluster().await;
    let url = nodes_url(&postgres);
    // As the previous version of the script left it: the nodes' role owns the schema, and a
    // node created the tables.
    let admin = superuser(&postgres, "balint").await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE balint LOGIN PASSWORD '{PASSWORD}' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
             REVOKE ALL ON DATABASE balint FROM PUBLIC;
             GRANT CONNECT ON DATABASE balint TO balint;
             REVOKE ALL ON SCHEMA public FROM PUBLIC;
             CREATE SCHEMA balint AUTHORIZATION balint;"
        ))
        .await
        .unwrap();
    let mut node = start(&url);
    let (id, _, invite, _) = save_and_load(&node, &url, "kept across the change. ").await;
    node.kill();
    assert!(table_owners(&admin).await.iter().all(|(_, owner)| owner == "balint"));

    // And a right given by hand since.
    admin.batch_execute("GRANT pg_write_server_files TO balint").await.unwrap();

    init_script(&postgres, &migrations());
    assert_eq!(
        table_owners(&admin).await,
        owned_by_owner_role(&["balint_boards", "balint_deleted_rooms", "balint_migrations"])
    );
    let memberships: i64 = admin
        .query_one("SELECT count(*) FROM pg_auth_members WHERE member = 'balint'::regrole", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(memberships, 0, "the role is a member of no other role");
    let client = connect(&url).await.unwrap();
    for sql in [
        "CREATE TABLE intruder (x integer)",
        "DROP TABLE balint_boards",
        "COPY balint_boards TO '/tmp/balint-intruder'",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {error:?}");
    }

    // The nodes start as before, with the rooms they had, and keep saving.
    let node = start(&url);
    let mut writer = YClient::join(&node.ws_url(&id, &invite, "cy")).await.unwrap();
    assert_eq!(writer.notes(), "kept across the change. ");
    writer.type_text("and saved after it. ").await.unwrap();
    stored_in_postgres(&url, &id, b"and saved after it").await;
}
