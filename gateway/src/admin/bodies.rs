//! What the admin API accepts: the JSON bodies of its calls, parsed
//! strictly (an unknown field is an error, not ignored).

use std::collections::BTreeMap;

use scopegate_keystore::{Access, RateLimit, Role, Status};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrgBody {
    pub(crate) domains: Vec<DomainSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum DomainSpec {
    Name(String),
    Full(DomainFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainFull {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    pub(crate) role: Role,
    #[serde(default)]
    pub(crate) access: BTreeMap<String, Access>,
    #[serde(default)]
    pub(crate) status: Option<Status>,
    /// Member access to servers; absent keeps the current map.
    #[serde(default)]
    pub(crate) servers: Option<BTreeMap<String, Access>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyBody {
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) domains: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) org_wide: bool,
    #[serde(default)]
    pub(crate) access: Option<Access>,
    #[serde(default)]
    pub(crate) expires_at: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// An existing secret to import instead of generating one.
    #[serde(default)]
    pub(crate) secret: Option<String>,
    #[serde(default)]
    pub(crate) rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub(crate) shadow: Option<BTreeMap<String, Access>>,
    /// Bind the key to this server of the organisation.
    #[serde(default)]
    pub(crate) server: Option<String>,
    /// The level the key grants on its server.
    #[serde(default)]
    pub(crate) server_access: Option<Access>,
}

/// `PUT /v1/orgs/{org}/servers/{server}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerBody {
    /// The platform's numeric id of the server.
    pub(crate) id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    pub(crate) grace_seconds: u32,
}

/// `PATCH /v1/keys/{id}`: a field that is absent stays as it is; `null`
/// removes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    pub(crate) rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) shadow: Option<Option<BTreeMap<String, Access>>>,
}

/// A field that is present, `null` or not: `Some(value)`.
pub(crate) fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}
