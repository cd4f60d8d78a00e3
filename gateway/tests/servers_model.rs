//! Property test: for random organisations (domains, servers), users
//! (Account Owner/Admin, members with per-domain access and Server Admin or
//! Viewer roles), keys (org-wide, domain-scoped, bound to a server with
//! read or read_write) and changes after the keys were made (role and
//! access changes, unassignment, deactivation, deletion, a server deleted),
//! the gateway's decision for a request — `decide_head`, then
//! `check_senders` for sends, with the default routes — equals a small
//! reference model of the seed's rules, written here from the rules alone.

use std::collections::BTreeMap;

use proptest::prelude::*;
use scopegate_config::Config;
use scopegate_gateway::decide::{check_senders, decide_head, Head, Verdict};
use scopegate_gateway::guard::Guard;
use scopegate_gateway::metrics::Metrics;
use scopegate_gateway::pingora::http::RequestHeader;
use scopegate_gateway::proxy::Ctx;
use scopegate_gateway::routing::Routing;
use scopegate_keystore::{Access, DomainInput, KeyStore, NewKey, Pepper, Role, UserInput};

const DOMAINS: [&str; 3] = ["d0.test", "d1.test", "d2.test"];
const DOMAIN_IDS: [u64; 3] = [100, 101, 102];
const SERVERS: [&str; 3] = ["s0", "s1", "s2"];
const SERVER_IDS: [u64; 3] = [10, 11, 12];
/// The other organisation's domain and server (and their ids).
const OTHER_DOMAIN: (&str, u64) = ("other.test", 900);
const OTHER_SERVER: (&str, u64) = ("s0", 90);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Read,
    Write,
}

impl Level {
    fn access(self) -> Access {
        match self {
            Level::Read => Access::Read,
            Level::Write => Access::ReadWrite,
        }
    }
    fn of(a: Access) -> Level {
        if a == Access::Read {
            Level::Read
        } else {
            Level::Write
        }
    }
}

#[derive(Clone, Debug)]
struct UserSpec {
    /// 0 owner, 1 admin, 2 member.
    role: u8,
    domains: [Option<Level>; 3],
    servers: [Option<Level>; 3],
}

#[derive(Clone, Debug)]
struct KeySpec {
    user: usize,
    org_wide: bool,
    /// Bit i: domain i explicitly; `None`: the default scope.
    domains: Option<u8>,
    read_only: bool,
    server: Option<(usize, Level)>,
}

#[derive(Clone, Debug)]
enum Change {
    SetUser(usize, UserSpec),
    Deactivate(usize),
    Delete(usize),
    DeleteServer(usize),
}

/// A domain a request names: one of the organisation's (by name or id),
/// the other organisation's, or one that exists nowhere.
#[derive(Clone, Copy, Debug)]
enum DomainSel {
    Own(usize, bool),
    Other(bool),
    Nowhere,
}

/// A server id a request names: one of the organisation's, the other
/// organisation's, or none.
#[derive(Clone, Copy, Debug)]
enum ServerSel {
    Own(usize),
    Other,
    Nowhere,
}

#[derive(Clone, Debug)]
enum Req {
    ListDomains,
    CreateDomain,
    Domain(bool, DomainSel),
    ServerApi(bool, usize),
    ServerById(ServerSel),
    EditServerById(ServerSel),
    ListSenders,
    SenderById,
    PushTemplates,
    Send(DomainSel),
    CreateSender(DomainSel),
}

fn level() -> impl Strategy<Value = Option<Level>> {
    prop_oneof![
        Just(None),
        Just(Some(Level::Read)),
        Just(Some(Level::Write))
    ]
}

fn user_spec() -> impl Strategy<Value = UserSpec> {
    (
        prop_oneof![1 => Just(0u8), 1 => Just(1u8), 3 => Just(2u8)],
        [level(), level(), level()],
        [level(), level(), level()],
    )
        .prop_map(|(role, domains, servers)| UserSpec {
            role,
            domains,
            servers,
        })
}

