//! The route table: which requests are admitted, where they go, and which
//! domain a key must cover for them.

use std::fmt;

use crate::model::Limits;

/// One entry of the ordered route table.
///
/// The gateway walks the table top to bottom and uses the first route whose
/// method and path match; a request matching none is answered 404, so every
/// upstream endpoint a client can reach is listed on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Methods this route covers, uppercase (`GET`, `POST`); empty means any.
    pub methods: Vec<String>,
    /// Path pattern, matched against the canonical (decoded) path.
    pub path: PathPattern,
    /// Name of the upstream group that receives admitted requests.
    pub upstream: String,
    /// What the key must cover for the request to be admitted.
    pub target: Target,
    /// Largest accepted request body; resolved from `[limits]` when the file
    /// says 0 or nothing, so it is never 0 in a validated config.
    pub max_body_bytes: u64,
}

impl Route {
    /// Whether this route covers `method`; exists so "empty means any" is
    /// decided in one place.
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}

/// What a request acts on, and so what its key must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `"key"`: any live key; organisation-level listing that the upstream
    /// filters using the scope header.
    Key,
    /// `"org"`: organisation-level change (create domain, users, billing);
    /// needs an `org_wide` key.
    Org,
    /// `"domain"`: the `{domain}` path segment; GET/HEAD need read, other
    /// methods read_write.
    Domain,
    /// `"sender"`: the `From` domain of every message in the JSON body; needs
    /// read_write on each.
    Sender(SenderSpec),
    /// `"server"`: the server the key is bound to (a Postmark server token),
    /// at the method's level: GET/HEAD need read, other methods read_write.
    /// A key bound to no server is refused (403).
    Server,
    /// `"server_id"`: the `{server}` path segment is a numeric server id
    /// (`/servers/{server}`). An organisation-wide key may act on any; a
    /// key bound to that very server only, at the method's level.
    ServerId,
    /// `"public"`: no key needed; only ever by explicit configuration.
    Public,
}

impl Target {
    /// The file's name for this target; exists for messages and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Key => "key",
            Target::Org => "org",
            Target::Domain => "domain",
            Target::Sender(_) => "sender",
            Target::Server => "server",
            Target::ServerId => "server_id",
            Target::Public => "public",
        }
    }
}

/// Where the sender addresses are in a send request's JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderSpec {
    /// `sender_pointer`: JSON pointer, within each message, to the sender
    /// (`/From`); its domain is what the key must be able to write.
    pub sender_pointer: String,
    /// `messages_pointer`: how to find the messages in the body.
    pub messages: Messages,
}

/// How the messages of a send request are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Messages {
    /// `messages_pointer` absent: the body is one message object.
    Single,
    /// `messages_pointer = ""`: the body is a JSON array of messages.
    RootArray,
    /// `messages_pointer = "/Messages"`: JSON pointer to the array of messages.
    Pointer(String),
}

/// A parsed path pattern such as `/domains/{domain}/**`.
///
/// Exists so patterns are checked once at load and matched without string
/// parsing on the hot path. `raw` keeps the text for messages and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The segments between `/`s; empty for the pattern `/`.
    pub segments: Vec<Segment>,
    /// The pattern as written.
    pub raw: String,
}

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches this text without regard to ASCII case (`verifyDKIM`,
    /// `verifyDkim` and `verifydkim` are one route: real clients differ).
    Literal(String),
    /// `{domain}`: matches any one segment and names it as the target domain.
    Domain,
    /// `{server}`: matches any one segment and names it as the target
    /// server's numeric id.
    Server,
    /// `**`, last only: matches the rest of the path, zero or more segments.
    Rest,
}

