//! `scopegate admin …`: the admin API from the shell.
//!
//! Every admin call has a command: organisations, servers, users, keys,
//! revocation, offboarding, status and reload. The token comes from
//! `SCOPEGATE_ADMIN_TOKEN` only — never a flag, so it stays out of shell
//! history and process lists — and is never printed.
//!
//! Output: short confirmations that name the snapshot version now enforcing
//! the change, aligned tables for lists; `--json` prints the server's JSON
//! for scripts. Exit codes: 0 success, 1 the server refused (4xx), 2 usage,
//! connection or server (5xx) errors. Server errors go to stderr as
//! `error: <code>: <message>`.
//!
//! The HTTP client is a few dozen lines of `std::net` rather than a crate:
//! the admin listener speaks plain HTTP/1.1 (loopback by default, no TLS on
//! that listener), the CLI makes one request per connection, and the
//! responses always carry a `Content-Length`. A crate such as `ureq` without
//! its TLS features would add nothing over that but a dependency tree.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

/// Where the admin API listens unless told otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8081";
/// The environment variable holding the admin token.
pub const TOKEN_ENV: &str = "SCOPEGATE_ADMIN_TOKEN";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments of `scopegate admin`.
#[derive(Args, Debug)]
#[command(after_help = "\
The admin token is read from SCOPEGATE_ADMIN_TOKEN (never from a flag).
Exit codes: 0 success, 1 the server refused the call (4xx), 2 usage,
connection or server errors.")]
pub struct AdminArgs {
    /// Base URL of the gateway's admin listener (plain http).
    #[arg(
        long,
        global = true,
        env = "SCOPEGATE_ADMIN_URL",
        default_value = DEFAULT_ADMIN_URL,
        value_name = "URL"
    )]
    pub admin_url: String,
    /// Print the server's JSON instead of a summary (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// The admin call.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin calls.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Snapshot version and counts of organisations, users and live keys.
    Status,
    /// Organisations and their domains.
    #[command(subcommand)]
    Org(OrgCommand),
    /// An organisation's servers (name and numeric id).
    #[command(subcommand)]
    Server(ServerCommand),
    /// Users: roles, per-domain access, deactivation.
    #[command(subcommand)]
    User(UserCommand),
    /// Offboard a person: deactivate them (every key they created stops on
    /// the next request) and list the keys that were revoked.
    Offboard {
        /// Organisation id.
        org: String,
        /// User id (email).
        user: String,
    },
    /// API keys: create, list, show, revoke.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Reload routes, upstreams and limits from the gateway's config file.
    Reload,
}

/// `scopegate admin org …`.
#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Create an organisation or replace its whole domain list.
    Put {
        /// Organisation id (letters, digits, '-', '_', '.').
        org: String,
        /// A domain of the organisation, optionally with the platform's
        /// numeric id; repeat for each domain. The list replaces the current one.
        #[arg(long = "domain", value_name = "NAME[=ID]", required = true, value_parser = parse_domain)]
        domains: Vec<(String, Option<u64>)>,
    },
    /// Show an organisation's domains.
    Show {
        /// Organisation id.
        org: String,
    },
    /// Set the rate limit of the organisation's keys that have none of their
    /// own (or with --none, leave them unlimited).
    Limit {
        /// Organisation id.
        org: String,
        /// The limit of each key (not of all together).
        #[command(flatten)]
        limit: LimitArgs,
    },
}

/// `scopegate admin server …`.
#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Add a server to an organisation, or change its numeric id.
    Put {
        /// Organisation id.
        org: String,
        /// Server name (1-64 of a-z, 0-9, '.', '_', '-'; lowercased).
        server: String,
        /// The platform's numeric id of the server.
        #[arg(long)]
        id: u64,
    },
    /// Remove a server; keys bound to it stay and grant nothing on it.
    Delete {
        /// Organisation id.
        org: String,
        /// Server name.
        server: String,
    },
    /// List an organisation's servers.
    List {
        /// Organisation id.
        org: String,
    },
}

/// A rate limit as flags: `--per-second N --burst M`, or `--none`.
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Sustained requests per second.
    #[arg(long, required_unless_present = "none")]
    per_second: Option<u32>,
    /// Requests at once after a quiet spell.
    #[arg(long, required_unless_present = "none")]
    burst: Option<u32>,
    /// Remove the limit.
    #[arg(long, conflicts_with_all = ["per_second", "burst"])]
    none: bool,
}

impl LimitArgs {
    /// The limit as the API takes it (`null` for `--none`).
    fn json(&self) -> Value {
        if self.none {
            Value::Null
        } else {
            json!({"per_second": self.per_second, "burst": self.burst})
        }
    }
}

