//! Enrollment tokens (table `enrollment_tokens`), and the credential ids the rate limiter
//! starts from.

use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, conflict};
use crate::store::{EnrollmentToken, NewEnrollmentToken, Result, TokenSecret, TokenStore};

impl TokenStore for SqliteStore {
    fn create_enrollment_token(&mut self, t: &NewEnrollmentToken) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO enrollment_tokens (id, secret_sha256, policy_id, name, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.secret_sha256, t.policy_id, t.name, t.created],
            )
            .map_err(|e| conflict(e, "enrollment token", &t.id))?;
        Ok(())
    }

    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, policy_id, name, created, revoked FROM enrollment_tokens ORDER BY created, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(EnrollmentToken {
                id: r.get(0)?,
                policy_id: r.get(1)?,
                name: r.get(2)?,
                created: r.get(3)?,
                revoked: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_enrollment_token(&mut self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?1", params![id])?
            > 0)
    }

    fn enrollment_secret(&self, id: &str) -> Result<Option<TokenSecret>> {
        Ok(self
            .conn
            .query_row(
                "SELECT secret_sha256, policy_id FROM enrollment_tokens WHERE id = ?1 AND revoked = 0",
                params![id],
                |r| Ok(TokenSecret { secret_sha256: r.get(0)?, policy_id: r.get(1)? }),
            )
            .optional()?)
    }

    fn credential_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT access_key_id FROM agents WHERE active
             UNION ALL SELECT id FROM enrollment_tokens WHERE NOT revoked",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
