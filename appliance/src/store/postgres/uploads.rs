//! Diagnostics uploads (table `uploads`) and the chunks of open ones (`upload_chunks`).

use super::{PostgresStore, conflict, int, uint};
use crate::store::{ChunkRecord, Result, StoreError, UploadRecord, UploadStatus, UploadStore};

const UPLOAD_COLUMNS: &str = "SELECT id, action_id, agent_id, name, mime_type, size, chunk_size,
    status, created, completed, sha256 FROM uploads";

fn upload_row(r: &postgres::Row) -> Result<UploadRecord> {
    let status: String = r.try_get(7)?;
    Ok(UploadRecord {
        id: r.try_get(0)?,
        action_id: r.try_get(1)?,
        agent_id: r.try_get(2)?,
        name: r.try_get(3)?,
        mime_type: r.try_get(4)?,
        size: uint(r, 5)?,
        chunk_size: uint(r, 6)?,
        status: UploadStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("{status:?} is not an upload status")))?,
        created: r.try_get(8)?,
        completed: r.try_get(9)?,
        sha256: r.try_get(10)?,
    })
}

impl UploadStore for PostgresStore {
    fn create_upload(&mut self, u: &UploadRecord) -> Result<()> {
        let (size, chunk_size) = (int("upload size", u.size)?, int("chunk size", u.chunk_size)?);
        self.client()?
            .execute(
                "INSERT INTO uploads
                 (id, action_id, agent_id, name, mime_type, size, chunk_size, status, created)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &u.id,
                    &u.action_id,
                    &u.agent_id,
                    &u.name,
                    &u.mime_type,
                    &size,
                    &chunk_size,
                    &u.status.as_str(),
                    &u.created,
                ],
            )
            .map_err(|e| conflict(e, "upload", &u.id))?;
        Ok(())
    }

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let row = self.client()?.query_opt(&format!("{UPLOAD_COLUMNS} WHERE id = $1"), &[&id])?;
        row.as_ref().map(upload_row).transpose()
    }

    fn uploads(&self) -> Result<Vec<UploadRecord>> {
        let rows = self.client()?.query(&format!("{UPLOAD_COLUMNS} ORDER BY created, id"), &[])?;
        rows.iter().map(upload_row).collect()
    }

    fn upload_for_action(&self, action_id: &str, agent_id: &str) -> Result<Option<UploadRecord>> {
        // SQLite breaks a tie of `created` (two attempts in one second) by rowid, the order of
        // insertion, which PostgreSQL has no column for. The same order follows from how
        // attempts are made: a new attempt closes the one left open before it is created, so
        // of attempts made in one second an open one is the latest, and of closed ones the one
        // closed last; the id breaks what is left.
        let row = self.client()?.query_opt(
            &format!(
                "{UPLOAD_COLUMNS} WHERE action_id = $1 AND agent_id = $2
                 ORDER BY created DESC, completed IS NULL DESC, completed DESC, id DESC LIMIT 1"
            ),
            &[&action_id, &agent_id],
        )?;
        row.as_ref().map(upload_row).transpose()
    }

    fn expire_uploads(&mut self, before: &str, at: &str) -> Result<Vec<UploadRecord>> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Locked as they are read: of two instances expiring at once, the second waits, then
        // finds the uploads closed and does not return them again (their files are removed
        // once).
        let stale = tx
            .query(
                &format!(
                    "{UPLOAD_COLUMNS} WHERE status = $1 AND created < $2 ORDER BY id FOR UPDATE"
                ),
                &[&UploadStatus::Awaiting.as_str(), &before],
            )?
            .iter()
            .map(upload_row)
            .collect::<Result<Vec<_>>>()?;
        for u in &stale {
            finish(&mut tx, &u.id, UploadStatus::Failed, None, at)?;
        }
        tx.commit()?;
        Ok(stale)
    }

    fn put_chunk(&mut self, upload_id: &str, c: &ChunkRecord) -> Result<()> {
        // Again: the newer one counts (SQLite's `INSERT OR REPLACE`).
        self.client()?.execute(
            "INSERT INTO upload_chunks (upload_id, num, size, sha256) VALUES ($1, $2, $3, $4)
             ON CONFLICT (upload_id, num) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256",
            &[&upload_id, &int("chunk number", c.num)?, &int("chunk size", c.size)?, &c.sha256],
        )?;
        Ok(())
    }

    fn chunks(&self, upload_id: &str) -> Result<Vec<ChunkRecord>> {
        let rows = self.client()?.query(
            "SELECT num, size, sha256 FROM upload_chunks WHERE upload_id = $1 ORDER BY num",
            &[&upload_id],
        )?;
        rows.iter()
            .map(|r| Ok(ChunkRecord { num: uint(r, 0)?, size: uint(r, 1)?, sha256: r.try_get(2)? }))
            .collect()
    }

    fn finish_upload(
        &mut self,
        id: &str,
        status: UploadStatus,
        sha256: Option<&str>,
        at: &str,
    ) -> Result<()> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        finish(&mut tx, id, status, sha256, at)?;
        tx.commit()?;
        Ok(())
    }
}

/// Closes an upload as `status` and forgets its chunks.
fn finish(
    tx: &mut postgres::Transaction<'_>,
    id: &str,
    status: UploadStatus,
    sha256: Option<&str>,
    at: &str,
) -> Result<()> {
    tx.execute(
        "UPDATE uploads SET status = $2, sha256 = $3, completed = $4 WHERE id = $1",
        &[&id, &status.as_str(), &sha256, &at],
    )?;
    tx.execute("DELETE FROM upload_chunks WHERE upload_id = $1", &[&id])?;
    Ok(())
}
