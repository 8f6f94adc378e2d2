//! Diagnostics uploads (table `uploads`) and the chunks of open ones (`upload_chunks`).

use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, conflict, int, uint};
use crate::store::{ChunkRecord, Result, UploadRecord, UploadStatus, UploadStore};

const UPLOAD_COLUMNS: &str = "SELECT id, action_id, agent_id, name, mime_type, size, chunk_size, status, created, completed, sha256 FROM uploads";

fn upload_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRecord> {
    let status: String = r.get(7)?;
    Ok(UploadRecord {
        id: r.get(0)?,
        action_id: r.get(1)?,
        agent_id: r.get(2)?,
        name: r.get(3)?,
        mime_type: r.get(4)?,
        size: uint(r, 5)?,
        chunk_size: uint(r, 6)?,
        status: UploadStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                format!("{status:?} is not an upload status").into(),
            )
        })?,
        created: r.get(8)?,
        completed: r.get(9)?,
        sha256: r.get(10)?,
    })
}

impl UploadStore for SqliteStore {
    fn create_upload(&mut self, u: &UploadRecord) -> Result<()> {
        let (size, chunk_size) = (int("upload size", u.size)?, int("chunk size", u.chunk_size)?);
        self.conn
            .execute(
                "INSERT INTO uploads (id, action_id, agent_id, name, mime_type, size, chunk_size, status, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    u.id,
                    u.action_id,
                    u.agent_id,
                    u.name,
                    u.mime_type,
                    size,
                    chunk_size,
                    u.status.as_str(),
                    u.created
                ],
            )
            .map_err(|e| conflict(e, "upload", &u.id))?;
        Ok(())
    }

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        Ok(self
            .conn
            .query_row(&format!("{UPLOAD_COLUMNS} WHERE id = ?1"), params![id], upload_row)
            .optional()?)
    }

    fn uploads(&self) -> Result<Vec<UploadRecord>> {
        let mut stmt = self.conn.prepare(&format!("{UPLOAD_COLUMNS} ORDER BY created, id"))?;
        let rows = stmt.query_map([], upload_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn upload_for_action(&self, action_id: &str, agent_id: &str) -> Result<Option<UploadRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "{UPLOAD_COLUMNS} WHERE action_id = ?1 AND agent_id = ?2 ORDER BY created DESC, rowid DESC LIMIT 1"
                ),
                params![action_id, agent_id],
                upload_row,
            )
            .optional()?)
    }

    fn expire_uploads(&mut self, before: &str, at: &str) -> Result<Vec<UploadRecord>> {
        let tx = self.conn.transaction()?;
        let stale: Vec<UploadRecord> = {
            let mut stmt =
                tx.prepare(&format!("{UPLOAD_COLUMNS} WHERE status = ?1 AND created < ?2"))?;
            stmt.query_map(params![UploadStatus::Awaiting.as_str(), before], upload_row)?
                .collect::<Result<_, _>>()?
        };
        for u in &stale {
            finish(&tx, &u.id, UploadStatus::Failed, None, at)?;
        }
        tx.commit()?;
        Ok(stale)
    }

    fn put_chunk(&mut self, upload_id: &str, c: &ChunkRecord) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO upload_chunks (upload_id, num, size, sha256) VALUES (?1, ?2, ?3, ?4)",
            params![upload_id, int("chunk number", c.num)?, int("chunk size", c.size)?, c.sha256],
        )?;
        Ok(())
    }

    fn chunks(&self, upload_id: &str) -> Result<Vec<ChunkRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT num, size, sha256 FROM upload_chunks WHERE upload_id = ?1 ORDER BY num",
        )?;
        let rows = stmt.query_map(params![upload_id], |r| {
            Ok(ChunkRecord { num: uint(r, 0)?, size: uint(r, 1)?, sha256: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn finish_upload(
        &mut self,
        id: &str,
        status: UploadStatus,
        sha256: Option<&str>,
        at: &str,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        finish(&tx, id, status, sha256, at)?;
        tx.commit()?;
        Ok(())
    }
}

/// Closes an upload as `status` and forgets its chunks.
fn finish(
    conn: &rusqlite::Connection,
    id: &str,
    status: UploadStatus,
    sha256: Option<&str>,
    at: &str,
) -> Result<()> {
    conn.execute(
        "UPDATE uploads SET status = ?2, sha256 = ?3, completed = ?4 WHERE id = ?1",
        params![id, status.as_str(), sha256, at],
    )?;
    conn.execute("DELETE FROM upload_chunks WHERE upload_id = ?1", params![id])?;
    Ok(())
}
