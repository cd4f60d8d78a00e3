//! The canonical form of a request path, computed once before routing.
//!
//! The path is percent-decoded exactly once. Anything two parsers could read
//! differently is refused rather than guessed at: an encoded `/` or `\`, a
//! raw `\`, `.` and `..` segments (raw or encoded), empty segments (`//`,
//! two trailing `/`), invalid UTF-8, malformed escapes and control characters;
//! also, for upstreams that normalise more than RFC 3986 says, dot segments
//! with parameters (`..;x`) and an encoded `%` (which a second decoding would
//! turn into something else).
//! The upstream then receives the path re-encoded from the decoded segments,
//! so what it decodes is exactly what the gateway matched and checked.
//!
//! One trailing `/` is what real clients send for the same resource
//! (`POST /domains/`): it is matched as if absent and kept on the way up,
//! since the client asked for it.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Why a path was refused (all answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The request target is not an absolute path.
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// `%2F`, `%5C` or a raw backslash: a segment boundary in disguise.
    #[error("encoded slashes and backslashes are not allowed in paths")]
    EncodedSeparator,
    /// A `.` or `..` segment (also with `;` parameters).
    #[error("'.' and '..' path segments are not allowed")]
    DotSegment,
    /// `%25`: a percent sign that a second decoding would turn into something else.
    #[error("encoded '%' is not allowed in paths")]
    EncodedPercent,
    /// `//`, or more than one trailing `/`.
    #[error("empty path segments are not allowed")]
    EmptySegment,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    /// Decoded bytes are not UTF-8, or contain control characters.
    #[error("the path is not valid UTF-8 text")]
    InvalidText,
    /// More than 4 KiB or 64 segments.
    #[error("the path is too long")]
    TooLong,
}

/// A decoded, checked path. Segments borrow from the request when they
/// hold no escapes, so the common path allocates nothing per segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonPath<'a> {
    /// Decoded segments (no empty ones). `/` alone has none.
    pub segments: Vec<Cow<'a, str>>,
    /// True when re-encoding the segments certainly gives back the raw path
    /// byte for byte (no escapes, nothing that needs one), so the upstream
    /// can get the request's own path. False may still re-encode to the same
    /// bytes; the path is then rebuilt, which is always correct.
    pub unchanged: bool,
    /// The path ended in one `/` after its last segment (not counted as a
    /// segment; re-encoded with [`encode_path`]).
    pub trailing_slash: bool,
}

const MAX_PATH: usize = 4096;
const MAX_SEGMENTS: usize = 64;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes and checks the path part of a request target (no query).
pub fn canonicalize(raw: &str) -> Result<CanonPath<'_>, PathError> {
    if raw.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments = Vec::with_capacity(8);
    if rest.is_empty() {
        return Ok(CanonPath {
            segments,
            unchanged: true,
            trailing_slash: false,
        });
    }
    let (rest, trailing_slash) = match rest.strip_suffix('/') {
        Some(r) => (r, true),
        None => (rest, false),
    };
    if rest.is_empty() {
        return Err(PathError::EmptySegment);
    }
    let mut unchanged = true;
    for seg in rest.split('/') {
        if segments.len() == MAX_SEGMENTS {
            return Err(PathError::TooLong);
        }
        if seg.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let bytes = seg.as_bytes();
        if bytes.iter().all(|&b| is_pchar(b)) {
            // Nothing to decode, nothing that would be re-encoded.
            if is_dot_segment(bytes) {
                return Err(PathError::DotSegment);
            }
            segments.push(Cow::Borrowed(seg));
            continue;
        }
        unchanged = false;
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (hex(h), hex(l)),
                    _ => (None, None),
                };
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                out.push(hi << 4 | lo);
                i += 3;
            } else {
                out.push(b);
                i += 1;
            }
        }
        if out.iter().any(|&b| b == b'/' || b == b'\\') {
            return Err(PathError::EncodedSeparator);
        }
        if out.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(PathError::InvalidText);
        }
        if is_dot_segment(&out) {
            return Err(PathError::DotSegment);
        }
        if out.contains(&b'%') {
            return Err(PathError::EncodedPercent);
        }
        let text = String::from_utf8(out).map_err(|_| PathError::InvalidText)?;
        // C1 controls (U+0080-U+009F, e.g. NEL) too, raw or encoded: some
        // systems read them as line breaks. (Found by the `path` fuzz target.)
        if text.chars().any(char::is_control) {
            return Err(PathError::InvalidText);
        }
        segments.push(Cow::Owned(text));
    }
    // The path the upstream receives is re-encoded: bound that form too, or
    // a path of raw non-pchar bytes would go up three times as long as the
    // limit, and would not canonicalise again. (Found by the `path` fuzz
    // target.)
    if !unchanged {
        let encoded: usize = segments
            .iter()
            .map(|s| {
                1 + s
                    .bytes()
                    .map(|b| if is_pchar(b) { 1 } else { 3 })
                    .sum::<usize>()
            })
            .sum();
        if encoded > MAX_PATH {
            return Err(PathError::TooLong);
        }
    }
    Ok(CanonPath {
        segments,
        unchanged,
        trailing_slash,
    })
}

/// `.` or `..`, alone or with `;` parameters (`..;jsessionid=x`), which
/// some servers treat as the dot segment itself.
fn is_dot_segment(seg: &[u8]) -> bool {
    let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
    name == b"." || name == b".."
}

/// Whether a byte may appear unencoded in a path segment (RFC 3986 pchar
/// minus `%`).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Re-encodes segments into the path the upstream receives, with the one
/// trailing `/` the request had, if any.
pub fn encode_path<'a>(
    segments: impl IntoIterator<Item = &'a str>,
    trailing_slash: bool,
) -> String {
    let mut out = encode(segments);
    if trailing_slash && out != "/" {
        out.push('/');
    }
    out
}

