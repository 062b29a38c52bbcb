//! Users and their credentials (API tokens, dashboard sessions, WebSocket
//! tickets, the first run's login code). Secrets are generated and checked
//! in `crate::auth`; this layer stores and finds their hashes.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;

/// Whose rows a query may see: an admin sees everyone's, a user their own.
/// Names (of models) are looked up among the user's own either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    pub user: Uuid,
    pub admin: bool,
}

impl Viewer {
    /// mlq itself, acting on rows a request was already allowed to see.
    pub const SYSTEM: Self = Self {
        user: Uuid::nil(),
        admin: true,
    };

    /// The owner to filter on, as queries take it: `($n::uuid IS NULL OR
    /// owner = $n)`.
    pub fn owner(self) -> Option<Uuid> {
        (!self.admin).then_some(self.user)
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<&Row> for User {
    type Error = DbError;

    fn try_from(row: &Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            admin: row.try_get("admin")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// What a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An API token (`Authorization: Bearer`).
    Token,
    /// A dashboard session (the session cookie).
    Session,
    /// A single-use WebSocket ticket.
    Ticket,
    /// The first run's single-use login code.
    Login,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Session => "session",
            Self::Ticket => "ticket",
            Self::Login => "login",
        }
    }

    /// Used once, then spent.
    pub fn single_use(self) -> bool {
        matches!(self, Self::Ticket | Self::Login)
    }
}

/// A credential as its owner sees it (never its secret or hash).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Credential {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<&Row> for Credential {
    type Error = DbError;

    fn try_from(row: &Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            last_used_at: row.try_get("last_used_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// Creates a user; `None` if the name is taken.
pub async fn create_user(
    client: &impl GenericClient,
    name: &str,
    admin: bool,
) -> Result<Option<User>, DbError> {
    client
        .query_opt(
            "INSERT INTO users (id, name, admin) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING
             RETURNING *",
            &[&Uuid::new_v4(), &name, &admin],
        )
        .await?
        .as_ref()
        .map(User::try_from)
        .transpose()
}

pub async fn list_users(client: &impl GenericClient) -> Result<Vec<User>, DbError> {
    client
        .query("SELECT * FROM users ORDER BY created_at, name", &[])
        .await?
        .iter()
        .map(User::try_from)
        .collect()
}

pub async fn any_user(client: &impl GenericClient) -> Result<bool, DbError> {
    Ok(client
        .query_one("SELECT EXISTS (SELECT 1 FROM users)", &[])
        .await?
        .try_get(0)?)
}

/// The first admin, if no one has ever had a token or session: then the
/// first run's login link has not been used yet.
pub async fn first_admin_without_logins(
    client: &impl GenericClient,
) -> Result<Option<User>, DbError> {
    client
        .query_opt(
            "SELECT * FROM users
             WHERE admin
               AND NOT EXISTS (SELECT 1 FROM credentials WHERE kind IN ('token', 'session'))
             ORDER BY created_at, name
             LIMIT 1",
            &[],
        )
        .await?
        .as_ref()
        .map(User::try_from)
        .transpose()
}

/// Stores a credential's hash.
pub async fn insert_credential(
    client: &impl GenericClient,
    id: Uuid,
    user: Uuid,
    kind: Kind,
    name: &str,
    secret_hash: &[u8],
    expires_at: Option<DateTime<Utc>>,
) -> Result<Credential, DbError> {
    let row = client
        .query_one(
            "INSERT INTO credentials (id, user_id, kind, name, secret_hash, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING *",
            &[&id, &user, &kind.as_str(), &name, &secret_hash, &expires_at],
        )
        .await?;
    Credential::try_from(&row)
}

/// Ties session `session` to the token `token` that opened it: it ends
/// when the token is revoked or expires, and never outlives it. Its
/// expiry, as now set.
pub async fn bind_session(
    client: &impl GenericClient,
    session: Uuid,
    token: Uuid,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = client
        .query_one(
            "UPDATE credentials
             SET parent = $2,
                 expires_at = least(expires_at,
                                    (SELECT expires_at FROM credentials WHERE id = $2))
             WHERE id = $1
             RETURNING expires_at",
            &[&session, &token],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// A live credential whose secret matched, and whose it is.
pub struct Found {
    pub user: User,
    pub secret_hash: Vec<u8>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The live credential `id` of `kind` (not revoked, not expired) whose
/// stored hash `matches` the secret presented. Only then is anything
/// written: a single-use credential is spent (of two callers racing with
/// it, one wins), and another's last use is noted, at most once a minute,
/// so a busy token does not write on every request.
pub async fn find_credential(
    client: &impl GenericClient,
    id: Uuid,
    kind: Kind,
    matches: impl FnOnce(&[u8]) -> bool,
) -> Result<Option<Found>, DbError> {
    let statement = client
        .prepare_cached(include_str!("sql/find_credential.sql"))
        .await?;
    let Some(row) = client.query_opt(&statement, &[&id, &kind.as_str()]).await? else {
        return Ok(None);
    };
    let hash: Vec<u8> = row.try_get("secret_hash")?;
    if !matches(&hash) {
        return Ok(None);
    }
    if kind.single_use() {
        let spend = client
            .prepare_cached(
                "UPDATE credentials SET revoked_at = now(), last_used_at = now()
                 WHERE id = $1 AND revoked_at IS NULL",
            )
            .await?;
        if client.execute(&spend, &[&id]).await? == 0 {
            return Ok(None);
        }
    } else if row.try_get("note_use")? {
        let note = client
            .prepare_cached("UPDATE credentials SET last_used_at = now() WHERE id = $1")
            .await?;
        client.execute(&note, &[&id]).await?;
    }
    Ok(Some(Found {
        user: User {
            id: row.try_get("user_id")?,
            name: row.try_get("user_name")?,
            admin: row.try_get("admin")?,
            created_at: row.try_get("user_created_at")?,
        },
        secret_hash: hash,
        expires_at: row.try_get("expires_at")?,
    }))
}

/// A user's API tokens, newest first, revoked ones included.
pub async fn list_tokens(
    client: &impl GenericClient,
    user: Uuid,
) -> Result<Vec<Credential>, DbError> {
    client
        .query(
            "SELECT * FROM credentials WHERE user_id = $1 AND kind = 'token'
             ORDER BY created_at DESC, id",
            &[&user],
        )
        .await?
        .iter()
        .map(Credential::try_from)
        .collect()
}

/// Revokes an API token (or a session) the viewer may see; `None` if there
/// is none.
pub async fn revoke(
    client: &impl GenericClient,
    id: Uuid,
    viewer: Viewer,
) -> Result<Option<Credential>, DbError> {
    client
        .query_opt(
            "UPDATE credentials
             SET revoked_at = coalesce(revoked_at, now())
             WHERE id = $1 AND kind IN ('token', 'session')
               AND ($2::uuid IS NULL OR user_id = $2)
             RETURNING *",
            &[&id, &viewer.owner()],
        )
        .await?
        .as_ref()
        .map(Credential::try_from)
        .transpose()
}

/// Deletes spent and expired credentials older than a day, so sessions and
/// tickets do not pile up. Revoked tokens stay listed for a day first.
pub async fn prune(client: &impl GenericClient) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM credentials
             WHERE (revoked_at < now() - interval '1 day')
                OR (expires_at < now() - interval '1 day')",
            &[],
        )
        .await?)
}
