//! `editthinker keys …`: API keys and tenants' webhook secrets, written
//! straight to the database the configuration names (run it where the
//! `migrate` role runs).

use anyhow::Context;
use editthinker_api::auth::{generate_key, hash_key, key_prefix, valid_tenant};
use editthinker_store::{NewApiKey, Store};
use uuid::Uuid;

/// Makes a key for `tenant`; returns it (the only time it is shown) and
/// its id.
pub async fn create(
    store: &dyn Store,
    tenant: &str,
    label: Option<String>,
) -> anyhow::Result<(String, Uuid)> {
    check_tenant(tenant)?;
    let key = generate_key();
    let row = store
        .insert_api_key(NewApiKey {
            id: Uuid::now_v7(),
            tenant: tenant.to_string(),
            label,
            key_hash: hash_key(&key),
            prefix: key_prefix(&key),
        })
        .await
        .context("storing the key")?;
    Ok((key, row.id))
}

/// Every key as a table: id, tenant, prefix, label, created, revoked.
pub async fn list(store: &dyn Store) -> anyhow::Result<String> {
    let keys = store.list_api_keys().await.context("listing keys")?;
    let mut out = format!(
        "{:<36}  {:<20}  {:<12}  {:<16}  {:<20}  {}\n",
        "ID", "TENANT", "PREFIX", "LABEL", "CREATED", "REVOKED"
    );
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    for key in keys {
        out.push_str(&format!(
            "{:<36}  {:<20}  {:<12}  {:<16}  {:<20}  {}\n",
            key.id,
            key.tenant,
            format!("{}…", key.prefix),
            key.label.as_deref().unwrap_or("-"),
            time(key.created_at),
            key.revoked_at.map(time).unwrap_or_else(|| "-".into()),
        ));
    }
    Ok(out)
}

/// Revokes the key with `id`; an error when there is no such active key.
pub async fn revoke(store: &dyn Store, id: &str) -> anyhow::Result<()> {
    let id = Uuid::parse_str(id).context("a key id (the ID column of `keys list`)")?;
    if !store.revoke_api_key(id).await.context("revoking")? {
        anyhow::bail!("no active key has id {id}");
    }
    Ok(())
}

/// Gives `tenant` a new webhook signing secret of its own and returns it;
/// its deliveries are signed with it from the next attempt on.
pub async fn rotate_webhook_secret(store: &dyn Store, tenant: &str) -> anyhow::Result<String> {
    check_tenant(tenant)?;
    let secret = editthinker_webhooks::Secret::generate();
    store
        .set_tenant_webhook_secret(tenant, &secret)
        .await
        .context("storing the secret")?;
    Ok(secret)
}

fn check_tenant(tenant: &str) -> anyhow::Result<()> {
    if !valid_tenant(tenant) {
        anyhow::bail!("--tenant {tenant:?}: must be 1 to 64 of A-Z a-z 0-9 . _ -");
    }
    Ok(())
}