/// Re-encodes segments into a path (no trailing `/`).
pub fn encode<'a>(segments: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for seg in segments {
        out.push('/');
        for &b in seg.as_bytes() {
            if is_pchar(b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_re_encoded_path_is_bounded_too() {
        let raw = format!("/domains/{}", "`".repeat(2000));
        assert_eq!(canonicalize(&raw), Err(PathError::TooLong));
        let fits = format!("/domains/{}", "`".repeat(1000));
        let c = canonicalize(&fits).unwrap();
        assert!(canonicalize(&encode(c.segments.iter().map(|s| s.as_ref()))).is_ok());
    }

    #[test]
    fn c1_control_characters_are_refused_raw_or_encoded() {
        for p in [
            "/d\u{92}ains/dFmai",
            "/domains/a%C2%85b",
            "/domains/a\u{85}b",
        ] {
            assert_eq!(canonicalize(p), Err(PathError::InvalidText), "{p:?}");
        }
        assert!(canonicalize("/domains/b%C3%BCcher.example").is_ok());
    }

    fn segs(p: &str) -> Vec<String> {
        canonicalize(p)
            .unwrap()
            .segments
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    #[test]
    fn plain_and_decoded_paths() {
        assert_eq!(segs("/"), Vec::<String>::new());
        assert_eq!(segs("/domains/example.com"), ["domains", "example.com"]);
        assert_eq!(segs("/domains/ex%61mple.com"), ["domains", "example.com"]);
        assert_eq!(
            segs("/domains/b%C3%BCcher.example"),
            ["domains", "bücher.example"]
        );
        assert_eq!(segs("/domains/a;b=c"), ["domains", "a;b=c"]);
    }

    #[test]
    fn one_trailing_slash_is_kept_apart_from_the_segments() {
        let c = canonicalize("/domains/").unwrap();
        assert_eq!(c.segments, ["domains"]);
        assert!(c.trailing_slash && c.unchanged);
        let c = canonicalize("/email/withTemplate/").unwrap();
        assert_eq!(c.segments, ["email", "withTemplate"]);
        assert_eq!(
            encode_path(c.segments.iter().map(|s| s.as_ref()), true),
            "/email/withTemplate/"
        );
        let c = canonicalize("/domains/ex%61mple.com/").unwrap();
        assert!(c.trailing_slash && !c.unchanged);
        assert_eq!(
            encode_path(c.segments.iter().map(|s| s.as_ref()), true),
            "/domains/example.com/"
        );
        assert!(!canonicalize("/domains").unwrap().trailing_slash);
        assert!(!canonicalize("/").unwrap().trailing_slash);
        assert_eq!(encode_path(std::iter::empty(), true), "/");
        // A dot segment stays one with a slash after it.
        assert_eq!(canonicalize("/domains/../"), Err(PathError::DotSegment));
    }

    #[test]
    fn refusals() {
        use PathError::*;
        for (p, e) in [
            ("domains", NotAbsolute),
            ("*", NotAbsolute),
            ("/domains/a%2Fb", EncodedSeparator),
            ("/domains/a%2fb", EncodedSeparator),
            ("/domains/a%5Cb", EncodedSeparator),
            ("/domains/a\\b", EncodedSeparator),
            ("/domains/../account", DotSegment),
            ("/domains/..;/account", DotSegment),
            ("/domains/x/.;a=b", DotSegment),
            ("/domains/%2e%2e;x/account", DotSegment),
            // Decoded once this is a literal "%2e%2e"; decoded twice, "..".
            ("/domains/%252e%252e/account", EncodedPercent),
            ("/domains/a%25b", EncodedPercent),
            ("/domains/./x", DotSegment),
            ("/domains/%2e%2e/account", DotSegment),
            ("/domains/%2E/x", DotSegment),
            ("/domains//example.com", EmptySegment),
            ("/domains//", EmptySegment),
            ("//", EmptySegment),
            ("//domains", EmptySegment),
            ("/domains/%zz", BadEscape),
            ("/domains/%4", BadEscape),
            ("/domains/%", BadEscape),
            ("/domains/%ff%fe", InvalidText),
            ("/domains/a%00b", InvalidText),
            ("/domains/a%0d%0aX-Injected:1", InvalidText),
        ] {
            assert_eq!(canonicalize(p), Err(e), "{p}");
        }
        assert_eq!(
            canonicalize(&format!("/{}", "a/".repeat(70) + "a")),
            Err(TooLong)
        );
        assert_eq!(
            canonicalize(&format!("/{}", "a".repeat(5000))),
            Err(TooLong)
        );
    }

    #[test]
    fn plain_paths_borrow_and_need_no_rewrite() {
        let c = canonicalize("/domains/example.com/dkim").unwrap();
        assert!(c.unchanged);
        assert!(c.segments.iter().all(|s| matches!(s, Cow::Borrowed(_))));
        assert!(!canonicalize("/domains/ex%61mple.com").unwrap().unchanged);
        assert!(!canonicalize("/a b").unwrap().unchanged);
    }

    #[test]
    fn encoding_round_trips() {
        for p in [
            "/domains/example.com/dkim",
            "/domains/b%C3%BCcher.example",
            "/a%20b/x",
            "/email/withTemplate",
            "/",
        ] {
            let c = canonicalize(p).unwrap();
            let e = encode(c.segments.iter().map(|s| s.as_ref()));
            let again = canonicalize(&e).unwrap();
            assert_eq!(again.segments, c.segments, "{p} -> {e}");
            if c.unchanged {
                assert_eq!(e, p, "{p} was said to need no re-encoding");
            }
        }
        assert_eq!(encode(["a b", "ü"]), "/a%20b/%C3%BC");
    }
}