/// `scopegate admin user …`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user or replace their role, access and status.
    Put {
        /// Organisation id.
        org: String,
        /// User id (email).
        user: String,
        /// Role in the organisation.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Member access to one domain; repeat for each domain. Replaces the
        /// current access map. Owners and admins take none: they have
        /// read_write on every domain.
        #[arg(long = "access", value_name = "DOMAIN=read|read_write", value_parser = parse_access)]
        access: Vec<(String, String)>,
        /// Status; omitted = keep the current one (active for a new user).
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Member access to one server (read: Server Viewer, read_write:
        /// Server Admin); repeat for each server. Replaces the current server
        /// access; omitted keeps it.
        #[arg(long = "server", value_name = "SERVER=read|read_write", value_parser = parse_server_level)]
        servers: Vec<(String, String)>,
        /// Remove every server access of the member.
        #[arg(long, conflicts_with = "servers")]
        no_servers: bool,
    },
    /// List an organisation's users.
    List {
        /// Organisation id.
        org: String,
    },
    /// Deactivate a user: every key they created is refused from the next request on.
    Deactivate {
        /// Organisation id.
        org: String,
        /// User id (email).
        user: String,
    },
    /// Delete a user and revoke every key they created.
    Delete {
        /// Organisation id.
        org: String,
        /// User id (email).
        user: String,
    },
}

/// `scopegate admin key …`.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key; its secret is printed once and can never be shown again.
    Create {
        /// Organisation id.
        org: String,
        /// The user the key acts for (its creator).
        #[arg(long)]
        user: String,
        /// Limit the key to this domain (repeatable); the user needs
        /// read_write on it. Omitted: every domain the user can write now.
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
        /// Every domain plus organisation endpoints (owners and admins only).
        #[arg(long)]
        org_wide: bool,
        /// Read-only on the chosen domains.
        #[arg(long)]
        read_only: bool,
        /// Expiry, RFC 3339 (e.g. 2030-01-31T00:00:00Z).
        #[arg(long, value_name = "RFC3339")]
        expires_at: Option<String>,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
        /// Bind the key to this server (a server token); the user needs
        /// read_write on it.
        #[arg(long)]
        server: Option<String>,
        /// The key's level on its server (default read_write).
        #[arg(long, value_name = "read|read_write", requires = "server", value_parser = ["read", "read_write"])]
        server_access: Option<String>,
    },
    /// List an organisation's keys (metadata only).
    List {
        /// Organisation id.
        org: String,
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
        /// Only keys not used since then (RFC 3339), never-used ones included.
        #[arg(long, value_name = "RFC3339")]
        unused_since: Option<String>,
    },
    /// Show one key (metadata and usage, never the secret).
    Show {
        /// Key id (key_…).
        id: String,
    },
    /// Revoke a key: refused from the next request on, for good.
    Revoke {
        /// Key id (key_…).
        id: String,
    },
    /// Rotate a key: a new secret for the same scope, creator and name; the
    /// old one keeps working for the grace, then is refused as expired.
    Rotate {
        /// Key id (key_…).
        id: String,
        /// Seconds the old key keeps working.
        #[arg(long, value_name = "SECONDS")]
        grace: u32,
    },
    /// Set a key's rate limit (or with --none, fall back to the organisation's default).
    Limit {
        /// Key id (key_…).
        id: String,
        /// The key's own limit (`--none`: the organisation's default).
        #[command(flatten)]
        limit: LimitArgs,
    },
    /// Try a narrower scope: requests it would refuse are admitted and counted.
    Shadow {
        /// Key id (key_…).
        id: String,
        /// DOMAIN=read|read_write (repeatable).
        #[arg(long = "access", value_name = "DOMAIN=LEVEL", value_parser = parse_access)]
        access: Vec<(String, String)>,
        /// Remove the shadow scope.
        #[arg(long, conflicts_with = "access")]
        none: bool,
    },
}

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything in the organisation; at least one active owner must remain.
    Owner,
    /// Everything in the organisation.
    Admin,
    /// Only the domains given with --access.
    Member,
}

/// A user's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// The user and their keys work.
    Active,
    /// The user and all their keys are refused.
    Deactivated,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            RoleArg::Owner => "owner",
            RoleArg::Admin => "admin",
            RoleArg::Member => "member",
        }
    }
}

impl StatusArg {
    fn as_str(self) -> &'static str {
        match self {
            StatusArg::Active => "active",
            StatusArg::Deactivated => "deactivated",
        }
    }
}

fn parse_domain(s: &str) -> Result<(String, Option<u64>), String> {
    match s.split_once('=') {
        None => Ok((s.to_string(), None)),
        Some((name, id)) => id
            .parse::<u64>()
            .map(|id| (name.to_string(), Some(id)))
            .map_err(|_| format!("{s:?}: expected NAME or NAME=ID with a numeric ID")),
    }
}

fn parse_access(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((d, level @ ("read" | "read_write"))) if !d.is_empty() => {
            Ok((d.to_string(), level.to_string()))
        }
        _ => Err(format!("{s:?}: expected DOMAIN=read or DOMAIN=read_write")),
    }
}

fn parse_server_level(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, level @ ("read" | "read_write"))) if !name.is_empty() => {
            Ok((name.to_string(), level.to_string()))
        }
        _ => Err(format!("{s:?}: expected SERVER=read or SERVER=read_write")),
    }
}

/// Why a command failed, and so its exit code.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error status.
    Http {
        status: u16,
        code: String,
        message: String,
    },
    /// Usage, connection or local errors.
    Local(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Local(e)
    }
}

