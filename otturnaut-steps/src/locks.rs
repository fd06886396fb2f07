//! Deploys of one app never interleave; different apps run concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use otturnaut_core::AppId;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// One async lock per app, inside this process: deploys of one app run one
/// after the other, different apps concurrently. (Across processes, the
/// adapters' file lock does the same.) Unused locks are dropped.
#[derive(Debug, Default, Clone)]
pub struct AppLocks {
    locks: Arc<Mutex<HashMap<AppId, Weak<AsyncMutex<()>>>>>,
}

impl AppLocks {
    /// Waits for the app's lock. Held until the returned guard is dropped.
    pub async fn lock(&self, app: &AppId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, weak| weak.strong_count() > 0);
            match map.get(app).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(AsyncMutex::new(()));
                    map.insert(app.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}
