//! Agents (one row per agent, upserted on every heartbeat) and the audit log.
//!
//! Whether an agent is online is the caller's judgement from `last_heartbeat_at` and
//! `interval_ms`; this file only stores.

use super::connection::DbConnection;
use super::models::{AgentRecord, AuditRecord, NewAuditRecord};
use super::schema::{agents, audit_log};
use super::{AgentRow, AuditEntry, AuditRow, Store, StoreError};
use diesel::prelude::*;
use diesel::upsert::excluded;

impl Store {
    /// Inserts or updates the agent's row. A heartbeat older than the stored one (two centers
    /// handling two beats out of order) changes nothing.
    pub fn upsert_agent(&self, agent: &AgentRow) -> Result<(), StoreError> {
        let record = AgentRecord::try_from(agent)?;
        let upsert = diesel::insert_into(agents::table)
            .values(&record)
            .on_conflict(agents::id)
            .do_update()
            .set(&record);
        // `ON CONFLICT … DO UPDATE … WHERE`: diesel offers it through the `FilterDsl` trait.
        let upsert = diesel::query_dsl::methods::FilterDsl::filter(
            upsert,
            agents::last_heartbeat_at.le(excluded(agents::last_heartbeat_at)),
        );
        // The derived multi-backend connection has no ON CONFLICT; both backends have it.
        match &mut *self.conn()? {
            DbConnection::Pg(pg) => upsert.execute(pg)?,
            DbConnection::Sqlite(sqlite) => upsert.execute(sqlite)?,
        };
        Ok(())
    }

    /// The agent with this id, or else the one that most recently beat from this ip.
    pub fn get_agent_by_ip_or_id(&self, ip_or_id: &str) -> Result<Option<AgentRow>, StoreError> {
        let mut conn = self.conn()?;
        let by_id = agents::table
            .find(ip_or_id)
            .select(AgentRecord::as_select())
            .first(&mut *conn)
            .optional()?;
        let record = match by_id {
            Some(record) => Some(record),
            None => agents::table
                .filter(agents::ip.eq(ip_or_id))
                .order((agents::last_heartbeat_at.desc(), agents::id))
                .select(AgentRecord::as_select())
                .first(&mut *conn)
                .optional()?,
        };
        record.map(AgentRow::try_from).transpose()
    }

    /// Every agent ever seen, by id.
    pub fn list_agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let records = agents::table
            .order(agents::id)
            .select(AgentRecord::as_select())
            .load(&mut *self.conn()?)?;
        records.into_iter().map(AgentRow::try_from).collect()
    }

    /// Appends one entry to the audit log.
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        diesel::insert_into(audit_log::table)
            .values(&NewAuditRecord::from(entry))
            .execute(&mut *self.conn()?)?;
        Ok(())
    }

    /// The latest `limit` audit entries, newest first.
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let records = audit_log::table
            .order(audit_log::id.desc())
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select(AuditRecord::as_select())
            .load(&mut *self.conn()?)?;
        Ok(records.into_iter().map(AuditRow::from).collect())
    }
}