/// Runs an admin command; returns the exit code (0 ok, 1 refused, 2 error).
pub fn run(args: AdminArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    let result = Client::from_env(&args.admin_url)
        .map_err(Failure::Local)
        .and_then(|client| execute(&client, &args, &mut out));
    let _ = out.flush();
    Ok(match result {
        Ok(()) => 0,
        Err(Failure::Http {
            status,
            code,
            message,
        }) => {
            eprintln!("error: {code}: {message}");
            if (400..500).contains(&status) {
                1
            } else {
                2
            }
        }
        Err(Failure::Local(e)) => {
            eprintln!("error: {e:#}");
            2
        }
    })
}

// ---------------------------------------------------------------------------
// The HTTP client.

/// One admin API endpoint and the token to present.
struct Client {
    /// `host:port` as given (the Host header).
    authority: String,
    /// Resolved addresses, tried in order.
    addrs: Vec<SocketAddr>,
    /// Path prefix of the base URL, without a trailing slash.
    base_path: String,
    /// The bearer token; never printed.
    token: String,
    /// The URL as given, for messages.
    url: String,
}

/// An answer from the admin API.
struct Reply {
    status: u16,
    /// `X-Scopegate-Version`: the snapshot version a change published.
    version: Option<u64>,
    body: Vec<u8>,
}

impl Client {
    fn from_env(url: &str) -> anyhow::Result<Client> {
        let token = std::env::var(TOKEN_ENV).unwrap_or_default();
        if token.trim().is_empty() {
            bail!(
                "{TOKEN_ENV} is not set: export the gateway's admin token in it \
                 (it is deliberately not a flag, to keep it out of shell history and process lists)"
            );
        }
        if token.trim().chars().any(char::is_control) {
            bail!("{TOKEN_ENV} contains control characters; it cannot be sent in a header");
        }
        Client::new(url, token.trim().to_string())
    }

    fn new(url: &str, token: String) -> anyhow::Result<Client> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => bail!(
                "--admin-url {url}: https is not supported; the admin listener speaks plain \
                 http (keep it on loopback, or reach it through an SSH tunnel)"
            ),
            Some(_) => bail!("--admin-url {url}: expected http://HOST:PORT"),
            None => url,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("--admin-url {url}: expected http://HOST:PORT");
        }
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .with_context(|| format!("--admin-url {url}: cannot resolve {authority}"))?
            .collect();
        if addrs.is_empty() {
            bail!("--admin-url {url}: {authority} resolves to no address");
        }
        if addrs.iter().any(|a| !a.ip().is_loopback()) {
            eprintln!(
                "warning: the admin token travels in clear text to {authority}, which is not a loopback address"
            );
        }
        Ok(Client {
            authority: authority.to_string(),
            addrs,
            base_path: path.to_string(),
            token,
            url: url.to_string(),
        })
    }

    fn connect(&self) -> anyhow::Result<TcpStream> {
        let mut last = None;
        for a in &self.addrs {
            match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        let e = last.map(|e| e.to_string()).unwrap_or_default();
        Err(anyhow!(
            "cannot reach the admin API at {}: {e} (is `scopegate serve` running? set --admin-url or SCOPEGATE_ADMIN_URL)",
            self.url
        ))
    }

    /// One request on its own connection.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Reply> {
        let body = body
            .map(|b| serde_json::to_vec(b).expect("JSON values serialise"))
            .unwrap_or_default();
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: scopegate-admin/{}\r\n\
             Accept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.base_path,
            self.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("Authorization: Bearer ");
        let mut request = head.into_bytes();
        request.extend_from_slice(self.token.as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(&body);

        let stream = self.connect()?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(&request)
            .with_context(|| format!("sending {method} {path} to {}", self.url))?;
        read_reply(&mut reader, method == "HEAD")
            .with_context(|| format!("reading the answer to {method} {path} from {}", self.url))
    }
}

fn read_reply(r: &mut impl BufRead, head_only: bool) -> anyhow::Result<Reply> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("the connection closed before an answer");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP answer: {:?}", line.trim_end()))?;
        let mut length = None;
        let mut chunked = false;
        let mut version = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                bail!("the connection closed in the middle of the headers");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<usize>().context("bad Content-Length")?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            } else if k.eq_ignore_ascii_case("x-scopegate-version") {
                version = v.parse().ok();
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 {
        } else if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let size = size.trim();
                let size = size.split(';').next().unwrap_or("");
                let n = usize::from_str_radix(size, 16).context("bad chunk size")?;
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
        }
        return Ok(Reply {
            status,
            version,
            body,
        });
    }
}

