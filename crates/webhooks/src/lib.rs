//! Outbound webhooks in the Standard Webhooks format
//! (<https://www.standardwebhooks.com>), so that receivers can verify our
//! calls with any of that project's libraries.
//!
//! The crate does one attempt at a time and keeps no state about deliveries:
//! the caller (a loop that claims delivery rows from the database) decides
//! when to try again with [`RetrySchedule::next_delay`], and records each
//! [`Outcome`]. Pieces:
//!
//! - [`Secret`] and [`sign`]: the `whsec_` key and the `v1,` HMAC-SHA256
//!   signature over `{id}.{timestamp}.{body}`;
//! - [`envelope`]: the JSON body `{"type", "timestamp", "data"}`;
//! - [`Deliverer`]: one signed POST, refused for private destinations, pinned
//!   to the addresses it checked, bounded in time and in per-host concurrency,
//!   reusing one client per destination while its addresses stay the same;
//! - [`check_url`]: the same URL rules, for validating a webhook when it is
//!   created rather than at its first delivery.

mod deliver;
mod envelope;
mod schedule;
mod secret;

pub use deliver::{
    check_url, Deliverer, DeliveryRequest, Outcome, CLIENT_IDLE, MAX_CACHED_CLIENTS, MAX_URL_LEN,
    USER_AGENT,
};
pub use envelope::envelope;
pub use schedule::RetrySchedule;
pub use secret::{sign, Secret, SecretError};
