//! [`FleetConfig`]: the knobs of the fleet layer, with defaults a deployment can rely on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limiter::LimiterConfig;

/// Configuration of the fleet layer (the `[fleet]` section of `ferrite.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Require the MQTT client id to equal the authenticated device id. On by default: the
    /// gateway's session takeover is keyed by client id, so without this a device could
    /// connect as itself with another device's client id and knock that device off.
    pub client_id_must_match: bool,
    /// Validity of device certificates issued by the fleet CA.
    #[serde(with = "humantime_serde")]
    pub cert_validity: Duration,
    /// Validity of a CA certificate created by [`crate::Fleet::ca_init`].
    #[serde(with = "humantime_serde")]
    pub ca_validity: Duration,
    /// Most active credentials (tokens) one device may have at once (rotation needs two).
    pub max_credentials_per_device: usize,
    /// How many fleet events a slow subscriber may fall behind before it is told it lagged.
    pub event_capacity: usize,
    /// Most devices whose authentication data and compiled ACL are cached in memory; the cache
    /// is cleared when it would grow beyond.
    pub auth_cache_capacity: usize,
    /// An API token's `last_used` is written to disk at most this often.
    #[serde(with = "humantime_serde")]
    pub api_token_touch_interval: Duration,
    /// Brute-force protection for device authentication.
    pub limiter: LimiterConfig,
    /// Memory the registry database may use to cache its pages (redb's own default is 1 GiB).
    pub cache_bytes: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            client_id_must_match: true,
            cert_validity: Duration::from_secs(365 * 24 * 3600),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            max_credentials_per_device: 8,
            event_capacity: 4096,
            auth_cache_capacity: 200_000,
            api_token_touch_interval: Duration::from_secs(60),
            limiter: LimiterConfig::default(),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_unknown_fields_are_refused() {
        let text = serde_json::to_string(&FleetConfig::default()).expect("ser");
        let back: FleetConfig = serde_json::from_str(&text).expect("de");
        assert_eq!(back, FleetConfig::default());
        let partial: FleetConfig =
            serde_json::from_str(r#"{"cert_validity":"30d"}"#).expect("partial");
        assert_eq!(partial.cert_validity, Duration::from_secs(30 * 24 * 3600));
        assert!(serde_json::from_str::<FleetConfig>(r#"{"nope":1}"#).is_err());
    }
}
