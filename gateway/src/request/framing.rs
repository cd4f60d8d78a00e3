//! The HTTP/1.1 request head as bytes, checked before Pingora parses it.
//!
//! Request smuggling lives in the places two parsers may disagree: how long
//! a body is, and where a header line ends. An edge gateway must not guess:
//! every shape below is refused (400, connection closed) before anything is
//! parsed, decided or forwarded, whatever the parser behind would make of it
//! (Pingora's tolerates bare LF line ends, drops a Content-Length that comes
//! with Transfer-Encoding and collapses identical Content-Lengths).
//!
//! - a line ending in a bare LF, or a CR not followed by LF;
//! - obs-fold (a header line starting with space or tab);
//! - a header name that is not a token (so also a space before the colon);
//! - control characters in a header value;
//! - Content-Length together with Transfer-Encoding;
//! - more than one Content-Length, or one that is not plain digits;
//! - a Transfer-Encoding other than exactly one `chunked` (`chunked,
//!   identity`, `gzip, chunked`, two headers…), or any on HTTP/1.0;
//! - a request line that is not `METHOD SP target SP HTTP/1.x`.
//!
//! Size and count limits are checked here too (431), because Pingora's are
//! fixed (1 MiB, 256 fields). Pure and allocation-free: the fuzz targets call
//! [`scan_head`] directly.

use crate::ops::edge::EdgeRefusal;

/// How much of a head one request may use.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Request line and headers, including line ends and the blank line.
    pub max_bytes: usize,
    /// Header fields.
    pub max_headers: usize,
}

/// What [`scan_head`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// No complete head yet, and nothing wrong so far: read more.
    Partial,
    /// A complete, acceptable head of this many bytes (leading blank lines
    /// included); what follows is body or the next request.
    Complete(usize),
    /// Refused: the reason for metrics and the message for the client.
    Refuse(EdgeRefusal, &'static str),
}

/// Checks the head at the start of `buf`.
pub fn scan_head(buf: &[u8], limits: &HeadLimits) -> Scan {
    // RFC 9112 §2.2: a server should ignore at least one empty line before
    // the request line (clients add one after a body).
    let mut pos = 0;
    while buf[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    let mut line_no = 0usize;
    let mut headers = 0usize;
    let mut framing = Framing::default();
    let mut http10 = false;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = memchr(b'\n', rest) else {
            if let Some(r) = rest.iter().position(|&b| b == b'\r') {
                if r + 1 < rest.len() {
                    return bad("a CR not followed by LF");
                }
            }
            if buf.len() > limits.max_bytes {
                return Scan::Refuse(EdgeRefusal::HeaderTooLarge, "request header too large");
            }
            return Scan::Partial;
        };
        if nl == 0 || rest[nl - 1] != b'\r' {
            return bad("a line ends in a bare LF");
        }
        let line = &rest[..nl - 1];
        pos += nl + 1;
        if pos > limits.max_bytes {
            return Scan::Refuse(EdgeRefusal::HeaderTooLarge, "request header too large");
        }
        if line.contains(&b'\r') {
            return bad("a CR not followed by LF");
        }
        if line_no == 0 {
            match request_line(line) {
                Some(v10) => http10 = v10,
                None => return bad("malformed request line"),
            }
            line_no = 1;
            continue;
        }
        if line.is_empty() {
            return match framing.verdict(http10) {
                Some(why) => bad(why),
                None => Scan::Complete(pos),
            };
        }
        headers += 1;
        if headers > limits.max_headers {
            return Scan::Refuse(EdgeRefusal::TooManyHeaders, "too many header fields");
        }
        if let Err(why) = header_line(line, &mut framing) {
            return bad(why);
        }
    }
}

