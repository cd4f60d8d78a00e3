//! Metrics of the connection layer: connections open, requests refused
//! before they became requests, certificate reloads. Kept apart from the
//! per-request metrics so the request path's struct stays as it is.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why the connection layer refused or closed a connection; the label values
/// of `scopegate_edge_refusals_total`, a bounded set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeRefusal {
    /// 431: the request head is over `connections.max_header_bytes`.
    HeaderTooLarge,
    /// 431: more header fields than `connections.max_headers`.
    TooManyHeaders,
    /// The head did not arrive within `connections.header_read_timeout_ms`;
    /// the connection was closed.
    HeaderTimeout,
    /// 400: an ambiguous or malformed message framing (request smuggling
    /// shapes: Content-Length with Transfer-Encoding, two Content-Lengths, a
    /// coding other than chunked, obs-fold, bare LF, space before the colon).
    BadFraming,
    /// `connections.max_connections` were open and no slot freed in time.
    ConnectionLimit,
}

impl EdgeRefusal {
    /// Every reason, for pre-registering the label values.
    pub const ALL: [EdgeRefusal; 5] = [
        EdgeRefusal::HeaderTooLarge,
        EdgeRefusal::TooManyHeaders,
        EdgeRefusal::HeaderTimeout,
        EdgeRefusal::BadFraming,
        EdgeRefusal::ConnectionLimit,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeRefusal::HeaderTooLarge => "header_too_large",
            EdgeRefusal::TooManyHeaders => "too_many_headers",
            EdgeRefusal::HeaderTimeout => "header_timeout",
            EdgeRefusal::BadFraming => "bad_framing",
            EdgeRefusal::ConnectionLimit => "connection_limit",
        }
    }
}

/// The connection layer's metrics.
pub struct EdgeMetrics {
    /// Client connections open now (all listeners).
    pub open: IntGauge,
    /// Client connections accepted since start.
    pub accepted: IntCounter,
    refusals: IntCounterVec,
    /// Certificate reloads by result (`ok`, `rejected`).
    pub cert_reloads: IntCounterVec,
}

impl EdgeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> EdgeMetrics {
        let open = IntGauge::new(
            "scopegate_client_connections",
            "Client connections open now, all listeners together.",
        )
        .expect("valid metric");
        let accepted = IntCounter::new(
            "scopegate_client_connections_total",
            "Client connections accepted.",
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "scopegate_edge_refusals_total",
                "Connections refused or closed by the connection layer before a request was decided, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let cert_reloads = IntCounterVec::new(
            Opts::new(
                "scopegate_tls_cert_reloads_total",
                "TLS certificate reloads by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        for r in EdgeRefusal::ALL {
            refusals.with_label_values(&[r.as_str()]);
        }
        for r in ["ok", "rejected"] {
            cert_reloads.with_label_values(&[r]);
        }
        for c in [
            Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(accepted.clone()),
            Box::new(refusals.clone()),
            Box::new(cert_reloads.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        EdgeMetrics {
            open,
            accepted,
            refusals,
            cert_reloads,
        }
    }

    /// Counts one refusal.
    pub fn refused(&self, why: EdgeRefusal) {
        self.refusals.with_label_values(&[why.as_str()]).inc();
    }
}
