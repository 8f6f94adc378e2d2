//! [`ClusterStore`] on PostgreSQL: what instances tell each other through the database they
//! share. Liveness is judged by the database's clock (`now()`), never by comparing the hosts'.

use super::{PostgresStore, Result, StoreError, channel, int, uint};
use crate::store::{Beat, ClusterImport, ClusterStore, Holding, Instance, LIVE_SECONDS};

/// The cluster's tables (the schema's migration 2), text compared bytewise as migration 1's.
pub(super) const SCHEMA: &str = r#"
    CREATE TABLE instances (
        name text COLLATE "C" PRIMARY KEY,
        started_at text COLLATE "C" NOT NULL,
        seen_at timestamptz NOT NULL,
        version text COLLATE "C" NOT NULL,
        state text COLLATE "C" NOT NULL,
        active_name text COLLATE "C",
        active_sequence bigint,
        parked bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE cluster_imports (
        name text COLLATE "C" NOT NULL,
        sequence bigint NOT NULL,
        bundle_file text COLLATE "C" NOT NULL,
        manifest_sha256 text COLLATE "C" NOT NULL,
        allow_downgrade boolean NOT NULL,
        allow_expired boolean NOT NULL,
        started_by text COLLATE "C" NOT NULL,
        started_at text COLLATE "C" NOT NULL,
        state text COLLATE "C" NOT NULL,
        reason text COLLATE "C",
        PRIMARY KEY (name, sequence)
    );
    CREATE TABLE instance_releases (
        instance text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        sequence bigint NOT NULL,
        state text COLLATE "C" NOT NULL,
        reason text COLLATE "C",
        at text COLLATE "C" NOT NULL,
        PRIMARY KEY (instance, name, sequence)
    );
"#;

impl ClusterStore for PostgresStore {
    fn heartbeat(&mut self, beat: &Beat<'_>) -> Result<()> {
        let name = self.settings.instance.clone();
        let (active_name, active_sequence) = match beat.active {
            Some((n, s)) => (Some(n), Some(int("sequence", s)?)),
            None => (None, None),
        };
        self.client()?.execute(
            "INSERT INTO instances
                 (name, started_at, seen_at, version, state, active_name, active_sequence, parked)
             VALUES ($1, $2, now(), $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET started_at = $2, seen_at = now(), version = $3,
                 state = $4, active_name = $5, active_sequence = $6, parked = $7",
            &[
                &name,
                &beat.started_at,
                &beat.version,
                &beat.state,
                &active_name,
                &active_sequence,
                &int("parked", beat.parked)?,
            ],
        )?;
        Ok(())
    }

    fn instances(&mut self) -> Result<Vec<Instance>> {
        let rows = self.client()?.query(
            "SELECT name, started_at, version, state, active_name, active_sequence, parked,
                 to_char(seen_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS seen,
                 greatest(0, extract(epoch FROM now() - seen_at))::bigint AS ago,
                 (state <> 'stopped' AND seen_at > now() - make_interval(secs => $1)) AS live
             FROM instances ORDER BY name",
            &[&f64::from(LIVE_SECONDS)],
        )?;
        rows.iter()
            .map(|r| {
                let active = match r.try_get::<_, Option<String>>("active_name")? {
                    Some(name) => Some((name, uint(r, "active_sequence")?)),
                    None => None,
                };
                Ok(Instance {
                    name: r.try_get("name")?,
                    started_at: r.try_get("started_at")?,
                    seen_at: r.try_get("seen")?,
                    seconds_since_seen: uint(r, "ago")?,
                    version: r.try_get("version")?,
                    state: r.try_get("state")?,
                    live: r.try_get("live")?,
                    active,
                    parked: uint(r, "parked")?,
                })
            })
            .collect()
    }

    fn begin_import(&mut self, import: &ClusterImport, at: &str) -> Result<()> {
        let instance = self.settings.instance.clone();
        let key = format!("{} {}", import.name, import.sequence);
        let sequence = int("sequence", import.sequence)?;
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        // An ended import of the same name and sequence (refused, or an --allow-downgrade
        // re-import) is replaced; one underway is not.
        let underway = tx.query_opt(
            "SELECT 1 FROM cluster_imports WHERE name = $1 AND sequence = $2 AND state = 'staging'
             FOR UPDATE",
            &[&import.name, &sequence],
        )?;
        if underway.is_some() {
            return Err(StoreError::Conflict { what: "cluster import", key });
        }
        tx.execute(
            "DELETE FROM cluster_imports WHERE name = $1 AND sequence = $2",
            &[&import.name, &sequence],
        )?;
        // Verdicts of an earlier attempt say nothing of this one.
        tx.execute(
            "DELETE FROM instance_releases WHERE name = $1 AND sequence = $2 AND state <> 'staged'",
            &[&import.name, &sequence],
        )?;
        tx.execute(
            "INSERT INTO cluster_imports (name, sequence, bundle_file, manifest_sha256,
                 allow_downgrade, allow_expired, started_by, started_at, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'staging')",
            &[
                &import.name,
                &sequence,
                &import.bundle_file,
                &import.manifest_sha256,
                &import.allow_downgrade,
                &import.allow_expired,
                &import.started_by,
                &import.started_at,
            ],
        )?;
        record_holding(&mut tx, &instance, &import.name, sequence, Ok(()), at)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&channel::IMPORTS, &key])?;
        tx.commit()?;
        Ok(())
    }

    fn pending_imports(&mut self) -> Result<Vec<ClusterImport>> {
        imports(self, "WHERE state = 'staging'")
    }

    fn record_holding(
        &mut self,
        name: &str,
        sequence: u64,
        verdict: std::result::Result<(), &str>,
        at: &str,
    ) -> Result<()> {
        let instance = self.settings.instance.clone();
        let sequence = int("sequence", sequence)?;
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        record_holding(&mut tx, &instance, name, sequence, verdict, at)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&channel::IMPORTS, &format!("{name} {sequence}")],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn holdings(&mut self) -> Result<Vec<Holding>> {
        let rows = self.client()?.query(
            "SELECT instance, name, sequence, state, reason, at FROM instance_releases
             ORDER BY name, sequence, instance",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(Holding {
                    instance: r.try_get("instance")?,
                    name: r.try_get("name")?,
                    sequence: uint(r, "sequence")?,
                    state: r.try_get("state")?,
                    reason: r.try_get("reason")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    fn end_import(
        &mut self,
        name: &str,
        sequence: u64,
        outcome: std::result::Result<(), &str>,
    ) -> Result<()> {
        let (state, reason) = match outcome {
            Ok(()) => ("active", None),
            Err(reason) => ("refused", Some(reason)),
        };
        self.client()?.execute(
            "UPDATE cluster_imports SET state = $3, reason = $4 WHERE name = $1 AND sequence = $2",
            &[&name, &int("sequence", sequence)?, &state, &reason],
        )?;
        Ok(())
    }

    fn prune_holdings(&mut self) -> Result<()> {
        self.client()?.execute(
            "DELETE FROM instance_releases h
             WHERE NOT EXISTS (SELECT 1 FROM releases r
                               WHERE r.name = h.name AND r.sequence = h.sequence)
               AND NOT EXISTS (SELECT 1 FROM cluster_imports i
                               WHERE i.name = h.name AND i.sequence = h.sequence
                                 AND i.state = 'staging')",
            &[],
        )?;
        Ok(())
    }

    fn listen(&mut self, channels: &[&str]) -> Result<()> {
        let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        self.client()?.batch_execute(&sql)?;
        Ok(())
    }

    fn notifications(&mut self, wait: std::time::Duration) -> Result<Vec<(String, String)>> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let client = match self.client.get_mut().as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => return Err(StoreError::Unavailable("the listening connection closed".into())),
        };
        let pair = |n: postgres::Notification| (n.channel().to_owned(), n.payload().to_owned());
        let mut received = Vec::new();
        let first = client.notifications().timeout_iter(wait).next()?;
        if let Some(n) = first {
            received.push(pair(n));
            // And whatever else has arrived, without waiting.
            let mut notifications = client.notifications();
            let mut more = notifications.iter();
            while let Some(n) = more.next()? {
                received.push(pair(n));
            }
        }
        if client.is_closed() {
            return Err(StoreError::Unavailable("the listening connection closed".into()));
        }
        Ok(received)
    }

    fn action_agents(&mut self, seq: i64) -> Result<Vec<String>> {
        let rows =
            self.client()?.query("SELECT agent_id FROM action_targets WHERE seq = $1", &[&seq])?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

fn record_holding(
    tx: &mut postgres::Transaction<'_>,
    instance: &str,
    name: &str,
    sequence: i64,
    verdict: std::result::Result<(), &str>,
    at: &str,
) -> Result<()> {
    let (state, reason) = match verdict {
        Ok(()) => ("staged", None),
        Err(reason) => ("refused", Some(reason)),
    };
    tx.execute(
        "INSERT INTO instance_releases (instance, name, sequence, state, reason, at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (instance, name, sequence) DO UPDATE SET state = $4, reason = $5, at = $6",
        &[&instance, &name, &sequence, &state, &reason, &at],
    )?;
    Ok(())
}

/// The cluster imports `filter` (a WHERE clause, or nothing) selects, oldest first.
fn imports(store: &mut PostgresStore, filter: &str) -> Result<Vec<ClusterImport>> {
    let rows = store.client()?.query(
        &format!(
            "SELECT name, sequence, bundle_file, manifest_sha256, allow_downgrade,
                 allow_expired, started_by, started_at, state, reason
             FROM cluster_imports {filter} ORDER BY started_at, name, sequence"
        ),
        &[],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ClusterImport {
                name: r.try_get("name")?,
                sequence: uint(r, "sequence")?,
                bundle_file: r.try_get("bundle_file")?,
                manifest_sha256: r.try_get("manifest_sha256")?,
                allow_downgrade: r.try_get("allow_downgrade")?,
                allow_expired: r.try_get("allow_expired")?,
                started_by: r.try_get("started_by")?,
                started_at: r.try_get("started_at")?,
                state: r.try_get("state")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect()
}
