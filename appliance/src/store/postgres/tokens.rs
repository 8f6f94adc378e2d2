//! Enrollment tokens (table `enrollment_tokens`), and the credential ids the rate limiter
//! starts from.

use super::{PostgresStore, conflict, flag};
use crate::store::{EnrollmentToken, NewEnrollmentToken, Result, TokenSecret, TokenStore};

impl TokenStore for PostgresStore {
    fn create_enrollment_token(&mut self, t: &NewEnrollmentToken) -> Result<()> {
        // The primary key decides between two instances creating the same id: one insert
        // waits for the other and fails.
        self.client()?
            .execute(
                "INSERT INTO enrollment_tokens (id, secret_sha256, policy_id, name, created)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&t.id, &t.secret_sha256, &t.policy_id, &t.name, &t.created],
            )
            .map_err(|e| conflict(e, "enrollment token", &t.id))?;
        Ok(())
    }

    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        let rows = self.client()?.query(
            "SELECT id, policy_id, name, created, revoked FROM enrollment_tokens ORDER BY created, id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(EnrollmentToken {
                    id: r.try_get(0)?,
                    policy_id: r.try_get(1)?,
                    name: r.try_get(2)?,
                    created: r.try_get(3)?,
                    revoked: flag(r, 4)?,
                })
            })
            .collect()
    }

    fn revoke_enrollment_token(&mut self, id: &str) -> Result<bool> {
        Ok(self
            .client()?
            .execute("UPDATE enrollment_tokens SET revoked = 1 WHERE id = $1", &[&id])?
            > 0)
    }

    fn enrollment_secret(&self, id: &str) -> Result<Option<TokenSecret>> {
        let row = self.client()?.query_opt(
            "SELECT secret_sha256, policy_id FROM enrollment_tokens WHERE id = $1 AND revoked = 0",
            &[&id],
        )?;
        row.map(|r| Ok(TokenSecret { secret_sha256: r.try_get(0)?, policy_id: r.try_get(1)? }))
            .transpose()
    }

    fn credential_ids(&self) -> Result<Vec<String>> {
        let rows = self.client()?.query(
            "SELECT access_key_id FROM agents WHERE active <> 0
             UNION ALL SELECT id FROM enrollment_tokens WHERE revoked = 0",
            &[],
        )?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
