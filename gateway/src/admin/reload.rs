//! Reloading the configuration while serving: from `POST /v1/reload` (see
//! [`crate::admin::api`]) or SIGHUP. Routes, upstreams, limits, key sources,
//! `fleet.max_staleness_ms` and the TLS certificate files change in place;
//! what needs a restart is refused by name, and an invalid file changes
//! nothing.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use scopegate_config::Config;

use crate::request::routing::Routing;
use crate::request::state::State;

/// Reloads routes, upstreams, limits, key sources and logging settings from
/// the config file (with the same flags re-applied), and
/// `fleet.max_staleness_ms`. Settings that need a restart (listeners, store,
/// `fleet.poll_interval_ms`, threads, secrets) must not change; an invalid
/// config changes nothing. Returns the number of routes now in force.
pub fn reload(state: &State) -> Result<usize, String> {
    let result = (|| {
        let path = state
            .config_path
            .as_ref()
            .ok_or("the gateway was started without --config: there is no file to reload")?;
        let mut next = Config::load(path).map_err(|e| e.to_string())?;
        next.apply_overrides(state.overrides.clone())
            .map_err(|e| e.to_string())?;
        let current = state.routing.load();
        let cur = &current.config;
        let fixed: Vec<&str> = [
            ("listen", next.listen != cur.listen),
            ("admin_listen", next.admin_listen != cur.admin_listen),
            ("store", next.store != cur.store),
            (
                "fleet.poll_interval_ms",
                next.fleet.poll_interval != cur.fleet.poll_interval,
            ),
            ("threads", next.threads != cur.threads),
            ("secrets", next.secrets != cur.secrets),
            ("log", next.log != cur.log),
            (
                "tls (turning it on or off)",
                next.tls.files().is_some() != cur.tls.files().is_some(),
            ),
            ("tls.listen", next.tls.listen != cur.tls.listen),
            ("connections", next.connections != cur.connections),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !fixed.is_empty() {
            return Err(format!(
                "{} cannot change without a restart; nothing was reloaded",
                fixed.join(", ")
            ));
        }
        let routing = Routing::build(next, &state.metrics)?;
        // The certificate files are re-read on every reload (renewed in
        // place); handshakes from now on present the new pair.
        if let (Some(certs), Some((cert, key))) = (&state.tls, routing.config.tls.files()) {
            let reloaded = certs.reload(cert, key);
            let label = if reloaded.is_ok() { "ok" } else { "rejected" };
            state
                .metrics
                .edge
                .cert_reloads
                .with_label_values(&[label])
                .inc();
            reloaded.map_err(|e| format!("{e}; nothing was reloaded"))?;
        }
        let n = routing.routes.len();
        state.routing.store(Arc::new(routing));
        Ok(n)
    })();
    let label = if result.is_ok() { "ok" } else { "rejected" };
    state.metrics.reloads.with_label_values(&[label]).inc();
    match &result {
        Ok(n) => log::info!("configuration reloaded: {n} routes"),
        Err(e) => log::warn!("configuration reload rejected: {e}"),
    }
    result
}

/// Reloads the configuration on SIGHUP.
pub struct ReloadOnHup {
    /// Shared gateway state.
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for ReloadOnHup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            log::warn!("cannot listen for SIGHUP; reload with POST /v1/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => {
                    let state = Arc::clone(&self.state);
                    let _ = tokio::task::spawn_blocking(move || reload(&state)).await;
                }
            }
        }
    }
}