fn key_spec(users: usize) -> impl Strategy<Value = KeySpec> {
    (
        0..users,
        any::<bool>(),
        proptest::option::of(0u8..8),
        any::<bool>(),
        proptest::option::of((
            0usize..3,
            prop_oneof![Just(Level::Read), Just(Level::Write)],
        )),
    )
        .prop_map(|(user, org_wide, domains, read_only, server)| KeySpec {
            user,
            org_wide,
            domains,
            read_only,
            server,
        })
}

fn change(users: usize) -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (1..users, user_spec()).prop_map(|(u, s)| Change::SetUser(u, s)),
        1 => (1..users).prop_map(Change::Deactivate),
        1 => (1..users).prop_map(Change::Delete),
        1 => (0usize..3).prop_map(Change::DeleteServer),
    ]
}

fn domain_sel() -> impl Strategy<Value = DomainSel> {
    prop_oneof![
        6 => (0usize..3, any::<bool>()).prop_map(|(d, id)| DomainSel::Own(d, id)),
        1 => any::<bool>().prop_map(DomainSel::Other),
        1 => Just(DomainSel::Nowhere),
    ]
}

fn server_sel() -> impl Strategy<Value = ServerSel> {
    prop_oneof![
        6 => (0usize..3).prop_map(ServerSel::Own),
        1 => Just(ServerSel::Other),
        1 => Just(ServerSel::Nowhere),
    ]
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        1 => Just(Req::ListDomains),
        1 => Just(Req::CreateDomain),
        4 => (any::<bool>(), domain_sel()).prop_map(|(r, d)| Req::Domain(r, d)),
        4 => (any::<bool>(), 0usize..3).prop_map(|(r, p)| Req::ServerApi(r, p)),
        2 => server_sel().prop_map(Req::ServerById),
        1 => server_sel().prop_map(Req::EditServerById),
        1 => Just(Req::ListSenders),
        1 => Just(Req::SenderById),
        1 => Just(Req::PushTemplates),
        3 => domain_sel().prop_map(Req::Send),
        1 => domain_sel().prop_map(Req::CreateSender),
    ]
}

/// A user as the model sees them: role (0 owner, 1 admin, 2 member),
/// active, level per domain, level per server.
type MUser = (u8, bool, [Option<Level>; 3], [Option<Level>; 3]);

/// The reference model's view of the world.
struct Model {
    /// `None`: deleted.
    users: Vec<Option<MUser>>,
    servers: [bool; 3],
}

/// A key as made: its creator and what it declares.
struct MKey {
    secret: String,
    user: usize,
    org_wide: bool,
    declared: [Option<Level>; 3],
    server: Option<(usize, Level)>,
}

const ADMIT: (u16, &str) = (200, "");
const NOT_FOUND: (u16, &str) = (404, "not_found");
const ORG_WIDE: (u16, &str) = (403, "org_wide_key_required");
const READ_ONLY: (u16, &str) = (403, "read_only");

