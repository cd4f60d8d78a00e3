//! The sender domain of every message in a send request's JSON body.
//!
//! For sending routes the domain a key must be able to write is inside the
//! body: the `From` of each message. The gateway reads the body (bounded),
//! calls [`sender_domains`], checks every domain against the key's scope, and
//! forwards the very same bytes. Whatever this module extracts is what gets
//! checked, so it is written to agree with the upstream (Postmark's API, a .NET
//! service) or else to refuse: every ambiguity is an error, never a guess.
//!
//! # The JSON walk
//!
//! The body is never turned into a `serde_json::Value` (attachments are
//! megabytes of base64). [`sender_domains`] walks it once with serde's
//! `DeserializeSeed`/`Visitor` machinery:
//!
//! - at each object on a configured JSON pointer (`/Messages`, `/From`,
//!   `/Envelope/From`, with `~0`/`~1` escapes; a token that is a decimal index
//!   selects an array element) it looks only for the next token and skips every
//!   other value with [`serde::de::IgnoredAny`], which still checks syntax;
//! - the messages array is streamed element by element, each element walked
//!   with the sender pointer;
//! - the sender value is borrowed from the body (a string with escapes is the
//!   only copy), and the only allocation per message is the resulting domain.
//!
//! The whole body must be valid UTF-8 and one valid JSON document with nothing
//! after it; otherwise the answer is [`SenderError::InvalidJson`]. UTF-8 is
//! checked up front because serde_json does not check it inside skipped
//! strings.
//!
//! ## Field names
//!
//! The upstream matches property names case-insensitively and lets the last of
//! two equal names win. So a pointer token matches a key case-insensitively,
//! and a key that matches the token twice in one object (`"From"` and
//! `"from"`, or `"From"` twice) is refused with
//! [`SenderError::DuplicateField`]. Matching is on the unescaped key (so
//! `"Fr\u006fm"` is `From`), and is a little wider than ASCII case: two
//! characters also match when their one-character upper- or lower-case forms
//! are equal, which covers .NET's `OrdinalIgnoreCase` (where `ı` and `ſ` are
//! `I` and `S`). Matching too much can only turn a request into a refusal or
//! make the gateway check a field the upstream ignores; matching too little
//! would let a second, unchecked `From` through.
//!
//! A sender that is missing, not a string (number, `null`, object, array) or
//! not exactly one acceptable mailbox is a [`SenderError::Sender`].
//!
//! ## Which error wins
//!
//! The walk always reads to the end, so a body that is not valid JSON is
//! [`SenderError::InvalidJson`] whatever else is wrong with it. Otherwise a
//! shape or duplicate-field error (400) wins over a sender error (422), and
//! among equals the first in the body wins.
//!
//! # The mailbox grammar ([`mailbox_domain`])
//!
//! A strict subset of RFC 5322 `mailbox` (with RFC 6532 UTF-8 in display
//! names and IDN domains). `SP` is the space character only.
//!
//! ```text
//! from         = *SP mailbox *SP                 ; at most 998 bytes in all
//! mailbox      = addr-spec / name-addr
//! name-addr    = [display-name *SP] "<" *SP addr-spec *SP ">"
//! display-name = quoted-string / phrase          ; one or the other, not mixed
//! phrase       = 1*(atext / "." / SP / UTF-8 non-ASCII)
//! quoted-string= DQUOTE *(qtext / "\" char) DQUOTE
//! addr-spec    = local-part "@" domain
//! local-part   = dot-atom / quoted-string        ; ASCII only
//! dot-atom     = 1*atext *("." 1*atext)
//! domain       = a name accepted by scopegate_keystore::canonical_domain
//! ```
//!
//! Accepted: `a@b.com`, `Name <a@b.com>`, `<a@b.com>`, `"Last, First"
//! <a@b.com>`, `"Quoted \"esc\"" <a@b.com>`, `< a@b.com >`, `"john
//! doe"@example.com`, surrounding spaces, upper-case, trailing-dot and IDN
//! domains. The result is the canonical domain: lowercase, no trailing dot,
//! punycode (`user@bücher.example` -> `xn--bcher-kva.example`).
//!
//! Refused, each with a short [`MailboxError`]:
//! - empty or only spaces; longer than 998 bytes;
//! - any control character (including TAB, CR, LF, DEL, C1 controls) and the
//!   Unicode line and paragraph separators: header injection;
//! - no `@`; more than one `@` outside a quoted string;
//! - lists (`,` or `;` outside quotes) and groups (`:` outside quotes);
//! - comments in parentheses anywhere: refused rather than modelled, since
//!   parsers disagree on where they may appear and what they hide;
//! - `[` or `]` outside quotes, so domain literals (`a@[127.0.0.1]`);
//! - more than one `<` or `>`, unbalanced or nested angle brackets, and any
//!   text after the closing `>`;
//! - a display name with `@`, `<`, `>`, `"` or `\` outside a quoted string, or
//!   one that mixes quoted and unquoted words (`a@good.com <b@evil.com>`:
//!   parsers differ on which address they pick);
//! - `@`, `<` or `>` inside any quoted string, escaped or not, and the
//!   full-width and small-form look-alikes of `@ < > "` in a display name:
//!   stricter than RFC 5322, because naive parsers and address normalisers
//!   read them as delimiters;
//! - a local part that is not a dot-atom or quoted string of ASCII
//!   (leading, trailing or doubled dots, spaces, non-ASCII);
//! - a domain refused by `canonical_domain`, and a domain containing one of
//!   `ß ς` ZWJ ZWNJ (IDNA 2003 and 2008 map them differently) or `İ ı ſ K`
//!   (Kelvin sign), whose simple case mapping is ASCII, so case-insensitive
//!   comparisons elsewhere could read them as another domain.
//!
//! # Errors are safe to show
//!
//! No error carries or prints the sender value or any excerpt of the body:
//! messages name the problem, the message index for batches (0-based, the
//! index in the JSON array), and field names from the configuration only.

use std::borrow::Cow;
use std::fmt;

use scopegate_config::{Messages, SenderSpec};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The longest sender value accepted, in bytes (RFC 5322's line limit).
pub const MAX_MAILBOX_LEN: usize = 998;

/// Why a send body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum SenderError {
    /// The body is not valid UTF-8 or not one valid JSON document; the text
    /// says where (line and column), never what was there. 400.
    InvalidJson(String),
    /// The body is JSON but not the expected shape: not an object, not an
    /// array, the messages array missing or not an array, an empty batch, a
    /// message that is not an object. 400.
    Structure(String),
    /// A field on a configured pointer appears more than once in one object,
    /// in any letter case. `field` is the pointer token from the configuration.
    /// 400.
    DuplicateField {
        /// The message (0-based) for batches; `None` for a single message or
        /// the messages pointer itself.
        index: Option<usize>,
        /// The configured field name (unescaped pointer token).
        field: String,
    },
    /// A sender is missing, not a string, or not exactly one acceptable
    /// mailbox. 422.
    Sender {
        /// The message (0-based) for batches; `None` for a single message.
        index: Option<usize>,
        /// What is wrong with it.
        reason: MailboxError,
    },
}

