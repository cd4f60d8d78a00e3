//! What each request asks for: the key categories, the `--mix` that
//! weighs them, and the seeded generator that picks them.

use scopegate_keystore::secret;

/// The default `--mix`.
pub const DEFAULT_MIX: &str = "valid=70,revoked=10,expired=5,out_of_scope=10,malformed=5";

/// What a request's key is, and so what the gateway must do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// Live and in scope: admitted (until revoked during the run).
    Valid = 0,
    /// Revoked before the run, directly or by offboarding its creator: 401.
    Revoked = 1,
    /// Expired before the run: 401.
    Expired = 2,
    /// Live, used on a domain outside its scope: 404.
    OutOfScope = 3,
    /// A checksum-broken `sg_` string: 401 without hashing.
    Malformed = 4,
    /// Well-formed but never issued: 401 after the lookup.
    Unknown = 5,
}

/// Every category, in report order.
pub const CATEGORIES: [Category; 6] = [
    Category::Valid,
    Category::Revoked,
    Category::Expired,
    Category::OutOfScope,
    Category::Malformed,
    Category::Unknown,
];

impl Category {
    /// The name used in `--mix`, the report and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Category::Valid => "valid",
            Category::Revoked => "revoked",
            Category::Expired => "expired",
            Category::OutOfScope => "out_of_scope",
            Category::Malformed => "malformed",
            Category::Unknown => "unknown",
        }
    }

    /// The status the gateway must answer a request of this category with
    /// when it refuses it.
    pub fn refusal_status(self) -> u16 {
        match self {
            Category::OutOfScope => 404,
            _ => 401,
        }
    }

    pub(super) fn from_name(s: &str) -> Option<Category> {
        CATEGORIES.iter().copied().find(|c| c.name() == s)
    }
}

/// Percent of requests per category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix(pub [u32; 6]);

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut m = [0u32; 6];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, pct) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected CATEGORY=PERCENT"))?;
            let c = Category::from_name(name.trim()).ok_or_else(|| {
                format!(
                    "unknown category {name:?}; known: {}",
                    CATEGORIES.map(Category::name).join(", ")
                )
            })?;
            m[c as usize] = pct
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the percent must be a whole number"))?;
        }
        let sum: u32 = m.iter().sum();
        if sum != 100 {
            return Err(format!("the mix adds up to {sum}%, not 100%"));
        }
        Ok(Mix(m))
    }
}

impl Mix {
    /// The category for a uniform number in 0..100.
    pub(super) fn pick(&self, r: u32) -> Category {
        let mut acc = 0;
        for c in CATEGORIES {
            acc += self.0[c as usize];
            if r < acc {
                return c;
            }
        }
        Category::Valid
    }
}

// ---------------------------------------------------------------------------
// A small, fast, seedable random generator (SplitMix64)

#[derive(Clone)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub(super) fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

pub(super) fn random_seed() -> u64 {
    let h = blake3::hash(secret::generate().as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks() {
        let m: Mix = DEFAULT_MIX.parse().unwrap();
        assert_eq!(m.0, [70, 10, 5, 10, 5, 0]);
        assert_eq!(m.pick(0), Category::Valid);
        assert_eq!(m.pick(69), Category::Valid);
        assert_eq!(m.pick(70), Category::Revoked);
        assert_eq!(m.pick(99), Category::Malformed);
        assert!("valid=50".parse::<Mix>().is_err());
        assert!("valid=50,bogus=50".parse::<Mix>().is_err());
        assert!("valid=90,unknown=10".parse::<Mix>().is_ok());
    }
}
