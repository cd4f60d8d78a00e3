//! The properties the gateway's parsers must keep whatever their input: one
//! function per fuzz target (`fuzz/fuzz_targets/*.rs` call them with the
//! fuzzer's bytes) and per corpus folder (`gateway/tests/fuzz_corpus.rs`
//! feeds every file of `fuzz/corpus/` through them on stable Rust). Each
//! panics, naming the property, when its input breaks it.

use scopegate_config::{Config, KeySources, Messages, SenderSpec};

use crate::admin::api::{parse_call_body, BodyCall};
use crate::ops::edge::EdgeRefusal;
use crate::request::canon;
use crate::request::framing::{scan_head, HeadLimits, Scan};
use crate::request::keys;
use crate::request::sender;

/// One invariant check: panics when its input breaks the property.
pub type Check = fn(&[u8]);

/// Every target: its name (the folder of its corpus) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("path", path),
    ("mailbox", mailbox),
    ("senders", senders),
    ("keys", keys_in_headers),
    ("head", head),
    ("config", config),
    ("admin_body", admin_body),
];

/// The path canonicaliser: what it accepts holds no `.`/`..` segment (also
/// `..;x`), no separator or `%` after its one decode, and is a fixed point:
/// re-encoding it and canonicalising again gives the same segments, and an
/// `unchanged` path re-encodes to itself byte for byte.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = canon::canonicalize(raw) else {
        return;
    };
    for s in &c.segments {
        let name = s.split(';').next().unwrap_or(s);
        assert!(
            name != "." && name != "..",
            "dot segment {s:?} accepted in {raw:?}"
        );
        assert!(!s.is_empty(), "empty segment accepted in {raw:?}");
        assert!(
            !s.contains(['/', '\\', '%']) && !s.chars().any(char::is_control),
            "segment {s:?} of {raw:?} holds a separator, '%' or a control character"
        );
    }
    let encoded = canon::encode_path(c.segments.iter().map(|s| s.as_ref()), c.trailing_slash);
    if c.unchanged {
        assert_eq!(
            encoded, raw,
            "an unchanged path re-encodes to something else"
        );
    }
    let again = canon::canonicalize(&encoded)
        .unwrap_or_else(|e| panic!("{raw:?} -> {encoded:?} is refused on the second pass: {e}"));
    assert_eq!(again.segments, c.segments, "{raw:?} is not a fixed point");
    assert_eq!(
        again.trailing_slash, c.trailing_slash,
        "{raw:?}: trailing slash lost"
    );
    assert_eq!(
        canon::encode_path(
            again.segments.iter().map(|s| s.as_ref()),
            again.trailing_slash
        ),
        encoded,
        "the canonical form of {raw:?} re-encodes differently"
    );
}

/// Whether `d` is a canonical domain: ASCII lowercase letters, digits and
/// hyphens in dot-separated labels of 1-63, at most 253 in all, no trailing
/// dot.
pub fn is_canonical_domain(d: &str) -> bool {
    d.len() <= 253
        && !d.is_empty()
        && d.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

fn domain_ok(d: &str, input: &str) {
    assert!(
        is_canonical_domain(d),
        "{input:?} gave the domain {d:?}, not canonical"
    );
    let again = scopegate_keystore::canonical_domain(d)
        .unwrap_or_else(|e| panic!("{input:?} gave {d:?}, which is then refused: {}", e.reason));
    assert_eq!(again, d, "canonical_domain is not idempotent on {d:?}");
}

/// The From parser: an accepted mailbox yields a canonical lowercase domain,
/// and the bare address `x@<that domain>` yields it again.
pub fn mailbox(data: &[u8]) {
    let Ok(from) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = sender::mailbox_domain(from) {
        domain_ok(&d, from);
        assert_eq!(
            sender::mailbox_domain(&format!("x@{d}")).as_deref(),
            Ok(d.as_str()),
            "the domain of {from:?} does not parse back"
        );
    }
}

/// Sender extraction from a send body, for the three layouts: every domain
/// is canonical, one per message, and the body's From values agree with
/// [`sender::mailbox_domain`] on each.
pub fn senders(data: &[u8]) {
    for messages in [
        Messages::Single,
        Messages::RootArray,
        Messages::Pointer("/Messages".into()),
    ] {
        let spec = SenderSpec {
            sender_pointer: "/From".into(),
            messages: messages.clone(),
        };
        let Ok(domains) = sender::sender_domains(data, &spec) else {
            continue;
        };
        let input = String::from_utf8_lossy(data);
        for d in &domains {
            domain_ok(d, &input);
        }
        if messages == Messages::Single {
            assert_eq!(domains.len(), 1, "one message, {} domains", domains.len());
        }
        // Where serde_json reads the same body, its From agrees.
        if let (Messages::Single, Ok(serde_json::Value::Object(m))) =
            (&messages, serde_json::from_slice::<serde_json::Value>(data))
        {
            let from: Vec<_> = m
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("from"))
                .collect();
            if let [(_, serde_json::Value::String(f))] = from.as_slice() {
                assert_eq!(
                    sender::mailbox_domain(f).as_deref(),
                    Ok(domains[0].as_str()),
                    "the body's From {f:?} and the extracted domain differ"
                );
            }
        }
    }
}