impl SenderError {
    /// The HTTP status the gateway answers with: 400 or 422.
    pub fn status(&self) -> u16 {
        match self {
            SenderError::Sender { .. } => 422,
            _ => 400,
        }
    }

    /// A stable code for the JSON error body and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SenderError::InvalidJson(_) => "invalid_json",
            SenderError::Structure(_) => "invalid_structure",
            SenderError::DuplicateField { .. } => "duplicate_field",
            SenderError::Sender { .. } => "invalid_sender",
        }
    }

    /// A message safe to show the client and to log: never the sender value,
    /// never a body excerpt, never whether a domain exists.
    pub fn message(&self) -> String {
        match self {
            SenderError::InvalidJson(m) | SenderError::Structure(m) => m.clone(),
            SenderError::DuplicateField { index, field } => format!(
                "{}field {field:?} appears more than once (field names are case-insensitive)",
                Prefix(*index)
            ),
            SenderError::Sender { index, reason } => format!("{}{reason}", Prefix(*index)),
        }
    }

    /// 400-class errors outrank sender errors; see the module docs.
    fn rank(&self) -> u8 {
        match self {
            SenderError::Sender { .. } => 0,
            _ => 1,
        }
    }
}

/// `"message 3: "` for batches, nothing for a single message.
struct Prefix(Option<usize>);

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, "message {i}: "),
            None => Ok(()),
        }
    }
}

/// Why a sender is not acceptable. The texts never include the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    /// The sender field is absent (or its pointer does not resolve).
    #[error("From is missing")]
    Missing,
    /// The sender field is a number, `null`, an object or an array.
    #[error("From is not a string")]
    NotAString,
    /// Empty or only spaces.
    #[error("From is empty")]
    Empty,
    /// Longer than [`MAX_MAILBOX_LEN`] bytes.
    #[error("From is longer than 998 bytes")]
    TooLong,
    /// A control character, CR, LF, TAB, DEL, C1 control, U+2028 or U+2029.
    #[error("From contains a control character or line break")]
    ControlCharacter,
    /// No address: no `@`, or `<>`.
    #[error("From has no address")]
    NoAddress,
    /// `,` or `;` outside quotes: an address list.
    #[error("From is not a single mailbox (address lists are not accepted)")]
    MultipleAddresses,
    /// `:` outside quotes: a group.
    #[error("From is not a single mailbox (groups are not accepted)")]
    Group,
    /// `(` or `)` outside quotes.
    #[error("From contains a comment in parentheses; comments are not accepted")]
    Comment,
    /// More than one `<` or `>`, unbalanced or in the wrong order.
    #[error("From has nested or unbalanced angle brackets")]
    AngleBrackets,
    /// Something after the closing `>`.
    #[error("From has text after the closing '>'")]
    TrailingText,
    /// A display name with `@`, `<`, `>`, `"`, `\` or look-alikes, or mixing
    /// quoted and unquoted words.
    #[error("From has an ambiguous display name")]
    DisplayName,
    /// A quoted string without its closing quote.
    #[error("From has an unterminated quoted string")]
    QuotedString,
    /// The local part is not an ASCII dot-atom or quoted string.
    #[error("From has an invalid local part")]
    LocalPart,
    /// More than one `@` outside quoted strings.
    #[error("From has more than one '@'")]
    ExtraAt,
    /// `[` or `]` outside quotes, e.g. a domain literal `a@[127.0.0.1]`.
    #[error("From uses square brackets; domain literals are not accepted")]
    DomainLiteral,
    /// The domain is not a valid name; the reason is the syntax rule broken.
    #[error("From has an invalid domain name ({0})")]
    Domain(&'static str),
}

// ---------------------------------------------------------------------------
// The JSON walk
// ---------------------------------------------------------------------------

/// One canonical sender domain per message, in body order.
///
/// `Single`: the body is one message; `RootArray`: a JSON array of messages;
/// `Pointer(p)`: `p` leads from the root to the array of messages (an empty
/// pointer means the root). In each message `spec.sender_pointer` leads to
/// the sender string, whose domain [`mailbox_domain`] extracts. See the module
/// docs for the rules; batches must not be empty.
pub fn sender_domains(body: &[u8], spec: &SenderSpec) -> Result<Vec<String>, SenderError> {
    check_pointer(&spec.sender_pointer)?;
    if let Messages::Pointer(p) = &spec.messages {
        check_pointer(p)?;
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| SenderError::InvalidJson("body is not valid UTF-8".to_owned()))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut state = State {
        domains: Vec::new(),
        error: None,
    };
    let sender = spec.sender_pointer.as_str();
    let walked = match &spec.messages {
        Messages::Single => MessageSeed {
            sender,
            index: None,
            state: &mut state,
        }
        .deserialize(&mut de),
        Messages::RootArray => BatchLeaf {
            sender,
            state: &mut state,
        }
        .leaf(&mut de)
        .map(|is_array| {
            if !is_array {
                state.fail(SenderError::Structure(
                    "body is not a JSON array".to_owned(),
                ));
            }
        }),
        Messages::Pointer(p) => Walk {
            ptr: p,
            leaf: BatchLeaf {
                sender,
                state: &mut state,
            },
        }
        .deserialize(&mut de)
        .map(|walked| match walked {
            Walked::Found(true) => {}
            Walked::Found(false) => state.fail(SenderError::Structure(format!(
                "the messages at {p:?} are not a JSON array"
            ))),
            Walked::Missing => state.fail(SenderError::Structure(format!(
                "no messages array at {p:?}"
            ))),
            Walked::NotContainer => state.fail(SenderError::Structure(
                "body is not a JSON object".to_owned(),
            )),
            Walked::Duplicate(token) => state.fail(SenderError::DuplicateField {
                index: None,
                field: unescape_token(token),
            }),
        }),
    };
    walked.and_then(|()| de.end()).map_err(invalid_json)?;
    match state.error {
        Some(e) => Err(e),
        None => Ok(state.domains),
    }
}

/// A serde_json error as a message without any of the body's text.
fn invalid_json(e: serde_json::Error) -> SenderError {
    use serde_json::error::Category;
    SenderError::InvalidJson(match e.classify() {
        Category::Eof => "body ends before the JSON document does".to_owned(),
        Category::Syntax if e.line() > 0 => {
            format!("invalid JSON at line {} column {}", e.line(), e.column())
        }
        _ => "invalid JSON".to_owned(),
    })
}

/// A configured pointer that is not a JSON pointer: validated config never has
/// one, but fail closed rather than guess.
fn check_pointer(p: &str) -> Result<(), SenderError> {
    let bad = || SenderError::Structure("the route's JSON pointer is invalid".to_owned());
    if !p.is_empty() && !p.starts_with('/') {
        return Err(bad());
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(bad());
        }
    }
    Ok(())
}

/// The first token of a non-empty pointer (still escaped) and the rest.
fn split_pointer(ptr: &str) -> Option<(&str, &str)> {
    let body = ptr.strip_prefix('/')?;
    Some(match body.find('/') {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    })
}