/// Percent-encodes one path segment (or query value).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Reply {
    /// The JSON body of a 2xx answer, or the server's error.
    fn ok(self) -> Result<(Value, Option<u64>, Vec<u8>), Failure> {
        let parsed: Option<Value> = serde_json::from_slice(&self.body).ok();
        if (200..300).contains(&self.status) {
            let v = if self.body.is_empty() {
                Value::Null
            } else {
                parsed.ok_or_else(|| {
                    Failure::Local(anyhow!(
                        "the admin API answered {} with a body that is not JSON",
                        self.status
                    ))
                })?
            };
            let version = self.version.or_else(|| v["version"].as_u64());
            return Ok((v, version, self.body));
        }
        let (code, message) = match parsed.as_ref().map(|v| &v["error"]) {
            Some(e) if e.is_object() => (
                e["code"].as_str().unwrap_or("error").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            ),
            _ => (
                format!("http_{}", self.status),
                String::from_utf8_lossy(&self.body)
                    .trim()
                    .chars()
                    .take(500)
                    .collect(),
            ),
        };
        Err(Failure::Http {
            status: self.status,
            code,
            message,
        })
    }
}

// ---------------------------------------------------------------------------
// The commands.

type Out<'a> = &'a mut dyn Write;

fn execute(c: &Client, args: &AdminArgs, out: Out<'_>) -> Result<(), Failure> {
    let json = args.json;
    let w = |e: std::io::Error| Failure::Local(anyhow!("writing output: {e}"));
    // The server's JSON, verbatim, for scripts.
    let print_raw = |out: Out<'_>, raw: &[u8]| -> Result<(), Failure> {
        let text = String::from_utf8_lossy(raw);
        writeln!(out, "{}", text.trim_end()).map_err(w)
    };
    match &args.command {
        AdminCommand::Status => {
            let (v, _, raw) = c.call("GET", "/v1/status", None)?.ok()?;
            if json {
                return print_raw(out, &raw);
            }
            let changed = v["changed_at"]
                .as_str()
                .map(|t| format!(" (last change {t})"))
                .unwrap_or_default();
            let count = |k: &str, what: &str| plural(v[k].as_u64().unwrap_or(0) as usize, what);
            writeln!(
                out,
                "version {}: {}, {}, {}{changed}",
                v["version"],
                count("orgs", "organisation"),
                count("users", "user"),
                count("keys", "live key")
            )
            .map_err(w)
        }
        AdminCommand::Reload => {
            let (v, _, raw) = c.call("POST", "/v1/reload", None)?.ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "reloaded the configuration: {} routes in force",
                v["routes"]
            )
            .map_err(w)
        }
        AdminCommand::Org(OrgCommand::Put { org, domains }) => {
            let list: Vec<Value> = domains
                .iter()
                .map(|(name, id)| match id {
                    None => json!(name),
                    Some(id) => json!({"name": name, "id": id}),
                })
                .collect();
            let reply = c.call(
                "PUT",
                &format!("/v1/orgs/{}", enc(org)),
                Some(&json!({ "domains": list })),
            )?;
            let created = reply.status == 201;
            let (v, version, raw) = reply.ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "{} org {}: {}{}",
                if created { "created" } else { "updated" },
                str_of(&v["org"]),
                domain_list(&v["domains"]),
                enforced(version)
            )
            .map_err(w)
        }
        AdminCommand::Org(OrgCommand::Show { org }) => {
            let (v, _, raw) = c
                .call("GET", &format!("/v1/orgs/{}", enc(org)), None)?
                .ok()?;
            if json {
                return print_raw(out, &raw);
            }
            let rows: Vec<Vec<String>> = array(&v["domains"])
                .iter()
                .map(|d| vec![str_of(&d["name"]), opt_num(&d["id"])])
                .collect();
            if rows.is_empty() {
                writeln!(out, "org {} has no domains", str_of(&v["org"])).map_err(w)?;
            } else {
                table(out, &["DOMAIN", "ID"], &rows).map_err(w)?;
            }
            let servers = server_rows(&v["servers"]);
            if !servers.is_empty() {
                writeln!(out).map_err(w)?;
                table(out, &["SERVER", "ID"], &servers).map_err(w)?;
            }
            Ok(())
        }
        AdminCommand::Server(cmd) => server_command(c, cmd, json, out),
        AdminCommand::Org(OrgCommand::Limit { org, limit }) => {
            let path = format!("/v1/orgs/{}/rate_limit", enc(org));
            let reply = if limit.none {
                c.call("DELETE", &path, None)?
            } else {
                c.call("PUT", &path, Some(&limit.json()))?
            };
            let (v, version, raw) = reply.ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "{}: default rate limit {}{}",
                str_of(&v["org"]),
                limit_text(&v["rate_limit"]).replace("none of its own", "none"),
                enforced(version)
            )
            .map_err(w)
        }
        AdminCommand::User(UserCommand::Put {
            org,
            user,
            role,
            access,
            status,
            servers,
            no_servers,
        }) => {
            let mut body = Map::new();
            body.insert("role".into(), json!(role.as_str()));
            if !servers.is_empty() || *no_servers {
                let map: Map<String, Value> =
                    servers.iter().map(|(s, l)| (s.clone(), json!(l))).collect();
                body.insert("servers".into(), Value::Object(map));
            }
            let map: Map<String, Value> =
                access.iter().map(|(d, l)| (d.clone(), json!(l))).collect();
            if !map.is_empty() {
                body.insert("access".into(), Value::Object(map));
            }
            if let Some(s) = status {
                body.insert("status".into(), json!(s.as_str()));
            }
            let reply = c.call(
                "PUT",
                &format!("/v1/orgs/{}/users/{}", enc(org), enc(user)),
                Some(&Value::Object(body)),
            )?;
            let created = reply.status == 201;
            let (v, version, raw) = reply.ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "{} user {} in {}: {}, {}; {}{}",
                if created { "created" } else { "updated" },
                str_of(&v["user"]),
                str_of(&v["org"]),
                str_of(&v["role"]),
                str_of(&v["status"]),
                access_text(&v),
                enforced(version)
            )
            .map_err(w)
        }
        AdminCommand::User(UserCommand::List { org }) => {
            let (v, _, raw) = c
                .call("GET", &format!("/v1/orgs/{}/users", enc(org)), None)?
                .ok()?;
            if json {
                return print_raw(out, &raw);
            }
            let rows: Vec<Vec<String>> = array(&v["users"])
                .iter()
                .map(|u| {
                    vec![
                        str_of(&u["user"]),
                        str_of(&u["role"]),
                        str_of(&u["status"]),
                        access_text(u),
                    ]
                })
                .collect();
            if rows.is_empty() {
                return writeln!(out, "org {org} has no users").map_err(w);
            }
            table(out, &["USER", "ROLE", "STATUS", "ACCESS"], &rows).map_err(w)
        }
        AdminCommand::User(UserCommand::Deactivate { org, user }) => {
            let (v, version, raw) = c
                .call(
                    "POST",
                    &format!("/v1/orgs/{}/users/{}/deactivate", enc(org), enc(user)),
                    None,
                )?
                .ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "deactivated {} in {}: every key they created is refused from now on{}",
                str_of(&v["user"]),
                str_of(&v["org"]),
                enforced(version)
            )
            .map_err(w)
        }
        AdminCommand::User(UserCommand::Delete { org, user }) => {
            let (_, version, _) = c
                .call(
                    "DELETE",
                    &format!("/v1/orgs/{}/users/{}", enc(org), enc(user)),
                    None,
                )?
                .ok()?;
            if json {
                // The server answers 204 without a body; scripts still get JSON.
                let v = json!({"org": org, "user": user.to_lowercase(), "deleted": true, "version": version});
                return writeln!(out, "{v}").map_err(w);
            }
            writeln!(
                out,
                "deleted {} from {} and revoked every key they created{}",
                user.to_lowercase(),
                org,
                enforced(version)
            )
            .map_err(w)
        }
        AdminCommand::Offboard { org, user } => offboard(c, org, user, json, out),
        AdminCommand::Key(KeyCommand::Create {
            org,
            user,
            domains,
            org_wide,
            read_only,
            expires_at,
            name,
            server,
            server_access,
        }) => {
            let mut body = Map::new();
            body.insert("user".into(), json!(user));
            if let Some(s) = server {
                body.insert("server".into(), json!(s));
            }
            if let Some(a) = server_access {
                body.insert("server_access".into(), json!(a));
            }
            if !domains.is_empty() {
                body.insert("domains".into(), json!(domains));
            }
            if *org_wide {
                body.insert("org_wide".into(), json!(true));
            }
            if *read_only {
                body.insert("access".into(), json!("read"));
            }
            if let Some(e) = expires_at {
                body.insert("expires_at".into(), json!(e));
            }
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            let (v, version, raw) = c
                .call(
                    "POST",
                    &format!("/v1/orgs/{}/keys", enc(org)),
                    Some(&Value::Object(body)),
                )?
                .ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "created {} for {} in {}{}",
                str_of(&v["id"]),
                str_of(&v["user"]),
                str_of(&v["org"]),
                enforced(version)
            )
            .map_err(w)?;
            writeln!(out, "  scope:   {}", scope_text(&v)).map_err(w)?;
            if !v["server"].is_null() {
                writeln!(out, "  server:  {}", server_text(&v)).map_err(w)?;
            }
            writeln!(out, "  expires: {}", or_never(&v["expires_at"])).map_err(w)?;
            if let Some(n) = v["name"].as_str() {
                writeln!(out, "  name:    {n}").map_err(w)?;
            }
            match v["key"].as_str() {
                Some(secret) => {
                    writeln!(out, "API key (shown only this once, store it now):").map_err(w)?;
                    writeln!(out, "{secret}").map_err(w)
                }
                None => writeln!(out, "(no secret returned: the key was imported)").map_err(w),
            }
        }
        AdminCommand::Key(KeyCommand::List {
            org,
            user,
            unused_since,
        }) => {
            let mut query = Vec::new();
            if let Some(u) = user {
                query.push(format!("user={}", enc(u)));
            }
            if let Some(t) = unused_since {
                query.push(format!("unused_since={}", enc(t)));
            }
            let mut path = format!("/v1/orgs/{}/keys", enc(org));
            if !query.is_empty() {
                path.push_str(&format!("?{}", query.join("&")));
            }
            let (v, _, raw) = c.call("GET", &path, None)?.ok()?;
            if json {
                return print_raw(out, &raw);
            }
            let keys = array(&v["keys"]);
            if keys.is_empty() {
                return writeln!(out, "no keys").map_err(w);
            }
            key_table(out, keys).map_err(w)
        }
        AdminCommand::Key(KeyCommand::Show { id }) => {
            let (v, _, raw) = c
                .call("GET", &format!("/v1/keys/{}", enc(id)), None)?
                .ok()?;
            if json {
                return print_raw(out, &raw);
            }
            let rows = [
                ("id", str_of(&v["id"])),
                ("org", str_of(&v["org"])),
                ("user", str_of(&v["user"])),
                ("state", str_of(&v["state"])),
                ("scope", scope_text(&v)),
                ("server", server_text(&v)),
                ("name", v["name"].as_str().unwrap_or("-").to_string()),
                ("created", str_of(&v["created_at"])),
                ("expires", or_never(&v["expires_at"])),
                (
                    "revoked",
                    v["revoked_at"].as_str().unwrap_or("-").to_string(),
                ),
                (
                    "last used",
                    v["last_used_at"].as_str().unwrap_or("never").to_string(),
                ),
                ("requests", opt_num(&v["requests"])),
                ("limit", limit_text(&v["rate_limit"])),
            ];
            let rotated = [
                (
                    "shadow",
                    (!v["shadow"].is_null()).then(|| pairs(&v["shadow"])),
                ),
                ("rotated", v["rotated_at"].as_str().map(str::to_string)),
                ("replaced by", v["replaced_by"].as_str().map(str::to_string)),
                (
                    "grace uses",
                    v["grace_uses"].as_u64().map(|n| n.to_string()),
                ),
            ];
            let rows = rows
                .into_iter()
                .chain(rotated.into_iter().filter_map(|(k, v)| Some((k, v?))));
            for (k, val) in rows {
                writeln!(out, "{:<13}{val}", format!("{k}:")).map_err(w)?;
            }
            Ok(())
        }
        AdminCommand::Key(KeyCommand::Rotate { id, grace }) => {
            let (v, version, raw) = c
                .call(
                    "POST",
                    &format!("/v1/keys/{}/rotate", enc(id)),
                    Some(&json!({ "grace_seconds": grace })),
                )?
                .ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "rotated {} to {} for {} in {}{}",
                str_of(&v["replaces"]["id"]),
                str_of(&v["id"]),
                str_of(&v["user"]),
                str_of(&v["org"]),
                enforced(version)
            )
            .map_err(w)?;
            writeln!(out, "  scope:   {}", scope_text(&v)).map_err(w)?;
            writeln!(
                out,
                "  old key works until {}, then is refused as expired",
                str_of(&v["replaces"]["expires_at"])
            )
            .map_err(w)?;
            writeln!(out, "API key (shown only this once, store it now):").map_err(w)?;
            writeln!(out, "{}", str_of(&v["key"])).map_err(w)
        }
        AdminCommand::Key(KeyCommand::Limit { id, limit }) => {
            let body = json!({ "rate_limit": limit.json() });
            let Some((v, version)) = patch_key(c, id, body, json, out)? else {
                return Ok(());
            };
            writeln!(
                out,
                "{}: rate limit {}{}",
                str_of(&v["id"]),
                limit_text(&v["rate_limit"]),
                enforced(version)
            )
            .map_err(w)
        }
        AdminCommand::Key(KeyCommand::Shadow { id, access, none }) => {
            let shadow = if *none || access.is_empty() {
                Value::Null
            } else {
                json!(access
                    .iter()
                    .cloned()
                    .collect::<std::collections::BTreeMap<_, _>>())
            };
            let Some((v, version)) = patch_key(c, id, json!({ "shadow": shadow }), json, out)?
            else {
                return Ok(());
            };
            let text = if v["shadow"].is_null() {
                "none".to_string()
            } else {
                pairs(&v["shadow"])
            };
            writeln!(
                out,
                "{}: shadow scope {text}{}",
                str_of(&v["id"]),
                enforced(version)
            )
            .map_err(w)
        }
        AdminCommand::Key(KeyCommand::Revoke { id }) => {
            let (v, version, raw) = c
                .call("DELETE", &format!("/v1/keys/{}", enc(id)), None)?
                .ok()?;
            if json {
                return print_raw(out, &raw);
            }
            writeln!(
                out,
                "revoked {} of {} in {}{}",
                str_of(&v["id"]),
                str_of(&v["user"]),
                str_of(&v["org"]),
                enforced(version)
            )
            .map_err(w)
        }
    }
}

