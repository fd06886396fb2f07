//! BuildKit's build cache, kept within a size budget by `otturnaut prune`.
//!
//! bollard 0.21 cannot say `keep-storage` (API 1.39 to 1.48; Debian's
//! docker.io 20.10 speaks 1.41), and its `reserved-space` is API 1.48 and
//! later: an older daemon ignores it and prunes the whole cache. So this one
//! request goes through reqwest, to the same daemon, with both.

use std::time::Duration;

use otturnaut_core::{Error, Result};
use serde::Deserialize;

use super::Docker;

/// How much build cache `otturnaut prune` keeps: enough for the cached
/// dependency steps of a few apps, least recently used pruned first.
pub const BUILD_CACHE_KEEP: u64 = 2 << 30;

/// Pruning a large cache takes a while.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
struct Pruned {
    #[serde(rename = "SpaceReclaimed", default)]
    space_reclaimed: i64,
}

impl Docker {
    /// Prunes the daemon's unused build cache down to `keep` bytes (least
    /// recently used first) and returns the bytes freed.
    pub async fn prune_build_cache(&self, keep: u64) -> Result<u64> {
        let doing = "pruning the build cache";
        let fail = |detail: String| Error::failed(doing, detail);
        let (client, base) = match self.address.strip_prefix("unix://") {
            Some(socket) => (reqwest::Client::builder().unix_socket(socket), "http://docker".to_owned()),
            None => match self.address.split_once("://") {
                Some(("tcp" | "http", rest)) => (reqwest::Client::builder(), format!("http://{rest}")),
                _ => return Err(fail(format!("not supported for a daemon at {}", self.address))),
            },
        };
        let client = client.timeout(PRUNE_TIMEOUT).build().map_err(|e| fail(crate::error_chain(&e)))?;
        let url = format!("{base}/v{}/build/prune?keep-storage={keep}&reserved-space={keep}", self.api_version());
        let response = client.post(url).send().await.map_err(|e| fail(crate::error_chain(&e)))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| fail(crate::error_chain(&e)))?;
        if !status.is_success() {
            let shown: String = body.chars().take(300).collect();
            return Err(fail(format!("the daemon answered {status}: {}", shown.trim())));
        }
        let pruned: Pruned = serde_json::from_str(&body).map_err(|e| fail(format!("an answer not understood: {e}")))?;
        Ok(u64::try_from(pruned.space_reclaimed).unwrap_or(0))
    }
}