impl Model {
    /// The seed's rules, written from the text: what the gateway must answer.
    fn expect(&self, k: &MKey, req: &Req) -> (u16, &'static str) {
        let Some((role, true, access, servers)) = self.users[k.user] else {
            return (401, "invalid_api_key");
        };
        let account_admin = role <= 1;
        // The creator's level now, on a domain and on a server.
        let creator_domain = |d: usize| {
            if account_admin {
                Some(Level::Write)
            } else {
                access[d]
            }
        };
        let creator_server = |s: usize| {
            if !self.servers[s] {
                None
            } else if account_admin {
                Some(Level::Write)
            } else {
                servers[s]
            }
        };
        // A key never grants more than its creator could do right now.
        let domain_level = |d: usize| {
            if k.org_wide {
                creator_domain(d)
            } else {
                Some(k.declared[d]?.min(creator_domain(d)?))
            }
        };
        let server_level = k
            .server
            .and_then(|(s, a)| creator_server(s).map(|c| c.min(a)));
        // A server token is never an account token.
        let org_wide = k.org_wide && account_admin && k.server.is_none();
        let org_level = if org_wide { ADMIT } else { ORG_WIDE };
        let on_server = |need: Level| match (k.server, server_level) {
            (None, _) => (403, "server_key_required"),
            (Some(_), None) => (403, "server_not_visible"),
            (Some(_), Some(have)) if have < need => READ_ONLY,
            _ => ADMIT,
        };
        let need = |read: bool| if read { Level::Read } else { Level::Write };
        let sender = |sel: DomainSel| match sel {
            DomainSel::Own(d, _) if domain_level(d) == Some(Level::Write) => ADMIT,
            _ => (422, "sender_not_allowed"),
        };
        match *req {
            Req::ListDomains | Req::ListSenders => ADMIT,
            Req::CreateDomain | Req::SenderById | Req::PushTemplates | Req::EditServerById(_) => {
                org_level
            }
            Req::Domain(read, DomainSel::Own(d, _)) => match domain_level(d) {
                None => NOT_FOUND,
                Some(have) if have < need(read) => READ_ONLY,
                Some(_) => ADMIT,
            },
            Req::Domain(..) => NOT_FOUND,
            Req::ServerApi(read, _) => on_server(need(read)),
            Req::ServerById(_) if org_wide => ADMIT,
            Req::ServerById(ServerSel::Own(s)) if k.server.is_some_and(|(b, _)| b == s) => {
                if self.servers[s] {
                    on_server(Level::Read)
                } else {
                    ORG_WIDE
                }
            }
            Req::ServerById(_) => ORG_WIDE,
            // A send through a server token needs write on the server too.
            Req::Send(sel) => match k.server {
                Some(_) if on_server(Level::Write) != ADMIT => on_server(Level::Write),
                _ => sender(sel),
            },
            // Creating a sender signature: by the FromEmail domain, like a
            // send (and, for a server token, write on its server).
            Req::CreateSender(sel) => match k.server {
                Some(_) if on_server(Level::Write) != ADMIT => on_server(Level::Write),
                _ => sender(sel),
            },
        }
    }
}

fn domain_segment(sel: DomainSel) -> String {
    match sel {
        DomainSel::Own(d, false) => DOMAINS[d].to_string(),
        DomainSel::Own(d, true) => DOMAIN_IDS[d].to_string(),
        DomainSel::Other(false) => OTHER_DOMAIN.0.to_string(),
        DomainSel::Other(true) => OTHER_DOMAIN.1.to_string(),
        DomainSel::Nowhere => "nowhere.test".to_string(),
    }
}

fn from_address(sel: DomainSel) -> String {
    match sel {
        DomainSel::Own(d, _) => format!("x@{}", DOMAINS[d]),
        DomainSel::Other(_) => format!("x@{}", OTHER_DOMAIN.0),
        DomainSel::Nowhere => "x@nowhere.test".to_string(),
    }
}

fn server_segment(sel: ServerSel) -> u64 {
    match sel {
        ServerSel::Own(s) => SERVER_IDS[s],
        ServerSel::Other => OTHER_SERVER.1,
        ServerSel::Nowhere => 999,
    }
}

/// The request as a client sends it, and a body for body-checked routes.
fn request(req: &Req) -> (&'static str, String, Option<String>) {
    let m = |read: bool| if read { "GET" } else { "PUT" };
    match *req {
        Req::ListDomains => ("GET", "/domains".into(), None),
        Req::CreateDomain => ("POST", "/domains".into(), None),
        Req::Domain(read, sel) => (m(read), format!("/domains/{}", domain_segment(sel)), None),
        Req::ServerApi(read, p) => {
            let path = ["/server", "/messages/outbound", "/templates/welcome"][p];
            (m(read), path.into(), None)
        }
        Req::ServerById(sel) => ("GET", format!("/servers/{}", server_segment(sel)), None),
        Req::EditServerById(sel) => ("PUT", format!("/servers/{}", server_segment(sel)), None),
        Req::ListSenders => ("GET", "/senders".into(), None),
        Req::SenderById => ("GET", "/senders/5".into(), None),
        Req::PushTemplates => ("PUT", "/templates/push".into(), None),
        Req::Send(sel) => {
            let body = serde_json::json!({"From": from_address(sel), "To": "r@x.test"});
            ("POST", "/email".into(), Some(body.to_string()))
        }
        Req::CreateSender(sel) => {
            let body = serde_json::json!({"FromEmail": from_address(sel), "Name": "n"});
            ("POST", "/senders".into(), Some(body.to_string()))
        }
    }
}