/// `~1` -> `/`, `~0` -> `~`; only for error messages.
fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Whether an (unescaped) object key matches an (escaped) pointer token; see
/// "Field names" in the module docs.
fn token_matches(key: &str, token: &str) -> bool {
    let mut t = token.chars();
    let mut k = key.chars();
    loop {
        let tc = match t.next() {
            Some('~') => match t.next() {
                Some('0') => Some('~'),
                Some('1') => Some('/'),
                _ => return false,
            },
            other => other,
        };
        match (k.next(), tc) {
            (None, None) => return true,
            (Some(a), Some(b)) if chars_match(a, b) => {}
            _ => return false,
        }
    }
}

fn chars_match(a: char, b: char) -> bool {
    if a == b {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(&b);
    }
    fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
        let c = it.next()?;
        it.next().is_none().then_some(c)
    }
    let upper = |c: char| single(c.to_uppercase());
    let lower = |c: char| single(c.to_lowercase());
    matches!((upper(a), upper(b)), (Some(x), Some(y)) if x == y)
        || matches!((lower(a), lower(b)), (Some(x), Some(y)) if x == y)
}

/// An array index token: `0` or digits without a leading zero.
fn index_token(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

/// What the walk collected.
struct State {
    domains: Vec<String>,
    error: Option<SenderError>,
}

impl State {
    /// Records an error: the first of the highest rank wins.
    fn fail(&mut self, e: SenderError) {
        if self.error.as_ref().is_none_or(|old| e.rank() > old.rank()) {
            self.error = Some(e);
        }
    }
}

/// The outcome of following a pointer.
enum Walked<'p, T> {
    /// The pointer resolved; the leaf's result.
    Found(T),
    /// A key or index on the way is absent (or a value below the first level
    /// is not an object or array).
    Missing,
    /// The value where the walk started is not an object (or an array, for an
    /// index token).
    NotContainer,
    /// A token matched more than one key of one object; the escaped token.
    Duplicate(&'p str),
}

/// What to do with the value a pointer leads to.
trait Leaf<'de> {
    type Out;
    fn leaf<D: Deserializer<'de>>(self, d: D) -> Result<Self::Out, D::Error>;
}

/// Follows `ptr` from the value being deserialized, then applies `leaf`.
struct Walk<'p, L> {
    ptr: &'p str,
    leaf: L,
}

impl<'de, 'p, L: Leaf<'de>> DeserializeSeed<'de> for Walk<'p, L> {
    type Value = Walked<'p, L::Out>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match split_pointer(self.ptr) {
            None => self.leaf.leaf(d).map(Walked::Found),
            Some((token, rest)) => d.deserialize_any(WalkVisitor {
                token,
                rest,
                leaf: self.leaf,
            }),
        }
    }
}

struct WalkVisitor<'p, L> {
    token: &'p str,
    rest: &'p str,
    leaf: L,
}

impl<'p, L> WalkVisitor<'p, L> {
    fn scalar<T, E>(self) -> Result<Walked<'p, T>, E> {
        Ok(Walked::NotContainer)
    }
}

