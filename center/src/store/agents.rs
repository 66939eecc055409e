//! Agents (one row per agent, upserted on every heartbeat) and the audit log.
//!
//! Whether an agent is online is the caller's judgement from `last_heartbeat_at` and
//! `interval_ms`; this file only stores. The rows are the shared, lagging copy of the
//! centers' in-memory presence: Heartbeat writes them in batches ([`Store::upsert_agents`]),
//! and reads them when it starts and when a lookup misses its memory.

use super::connection::{DbConnection, Durability};
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

    /// Inserts or updates many agents' rows in one transaction, as [`Store::upsert_agent`]
    /// does each: a row older than the stored one changes nothing. Rows go in id order (two
    /// centers flushing overlapping sets lock them in the same order) and
    /// [`UPSERT_CHUNK`] to a statement.
    ///
    /// The commit is relaxed ([`Durability::Relaxed`]): these rows are soft state that the
    /// next heartbeat rewrites, so a database crash losing the last second of them costs
    /// nothing, and waiting for the log flush 1,000 times a second would.
    pub fn upsert_agents(&self, rows: &[AgentRow]) -> Result<(), StoreError> {
        let mut records = rows
            .iter()
            .map(AgentRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records.dedup_by(|later, earlier| later.id == earlier.id);
        self.conn()?
            .write_transaction_with(Durability::Relaxed, |conn| {
                for chunk in records.chunks(UPSERT_CHUNK) {
                    upsert_chunk(conn, chunk)?;
                }
                Ok(())
            })
    }

    /// One page of the distinct agent ips, in order: `limit` from `offset`.
    pub fn agent_ips_page(&self, offset: u64, limit: u64) -> Result<Vec<String>, StoreError> {
        let ips = agents::table
            .select(agents::ip)
            .distinct()
            .order(agents::ip)
            .offset(i64::try_from(offset).unwrap_or(i64::MAX))
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .load(&mut *self.conn()?)?;
        Ok(ips)
    }

    /// The rows of these agent ids (those that exist), by id.
    pub fn agents_by_ids(&self, ids: &[String]) -> Result<Vec<AgentRow>, StoreError> {
        let mut conn = self.conn()?;
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(UPSERT_CHUNK) {
            let records = agents::table
                .filter(agents::id.eq_any(chunk))
                .order(agents::id)
                .select(AgentRecord::as_select())
                .load(&mut *conn)?;
            for record in records {
                rows.push(AgentRow::try_from(record)?);
            }
        }
        Ok(rows)
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

    /// Every agent whose last heartbeat is at `since` or later (unix ms), by id.
    pub fn agents_seen_since(&self, since: u64) -> Result<Vec<AgentRow>, StoreError> {
        let records = agents::table
            .filter(agents::last_heartbeat_at.ge(super::models::db_time(since)))
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

/// Agent rows per upsert statement: 7 bound parameters each, far below either backend's limit.
const UPSERT_CHUNK: usize = 1_000;

fn upsert_chunk(conn: &mut DbConnection, records: &[AgentRecord]) -> Result<(), StoreError> {
    match conn {
        // One multi-row statement: one round trip for the chunk.
        DbConnection::Pg(pg) => {
            let upsert = diesel::insert_into(agents::table)
                .values(records)
                .on_conflict(agents::id)
                .do_update()
                .set((
                    agents::ip.eq(excluded(agents::ip)),
                    agents::asset.eq(excluded(agents::asset)),
                    agents::version.eq(excluded(agents::version)),
                    agents::apps.eq(excluded(agents::apps)),
                    agents::last_heartbeat_at.eq(excluded(agents::last_heartbeat_at)),
                    agents::interval_ms.eq(excluded(agents::interval_ms)),
                    agents::labels.eq(excluded(agents::labels)),
                ));
            diesel::query_dsl::methods::FilterDsl::filter(
                upsert,
                agents::last_heartbeat_at.le(excluded(agents::last_heartbeat_at)),
            )
            .execute(pg)?;
        }
        // diesel has no multi-row upsert for SQLite; statements in one transaction cost no
        // round trip there, and the commit is what costs.
        DbConnection::Sqlite(sqlite) => {
            for record in records {
                let upsert = diesel::insert_into(agents::table)
                    .values(record)
                    .on_conflict(agents::id)
                    .do_update()
                    .set(record);
                diesel::query_dsl::methods::FilterDsl::filter(
                    upsert,
                    agents::last_heartbeat_at.le(excluded(agents::last_heartbeat_at)),
                )
                .execute(sqlite)?;
            }
        }
    }
    Ok(())
}