/// What the gateway decided: admitted, or the refusal's status and code.
fn gateway(
    ks: &KeyStore,
    routing: &Routing,
    metrics: &Metrics,
    secret: &str,
    req: &Req,
) -> (u16, String) {
    let (method, path, body) = request(req);
    let mut head = RequestHeader::build(method, path.as_bytes(), None).unwrap();
    head.insert_header("X-Postmark-Server-Token", secret)
        .unwrap();
    let mut ctx = Ctx::new();
    let refused = |r: &scopegate_gateway::respond::Reply| (r.status(), r.code().to_string());
    match decide_head(ks, &Guard::new(), metrics, routing, &head, &mut ctx) {
        Head::Forward => (200, String::new()),
        Head::Refuse(reply, ..) => refused(&reply),
        Head::NeedBody { key, spec, .. } => {
            let body = body.expect("a body-checked route");
            match check_senders(ks, metrics, &mut ctx, &key, body.as_bytes(), &spec) {
                Ok(()) => (200, String::new()),
                Err(Verdict::Refuse(reply, ..)) => refused(&reply),
                Err(_) => panic!("check_senders answers or refuses"),
            }
        }
    }
}

fn role(r: u8) -> Role {
    [Role::Owner, Role::Admin, Role::Member][r as usize]
}

fn maps(spec: &UserSpec) -> (BTreeMap<String, Access>, BTreeMap<String, Access>) {
    let pick = |names: &[&str; 3], levels: &[Option<Level>; 3]| {
        names
            .iter()
            .zip(levels)
            .filter_map(|(n, l)| l.map(|l| (n.to_string(), l.access())))
            .collect()
    };
    if spec.role <= 1 {
        return (BTreeMap::new(), BTreeMap::new());
    }
    (pick(&DOMAINS, &spec.domains), pick(&SERVERS, &spec.servers))
}

fn put_user(ks: &KeyStore, model: &mut Model, u: usize, spec: &UserSpec) {
    let (access, servers) = maps(spec);
    let input = UserInput {
        role: role(spec.role),
        access,
        status: None,
    };
    let id = format!("u{u}@acme.test");
    if ks
        .put_user_with_servers("t", "acme", &id, input, Some(servers))
        .is_ok()
    {
        let (role, domains, servers) = if spec.role <= 1 {
            (spec.role, [None; 3], [None; 3])
        } else {
            (2, spec.domains, spec.servers)
        };
        let active = model.users[u].as_ref().is_none_or(|x| x.1);
        model.users[u] = Some((role, active, domains, servers));
    }
}