/// Key extraction: the input is header values (one a line) for the default
/// key headers in turn and a query string; a key found is trimmed, appears
/// in the input, and "conflicting" means two different offers were made.
pub fn keys_in_headers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = keys::KeyHeaders::new(&KeySources {
        query_param: Some("api_key".into()),
        ..KeySources::default()
    })
    .expect("the default key headers are valid");
    let names: Vec<_> = sources.names().cloned().collect();
    let mut lines = text.split('\n');
    let query = lines.next();
    let mut headers = http::HeaderMap::new();
    for (i, line) in lines.enumerate() {
        if let Ok(v) = http::HeaderValue::from_str(line) {
            headers.append(names[i % names.len()].clone(), v);
        }
    }
    match keys::find(&headers, query, &sources) {
        keys::Presented::One(k) => {
            // A header value that is not text is presented as "\0" (never a
            // key); header values are trimmed; a query value is taken as it is.
            if k != "\u{0}" {
                assert!(
                    k == k.trim() || query.is_some_and(|q| q.contains(k)),
                    "key {k:?} not trimmed"
                );
                assert!(text.contains(k), "key {k:?} is not in the input");
            }
        }
        keys::Presented::Missing => {
            // Scheme-less key headers offer whatever they hold, and so does
            // the query parameter.
            for n in &names[1..] {
                assert!(headers.get(n).is_none(), "{n} was presented, no key found");
            }
            let in_query = query.is_some_and(|q| {
                q.split('&')
                    .any(|p| p.split_once('=').map_or(p, |(k, _)| k) == "api_key")
            });
            assert!(!in_query, "api_key was in the query, no key found");
        }
        keys::Presented::Conflicting => {}
    }
    let _ = scopegate_keystore::secret::classify(text);
}

/// The HTTP/1.1 head scanner: a complete head ends at a blank line within
/// the limits, has no bare LF, and scans the same on its own; a refusal of
/// a prefix is never turned into acceptance by more bytes of a complete
/// head.
pub fn head(data: &[u8]) {
    let limits = HeadLimits {
        max_bytes: 2048,
        max_headers: 16,
    };
    match scan_head(data, &limits) {
        Scan::Complete(n) => {
            assert!(
                n <= data.len() && n <= limits.max_bytes,
                "head of {n} bytes"
            );
            let h = &data[..n];
            assert!(
                h.ends_with(b"\r\n\r\n"),
                "head does not end at a blank line"
            );
            for (i, &b) in h.iter().enumerate() {
                if b == b'\n' {
                    assert!(i > 0 && h[i - 1] == b'\r', "bare LF at {i} accepted");
                }
            }
            assert_eq!(scan_head(h, &limits), Scan::Complete(n), "not stable alone");
            for cut in [n / 2, n - 1] {
                assert!(
                    matches!(scan_head(&h[..cut], &limits), Scan::Partial),
                    "a prefix of an accepted head is refused"
                );
            }
        }
        Scan::Refuse(why, _) => {
            if matches!(why, EdgeRefusal::HeaderTooLarge) {
                assert!(data.len() > limits.max_bytes, "431 under the size limit");
            }
        }
        Scan::Partial => assert!(data.len() <= limits.max_bytes, "partial past the limit"),
    }
}

/// The config loader: what it accepts also validates, and what it refuses
/// names at least one key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, "fuzz.toml") {
        Ok(c) => {
            c.validate()
                .unwrap_or_else(|e| panic!("parsed but does not validate: {e}"));
        }
        Err(e) => assert!(!e.problems.is_empty(), "an error without a problem"),
    }
}

/// The admin API's JSON bodies: the first byte picks the call; every body is
/// accepted or answered 400 `invalid_json` with a JSON error body.
pub fn admin_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let call = match pick % 7 {
        0 => BodyCall::PutOrg,
        1 => BodyCall::PutUser,
        2 => BodyCall::CreateKey,
        3 => BodyCall::RotateKey,
        4 => BodyCall::PatchKey,
        5 => BodyCall::OrgRateLimit,
        _ => BodyCall::PutServer,
    };
    if let Err((status, answer)) = parse_call_body(call, body) {
        assert_eq!(status, 400, "{call:?}: {answer}");
        assert_eq!(
            answer["error"]["code"], "invalid_json",
            "{call:?}: {answer}"
        );
        assert!(answer["error"]["message"].is_string());
    }
}
