//! `ferry-appliance store copy`: a single appliance's SQLite state moved into a cluster's
//! empty PostgreSQL database, table by table and column by column (the two schemas have the
//! same tables and columns), in one PostgreSQL transaction: the copy is whole or absent.
//!
//! Values cross as text and are cast by PostgreSQL to each column's type (`bigint`,
//! `boolean` from SQLite's 0 and 1, `bytea` from hex), so a value the column cannot hold
//! fails the copy, naming the table and column, rather than arriving changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context as _;
use rusqlite::types::ValueRef;

use super::PostgresStore;

/// Tables that are not state to copy: each backend keeps its own schema history.
const NOT_COPIED: &[&str] = &["schema_version"];

/// Copies every table of the SQLite database at `sqlite` (migrated first to the schema this
/// binary writes, as `serve` would) into `pg`, which must hold no state yet. Returns the rows
/// copied, by table, in the order copied.
pub(crate) fn sqlite_to_postgres(
    sqlite: &Path,
    pg: &mut PostgresStore,
) -> anyhow::Result<Vec<(String, u64)>> {
    anyhow::ensure!(sqlite.is_file(), "{} does not exist", sqlite.display());
    drop(crate::store::sqlite::SqliteStore::open(sqlite)?);
    let mut source = rusqlite::Connection::open_with_flags(
        sqlite,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // One read transaction: a consistent picture even if a serve is still writing.
    let snapshot = source.transaction()?;
    let tables: BTreeSet<String> = snapshot
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let tables: BTreeSet<String> =
        tables.into_iter().filter(|t| !NOT_COPIED.contains(&t.as_str())).collect();

    let mut client = pg.client()?;
    let mut tx = client.transaction()?;
    let order = parents_first(&mut tx, &tables)?;
    for table in &order {
        let rows: i64 = tx.query_one(&format!("SELECT count(*) FROM {table}"), &[])?.get(0);
        anyhow::ensure!(
            rows == 0,
            "the PostgreSQL database already holds state ({rows} row(s) in {table}): copy only \
             into a new, empty database"
        );
    }
    let mut copied = Vec::new();
    for table in &order {
        let columns = pg_columns(&mut tx, table)?;
        let sqlite_columns: BTreeSet<String> = snapshot
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if let Some(missing) = sqlite_columns.iter().find(|c| !columns.contains_key(*c)) {
            anyhow::bail!("column {table}.{missing} has no place in the PostgreSQL schema");
        }
        // Columns SQLite lacks (PostgreSQL-only, such as an agent's instance) keep their default.
        let names: Vec<&String> = columns.keys().filter(|c| sqlite_columns.contains(*c)).collect();
        let values: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, c)| match columns[*c].0.as_str() {
                "bytea" => format!("decode(${}::text, 'hex')", i + 1),
                ty => format!("${}::text::{ty}", i + 1),
            })
            .collect();
        let list = names.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
        let insert = tx.prepare(&format!(
            "INSERT INTO {table} ({list}) OVERRIDING SYSTEM VALUE VALUES ({})",
            values.join(", ")
        ))?;
        let mut select = snapshot.prepare(&format!("SELECT {list} FROM {table}"))?;
        let mut rows = select.query([])?;
        let mut count = 0u64;
        while let Some(row) = rows.next()? {
            let mut params: Vec<Option<String>> = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                params.push(match row.get_ref(i)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(n) => Some(n.to_string()),
                    ValueRef::Real(x) => Some(x.to_string()),
                    ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Some(hex::encode(b)),
                });
            }
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
            tx.execute(&insert, &refs).with_context(|| format!("copying a row of {table}"))?;
            count += 1;
        }
        // Identity columns go on after the highest value copied.
        for (column, _) in columns.iter().filter(|(c, (_, serial))| *serial && names.contains(c)) {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                         coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
                ),
                &[],
            )?;
        }
        copied.push((table.clone(), count));
    }
    tx.commit()?;
    Ok(copied)
}

/// `tables` ordered so that every table comes after those its foreign keys name; each must
/// exist in PostgreSQL.
fn parents_first(
    tx: &mut postgres::Transaction<'_>,
    tables: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for table in tables {
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("public.{table}")])?
            .get(0);
        anyhow::ensure!(exists, "table {table} has no place in the PostgreSQL schema");
        parents.insert(table.clone(), BTreeSet::new());
    }
    for row in tx.query(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint
         WHERE contype = 'f'",
        &[],
    )? {
        let (child, parent): (String, String) = (row.get(0), row.get(1));
        if child != parent
            && tables.contains(&parent)
            && let Some(set) = parents.get_mut(&child)
        {
            set.insert(parent);
        }
    }
    let mut order = Vec::new();
    while !parents.is_empty() {
        let ready: Vec<String> =
            parents.iter().filter(|(_, p)| p.is_empty()).map(|(t, _)| t.clone()).collect();
        anyhow::ensure!(!ready.is_empty(), "the schema's foreign keys form a cycle");
        for table in &ready {
            parents.remove(table);
            for p in parents.values_mut() {
                p.remove(table);
            }
        }
        order.extend(ready);
    }
    Ok(order)
}

/// Table `table`'s columns in PostgreSQL: the type as a cast names it, and whether a sequence
/// numbers it (an identity or serial column).
fn pg_columns(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> anyhow::Result<BTreeMap<String, (String, bool)>> {
    let rows = tx.query(
        "SELECT a.attname::text, format_type(a.atttypid, NULL),
             pg_get_serial_sequence($1, a.attname) IS NOT NULL
         FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0
           AND NOT a.attisdropped",
        &[&table],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect())
}
