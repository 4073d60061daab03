//! Bearer tokens, roles and the shops a token may use.
//!
//! - **Roles.** `admin` may do everything (including creating shops), `operator` may send
//!   commands and read, `auditor` may only read: queries, histories, the ledger and events.
//! - **Shops.** A token names the shops it may use, or all of them (the default: a token
//!   configured without shops, as every token was before tokens had shops, may use every
//!   shop). A request on a shop the token may not use is 403 `forbidden` whether or not
//!   the shop exists, so a token learns nothing of other tenants' shops; `GET /v1/shops`
//!   lists only the shops the token may use; routes that span shops (`/metrics`) need a
//!   token for all shops; only an admin token creates shops, and only shops it may use.
//! - **Tokens** come from a file (one `role name token [shops=a,b]` per line, `#` comments)
//!   or from `EMPORIUM_TOKENS` (`role:name:token[:shops=a+b]` entries separated by commas,
//!   the shops there separated by `+` since commas separate entries; `+` is also accepted in
//!   the file). `shops=*` is every shop. A token is at least 16 characters; the name is what
//!   the log records as the actor.
//! - **Secrecy.** Tokens are compared in constant time against every configured token, and
//!   never logged or shown: errors name the line, never the token.
//! - **No tokens** means no authentication: the server then only listens on loopback.

use axum::http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::domain::ids::ShopId;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Queries only.
    Auditor,
    /// Commands and queries.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any role.
    Read,
    /// Operator or admin.
    Command,
    /// Admin only.
    Admin,
}

impl Access {
    fn allows(self, role: Role) -> bool {
        match self {
            Access::Read => true,
            Access::Command => role >= Role::Operator,
            Access::Admin => role == Role::Admin,
        }
    }
}

/// The shops a token may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shops {
    /// Every shop, present and future: the default.
    All,
    /// Only these.
    Only(std::collections::BTreeSet<ShopId>),
}

impl Shops {
    /// Whether `shop` is one of them.
    pub fn allows(&self, shop: &ShopId) -> bool {
        match self {
            Shops::All => true,
            Shops::Only(shops) => shops.contains(shop),
        }
    }

    /// Reads `shops=*` or `shops=a,b` (`+` separates too).
    fn parse(field: &str) -> Option<Shops> {
        let list = field.strip_prefix("shops=")?;
        if list == "*" {
            return Some(Shops::All);
        }
        let shops: Option<std::collections::BTreeSet<ShopId>> =
            list.split([',', '+']).map(|shop| ShopId::new(shop).ok()).collect();
        shops.filter(|shops| !shops.is_empty()).map(Shops::Only)
    }
}

/// Most shops one token names.
pub const TOKEN_SHOPS_MAX: usize = 1_000;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, recorded as the actor.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The shops it may use.
    pub shops: Shops,
}

impl Principal {
    /// Checks that the caller may use `shop`: 403 `forbidden` when not, whether or not the
    /// shop exists.
    pub fn may_use(&self, shop: &ShopId) -> Result<(), ApiError> {
        if self.shops.allows(shop) {
            return Ok(());
        }
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("This token may not use shop {shop}."))
            .with_details(serde_json::json!({"shop": shop.as_str()})))
    }

    /// Checks that the caller may use every shop, for a route that spans them.
    pub fn may_use_all(&self) -> Result<(), ApiError> {
        match self.shops {
            Shops::All => Ok(()),
            Shops::Only(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "This route spans every shop; this token may use only some.",
            )),
        }
    }
}

struct Token {
    secret: Vec<u8>,
    principal: Principal,
}

/// The configured tokens.
#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|t| t.principal.name.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish_non_exhaustive()
    }
}

/// Shortest token, in characters.
pub const TOKEN_LENGTH_MIN: usize = 16;

/// Most tokens.
pub const TOKENS_MAX: usize = 10_000;