/// `PATCH /v1/keys/{id}`: the answer and version, or `None` once `--json`
/// printed it.
fn patch_key(
    c: &Client,
    id: &str,
    body: Value,
    json: bool,
    out: Out<'_>,
) -> Result<Option<(Value, Option<u64>)>, Failure> {
    let (v, version, raw) = c
        .call("PATCH", &format!("/v1/keys/{}", enc(id)), Some(&body))?
        .ok()?;
    if json {
        let text = String::from_utf8_lossy(&raw);
        writeln!(out, "{}", text.trim_end())
            .map_err(|e| Failure::Local(anyhow!("writing output: {e}")))?;
        return Ok(None);
    }
    Ok(Some((v, version)))
}

/// Deactivate, then show what it revoked.
fn offboard(c: &Client, org: &str, user: &str, json: bool, out: Out<'_>) -> Result<(), Failure> {
    let w = |e: std::io::Error| Failure::Local(anyhow!("writing output: {e}"));
    let keys_path = format!("/v1/orgs/{}/keys?user={}", enc(org), enc(user));
    let (users, _, _) = c
        .call("GET", &format!("/v1/orgs/{}/users", enc(org)), None)?
        .ok()?;
    let wanted = user.to_lowercase();
    let already = array(&users["users"])
        .iter()
        .find(|u| u["user"].as_str() == Some(wanted.as_str()))
        .is_some_and(|u| u["status"] == "deactivated");
    let (before, _, _) = c.call("GET", &keys_path, None)?.ok()?;
    let (d, version, _) = c
        .call(
            "POST",
            &format!("/v1/orgs/{}/users/{}/deactivate", enc(org), enc(user)),
            None,
        )?
        .ok()?;
    let (after, _, _) = c.call("GET", &keys_path, None)?.ok()?;
    let was_revoked: BTreeSet<&str> = array(&before["keys"])
        .iter()
        .filter(|k| k["state"] == "revoked")
        .filter_map(|k| k["id"].as_str())
        .collect();
    let after_keys = array(&after["keys"]);
    let revoked_now: Vec<&Value> = after_keys
        .iter()
        .filter(|k| k["state"] == "revoked")
        .filter(|k| !was_revoked.contains(k["id"].as_str().unwrap_or("")))
        .collect();
    let still_active: Vec<&str> = after_keys
        .iter()
        .filter(|k| k["state"] == "active")
        .filter_map(|k| k["id"].as_str())
        .collect();
    let user_id = d["user"].as_str().unwrap_or(&wanted).to_string();
    if json {
        let v = json!({
            "org": org,
            "user": user_id,
            "status": "deactivated",
            "already_deactivated": already,
            "version": version,
            "revoked": revoked_now.iter().filter_map(|k| k["id"].as_str()).collect::<Vec<_>>(),
            "keys": after_keys,
        });
        writeln!(out, "{v}").map_err(w)?;
    } else {
        let n = revoked_now.len();
        let others = after_keys.len() - n;
        writeln!(
            out,
            "offboarded {user_id} from {org}{}{}",
            if already {
                " (was already deactivated)"
            } else {
                ""
            },
            enforced(version)
        )
        .map_err(w)?;
        writeln!(
            out,
            "  revoked now:                 {n}\n  already revoked or expired:  {}\n  still active:                {}",
            others - still_active.len(),
            still_active.len()
        )
        .map_err(w)?;
        if !after_keys.is_empty() {
            writeln!(out).map_err(w)?;
            key_table(out, after_keys).map_err(w)?;
        }
    }
    if !still_active.is_empty() {
        return Err(Failure::Local(anyhow!(
            "{} still listed as active after deactivation: {}",
            plural(still_active.len(), "key"),
            still_active.join(", ")
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Formatting.

fn enforced(version: Option<u64>) -> String {
    version
        .map(|v| format!(" (enforced at version {v})"))
        .unwrap_or_default()
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn opt_num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), |n| n.to_string())
}

fn or_never(v: &Value) -> String {
    v.as_str().unwrap_or("never").to_string()
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn domain_list(v: &Value) -> String {
    let list: Vec<String> = array(v)
        .iter()
        .map(|d| match d["id"].as_u64() {
            Some(id) => format!("{}={id}", str_of(&d["name"])),
            None => str_of(&d["name"]),
        })
        .collect();
    if list.is_empty() {
        "no domains".into()
    } else {
        list.join(", ")
    }
}

fn pairs(v: &Value) -> String {
    let list: Vec<String> = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(d, a)| format!("{d}={}", str_of(a)))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

/// A user's access as a summary.
fn access_text(u: &Value) -> String {
    match u["role"].as_str() {
        Some("owner" | "admin") => "read_write on every domain and server".into(),
        _ => {
            let domains = match pairs(&u["access"]).as_str() {
                "-" => "no domain access".to_string(),
                s => s.to_string(),
            };
            match pairs(&u["servers"]).as_str() {
                "-" => domains,
                s => format!("{domains}; servers {s}"),
            }
        }
    }
}

/// A key's server binding: `prod (read_write)`, or `-`.
fn server_text(k: &Value) -> String {
    match k["server"].as_str() {
        Some(s) => format!("{s} ({})", str_of(&k["server_access"])),
        None => "-".into(),
    }
}

/// Servers as table rows: name, id.
fn server_rows(v: &Value) -> Vec<Vec<String>> {
    array(v)
        .iter()
        .map(|s| vec![str_of(&s["name"]), opt_num(&s["id"])])
        .collect()
}

/// `scopegate admin server …`.
fn server_command(
    c: &Client,
    cmd: &ServerCommand,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let w = |e: std::io::Error| Failure::Local(anyhow!("writing output: {e}"));
    let raw = |out: Out<'_>, raw: &[u8]| {
        writeln!(out, "{}", String::from_utf8_lossy(raw).trim_end()).map_err(w)
    };
    match cmd {
        ServerCommand::Put { org, server, id } => {
            let reply = c.call(
                "PUT",
                &format!("/v1/orgs/{}/servers/{}", enc(org), enc(server)),
                Some(&json!({ "id": id })),
            )?;
            let created = reply.status == 201;
            let (v, version, body) = reply.ok()?;
            if json {
                return raw(out, &body);
            }
            writeln!(
                out,
                "{} server {} ({}) in {}{}",
                if created { "created" } else { "updated" },
                str_of(&v["server"]),
                opt_num(&v["id"]),
                str_of(&v["org"]),
                enforced(version)
            )
            .map_err(w)
        }
        ServerCommand::Delete { org, server } => {
            let (v, version, body) = c
                .call(
                    "DELETE",
                    &format!("/v1/orgs/{}/servers/{}", enc(org), enc(server)),
                    None,
                )?
                .ok()?;
            if json {
                return raw(out, &body);
            }
            writeln!(
                out,
                "deleted server {} from {}; {} bound to it now grant nothing on it{}",
                str_of(&v["server"]),
                str_of(&v["org"]),
                plural(v["bound_keys"].as_u64().unwrap_or(0) as usize, "live key"),
                enforced(version)
            )
            .map_err(w)
        }
        ServerCommand::List { org } => {
            let (v, _, body) = c
                .call("GET", &format!("/v1/orgs/{}/servers", enc(org)), None)?
                .ok()?;
            if json {
                return raw(out, &body);
            }
            let rows = server_rows(&v["servers"]);
            if rows.is_empty() {
                return writeln!(out, "org {org} has no servers").map_err(w);
            }
            table(out, &["SERVER", "ID"], &rows).map_err(w)
        }
    }
}

/// A key's declared scope.
fn limit_text(l: &Value) -> String {
    match (l["per_second"].as_u64(), l["burst"].as_u64()) {
        (Some(p), Some(b)) => format!("{p}/s, burst {b}"),
        _ => "none of its own".into(),
    }
}

fn scope_text(k: &Value) -> String {
    match (k["org_wide"] == true, k["server"].is_null()) {
        (true, true) => "org-wide (every domain and organisation endpoints)".into(),
        // A server token is never an account token.
        (true, false) => "every domain".into(),
        (false, _) => pairs(&k["domains"]),
    }
}

fn key_table(out: Out<'_>, keys: &[Value]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                str_of(&k["id"]),
                str_of(&k["user"]),
                str_of(&k["state"]),
                match (k["org_wide"] == true, k["server"].as_str()) {
                    (true, None) => "org-wide".into(),
                    (true, Some(s)) => {
                        format!("every domain; server {s}={}", str_of(&k["server_access"]))
                    }
                    (false, None) => pairs(&k["domains"]),
                    (false, Some(s)) => format!(
                        "{}; server {s}={}",
                        pairs(&k["domains"]),
                        str_of(&k["server_access"])
                    ),
                },
                or_never(&k["expires_at"]),
                k["last_used_at"].as_str().unwrap_or("never").to_string(),
                k["name"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "ID",
            "USER",
            "STATE",
            "SCOPE",
            "EXPIRES",
            "LAST USED",
            "NAME",
        ],
        &rows,
    )
}

/// An aligned table: two spaces between columns, the last one unpadded.
fn table(out: Out<'_>, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    let h: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    line(out, &h)?;
    for r in rows {
        line(out, r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(enc("dev@example.com"), "dev@example.com");
        assert_eq!(enc("a+b c/d%"), "a%2Bb%20c%2Fd%25");
        assert_eq!(enc("é"), "%C3%A9");
    }

    #[test]
    fn urls_are_parsed() {
        let c = Client::new("http://127.0.0.1:8081/", "t".into()).unwrap();
        assert_eq!(c.authority, "127.0.0.1:8081");
        assert_eq!(c.base_path, "");
        let c = Client::new("http://127.0.0.1:9/admin/", "t".into()).unwrap();
        assert_eq!(c.base_path, "/admin");
        assert!(Client::new("https://127.0.0.1:8081", "t".into()).is_err());
        assert!(Client::new("ftp://127.0.0.1:8081", "t".into()).is_err());
    }

    #[test]
    fn flags_parse() {
        assert_eq!(
            parse_domain("a.com=12").unwrap(),
            ("a.com".into(), Some(12))
        );
        assert_eq!(parse_domain("a.com").unwrap(), ("a.com".into(), None));
        assert!(parse_domain("a.com=x").is_err());
        assert!(parse_access("a.com=read").is_ok());
        assert!(parse_access("a.com=write").is_err());
        assert!(parse_access("a.com").is_err());
    }

    #[test]
    fn replies_are_read() {
        let raw =
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-Scopegate-Version: 7\r\n\r\n{}\n";
        let r = read_reply(&mut &raw[..], false).unwrap();
        assert_eq!((r.status, r.version), (201, Some(7)));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        let r = read_reply(&mut &raw[..], false).unwrap();
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["A", "B"],
            &[vec!["long-cell".into(), "x".into()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A          B\nlong-cell  x\n"
        );
    }
}