fn run(users: Vec<UserSpec>, keys: Vec<KeySpec>, changes: Vec<Change>, reqs: Vec<(usize, Req)>) {
    let ks = KeyStore::in_memory(Pepper::new(b"servers-model-pepper-0123456789"));
    let domains: Vec<DomainInput> = DOMAINS
        .iter()
        .zip(DOMAIN_IDS)
        .map(|(n, id)| DomainInput {
            name: n.to_string(),
            id: Some(id),
        })
        .collect();
    ks.put_org("t", "acme", &domains).unwrap();
    for (s, id) in SERVERS.iter().zip(SERVER_IDS) {
        ks.put_server("t", "acme", s, id).unwrap();
    }
    let other = [DomainInput {
        name: OTHER_DOMAIN.0.into(),
        id: Some(OTHER_DOMAIN.1),
    }];
    ks.put_org("t", "other", &other).unwrap();
    ks.put_server("t", "other", OTHER_SERVER.0, OTHER_SERVER.1)
        .unwrap();

    let mut model = Model {
        users: vec![None; users.len() + 1],
        servers: [true; 3],
    };
    // u0 is the owner who always remains.
    let owner = UserSpec {
        role: 0,
        domains: [None; 3],
        servers: [None; 3],
    };
    put_user(&ks, &mut model, 0, &owner);
    for (i, spec) in users.iter().enumerate() {
        put_user(&ks, &mut model, i + 1, spec);
    }
    let now = scopegate_keystore::time::now();
    let mut made = Vec::new();
    for k in &keys {
        let user = k.user % model.users.len();
        let new = NewKey {
            user: format!("u{user}@acme.test"),
            org_wide: k.org_wide,
            domains: k.domains.map(|bits| {
                (0..3)
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| DOMAINS[i].to_string())
                    .collect()
            }),
            access: k.read_only.then_some(Access::Read),
            server: k.server.map(|(s, _)| SERVERS[s].to_string()),
            server_access: k.server.map(|(_, l)| l.access()),
            ..NewKey::default()
        };
        let Ok(created) = ks.create_key("t", "acme", new, now) else {
            continue;
        };
        let meta = created.value.meta;
        let mut declared = [None; 3];
        for (d, a) in &meta.domains {
            let i = DOMAINS.iter().position(|x| x == d).expect("an acme domain");
            declared[i] = Some(Level::of(*a));
        }
        let server = meta.server.as_ref().map(|s| {
            let i = SERVERS.iter().position(|x| x == s).expect("an acme server");
            (
                i,
                Level::of(meta.server_access.unwrap_or(Access::ReadWrite)),
            )
        });
        assert_eq!(server.is_some(), k.server.is_some());
        made.push(MKey {
            secret: created.value.secret,
            user,
            org_wide: meta.org_wide,
            declared,
            server,
        });
    }
    // Changes name users 1..; never the owner who must remain.
    let others = model.users.len() - 1;
    for c in &changes {
        let pick = |u: &usize| 1 + (u - 1) % others;
        let c = match c {
            Change::SetUser(u, spec) => Change::SetUser(pick(u), spec.clone()),
            Change::Deactivate(u) => Change::Deactivate(pick(u)),
            Change::Delete(u) => Change::Delete(pick(u)),
            Change::DeleteServer(s) => Change::DeleteServer(*s),
        };
        match &c {
            Change::SetUser(u, spec) if model.users[*u].is_some() => {
                put_user(&ks, &mut model, *u, spec)
            }
            Change::SetUser(..) => {}
            Change::Deactivate(u) => {
                if ks
                    .deactivate_user("t", "acme", &format!("u{u}@acme.test"))
                    .is_ok()
                {
                    if let Some(x) = model.users[*u].as_mut() {
                        x.1 = false;
                    }
                }
            }
            Change::Delete(u) => {
                if ks
                    .delete_user("t", "acme", &format!("u{u}@acme.test"))
                    .is_ok()
                {
                    model.users[*u] = None;
                }
            }
            Change::DeleteServer(s) => {
                if ks.delete_server("t", "acme", SERVERS[*s]).is_ok() {
                    model.servers[*s] = false;
                }
            }
        }
    }
    let metrics = Metrics::new();
    let routing = Routing::build(Config::default(), &metrics).unwrap();
    for (k, req) in &reqs {
        let Some(key) = made.get(k % made.len().max(1)) else {
            break;
        };
        let want = model.expect(key, req);
        let got = gateway(&ks, &routing, &metrics, &key.secret, req);
        assert_eq!(
            (got.0, got.1.as_str()),
            want,
            "{req:?} {:?} with key of u{} (org_wide {}, declared {:?}, server {:?}); user now {:?}; servers {:?}",
            request(req),
            key.user,
            key.org_wide,
            key.declared,
            key.server,
            model.users[key.user],
            model.servers,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_gateways_decision_equals_the_reference_model(
        users in proptest::collection::vec(user_spec(), 1..5),
        keys in proptest::collection::vec(key_spec(6), 1..10),
        changes in proptest::collection::vec(change(5), 0..4),
        reqs in proptest::collection::vec((0usize..10, req()), 1..30),
    ) {
        run(users, keys, changes, reqs);
    }
}
