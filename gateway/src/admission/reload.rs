//! Hot reload of `[[tenants]]` and `[policy]`: on SIGHUP and when the
//! config file's modification time or size changes (polled). The file is
//! parsed and validated first; a bad file keeps the config in force and
//! says why (a warning and `cake_config_reload_errors_total`). A change
//! to any other key is named in a warning: it takes effect at restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Admission;
use crate::config::{Config, restart_only_changes};
use crate::telemetry as tm;

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Loads `path` and, when valid, puts its tenants and policy in force;
/// keys changed since `before` (the file as last loaded) that only take
/// effect at restart are named in a warning. Returns the file's config
/// when it was valid.
fn reload(adm: &Admission, path: &Path, before: Option<&Config>) -> Option<Config> {
    match Config::load(path) {
        Ok(cfg) => {
            adm.apply(&cfg);
            tm::config_reloaded(true);
            tracing::info!(file = %path.display(), tenants = cfg.tenants.len(),
                placement = %cfg.policy.placement, "config reloaded: tenants and policy in force");
            let changed = before
                .map(|b| restart_only_changes(b, &cfg))
                .unwrap_or_default();
            if !changed.is_empty() {
                tracing::warn!(file = %path.display(), keys = %changed.join(", "),
                    "config keys changed that take effect at restart; the running values stay");
            }
            Some(cfg)
        }
        Err(e) => {
            tm::config_reloaded(false);
            tracing::warn!(file = %path.display(), error = %e, "config reload failed; keeping the config in force");
            None
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
    // What start-only keys are compared with: the file as it was at start.
    let mut in_force = Config::load(&path).ok();
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
                if let Some(cfg) = reload(&adm, &path, in_force.as_ref()) {
                    // Start-only keys stay as they were at start: compare
                    // the next file with that, keeping what reloaded.
                    in_force = Some(match in_force.take() {
                        Some(mut old) => {
                            old.tenants = cfg.tenants;
                            old.policy = cfg.policy;
                            old
                        }
                        None => cfg,
                    });
                }
            }
        }
    })
}
