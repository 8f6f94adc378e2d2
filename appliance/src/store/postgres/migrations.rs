//! The PostgreSQL schema, versioned: placeholder until the schema lands.

pub(super) fn migrate(_client: &mut postgres::Client) -> super::Result<()> {
    Ok(())
}