fn bad(why: &'static str) -> Scan {
    Scan::Refuse(EdgeRefusal::BadFraming, why)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// RFC 9110 §5.6.2 token characters.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `METHOD SP request-target SP HTTP/1.x`; `Some(true)` for HTTP/1.0.
fn request_line(line: &[u8]) -> Option<bool> {
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some()
        || method.is_empty()
        || !method.iter().all(|&b| is_tchar(b))
        || target.is_empty()
        || target.iter().any(|&b| b <= b' ' || b == 0x7f)
    {
        return None;
    }
    match version {
        b"HTTP/1.1" => Some(false),
        b"HTTP/1.0" => Some(true),
        _ => None,
    }
}

/// What the head says about the body's length.
#[derive(Default)]
struct Framing {
    content_lengths: u32,
    bad_content_length: bool,
    transfer_encodings: u32,
    only_chunked: bool,
}

impl Framing {
    fn verdict(&self, http10: bool) -> Option<&'static str> {
        if self.transfer_encodings > 0 && self.content_lengths > 0 {
            return Some("Content-Length together with Transfer-Encoding");
        }
        if self.content_lengths > 1 {
            return Some("more than one Content-Length");
        }
        if self.bad_content_length {
            return Some("a Content-Length that is not a number");
        }
        if self.transfer_encodings > 0 && http10 {
            return Some("Transfer-Encoding on HTTP/1.0");
        }
        if self.transfer_encodings > 1 || (self.transfer_encodings == 1 && !self.only_chunked) {
            return Some("a Transfer-Encoding other than chunked");
        }
        None
    }
}

fn header_line(line: &[u8], framing: &mut Framing) -> Result<(), &'static str> {
    if line[0] == b' ' || line[0] == b'\t' {
        return Err("obs-fold (a header continued on the next line)");
    }
    let colon = memchr(b':', line).ok_or("a header line without a colon")?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err("a header name that is not a token (space before the colon?)");
    }
    if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err("a control character in a header value");
    }
    let value = value.trim_ascii();
    if name.eq_ignore_ascii_case(b"content-length") {
        framing.content_lengths += 1;
        if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
            framing.bad_content_length = true;
        }
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        framing.transfer_encodings += 1;
        framing.only_chunked = value.eq_ignore_ascii_case(b"chunked");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: HeadLimits = HeadLimits {
        max_bytes: 1024,
        max_headers: 8,
    };

    fn scan(s: &str) -> Scan {
        scan_head(s.as_bytes(), &L)
    }

    fn refused(s: &str) -> &'static str {
        match scan(s) {
            Scan::Refuse(EdgeRefusal::BadFraming, why) => why,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn plain_heads_pass_with_their_length() {
        let h = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(h), Scan::Complete(h.len()));
        let h = "\r\nPOST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello";
        assert_eq!(scan(h), Scan::Complete(h.len() - "5\r\nhello".len()));
        assert_eq!(scan("GET /x HTTP/1.1\r\nHost: a\r\n"), Scan::Partial);
        assert_eq!(scan("GET /x HTTP/1.1\r"), Scan::Partial);
        assert_eq!(scan(""), Scan::Partial);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for (head, why) in [
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "together"),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "more than one"),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "more than one"),
            ("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", "not a number"),
            ("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", "not a number"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", "other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "other than chunked"),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
            ("GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", "obs-fold"),
            ("GET / HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n", "obs-fold"),
            ("GET / HTTP/1.1\nHost: a\n\n", "bare LF"),
            ("GET / HTTP/1.1\r\nHost: a\n\r\n", "bare LF"),
            ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "CR not followed"),
            ("GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\n", "not a token"),
            ("GET / HTTP/1.1\r\nHost: a\0\r\n\r\n", "control character"),
            ("GET  / HTTP/1.1\r\n\r\n", "request line"),
            ("GET / HTTP/2.0\r\n\r\n", "request line"),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "request line"),
        ] {
            let got = refused(head);
            assert!(got.contains(why), "{head:?}: {got}");
        }
    }

    #[test]
    fn limits_answer_431() {
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            scan(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Scan::Refuse(EdgeRefusal::TooManyHeaders, "too many header fields")
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1100));
        assert!(matches!(
            scan(&big),
            Scan::Refuse(EdgeRefusal::HeaderTooLarge, _)
        ));
        // Also while still partial.
        assert!(matches!(
            scan(&big[..1050]),
            Scan::Refuse(EdgeRefusal::HeaderTooLarge, _)
        ));
    }
}
