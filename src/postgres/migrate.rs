//! Versioned migrations, shared by every PostgreSQL component.
//!
//! A component declares its migrations as a `&'static [Migration]` whose SQL
//! names its tables through placeholders (`{{schema}}`, `{{table}}`,
//! `{{table_name}}`, and whatever else it passes in `vars`); [`run`]
//! substitutes the validated, quoted names and applies what the database
//! lacks, under a transaction-level advisory lock, in one transaction.

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::QualifiedName;

/// One step of a component's schema. Versions start at 1 and never change
/// once released; a later change is a new migration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    /// May hold several statements; placeholders as in the module docs.
    pub(crate) sql: &'static str,
}

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The database failed or refused a statement (permissions, a
    /// connection lost, a conflicting object).
    #[error("migration failed in the database")]
    Database(#[source] sqlx::Error),
    /// A migration recorded as applied has different SQL from this build's:
    /// someone edited a released migration.
    #[error("applied migration {version} differs from this build's")]
    Changed {
        /// The migration's version.
        version: i64,
    },
}

impl From<sqlx::Error> for MigrateError {
    fn from(error: sqlx::Error) -> Self {
        MigrateError::Database(error)
    }
}

/// `{{schema}}`, `{{table}}` (qualified and quoted) and `{{table_name}}`
/// (bare, for derived names such as `"{{table_name}}_owner_idx"`) of `table`.
pub(crate) fn table_vars(table: &QualifiedName) -> Vec<(&'static str, String)> {
    vec![
        ("{{schema}}", table.schema().to_string()),
        ("{{table}}", table.to_string()),
        ("{{table_name}}", table.name().as_str().to_owned()),
    ]
}

fn substitute(sql: &str, vars: &[(&'static str, String)]) -> String {
    vars.iter().fold(sql.to_owned(), |sql, (name, value)| {
        sql.replace(name, value)
    })
}

fn checksum(sql: &str) -> Vec<u8> {
    Sha256::digest(sql.as_bytes()).to_vec()
}

/// The advisory lock's key: a hash of the migrations table's name, so that
/// components (and two stores in different schemas) do not wait on each other.
fn lock_key(history: &QualifiedName) -> i64 {
    let digest = Sha256::digest(format!("keyward migrations {history}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Applies the `migrations` that `history` (the component's migrations
/// table, created if missing with its schema) does not list yet, in
/// version order, each with `vars` substituted. Idempotent; safe when
/// several processes call it at once.
pub(crate) async fn run(
    pool: &PgPool,
    history: &QualifiedName,
    migrations: &[Migration],
    vars: &[(&'static str, String)],
) -> Result<(), MigrateError> {
    let mut tx = pool.begin().await?;
    apply(&mut tx, history, migrations, vars).await?;
    tx.commit().await?;
    Ok(())
}

async fn apply(
    conn: &mut sqlx::PgConnection,
    history: &QualifiedName,
    migrations: &[Migration],
    vars: &[(&'static str, String)],
) -> Result<(), MigrateError> {
    // Taken first, held until commit: a second process waits here, then
    // finds everything applied. (Even CREATE ... IF NOT EXISTS races
    // without it: two at once can fail on a unique index of the catalog.)
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(history))
        .execute(&mut *conn)
        .await?;
    // CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
    // database even when the schema exists: ask first.
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(history.schema().as_str())
            .fetch_one(&mut *conn)
            .await?;
    if !schema_exists {
        sqlx::query(&format!("CREATE SCHEMA {}", history.schema()))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {history} (
            version bigint PRIMARY KEY,
            description text NOT NULL,
            checksum bytea NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )"
    ))
    .execute(&mut *conn)
    .await?;
    let applied: Vec<(i64, Vec<u8>)> =
        sqlx::query_as(&format!("SELECT version, checksum FROM {history}"))
            .fetch_all(&mut *conn)
            .await?;
    let mut sorted: Vec<Migration> = migrations.to_vec();
    sorted.sort_by_key(|m| m.version);
    for migration in sorted {
        let sum = checksum(migration.sql);
        match applied
            .iter()
            .find(|(version, _)| *version == migration.version)
        {
            Some((_, recorded)) if *recorded == sum => continue,
            Some(_) => {
                return Err(MigrateError::Changed {
                    version: migration.version,
                })
            }
            None => {}
        }
        let sql = substitute(migration.sql, vars);
        sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&sql)).await?;
        sqlx::query(&format!(
            "INSERT INTO {history} (version, description, checksum) VALUES ($1, $2, $3)"
        ))
        .bind(migration.version)
        .bind(migration.description)
        .bind(sum)
        .execute(&mut *conn)
        .await?;
        tracing::info!(
            target: "keyward::postgres",
            table = %history,
            version = migration.version,
            description = migration.description,
            "migration applied"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_the_quoted_names() {
        let table = QualifiedName::new("auth", "keys").unwrap();
        let sql = substitute(
            "CREATE TABLE {{table}} (); CREATE INDEX \"{{table_name}}_idx\" ON {{table}} (x); SELECT '{}'::jsonb; -- {{schema}}",
            &table_vars(&table),
        );
        assert_eq!(
            sql,
            "CREATE TABLE \"auth\".\"keys\" (); CREATE INDEX \"keys_idx\" ON \"auth\".\"keys\" (x); SELECT '{}'::jsonb; -- \"auth\""
        );
    }

    #[test]
    fn lock_keys_differ_by_table() {
        let a = QualifiedName::new("a", "keys").unwrap();
        let b = QualifiedName::new("b", "keys").unwrap();
        assert_ne!(lock_key(&a), lock_key(&b));
        assert_eq!(lock_key(&a), lock_key(&a.clone()));
    }

    /// Against the server in `DATABASE_URL`; skipped (and says so) without it.
    fn database_url(test: &str) -> Option<String> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "skipped {test}: DATABASE_URL is not set");
                None
            }
        }
    }

    const STEPS: &[Migration] = &[
        Migration {
            version: 1,
            description: "a table",
            sql: "CREATE TABLE {{table}} (id text PRIMARY KEY);
                  CREATE INDEX \"{{table_name}}_id_idx\" ON {{table}} (id);",
        },
        Migration {
            version: 2,
            description: "a column",
            sql: "ALTER TABLE {{table}} ADD COLUMN n bigint NOT NULL DEFAULT 0;",
        },
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_runs_apply_each_migration_once_and_again_is_a_no_op() {
        let Some(url) = database_url("migrate::concurrent_runs") else {
            return;
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(6)
            .connect(&url)
            .await
            .expect("DATABASE_URL must be reachable");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("kw_migrate_{}_{nanos:x}", std::process::id());
        let table = QualifiedName::new(&schema, "things").unwrap();
        let history = table.sibling("_migrations");
        let vars = table_vars(&table);

        // Four "processes" start at once: each migration runs once, none fails.
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let (pool, history, vars) = (pool.clone(), history.clone(), vars.clone());
                tokio::spawn(async move { run(&pool, &history, STEPS, &vars).await })
            })
            .collect();
        for handle in runs {
            handle
                .await
                .unwrap()
                .expect("every concurrent run succeeds");
        }
        run(&pool, &history, STEPS, &vars).await.expect("again");
        let versions: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {history} ORDER BY version"))
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(versions, vec![1, 2]);
        sqlx::query(&format!("INSERT INTO {table} (id) VALUES ('x')"))
            .execute(&pool)
            .await
            .expect("the migrated table is usable");

        // An edited released migration is refused, and changes nothing.
        let edited = [
            STEPS[0],
            Migration {
                sql: "DROP TABLE {{table}};",
                ..STEPS[1]
            },
        ];
        assert!(matches!(
            run(&pool, &history, &edited, &vars).await,
            Err(MigrateError::Changed { version: 2 })
        ));

        sqlx::query(&format!("DROP SCHEMA {} CASCADE", table.schema()))
            .execute(&pool)
            .await
            .unwrap();
    }
}
