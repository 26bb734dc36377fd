//! When a create may skip counting its tenant's active jobs before it
//! stores its image.
//!
//! A create asks the store whether the tenant is at its active-jobs limit
//! before the image is decoded or stored, so a refused create stores
//! nothing; the insert checks the limit again atomically
//! (crates/store/src/lib.rs, `Store::insert_job`). That pre-check is a
//! query of its own on every create. This process remembers what each
//! tenant's last pre-check counted and how many jobs it created for the
//! tenant since; while that sum is at most half the limit and the count
//! is recent, the pre-check is skipped. Other replicas may add jobs
//! meanwhile: then, at worst, a create refused by the insert has stored
//! its image, which it deletes (crates/api/src/jobs.rs, `insert`), and the
//! tenant is counted again on its next create.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a pre-check's count is trusted.
pub const COUNT_TRUSTED_FOR: Duration = Duration::from_secs(10);

/// Tenants remembered before stale counts are dropped.
const TENANTS_KEPT: usize = 10_000;

/// What this process knows of each tenant's active jobs.
#[derive(Default)]
pub struct Headroom {
    tenants: Mutex<HashMap<Arc<str>, Known>>,
}

struct Known {
    /// Active jobs at the last pre-check.
    counted: u64,
    /// Jobs this process created for the tenant since.
    created_since: u64,
    at: Instant,
}

impl Headroom {
    /// Whether `tenant` is known to be at most half way to `limit`, so a
    /// create may skip the pre-check.
    pub fn well_under(&self, tenant: &str, limit: u32) -> bool {
        self.lock().get(tenant).is_some_and(|known| {
            known.at.elapsed() < COUNT_TRUSTED_FOR
                && (known.counted + known.created_since + 1) * 2 <= u64::from(limit)
        })
    }

    /// A pre-check counted `active` jobs for `tenant`.
    pub fn counted(&self, tenant: &Arc<str>, active: u64) {
        let mut tenants = self.lock();
        if tenants.len() >= TENANTS_KEPT {
            tenants.retain(|_, known| known.at.elapsed() < COUNT_TRUSTED_FOR);
        }
        tenants.insert(
            tenant.clone(),
            Known {
                counted: active,
                created_since: 0,
                at: Instant::now(),
            },
        );
    }

    /// A job was created for `tenant`.
    pub fn created(&self, tenant: &str) {
        if let Some(known) = self.lock().get_mut(tenant) {
            known.created_since += 1;
        }
    }

    /// The insert refused a create of `tenant`'s at the limit: count again.
    pub fn refused(&self, tenant: &str) {
        self.lock().remove(tenant);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Known>> {
        self.tenants
            .lock()
            .expect("the headroom lock is never poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_well_under_while_its_count_and_creates_stay_at_half_the_limit() {
        let headroom = Headroom::default();
        let acme: Arc<str> = "acme".into();
        // Never counted: check.
        assert!(!headroom.well_under("acme", 10));
        headroom.counted(&acme, 3);
        assert!(headroom.well_under("acme", 10));
        headroom.created("acme");
        assert!(headroom.well_under("acme", 10), "3 + 1 + 1 is half of 10");
        headroom.created("acme");
        assert!(!headroom.well_under("acme", 10), "3 + 2 + 1 is over half");
        assert!(headroom.well_under("acme", 100));
        // Another tenant is not known.
        assert!(!headroom.well_under("globex", 100));
        // A refusal forgets the count.
        headroom.refused("acme");
        assert!(!headroom.well_under("acme", 100));
        // A limit of 1 is never half way.
        headroom.counted(&acme, 0);
        assert!(!headroom.well_under("acme", 1));
    }

    #[test]
    fn old_counts_are_not_trusted() {
        let headroom = Headroom::default();
        let acme: Arc<str> = "acme".into();
        headroom.counted(&acme, 0);
        headroom.lock().get_mut("acme").unwrap().at -= COUNT_TRUSTED_FOR;
        assert!(!headroom.well_under("acme", 100));
    }
}