impl PathPattern {
    /// Parses a pattern: it starts with `/`, has no empty segments, at most one
    /// capture (`{domain}` or `{server}`), and `**` only as the last segment. The error says what is
    /// wrong, quoting the pattern.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("{s:?} must start with \"/\""));
        };
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let segment = match *part {
                    "" => {
                        return Err(format!(
                            "{s:?} has an empty segment (\"//\" or a trailing \"/\")"
                        ))
                    }
                    "{domain}" | "{server}"
                        if segments
                            .iter()
                            .any(|s| matches!(s, Segment::Domain | Segment::Server)) =>
                    {
                        return Err(format!(
                            "{s:?} has more than one {{domain}} or {{server}}"
                        ))
                    }
                    "{domain}" => Segment::Domain,
                    "{server}" => Segment::Server,
                    "**" if i + 1 < parts.len() => {
                        return Err(format!("{s:?}: \"**\" may only be the last segment"))
                    }
                    "**" => Segment::Rest,
                    "." | ".." => {
                        return Err(format!(
                            "{s:?}: \".\" and \"..\" segments are refused before matching, so this pattern could never match"
                        ))
                    }
                    p if p.contains(['{', '}', '*', '?', '#', '\\']) => {
                        return Err(format!(
                            "{s:?}: segment {p:?} is not allowed; only \"{{domain}}\", \"{{server}}\" and a final \"**\" are special, and '?', '#' and '\\' never appear in a canonical path"
                        ))
                    }
                    p => Segment::Literal(p.to_owned()),
                };
                segments.push(segment);
            }
        }
        Ok(PathPattern {
            segments,
            raw: s.to_owned(),
        })
    }

    /// Matches the segments of a canonical path (`/a/b` is `["a", "b"]`).
    /// Returns `None` on no match, `Some(captured)` on a match, where
    /// `captured` is the segment matched by `{domain}` or `{server}`, if the
    /// pattern has one (it has at most one).
    pub fn matches<'a>(&self, segments: &[&'a str]) -> Option<Option<&'a str>> {
        let mut domain = None;
        for (i, pattern) in self.segments.iter().enumerate() {
            match pattern {
                Segment::Rest => return Some(domain),
                Segment::Literal(literal) => {
                    if !segments
                        .get(i)
                        .is_some_and(|s| s.eq_ignore_ascii_case(literal))
                    {
                        return None;
                    }
                }
                Segment::Domain | Segment::Server => domain = Some(*segments.get(i)?),
            }
        }
        (segments.len() == self.segments.len()).then_some(domain)
    }

    /// Whether the pattern captures a target domain.
    pub fn has_domain(&self) -> bool {
        self.segments.contains(&Segment::Domain)
    }

    /// Whether the pattern captures a server id.
    pub fn has_server(&self) -> bool {
        self.segments.contains(&Segment::Server)
    }

    /// The index of the captured segment (`{domain}` or `{server}`) in a
    /// matching path; it precedes any `**`, so pattern and path agree.
    pub fn capture_index(&self) -> Option<usize> {
        self.segments
            .iter()
            .position(|s| matches!(s, Segment::Domain | Segment::Server))
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Limits {
    /// The body limit a route gets when the file leaves `max_body_bytes` at 0:
    /// send or batch limit for sender routes, the streamed limit otherwise.
    pub(crate) fn body_limit_for(&self, target: &Target) -> u64 {
        match target {
            Target::Sender(SenderSpec {
                messages: Messages::Single,
                ..
            }) => self.max_send_body_bytes,
            Target::Sender(_) => self.max_batch_body_bytes,
            _ => self.max_body_bytes,
        }
    }
}

/// The default route table (DESIGN.md), with body limits from `limits`.
pub(crate) fn default_routes_for(limits: &Limits) -> Vec<Route> {
    let route = |methods: &[&str], path: &str, upstream: &str, target: Target| Route {
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        path: PathPattern::parse(path).expect("default route patterns are valid"),
        upstream: upstream.to_owned(),
        max_body_bytes: limits.body_limit_for(&target),
        target,
    };
    let sender = |messages: Messages| {
        Target::Sender(SenderSpec {
            sender_pointer: "/From".to_owned(),
            messages,
        })
    };
    vec![
        route(&["GET"], "/domains", "domains", Target::Key),
        route(&["POST"], "/domains", "domains", Target::Org),
        route(&[], "/domains/{domain}/**", "domains", Target::Domain),
        route(&["POST"], "/email", "sending", sender(Messages::Single)),
        route(
            &["POST"],
            "/email/withTemplate",
            "sending",
            sender(Messages::Single),
        ),
        route(
            &["POST"],
            "/email/batch",
            "sending",
            sender(Messages::RootArray),
        ),
        route(
            &["POST"],
            "/email/batchWithTemplates",
            "sending",
            sender(Messages::Pointer("/Messages".to_owned())),
        ),
        route(&[], "/account/**", "domains", Target::Org),
        route(&[], "/users/**", "domains", Target::Org),
        route(&[], "/invitations/**", "domains", Target::Org),
        route(&[], "/billing/**", "domains", Target::Org),
        // Postmark's account API (account tokens: org-wide keys), except
        // that any key lists sender signatures (the upstream filters by the
        // scope header, as for /domains) and creates one on a domain it may
        // write. `/senders/{id}` is organisation-level: a signature's id
        // does not say its domain, and the gateway asks the upstream nothing.
        route(&["GET"], "/senders", "domains", Target::Key),
        route(
            &["POST"],
            "/senders",
            "domains",
            Target::Sender(SenderSpec {
                sender_pointer: "/FromEmail".to_owned(),
                messages: Messages::Single,
            }),
        ),
        route(&[], "/senders/**", "domains", Target::Org),
        route(&[], "/data-removals/**", "domains", Target::Org),
        // Pushing templates between servers is account-level; any other
        // method on `/templates/push` is the server's template aliased "push".
        route(&["PUT"], "/templates/push", "domains", Target::Org),
        // A key may read its own server by id; everything else on
        // `/servers` is organisation-level.
        route(&["GET"], "/servers/{server}", "domains", Target::ServerId),
        route(&[], "/servers/**", "domains", Target::Org),
        // Postmark's server API (server tokens: keys bound to a server), at
        // the method's level.
        route(&[], "/server/**", "sending", Target::Server),
        route(&[], "/messages/**", "sending", Target::Server),
        route(&[], "/bounces/**", "sending", Target::Server),
        route(&[], "/deliverystats/**", "sending", Target::Server),
        route(&[], "/templates/**", "sending", Target::Server),
        route(&[], "/stats/**", "sending", Target::Server),
        route(&[], "/webhooks/**", "sending", Target::Server),
        route(&[], "/message-streams/**", "sending", Target::Server),
        route(&[], "/triggers/inboundrules/**", "sending", Target::Server),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn pattern(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn literal_patterns_match_whole_segments_without_regard_to_case() {
        let p = pattern("/email/batch");
        assert_eq!(p.matches(&["email", "batch"]), Some(None));
        assert_eq!(p.matches(&["email"]), None);
        assert_eq!(p.matches(&["email", "batch", "x"]), None);
        assert_eq!(p.matches(&["Email", "BATCH"]), Some(None));
        assert_eq!(p.matches(&["email", "batches"]), None);
        let p = pattern("/domains/{domain}/verifyDKIM");
        for v in ["verifyDKIM", "verifyDkim", "verifydkim"] {
            assert_eq!(p.matches(&["domains", "12", v]), Some(Some("12")), "{v}");
        }
    }

    #[test]
    fn rest_matches_zero_or_more_segments() {
        let p = pattern("/account/**");
        assert_eq!(p.matches(&["account"]), Some(None));
        assert_eq!(p.matches(&["account", "a", "b"]), Some(None));
        assert_eq!(p.matches(&["accounts"]), None);
        assert_eq!(p.matches(&[]), None);
        assert_eq!(pattern("/**").matches(&[]), Some(None));
    }

    #[test]
    fn domain_captures_one_segment() {
        let p = pattern("/domains/{domain}/**");
        assert_eq!(
            p.matches(&["domains", "example.com"]),
            Some(Some("example.com"))
        );
        assert_eq!(
            p.matches(&["domains", "42", "verifyDkim"]),
            Some(Some("42"))
        );
        assert_eq!(p.matches(&["domains"]), None);
        let exact = pattern("/domains/{domain}");
        assert_eq!(exact.matches(&["domains", "a.com", "x"]), None);
        assert!(exact.has_domain());
    }

    #[test]
    fn server_captures_one_segment() {
        let p = pattern("/servers/{server}");
        assert_eq!(p.matches(&["servers", "12"]), Some(Some("12")));
        assert_eq!(p.matches(&["Servers", "12"]), Some(Some("12")));
        assert_eq!(p.matches(&["servers"]), None);
        assert_eq!(p.matches(&["servers", "12", "x"]), None);
        assert!(p.has_server() && !p.has_domain());
        assert_eq!(p.capture_index(), Some(1));
        assert_eq!(pattern("/a/**").capture_index(), None);
    }

    #[test]
    fn root_pattern_matches_only_root() {
        let p = pattern("/");
        assert!(p.segments.is_empty());
        assert_eq!(p.matches(&[]), Some(None));
        assert_eq!(p.matches(&["a"]), None);
    }

    #[test]
    fn bad_patterns_are_rejected_with_the_reason() {
        for (bad, reason) in [
            ("email", "must start with"),
            ("", "must start with"),
            ("/email/", "empty segment"),
            ("/a//b", "empty segment"),
            ("/**/x", "last segment"),
            ("/{domain}/{domain}", "more than one"),
            ("/{domain}/{server}", "more than one"),
            ("/{server}/x/{server}", "more than one"),
            ("/{domian}", "not allowed"),
            ("/email/*", "not allowed"),
            ("/a/../b", "could never match"),
            ("/a?b=1", "not allowed"),
        ] {
            let err = PathPattern::parse(bad).unwrap_err();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn default_routes_follow_the_design_table() {
        let routes = Config::default_routes();
        let find = |method: &str, path: &[&str]| {
            routes
                .iter()
                .find(|r| r.allows_method(method) && r.path.matches(path).is_some())
                .map(|r| (r.upstream.as_str(), r.target.name()))
        };
        assert_eq!(find("GET", &["domains"]), Some(("domains", "key")));
        assert_eq!(find("POST", &["domains"]), Some(("domains", "org")));
        assert_eq!(find("DELETE", &["domains"]), None);
        assert_eq!(
            find("DELETE", &["domains", "a.com"]),
            Some(("domains", "domain"))
        );
        assert_eq!(find("POST", &["email"]), Some(("sending", "sender")));
        assert_eq!(find("GET", &["email"]), None);
        assert_eq!(
            find("POST", &["email", "batch"]),
            Some(("sending", "sender"))
        );
        assert_eq!(find("GET", &["account"]), Some(("domains", "org")));
        assert_eq!(find("PUT", &["users", "u1"]), Some(("domains", "org")));
        assert_eq!(find("GET", &["servers"]), Some(("domains", "org")));
        assert_eq!(find("POST", &["servers"]), Some(("domains", "org")));
        assert_eq!(
            find("GET", &["servers", "12"]),
            Some(("domains", "server_id"))
        );
        assert_eq!(find("PUT", &["servers", "12"]), Some(("domains", "org")));
        assert_eq!(find("DELETE", &["servers", "12"]), Some(("domains", "org")));
        assert_eq!(find("GET", &["senders"]), Some(("domains", "key")));
        assert_eq!(find("POST", &["senders"]), Some(("domains", "sender")));
        for (method, path) in [
            ("GET", &["senders", "7"][..]),
            ("PUT", &["senders", "7"]),
            ("DELETE", &["senders", "7"]),
            ("POST", &["senders", "7", "resend"]),
            ("POST", &["data-removals"]),
            ("GET", &["data-removals", "1"]),
        ] {
            assert_eq!(
                find(method, path),
                Some(("domains", "org")),
                "{method} {path:?}"
            );
        }
        for (method, path) in [
            ("GET", &["server"][..]),
            ("PUT", &["server"]),
            ("GET", &["messages", "outbound"]),
            ("PUT", &["messages", "inbound", "x", "retry"]),
            ("GET", &["bounces"]),
            ("PUT", &["bounces", "1", "activate"]),
            ("GET", &["deliverystats"]),
            ("GET", &["templates"]),
            ("POST", &["templates", "validate"]),
            ("GET", &["stats", "outbound", "opens"]),
            ("POST", &["webhooks"]),
            ("DELETE", &["webhooks", "3"]),
            (
                "GET",
                &["message-streams", "outbound", "suppressions", "dump"],
            ),
            ("POST", &["triggers", "inboundrules"]),
            ("DELETE", &["triggers", "inboundrules", "4"]),
        ] {
            assert_eq!(
                find(method, path),
                Some(("sending", "server")),
                "{method} {path:?}"
            );
        }
        // Only the inbound-rule triggers are routed, not the rest of /triggers.
        assert_eq!(find("GET", &["triggers", "tags"]), None);
        // The more specific route wins: pushing templates is account-level,
        // a template aliased "push" (or any other) is the server's.
        assert_eq!(
            find("PUT", &["templates", "push"]),
            Some(("domains", "org"))
        );
        assert_eq!(
            find("PUT", &["Templates", "PUSH"]),
            Some(("domains", "org"))
        );
        assert_eq!(
            find("GET", &["templates", "push"]),
            Some(("sending", "server"))
        );
        assert_eq!(
            find("DELETE", &["templates", "push"]),
            Some(("sending", "server"))
        );
        assert_eq!(
            find("PUT", &["templates", "welcome"]),
            Some(("sending", "server"))
        );
        let senders = routes
            .iter()
            .find(|r| r.target.name() == "sender" && r.path.raw == "/senders")
            .unwrap();
        assert_eq!(
            senders.target,
            Target::Sender(SenderSpec {
                sender_pointer: "/FromEmail".into(),
                messages: Messages::Single
            })
        );

        let batch = &routes[6];
        assert_eq!(batch.path.raw, "/email/batchWithTemplates");
        assert_eq!(
            batch.target,
            Target::Sender(SenderSpec {
                sender_pointer: "/From".into(),
                messages: Messages::Pointer("/Messages".into())
            })
        );
        assert_eq!(batch.max_body_bytes, Limits::default().max_batch_body_bytes);
        assert_eq!(
            routes[3].max_body_bytes,
            Limits::default().max_send_body_bytes
        );
        assert_eq!(routes[0].max_body_bytes, Limits::default().max_body_bytes);
    }
}