/// A value below the first level that is not a container means the pointer
/// does not resolve.
fn nested<T>(w: Walked<'_, T>) -> Walked<'_, T> {
    match w {
        Walked::NotContainer => Walked::Missing,
        other => other,
    }
}

impl<'de, 'p, L: Leaf<'de>> Visitor<'de> for WalkVisitor<'p, L> {
    type Value = Walked<'p, L::Out>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut leaf = Some(self.leaf);
        let mut found = None;
        let mut duplicate = false;
        while let Some(is_match) = map.next_key_seed(KeySeed(self.token))? {
            if !is_match {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match leaf.take() {
                Some(leaf) => {
                    let w = map.next_value_seed(Walk {
                        ptr: self.rest,
                        leaf,
                    })?;
                    found = Some(nested(w));
                }
                None => {
                    duplicate = true;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(if duplicate {
            Walked::Duplicate(self.token)
        } else {
            found.unwrap_or(Walked::Missing)
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some(wanted) = index_token(self.token) else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Walked::NotContainer);
        };
        let mut leaf = Some(self.leaf);
        let mut found = None;
        let mut i = 0usize;
        loop {
            if i == wanted {
                if let Some(leaf) = leaf.take() {
                    match seq.next_element_seed(Walk {
                        ptr: self.rest,
                        leaf,
                    })? {
                        Some(w) => found = Some(nested(w)),
                        None => break,
                    }
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i = i.saturating_add(1);
        }
        Ok(found.unwrap_or(Walked::Missing))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.scalar()
    }
}

/// Deserializes an object key into "does it match the token", without
/// copying it (serde_json unescapes into its scratch buffer when needed).
struct KeySeed<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(token_matches(key, self.0))
    }
}

/// The sender value: borrowed from the body unless it had escapes.
enum SenderValue<'de> {
    Str(Cow<'de, str>),
    NotString,
}

/// Leaf for the sender pointer: the value, if it is a string.
struct StringLeaf;

impl<'de> Leaf<'de> for StringLeaf {
    type Out = SenderValue<'de>;

    fn leaf<D: Deserializer<'de>>(self, d: D) -> Result<Self::Out, D::Error> {
        d.deserialize_any(StringVisitor)
    }
}

struct StringVisitor;

impl<'de> Visitor<'de> for StringVisitor {
    type Value = SenderValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(SenderValue::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(SenderValue::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(SenderValue::Str(Cow::Owned(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(SenderValue::NotString)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(SenderValue::NotString)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(SenderValue::NotString)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(SenderValue::NotString)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(SenderValue::NotString)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(SenderValue::NotString)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(SenderValue::NotString)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(SenderValue::NotString)
    }
}

/// Leaf for the messages pointer: streams the array, one [`MessageSeed`] per
/// element. `false` when the value is not an array.
struct BatchLeaf<'p, 's> {
    sender: &'p str,
    state: &'s mut State,
}

impl<'de> Leaf<'de> for BatchLeaf<'_, '_> {
    type Out = bool;

    fn leaf<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BatchLeaf<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut index = 0usize;
        while seq
            .next_element_seed(MessageSeed {
                sender: self.sender,
                index: Some(index),
                state: &mut *self.state,
            })?
            .is_some()
        {
            index += 1;
        }
        if index == 0 {
            self.state.fail(SenderError::Structure(
                "the batch has no messages".to_owned(),
            ));
        }
        Ok(true)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// One message: follows the sender pointer and records the domain or the
/// error in the state.
struct MessageSeed<'p, 's> {
    sender: &'p str,
    index: Option<usize>,
    state: &'s mut State,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let index = self.index;
        let walked = Walk {
            ptr: self.sender,
            leaf: StringLeaf,
        }
        .deserialize(d)?;
        let sender_error = |reason| SenderError::Sender { index, reason };
        match walked {
            Walked::Found(SenderValue::Str(from)) => match mailbox_domain(&from) {
                Ok(domain) => {
                    if self.state.error.is_none() {
                        self.state.domains.push(domain);
                    }
                }
                Err(reason) => self.state.fail(sender_error(reason)),
            },
            Walked::Found(SenderValue::NotString) => {
                self.state.fail(sender_error(MailboxError::NotAString))
            }
            Walked::Missing => self.state.fail(sender_error(MailboxError::Missing)),
            Walked::NotContainer => self.state.fail(SenderError::Structure(match index {
                Some(i) => format!("message {i} is not a JSON object"),
                None => "body is not a JSON object".to_owned(),
            })),
            Walked::Duplicate(token) => self.state.fail(SenderError::DuplicateField {
                index,
                field: unescape_token(token),
            }),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The mailbox
// ---------------------------------------------------------------------------

/// The canonical domain of exactly one RFC 5322 mailbox, per the grammar in
/// the module docs; anything else is refused.
pub fn mailbox_domain(from: &str) -> Result<String, MailboxError> {
    use MailboxError as E;
    if from.len() > MAX_MAILBOX_LEN {
        return Err(E::TooLong);
    }
    if from.chars().any(is_control) {
        return Err(E::ControlCharacter);
    }
    let s = from.trim_matches(' ');
    if s.is_empty() {
        return Err(E::Empty);
    }
    prescan(s)?;
    if s.starts_with('"') {
        let end = quoted_end(s).ok_or(E::QuotedString)?;
        let after = &s[end..];
        if after.starts_with('@') {
            // `"john doe"@example.com`
            return addr_spec(s);
        }
        let after = after.trim_start_matches(' ');
        if !after.starts_with('<') {
            return Err(E::DisplayName);
        }
        check_quoted_display(&s[1..end - 1])?;
        return angle_addr(after);
    }
    match s.find('<') {
        Some(i) => {
            check_phrase(&s[..i])?;
            angle_addr(&s[i..])
        }
        None => addr_spec(s),
    }
}

/// Characters refused anywhere: C0 controls (TAB included), DEL, C1 controls,
/// LINE SEPARATOR and PARAGRAPH SEPARATOR.
fn is_control(c: char) -> bool {
    c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) || c == '\u{2028}' || c == '\u{2029}'
}

/// Refuses lists, groups, comments, brackets and angle-bracket imbalance,
/// looking only outside quoted strings.
fn prescan(s: &str) -> Result<(), MailboxError> {
    use MailboxError as E;
    let b = s.as_bytes();
    let (mut quoted, mut lt, mut gt, mut i) = (false, 0, 0, 0);
    while i < b.len() {
        let c = b[i];
        if quoted {
            match c {
                b'\\' => i += 1,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => quoted = true,
                b'(' | b')' => return Err(E::Comment),
                b':' => return Err(E::Group),
                b',' | b';' => return Err(E::MultipleAddresses),
                b'[' | b']' => return Err(E::DomainLiteral),
                b'<' => lt += 1,
                b'>' => gt += 1,
                _ => {}
            }
        }
        i += 1;
    }
    if quoted {
        return Err(E::QuotedString);
    }
    if lt > 1 || gt > 1 || lt != gt {
        return Err(E::AngleBrackets);
    }
    Ok(())
}

/// `s` starts with `"`: the index just past the closing quote.
fn quoted_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// RFC 5322 `atext`.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Full-width and small-form look-alikes of `@ < > "`.
fn is_lookalike(c: char) -> bool {
    matches!(
        c,
        '\u{FF20}' | '\u{FE6B}' | '\u{FF1C}' | '\u{FE64}' | '\u{FF1E}' | '\u{FE65}' | '\u{FF02}'
    )
}

/// An unquoted display name (before `<`): atext, `.`, spaces, non-ASCII.
fn check_phrase(p: &str) -> Result<(), MailboxError> {
    for c in p.chars() {
        let ok = if c.is_ascii() {
            is_atext(c as u8) || c == '.' || c == ' '
        } else {
            !is_lookalike(c)
        };
        if !ok {
            return Err(if c == '>' {
                MailboxError::AngleBrackets
            } else {
                MailboxError::DisplayName
            });
        }
    }
    Ok(())
}

/// The inside of a quoted display name: no `@ < >` (escaped or not), no
/// look-alikes; `\x` pairs are fine.
fn check_quoted_display(inner: &str) -> Result<(), MailboxError> {
    if inner
        .chars()
        .any(|c| matches!(c, '@' | '<' | '>') || is_lookalike(c))
    {
        return Err(MailboxError::DisplayName);
    }
    Ok(())
}

/// `t` starts with `<`: the address between the brackets, nothing after.
fn angle_addr(t: &str) -> Result<String, MailboxError> {
    use MailboxError as E;
    let close = t.find('>').ok_or(E::AngleBrackets)?;
    if close + 1 != t.len() {
        return Err(E::TrailingText);
    }
    let inner = t[1..close].trim_matches(' ');
    if inner.is_empty() {
        return Err(E::NoAddress);
    }
    addr_spec(inner)
}

/// `local-part "@" domain`, no spaces outside a quoted local part.
fn addr_spec(a: &str) -> Result<String, MailboxError> {
    use MailboxError as E;
    let at = if a.starts_with('"') {
        let end = quoted_end(a).ok_or(E::QuotedString)?;
        check_quoted_local(&a[1..end - 1])?;
        if a.as_bytes().get(end) != Some(&b'@') {
            return Err(if a[end..].contains('@') {
                E::LocalPart
            } else {
                E::NoAddress
            });
        }
        end
    } else {
        let at = a.find('@').ok_or(E::NoAddress)?;
        check_dot_atom(&a[..at])?;
        at
    };
    let domain = &a[at + 1..];
    if domain.contains('@') {
        return Err(E::ExtraAt);
    }
    if domain.is_empty() {
        return Err(E::Domain("empty"));
    }
    if domain.chars().any(is_risky_domain_char) {
        return Err(E::Domain(
            "a character that IDNA or case folding maps ambiguously",
        ));
    }
    scopegate_keystore::canonical_domain(domain).map_err(|e| E::Domain(e.reason))
}

/// IDNA 2003/2008 deviation characters, and non-ASCII characters whose simple
/// case mapping is ASCII.
fn is_risky_domain_char(c: char) -> bool {
    matches!(
        c,
        '\u{DF}'
            | '\u{3C2}'
            | '\u{200C}'
            | '\u{200D}'
            | '\u{130}'
            | '\u{131}'
            | '\u{17F}'
            | '\u{212A}'
    )
}

/// An unquoted local part: ASCII atext separated by single dots.
fn check_dot_atom(local: &str) -> Result<(), MailboxError> {
    if local.is_empty()
        || local
            .split('.')
            .any(|atom| atom.is_empty() || !atom.bytes().all(is_atext))
    {
        return Err(MailboxError::LocalPart);
    }
    Ok(())
}

/// The inside of a quoted local part: printable ASCII and spaces, `\x` pairs,
/// not empty, no `@ < >`.
fn check_quoted_local(inner: &str) -> Result<(), MailboxError> {
    if inner.is_empty()
        || inner
            .bytes()
            .any(|b| !(b' '..=b'~').contains(&b) || matches!(b, b'@' | b'<' | b'>'))
    {
        return Err(MailboxError::LocalPart);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(messages: Messages) -> SenderSpec {
        SenderSpec {
            sender_pointer: "/From".to_owned(),
            messages,
        }
    }

    fn single() -> SenderSpec {
        spec(Messages::Single)
    }

    fn root_array() -> SenderSpec {
        spec(Messages::RootArray)
    }

    fn templates() -> SenderSpec {
        spec(Messages::Pointer("/Messages".to_owned()))
    }

    fn domains(body: &str, spec: &SenderSpec) -> Result<Vec<String>, SenderError> {
        sender_domains(body.as_bytes(), spec)
    }

    fn one(body: &str) -> Result<Vec<String>, SenderError> {
        domains(body, &single())
    }

    fn ok(v: &[&str]) -> Result<Vec<String>, SenderError> {
        Ok(v.iter().map(|s| s.to_string()).collect())
    }

    fn sender_err(index: Option<usize>, reason: MailboxError) -> Result<Vec<String>, SenderError> {
        Err(SenderError::Sender { index, reason })
    }

    fn dup(index: Option<usize>, field: &str) -> Result<Vec<String>, SenderError> {
        Err(SenderError::DuplicateField {
            index,
            field: field.to_owned(),
        })
    }

    fn assert_invalid_json(r: Result<Vec<String>, SenderError>, what: &str) {
        match r {
            Err(e @ SenderError::InvalidJson(_)) => {
                assert_eq!(e.status(), 400, "{what}");
                assert_eq!(e.code(), "invalid_json", "{what}");
            }
            other => panic!("{what}: expected InvalidJson, got {other:?}"),
        }
    }

    fn assert_structure(r: Result<Vec<String>, SenderError>, what: &str) {
        match r {
            Err(e @ SenderError::Structure(_)) => assert_eq!(e.status(), 400, "{what}"),
            other => panic!("{what}: expected Structure, got {other:?}"),
        }
    }

    // ----- bodies ---------------------------------------------------------

    #[test]
    fn single_message() {
        let body = r#"{"From":"Sender <s@Staging.Example.com>","To":"r@x.org","Subject":"hi",
            "HtmlBody":"<b>x</b>","TextBody":"x","MessageStream":"outbound"}"#;
        assert_eq!(one(body), ok(&["staging.example.com"]));
        assert_eq!(one(r#"  {"From":"a@b.com"}  "#), ok(&["b.com"]));
        // An empty messages pointer is the root, as in JSON pointer.
        assert_eq!(
            domains(
                r#"[{"From":"a@b.com"}]"#,
                &spec(Messages::Pointer(String::new()))
            ),
            ok(&["b.com"])
        );
    }

    #[test]
    fn root_array_batch_in_order() {
        let body = r#"[{"From":"a@one.com"},{"To":"x@y.z","From":"\"B\" <b@Two.com.>"},
            {"From":"c@bücher.example"}]"#;
        assert_eq!(
            domains(body, &root_array()),
            ok(&["one.com", "two.com", "xn--bcher-kva.example"])
        );
    }

    #[test]
    fn messages_pointer_batch() {
        let body = r#"{"Other":{"From":"x@evil.com"},"Messages":[
            {"From":"a@one.com","TemplateId":1,"TemplateModel":{"From":"z@evil.com"}},
            {"From":"b@two.com"}]}"#;
        assert_eq!(domains(body, &templates()), ok(&["one.com", "two.com"]));
        // Case-insensitive messages pointer too.
        let body = r#"{"messages":[{"from":"a@one.com"}]}"#;
        assert_eq!(domains(body, &templates()), ok(&["one.com"]));
    }

    #[test]
    fn display_name_and_quoting_variants() {
        for (from, want) in [
            ("a@b.com", "b.com"),
            ("Name <a@b.com>", "b.com"),
            ("<a@b.com>", "b.com"),
            ("\"Last, First\" <a@b.com>", "b.com"),
            ("\"Quoted \\\"esc\\\"\" <a@b.com>", "b.com"),
            ("\"Semi; colon: (paren)\" <a@b.com>", "b.com"),
            ("  a@b.com  ", "b.com"),
            ("Name   < a@b.com >", "b.com"),
            ("Name<a@b.com>", "b.com"),
            ("\"Name\"<a@b.com>", "b.com"),
            ("John Q. Public <john.q.public@example.com>", "example.com"),
            ("Zoë Ünïcödé <z@example.com>", "example.com"),
            ("=?utf-8?B?w7xiZXI=?= <a@b.com>", "b.com"),
            ("A@EXAMPLE.COM", "example.com"),
            ("a@example.com.", "example.com"),
            ("user@bücher.example", "xn--bcher-kva.example"),
            ("user@BÜCHER.example.", "xn--bcher-kva.example"),
            // UTS 46 maps full-width letters and dots, as resolvers do.
            ("a@\u{FF45}xample\u{FF0E}com", "example.com"),
            ("\"john doe\"@example.com", "example.com"),
            ("\"john \\\" doe\"@example.com", "example.com"),
            ("Name <\"john doe\"@example.com>", "example.com"),
            ("first.last+tag@sub.example.co.uk", "sub.example.co.uk"),
            ("o'brien@example.ie", "example.ie"),
        ] {
            assert_eq!(mailbox_domain(from).as_deref(), Ok(want), "{from:?}");
            // And the same through JSON, escaped as JSON needs.
            let body = serde_json::json!({ "From": from }).to_string();
            assert_eq!(one(&body), ok(&[want]), "{body}");
        }
    }

    #[test]
    fn field_names_are_case_insensitive() {
        for body in [
            r#"{"from":"a@b.com"}"#,
            r#"{"FROM":"a@b.com"}"#,
            r#"{"fRoM":"a@b.com"}"#,
            r#"{"Fr\u006fm":"a@b.com"}"#,
        ] {
            assert_eq!(one(body), ok(&["b.com"]), "{body}");
        }
        // Not the field: a prefix, a suffix, a look-alike.
        for body in [
            r#"{"Fro":"a@b.com"}"#,
            r#"{"Froms":"a@b.com"}"#,
            r#"{"From ":"a@b.com"}"#,
            r#"{"Ｆrom":"a@b.com"}"#,
        ] {
            assert_eq!(one(body), sender_err(None, MailboxError::Missing), "{body}");
        }
    }

    #[test]
    fn duplicate_fields_in_any_case_are_refused() {
        for body in [
            r#"{"From":"a@good.com","from":"ceo@example.com"}"#,
            r#"{"From":"a@good.com","From":"ceo@example.com"}"#,
            r#"{"FROM":"a@good.com","To":"x@y.z","fRoM":"a@good.com"}"#,
            r#"{"From":"a@good.com","Fr\u006fm":"a@good.com"}"#,
            r#"{"From":"not a mailbox","from":"a@good.com"}"#,
            r#"{"From":1,"from":"a@good.com"}"#,
        ] {
            let r = one(body);
            assert_eq!(r, dup(None, "From"), "{body}");
            assert_eq!(r.unwrap_err().status(), 400);
        }
        let body = r#"[{"From":"a@b.com"},{"From":"a@b.com","FROM":"c@d.com"}]"#;
        assert_eq!(domains(body, &root_array()), dup(Some(1), "From"));
        let body = r#"{"Messages":[{"From":"a@b.com"}],"MESSAGES":[{"From":"c@d.com"}]}"#;
        assert_eq!(domains(body, &templates()), dup(None, "Messages"));
        // The duplicate outranks an earlier sender error.
        let body = r#"{"Messages":[{"From":"bad"}],"messages":[]}"#;
        assert_eq!(domains(body, &templates()), dup(None, "Messages"));
    }

    #[test]
    fn dotnet_case_folding_lookalikes_count_as_the_field() {
        // `ſ` (long s) upper-cases to `S`: .NET's OrdinalIgnoreCase may match it.
        let body = r#"{"Messages":[{"From":"a@b.com"}],"Meſſages":[{"From":"c@d.com"}]}"#;
        assert_eq!(domains(body, &templates()), dup(None, "Messages"));
        let spec = SenderSpec {
            sender_pointer: "/Sender".into(),
            messages: Messages::Single,
        };
        let body = r#"{"Sender":"a@b.com","ſender":"c@d.com"}"#;
        assert_eq!(domains(body, &spec), dup(None, "Sender"));
        let spec = SenderSpec {
            sender_pointer: "/Id".into(),
            messages: Messages::Single,
        };
        assert_eq!(domains(r#"{"ıd":"a@b.com"}"#, &spec), ok(&["b.com"]));
        // Kelvin sign lower-cases to `k`.
        let spec = SenderSpec {
            sender_pointer: "/k".into(),
            messages: Messages::Single,
        };
        assert_eq!(
            domains("{\"k\":\"a@b.com\",\"\u{212A}\":\"c@d.com\"}", &spec),
            dup(None, "k")
        );
    }

    #[test]
    fn nested_pointer_and_escapes() {
        let nested = SenderSpec {
            sender_pointer: "/Envelope/From".into(),
            messages: Messages::Single,
        };
        let body = r#"{"From":"x@evil.com","Envelope":{"To":"q@r.s","from":"a@Good.com"}}"#;
        assert_eq!(domains(body, &nested), ok(&["good.com"]));
        let body = r#"{"envelope":{"From":"a@good.com"},"Envelope":{"From":"x@evil.com"}}"#;
        assert_eq!(domains(body, &nested), dup(None, "Envelope"));
        let body = r#"{"Envelope":{"From":"a@good.com","FROM":"x@evil.com"}}"#;
        assert_eq!(domains(body, &nested), dup(None, "From"));
        let body = r#"{"Envelope":"a@good.com"}"#;
        assert_eq!(
            domains(body, &nested),
            sender_err(None, MailboxError::Missing)
        );
        let body = r#"{"Envelope":{}}"#;
        assert_eq!(
            domains(body, &nested),
            sender_err(None, MailboxError::Missing)
        );

        // `~1` is `/`, `~0` is `~`.
        let escaped = SenderSpec {
            sender_pointer: "/a~1b/c~0d".into(),
            messages: Messages::Pointer("/m~0s".into()),
        };
        let body = r#"{"m~s":[{"a/b":{"c~d":"x@y.com"}}],"m~0s":[{"From":"q@evil.com"}]}"#;
        assert_eq!(domains(body, &escaped), ok(&["y.com"]));
        let body = r#"{"m~s":[{"a/b":{"c~d":"x@y.com","C~D":"x@y.com"}}]}"#;
        assert_eq!(domains(body, &escaped), dup(Some(0), "c~d"));

        // Array indices in pointers.
        let indexed = SenderSpec {
            sender_pointer: "/Senders/1".into(),
            messages: Messages::Single,
        };
        let body = r#"{"Senders":["x@evil.com","a@good.com",{"x":[1,2]}]}"#;
        assert_eq!(domains(body, &indexed), ok(&["good.com"]));
        let body = r#"{"Senders":["x@evil.com"]}"#;
        assert_eq!(
            domains(body, &indexed),
            sender_err(None, MailboxError::Missing)
        );
        let leading_zero = SenderSpec {
            sender_pointer: "/Senders/01".into(),
            messages: Messages::Single,
        };
        let body = r#"{"Senders":["x@evil.com","a@good.com"]}"#;
        assert_eq!(
            domains(body, &leading_zero),
            sender_err(None, MailboxError::Missing)
        );

        // A pointer that config validation would have refused fails closed.
        let broken = SenderSpec {
            sender_pointer: "From".into(),
            messages: Messages::Single,
        };
        assert_structure(domains(r#"{"From":"a@b.com"}"#, &broken), "no slash");
        let broken = SenderSpec {
            sender_pointer: "/F~2".into(),
            messages: Messages::Single,
        };
        assert_structure(domains(r#"{"From":"a@b.com"}"#, &broken), "bad escape");
    }

    #[test]
    fn invalid_json() {
        for body in [
            "",
            "   ",
            "{",
            r#"{"From":"a@b.com""#,
            r#"{"From":"a@b.com"} x"#,
            r#"{"From":"a@b.com"}{}"#,
            r#"{"From":"a@b.com",}"#,
            r#"{"From":"a@b.com" "To":"x"}"#,
            r#"{'From':'a@b.com'}"#,
            r#"{"From":"a@b.com","N":01}"#,
            r#"{"From":"a@b.com","N":NaN}"#,
            r#"{"From":"a@b.com" /* c */}"#,
            "{\"From\":\"a@b.com\",\"S\":\"raw\ttab\"}",
            r#"{"From":"a@b.com","S":"\x"}"#,
            r#"{"Fr\ud800om":"a@b.com"}"#,
            "\u{FEFF}{\"From\":\"a@b.com\"}",
        ] {
            assert_invalid_json(one(body), body);
        }
        // Truncated anywhere.
        let body = r#"{"From":"a@b.com","Attachments":[{"Name":"x","Content":"QUJD"}]}"#;
        for cut in 0..body.len() {
            assert_invalid_json(one(&body[..cut]), &body[..cut]);
        }
        // Invalid UTF-8 inside a skipped string.
        let mut bytes = br#"{"Subject":"xx","From":"a@b.com"}"#.to_vec();
        bytes[12] = 0xff;
        assert_invalid_json(sender_domains(&bytes, &single()), "invalid utf-8");
        // Syntax beats every other error.
        assert_invalid_json(one(r#"{"From":1,"from":2} x"#), "dup then garbage");
        assert_invalid_json(
            domains(r#"[{"From":"bad"}, ]"#, &root_array()),
            "bad sender then garbage",
        );
    }

    #[test]
    fn invalid_json_messages_have_no_excerpts() {
        let r = one(r#"{"From":"secret-marker@b.com" ,, }"#).unwrap_err();
        assert!(!r.message().contains("secret-marker"), "{}", r.message());
        assert!(r.message().contains("line 1"), "{}", r.message());
    }

    #[test]
    fn wrong_shapes() {
        for body in [
            "[]",
            "[{\"From\":\"a@b.com\"}]",
            "\"a@b.com\"",
            "null",
            "1",
            "true",
        ] {
            assert_structure(one(body), body);
        }
        for body in ["{}", r#"{"From":"a@b.com"}"#, "\"x\"", "null", "3"] {
            assert_structure(domains(body, &root_array()), body);
        }
        for body in [
            "[]",
            "[{\"Messages\":[]}]",
            "{}",
            r#"{"From":"a@b.com"}"#,
            r#"{"Messages":{"From":"a@b.com"}}"#,
            r#"{"Messages":"a@b.com"}"#,
            r#"{"Messages":null}"#,
        ] {
            assert_structure(domains(body, &templates()), body);
        }
        // Messages that are not objects.
        for body in [
            "[1]",
            "[null]",
            "[\"a@b.com\"]",
            "[[{\"From\":\"a@b.com\"}]]",
        ] {
            assert_eq!(
                domains(body, &root_array()),
                Err(SenderError::Structure(
                    "message 0 is not a JSON object".into()
                )),
                "{body}"
            );
        }
    }

    #[test]
    fn empty_batches() {
        assert_structure(domains("[]", &root_array()), "root");
        assert_structure(domains(" [ ] ", &root_array()), "root spaces");
        assert_structure(domains(r#"{"Messages":[]}"#, &templates()), "pointer");
    }

    #[test]
    fn missing_sender_names_the_message() {
        let body = r#"[{"From":"a@b.com"},{"From":"c@d.com"},{"To":"x@y.com"}]"#;
        let r = domains(body, &root_array());
        assert_eq!(r, sender_err(Some(2), MailboxError::Missing));
        let e = r.unwrap_err();
        assert_eq!(e.status(), 422);
        assert_eq!(e.code(), "invalid_sender");
        assert_eq!(e.message(), "message 2: From is missing");
        let body = r#"{"Messages":[{"From":"a@b.com"},{"From":"c@d.com"},{}]}"#;
        assert_eq!(
            domains(body, &templates()),
            sender_err(Some(2), MailboxError::Missing)
        );
        assert_eq!(one("{}"), sender_err(None, MailboxError::Missing));
        assert_eq!(
            one("{}").unwrap_err().message(),
            "From is missing",
            "no prefix for a single message"
        );
        // The first bad message is reported.
        let body = r#"[{"From":"a@b.com"},{"From":"x"},{}]"#;
        assert_eq!(
            domains(body, &root_array()),
            sender_err(Some(1), MailboxError::NoAddress)
        );
    }

    #[test]
    fn sender_not_a_string() {
        for v in [
            "1",
            "-2.5e3",
            "null",
            "true",
            "{}",
            r#"{"Email":"a@b.com"}"#,
            "[]",
            r#"["a@b.com"]"#,
        ] {
            let body = format!(r#"{{"From":{v},"To":"r@x.org"}}"#);
            assert_eq!(
                one(&body),
                sender_err(None, MailboxError::NotAString),
                "{body}"
            );
        }
        assert_eq!(
            one(r#"{"From":null}"#).unwrap_err().message(),
            "From is not a string"
        );
        assert_eq!(
            domains(
                r#"[{"From":"a@b.com"},{"From":["a@b.com"]}]"#,
                &root_array()
            ),
            sender_err(Some(1), MailboxError::NotAString)
        );
    }

    #[test]
    fn escaped_sender_strings() {
        assert_eq!(one(r#"{"From":"a\u0040b.com"}"#), ok(&["b.com"]));
        assert_eq!(
            one(r#"{"From":"\"N\" \u003ca@B.com\u003e"}"#),
            ok(&["b.com"])
        );
        assert_eq!(
            one(r#"{"From":"a@b.com\r\nBcc: x@evil.com"}"#),
            sender_err(None, MailboxError::ControlCharacter)
        );
        assert_eq!(
            one(r#"{"From":"a@b.com\u0000"}"#),
            sender_err(None, MailboxError::ControlCharacter)
        );
    }

    #[test]
    fn huge_attachments_around_the_sender() {
        let blob: String =
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw==".repeat(2_600_000 / 48 + 1);
        let body = format!(
            r#"{{"Attachments":[{{"Name":"a.bin","Content":"{blob}","ContentType":"application/octet-stream"}}],
               "From":"Big <big@Large.Example.com>",
               "More":[{{"Name":"b.bin","Content":"{blob}"}}],"Tail":"{blob}"}}"#
        );
        assert!(body.len() > 5 * 1024 * 1024, "{}", body.len());
        assert_eq!(one(&body), ok(&["large.example.com"]));
        let batch = format!("[{body},{body}]");
        assert_eq!(
            domains(&batch, &root_array()),
            ok(&["large.example.com", "large.example.com"])
        );
        // Truncating the big body is still caught.
        assert_invalid_json(one(&body[..body.len() - 2]), "truncated big body");
    }

    #[test]
    fn mailbox_refusals() {
        use MailboxError as E;
        let long_local = format!("{}@b.com", "a".repeat(MAX_MAILBOX_LEN));
        let cases: &[(&str, MailboxError)] = &[
            ("", E::Empty),
            ("   ", E::Empty),
            ("\t", E::ControlCharacter),
            ("abc", E::NoAddress),
            ("Name <>", E::NoAddress),
            ("Name < >", E::NoAddress),
            ("Name <abc>", E::NoAddress),
            ("a@b.com, c@d.com", E::MultipleAddresses),
            ("a@b.com; c@d.com", E::MultipleAddresses),
            ("a@b.com,", E::MultipleAddresses),
            ("Last, First <a@b.com>", E::MultipleAddresses),
            ("undisclosed: a@b.com;", E::Group),
            ("undisclosed-recipients:;", E::Group),
            ("a@good.com <b@evil.com>", E::DisplayName),
            ("Name@x <a@b.com>", E::DisplayName),
            ("Na\"me\" <a@b.com>", E::DisplayName),
            ("Na\"me <a@b.com>", E::QuotedString),
            ("\"Name\" Jr <a@b.com>", E::DisplayName),
            ("Bob \"x\" <a@b.com>", E::DisplayName),
            ("\"Name\"", E::DisplayName),
            ("\"a@evil.com\" <b@good.com>", E::DisplayName),
            ("\"x <b@evil.com>\" <a@good.com>", E::DisplayName),
            ("\"x \\@ y\" <a@good.com>", E::DisplayName),
            ("Name\\ <a@b.com>", E::DisplayName),
            ("ceo\u{FF20}example.com <a@good.com>", E::DisplayName),
            ("\"ceo\u{FE6B}example.com\" <a@good.com>", E::DisplayName),
            ("x \u{FF1C}b@evil.com\u{FF1E} <a@good.com>", E::DisplayName),
            ("<<a@b.com>>", E::AngleBrackets),
            ("<a@b.com", E::AngleBrackets),
            ("a@b.com>", E::AngleBrackets),
            ("Name <a@b.com> <c@d.com>", E::AngleBrackets),
            ("Name <a@b.com", E::AngleBrackets),
            ("> a@b.com <", E::AngleBrackets),
            ("Name <a@b.com> trailing", E::TrailingText),
            ("Name <a@b.com>x@evil.com", E::TrailingText),
            ("Name (comment) <a@b.com>", E::Comment),
            ("a@b.com (Name)", E::Comment),
            ("a(x)@b.com", E::Comment),
            ("a@b.com(x)", E::Comment),
            ("a@b.com\r\nBcc: c@d.com", E::ControlCharacter),
            ("a@b.com\n", E::ControlCharacter),
            ("Name\r <a@b.com>", E::ControlCharacter),
            ("a\u{0}@b.com", E::ControlCharacter),
            ("a@b.com\u{7f}", E::ControlCharacter),
            ("a@b.com\u{85}", E::ControlCharacter),
            ("Name\u{2028} <a@b.com>", E::ControlCharacter),
            ("a@[127.0.0.1]", E::DomainLiteral),
            ("Name <a@[IPv6:::1]>", E::DomainLiteral),
            ("a@b@c.com", E::ExtraAt),
            ("a@b.com@c.com", E::ExtraAt),
            ("@b.com", E::LocalPart),
            ("a b@c.com", E::LocalPart),
            ("John a@b.com", E::LocalPart),
            (".a@b.com", E::LocalPart),
            ("a.@b.com", E::LocalPart),
            ("a..b@c.com", E::LocalPart),
            ("ü@b.com", E::LocalPart),
            ("\"\"@b.com", E::LocalPart),
            ("\"a@evil.com\"@good.com", E::LocalPart),
            ("\"a b\" @b.com", E::DisplayName),
            ("\"a\"x@b.com", E::DisplayName),
            ("\"a\"b\"@c.com", E::QuotedString),
            ("\"unterminated <a@b.com>", E::QuotedString),
            ("Name <\"x\\\"@b.com>", E::QuotedString),
            ("a@", E::Domain("empty")),
            ("a@localhost", E::Domain("needs at least two labels")),
            ("a@b..com", E::Domain("empty label")),
            (
                "a@b_c.com",
                E::Domain("only letters, digits and '-' are allowed"),
            ),
            (
                "a@b.com.x y",
                E::Domain("only letters, digits and '-' are allowed"),
            ),
            (
                "Name <a@b.com x>",
                E::Domain("only letters, digits and '-' are allowed"),
            ),
            ("Name <a @b.com>", E::LocalPart),
            (
                "Name <a@b.com\u{A0}>",
                E::Domain("not a valid internationalised name"),
            ),
            (
                "a@b\u{FF20}c.com",
                E::Domain("not a valid internationalised name"),
            ),
            (
                "a@-b.com",
                E::Domain("a label may not start or end with '-'"),
            ),
            (
                "a@fa\u{DF}.de",
                E::Domain("a character that IDNA or case folding maps ambiguously"),
            ),
            (
                "a@exampl\u{131}.com",
                E::Domain("a character that IDNA or case folding maps ambiguously"),
            ),
            (
                "a@\u{17F}taging.example.com",
                E::Domain("a character that IDNA or case folding maps ambiguously"),
            ),
            (
                "a@\u{212A}ey.com",
                E::Domain("a character that IDNA or case folding maps ambiguously"),
            ),
            (
                "a@x\u{200D}y.com",
                E::Domain("a character that IDNA or case folding maps ambiguously"),
            ),
            (&long_local, E::TooLong),
        ];
        for (from, want) in cases {
            assert_eq!(mailbox_domain(from), Err(*want), "{from:?}");
        }
        // Exactly at the limit is fine.
        let at_limit = format!("{}@b.com", "a".repeat(MAX_MAILBOX_LEN - 6));
        assert_eq!(at_limit.len(), MAX_MAILBOX_LEN);
        assert_eq!(mailbox_domain(&at_limit).as_deref(), Ok("b.com"));
        // Every refusal also comes back as a 422 naming the message.
        let body = serde_json::json!([{ "From": "ok@b.com" }, { "From": "a@b.com, c@d.com" }]);
        let e = domains(&body.to_string(), &root_array()).unwrap_err();
        assert_eq!(e.status(), 422);
        assert_eq!(
            e.message(),
            "message 1: From is not a single mailbox (address lists are not accepted)"
        );
    }

    #[test]
    fn messages_never_contain_the_sender() {
        const MARK: &str = "zq7marker";
        let froms = [
            MARK.to_string(),
            format!("{MARK}@{MARK}"),
            format!("a@{MARK}..com"),
            format!("a@{MARK}_x.com"),
            format!("{MARK} <a@b.com> x"),
            format!("{MARK}@good.com <b@evil.com>"),
            format!("a@b.com, {MARK}@d.com"),
            format!("{MARK}: a@b.com;"),
            format!("a@[{MARK}]"),
            format!("\"{MARK}"),
            format!("{MARK}\r\n@b.com"),
            format!("{MARK}@b\u{DF}.com"),
            format!("a@{}.com", MARK.repeat(30)),
            MARK.repeat(200),
        ];
        for from in &froms {
            let reason = mailbox_domain(from).unwrap_err();
            assert!(!reason.to_string().contains(MARK), "{reason}");
            for (body, spec) in [
                (serde_json::json!({ "From": from }), single()),
                (
                    serde_json::json!([{ "From": "a@b.com" }, { "From": from }]),
                    root_array(),
                ),
                (
                    serde_json::json!({ "Messages": [{ "From": from }] }),
                    templates(),
                ),
            ] {
                let e = domains(&body.to_string(), &spec).unwrap_err();
                for text in [e.message(), e.to_string(), format!("{e:?}")] {
                    assert!(!text.contains(MARK), "{text}");
                }
            }
        }
        // Keys and other values are not echoed either.
        for body in [
            format!(r#"{{"From":"{MARK}@b.com","from":"x@y.com"}}"#),
            format!(r#"{{"From":{{"{MARK}":1}}}}"#),
            format!(r#"{{"From":"{MARK}@b.com"}} {MARK}"#),
            format!(r#"{{"From":"a@b.com","{MARK}": nope}}"#),
            format!(r#"{{"From":"a@b.com","x":"{MARK}\q"}}"#),
        ] {
            let e = one(&body).unwrap_err();
            for text in [e.message(), e.to_string(), format!("{e:?}")] {
                assert!(!text.contains(MARK), "{text}");
            }
        }
    }

    #[test]
    fn status_and_codes() {
        let cases = [
            (SenderError::InvalidJson("x".into()), 400, "invalid_json"),
            (SenderError::Structure("x".into()), 400, "invalid_structure"),
            (
                SenderError::DuplicateField {
                    index: Some(3),
                    field: "From".into(),
                },
                400,
                "duplicate_field",
            ),
            (
                SenderError::Sender {
                    index: Some(3),
                    reason: MailboxError::MultipleAddresses,
                },
                422,
                "invalid_sender",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status(), status);
            assert_eq!(e.code(), code);
            assert_eq!(e.to_string(), e.message());
        }
        assert_eq!(
            SenderError::DuplicateField {
                index: Some(3),
                field: "From".into()
            }
            .message(),
            "message 3: field \"From\" appears more than once (field names are case-insensitive)"
        );
    }
}
