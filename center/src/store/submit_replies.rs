//! Reply addresses of tasks submitted on `center.submit` (SPEC §7.2).
//!
//! The address is stored before the task can run and removed after its reply was published,
//! so a reply is sent at least once: by whichever center settles the task, or, if that center
//! died in between, by the next sweep of any center.

use super::models::{db_time, TaskRecord};
use super::schema::{submit_replies, tasks};
use super::{Store, StoreError, TaskRow, TaskStatus};
use diesel::prelude::*;
use elves_shared::wire::TaskId;

/// Where the answer to a submission goes, and in which encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    pub reply_to: String,
    pub correlation_id: Option<String>,
    /// Answer in JSON (the submission was JSON) rather than MessagePack.
    pub json: bool,
}

#[derive(Insertable, Queryable, Selectable)]
#[diesel(table_name = submit_replies)]
struct SubmitReplyRecord {
    task_id: String,
    reply_to: String,
    correlation_id: Option<String>,
    json: bool,
    created_at: i64,
}

impl Store {
    /// Remembers where the result of `task_id` goes. Call it before the task can run.
    pub fn save_submit_reply(
        &self,
        task_id: &TaskId,
        address: &ReplyAddress,
        now: u64,
    ) -> Result<(), StoreError> {
        diesel::insert_into(submit_replies::table)
            .values(SubmitReplyRecord {
                task_id: task_id.to_string(),
                reply_to: address.reply_to.clone(),
                correlation_id: address.correlation_id.clone(),
                json: address.json,
                created_at: db_time(now),
            })
            .execute(&mut *self.conn()?)?;
        Ok(())
    }

    /// Up to `limit` replies owed for settled tasks (`finish`, `stoped`, `skipped`), oldest task
    /// first. With `settled_before`, only tasks settled before that instant: a sweep leaves
    /// the fresh ones to the center that settled them.
    pub fn settled_submit_replies(
        &self,
        only: Option<&[TaskId]>,
        settled_before: Option<u64>,
        limit: i64,
    ) -> Result<Vec<(TaskRow, ReplyAddress)>, StoreError> {
        let settled = [
            TaskStatus::Finished.as_str(),
            TaskStatus::Stopped.as_str(),
            TaskStatus::Skipped.as_str(),
        ];
        let mut query = submit_replies::table
            .inner_join(tasks::table)
            .filter(tasks::status.eq_any(settled))
            .order((tasks::created_at, tasks::id))
            .limit(limit)
            .select((TaskRecord::as_select(), SubmitReplyRecord::as_select()))
            .into_boxed();
        if let Some(ids) = only {
            query = query.filter(submit_replies::task_id.eq_any(ids.iter().map(TaskId::as_str)));
        }
        if let Some(before) = settled_before {
            query = query.filter(tasks::finished_at.lt(db_time(before)));
        }
        let rows: Vec<(TaskRecord, SubmitReplyRecord)> = query.load(&mut *self.conn()?)?;
        rows.into_iter()
            .map(|(task, reply)| {
                let address = ReplyAddress {
                    reply_to: reply.reply_to,
                    correlation_id: reply.correlation_id,
                    json: reply.json,
                };
                Ok((TaskRow::try_from(task)?, address))
            })
            .collect()
    }

    /// Forgets the reply address of a task whose reply went out.
    pub fn forget_submit_reply(&self, task_id: &TaskId) -> Result<(), StoreError> {
        diesel::delete(submit_replies::table.find(task_id.as_str())).execute(&mut *self.conn()?)?;
        Ok(())
    }

    /// How many submitted tasks still owe a reply.
    pub fn count_submit_replies(&self) -> Result<u64, StoreError> {
        let count: i64 = submit_replies::table
            .count()
            .get_result(&mut *self.conn()?)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
