//! Hot reload of `[[tenants]]` and `[policy]`: on SIGHUP and when the
//! config file's modification time or size changes (polled). The file is
//! parsed and validated first; a bad file keeps the config in force and
//! says why (a warning and `cake_config_reload_errors_total`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Admission;
use crate::config::Config;
use crate::telemetry as tm;

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Loads `path` and, when valid, puts its tenants and policy in force.
pub fn reload(adm: &Admission, path: &Path) -> bool {
    match Config::load(path) {
        Ok(cfg) => {
            adm.apply(&cfg);
            tm::config_reloaded(true);
            tracing::info!(file = %path.display(), tenants = cfg.tenants.len(),
                placement = %cfg.policy.placement, "config reloaded");
            true
        }
        Err(e) => {
            tm::config_reloaded(false);
            tracing::warn!(file = %path.display(), error = %e, "config reload failed; keeping the config in force");
            false
        }
    }
}

/// Watches `path` (every `every`, and on SIGHUP) until the admission state
/// is dropped.
pub fn watch(adm: &Arc<Admission>, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(adm);
    // Stamped now, not when the task first runs: a change made right after
    // this returns is a change.
    let mut last = stamp(&path);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            #[cfg(not(unix))]
            let forced = {
                tick.tick().await;
                false
            };
            let Some(adm) = weak.upgrade() else { return };
            let now = stamp(&path);
            if forced || now != last {
                last = now;
                reload(&adm, &path);
            }
        }
    })
}