impl Tokens {
    /// No tokens: no authentication.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Reads `role name token [shops=a,b]` lines.
    pub fn parse_file(text: &str) -> Result<Tokens, String> {
        let entries = text.lines().enumerate().filter_map(|(index, line)| {
            let line = line.trim();
            (!line.is_empty() && !line.starts_with('#')).then(|| (index + 1, line.split_whitespace().collect()))
        });
        Tokens::from_entries(entries, "line")
    }

    /// Reads `role:name:token[:shops=a+b]` entries separated by commas. A token may hold
    /// `:` (as before shops were added): only a last part beginning `shops=` names shops.
    pub fn parse_env(text: &str) -> Result<Tokens, String> {
        let entries =
            text.split(',').map(str::trim).filter(|entry| !entry.is_empty()).enumerate().map(|(index, entry)| {
                let (rest, shops) = match entry.rsplit_once(':') {
                    Some((rest, shops)) if shops.starts_with("shops=") => (rest, Some(shops)),
                    _ => (entry, None),
                };
                let mut fields: Vec<&str> = rest.splitn(3, ':').collect();
                fields.extend(shops);
                (index + 1, fields)
            });
        Tokens::from_entries(entries, "entry")
    }

    fn from_entries<'a>(entries: impl Iterator<Item = (usize, Vec<&'a str>)>, unit: &str) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for (number, fields) in entries {
            let (role, name, secret, shops) = match fields.as_slice() {
                [role, name, secret] => (role, name, secret, Shops::All),
                [role, name, secret, shops] => {
                    let shops = Shops::parse(shops).filter(|shops| match shops {
                        Shops::All => true,
                        Shops::Only(shops) => shops.len() <= TOKEN_SHOPS_MAX,
                    });
                    let Some(shops) = shops else {
                        return Err(format!(
                            "token {unit} {number}: the fourth field must be shops=* or shops= and 1 to \
                             {TOKEN_SHOPS_MAX} shop ids separated by ',' or '+'"
                        ));
                    };
                    (role, name, secret, shops)
                }
                _ => {
                    return Err(format!(
                        "token {unit} {number}: expected a role, a name, a token and optionally shops=..."
                    ));
                }
            };
            let role = Role::parse(role)
                .ok_or_else(|| format!("token {unit} {number}: the role must be admin, operator or auditor"))?;
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !name_ok {
                return Err(format!("token {unit} {number}: the name must be 1 to 64 letters, digits, '.', '_', '-'"));
            }
            let secret_ok = secret.len() >= TOKEN_LENGTH_MIN && secret.chars().all(|c| c.is_ascii_graphic());
            if !secret_ok {
                return Err(format!(
                    "token {unit} {number}: the token must be at least {TOKEN_LENGTH_MIN} printable characters"
                ));
            }
            if tokens.tokens.len() >= TOKENS_MAX {
                return Err(format!("at most {TOKENS_MAX} tokens"));
            }
            tokens.tokens.push(Token {
                secret: secret.as_bytes().to_vec(),
                principal: Principal { name: (*name).to_owned(), role, shops },
            });
        }
        Ok(tokens)
    }

    /// Finds the caller of a request and checks that it may do `access`.
    pub fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<Principal, ApiError> {
        if self.tokens.is_empty() {
            return Ok(Principal { name: "anonymous".to_owned(), role: Role::Admin, shops: Shops::All });
        }
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("This request needs an Authorization: Bearer <token> header."));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or_else(|| unauthorized("The Authorization header must be Bearer <token>."))?;
        // Compare with every token, so the time taken does not tell which one nearly matched.
        let mut found: Option<&Principal> = None;
        for token in &self.tokens {
            if bool::from(token.secret.as_slice().ct_eq(presented)) {
                found = Some(&token.principal);
            }
        }
        let principal = found.ok_or_else(|| unauthorized("The token is not valid."))?;
        if !access.allows(principal.role) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("The {} role may not do this.", principal.role.name()),
            )
            .with_details(serde_json::json!({"role": principal.role.name()})));
        }
        Ok(principal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        headers
    }

    #[test]
    fn roles_decide_what_a_token_may_do() {
        let tokens = Tokens::parse_file(
            "# staff\nadmin root 0123456789abcdef0\noperator shop-1 operator-secret-123\n\
             auditor books auditor-secret-1234\n",
        )
        .expect("parses");
        let check = |token: &str, access: Access, expected: Result<&str, u16>| {
            let got = tokens.authorize(&headers(token), access).map(|p| p.name).map_err(|e| e.status.as_u16());
            assert_eq!(got, expected.map(str::to_owned), "{token} {access:?}");
        };
        check("0123456789abcdef0", Access::Admin, Ok("root"));
        check("operator-secret-123", Access::Command, Ok("shop-1"));
        check("operator-secret-123", Access::Admin, Err(403));
        check("auditor-secret-1234", Access::Read, Ok("books"));
        check("auditor-secret-1234", Access::Command, Err(403));
        check("auditor-secret-123", Access::Read, Err(401));
        check("", Access::Read, Err(401));
        assert_eq!(tokens.authorize(&HeaderMap::new(), Access::Read).map_err(|e| e.status.as_u16()), Err(401));
    }

    #[test]
    fn bad_token_configuration_is_refused_without_showing_the_token() {
        for (text, part) in [
            ("admin root", "expected a role, a name, a token"),
            ("admin root 0123456789abcdef0 shops=", "the fourth field"),
            ("admin root 0123456789abcdef0 shops=Main", "the fourth field"),
            ("admin root 0123456789abcdef0 main", "the fourth field"),
            ("admin root 0123456789abcdef0 shops=a extra", "expected a role"),
            ("boss root 0123456789abcdef0", "the role must be"),
            ("admin ro/ot 0123456789abcdef0", "the name must be"),
            ("admin root short", "at least 16"),
        ] {
            let error = Tokens::parse_file(text).expect_err(text);
            assert!(error.contains(part) && !error.contains("0123456789abcdef0"), "{error}");
        }
        let env = Tokens::parse_env("admin:root:0123456789abcdef0, auditor:books:auditor-secret-1234").expect("env");
        assert_eq!(env.authorize(&headers("auditor-secret-1234"), Access::Read).map(|p| p.role), Ok(Role::Auditor));
    }

    #[test]
    fn a_token_names_its_shops_or_all() {
        let shops = |names: &[&str]| Shops::Only(names.iter().map(|n| ShopId::new(n).expect("shop id")).collect());
        let file = Tokens::parse_file(
            "operator acme acme-secret-123456 shops=acme,acme-outlet\nauditor all auditor-secret-1234 shops=*\n\
             admin root 0123456789abcdef0\n",
        )
        .expect("parses");
        let scope = |tokens: &Tokens, token: &str| tokens.authorize(&headers(token), Access::Read).map(|p| p.shops);
        assert_eq!(scope(&file, "acme-secret-123456"), Ok(shops(&["acme", "acme-outlet"])));
        assert_eq!(scope(&file, "auditor-secret-1234"), Ok(Shops::All));
        assert_eq!(scope(&file, "0123456789abcdef0"), Ok(Shops::All), "no field: every shop");
        let env = Tokens::parse_env("operator:acme:acme:secret-123456:shops=acme+beta, admin:root:0123456789:abcdef0")
            .expect("env");
        assert_eq!(scope(&env, "acme:secret-123456"), Ok(shops(&["acme", "beta"])), "a token may hold ':'");
        assert_eq!(scope(&env, "0123456789:abcdef0"), Ok(Shops::All));
        let acme = file.authorize(&headers("acme-secret-123456"), Access::Command).expect("operator");
        assert!(acme.may_use(&ShopId::new("acme").expect("id")).is_ok());
        let other = acme.may_use(&ShopId::new("beta").expect("id")).expect_err("another shop");
        assert_eq!((other.status.as_u16(), other.code), (403, "forbidden"));
        assert_eq!(acme.may_use_all().map_err(|e| e.status.as_u16()), Err(403));
    }
}
