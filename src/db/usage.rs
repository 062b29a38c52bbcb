//! What each user has queued, stored and uploaded, for their quotas
//! (`http::quota`). Running tasks are limited where tasks are claimed
//! (`sql/claim.sql`).

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// Serializes one user's uploads until the transaction ends, so two at
/// once cannot both pass a byte limit that only one fits under.
pub async fn lock_user(tx: &impl GenericClient, user: Uuid) -> Result<(), DbError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('mlq quota ' || $1::uuid::text, 0))",
        &[&user],
    )
    .await?;
    Ok(())
}

/// The user's tasks waiting to run, counted up to `up_to`.
pub async fn queued(client: &impl GenericClient, user: Uuid, up_to: u64) -> Result<i64, DbError> {
    // Written as tasks_due_by_owner's expression, so it counts that index,
    // and no further than the limit it is compared with.
    let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            "SELECT count(*) FROM (
                 SELECT 1 FROM tasks
                 WHERE coalesce(owner, '00000000-0000-0000-0000-000000000000'::uuid) = $1
                   AND status = 'queued'
                 LIMIT $2) AS waiting",
            &[&user, &up_to],
        )
        .await?;
    Ok(row.get(0))
}

/// Bytes the user's tasks hold in the object store: their inputs (uploaded
/// models among them) and their artifacts (trained models among them).
pub async fn stored_bytes(client: &impl GenericClient, user: Uuid) -> Result<i64, DbError> {
    let row = client
        .query_one(include_str!("sql/stored_bytes.sql"), &[&user])
        .await?;
    Ok(row.get(0))
}

/// Bytes the user uploaded today (UTC).
pub async fn uploaded_today(client: &impl GenericClient, user: Uuid) -> Result<i64, DbError> {
    let row = client
        .query_opt(
            "SELECT bytes FROM upload_days
             WHERE owner = $1 AND day = (now() AT TIME ZONE 'UTC')::date",
            &[&user],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Counts `bytes` against today's uploads; today's total with them.
pub async fn add_upload(tx: &impl GenericClient, user: Uuid, bytes: i64) -> Result<i64, DbError> {
    let row = tx
        .query_one(
            "INSERT INTO upload_days (owner, day, bytes)
             VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2)
             ON CONFLICT (owner, day) DO UPDATE SET bytes = upload_days.bytes + excluded.bytes
             RETURNING bytes",
            &[&user, &bytes],
        )
        .await?;
    Ok(row.get(0))
}
