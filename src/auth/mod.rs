//! Authentication: static API tokens (stored as SHA-256 hashes) and JWTs,
//! each mapped to a principal and roles. No I/O here; keys and hashes come
//! from the configuration.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The principal of every request when authentication is off.
pub const ANONYMOUS: &str = "anonymous";

/// The authenticated identity of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<String>,
    /// `false` only when authentication is off.
    pub authenticated: bool,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self { name: ANONYMOUS.to_owned(), roles: Vec::new(), authenticated: false }
    }

    /// `true` when `allowed` (a role list from the configuration, where
    /// `"*"` is any authenticated principal) admits this principal. `None`
    /// admits every authenticated principal.
    pub fn has_any_role(&self, allowed: Option<&[String]>) -> bool {
        match allowed {
            None => true,
            Some(roles) => roles.iter().any(|role| role == "*" || self.roles.contains(role)),
        }
    }
}

/// A configured static API token.
#[derive(Debug, Clone)]
pub struct StaticToken {
    pub principal: String,
    pub sha256: [u8; 32],
    pub roles: Vec<String>,
}

/// The JWT checks of `[auth.jwt]`.
#[derive(Clone)]
pub struct JwtSettings {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub principal_claim: String,
    pub roles_claim: String,
    pub leeway_seconds: u64,
}

/// An authentication failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the Authorization header is not \"Bearer <token>\"")]
    Malformed,
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

/// Checks bearer tokens against the configured static tokens and JWT key.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Vec<StaticToken>,
    jwt: Option<JwtSettings>,
}

/// Shows how authentication is set up, never a hash or a key.
impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("jwt_algorithm", &self.jwt_algorithm())
            .finish()
    }
}

impl Authenticator {
    pub fn new(tokens: Vec<StaticToken>, jwt: Option<JwtSettings>) -> Self {
        Self { tokens, jwt }
    }

    /// `true` when any token or JWT key is configured.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    pub fn jwt_algorithm(&self) -> Option<Algorithm> {
        self.jwt.as_ref().map(|jwt| jwt.algorithm)
    }

    /// Authenticates the value of an `Authorization` header.
    ///
    /// # Errors
    ///
    /// [`AuthError`] saying what is wrong, for the log and for the
    /// `WWW-Authenticate` header; never the token itself.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }

        if let Some(principal) = self.match_static(token) {
            return Ok(principal);
        }
        match &self.jwt {
            Some(jwt) if token.split('.').count() == 3 => verify_jwt(jwt, token),
            _ => Err(AuthError::InvalidToken("unknown token".to_owned())),
        }
    }

    /// Compares the token's hash with every configured hash, in constant
    /// time, so that timing does not reveal how much of a hash matched.
    fn match_static(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for configured in &self.tokens {
            if bool::from(configured.sha256.ct_eq(&digest)) && found.is_none() {
                found = Some(configured);
            }
        }
        found.map(|token| Principal { name: token.principal.clone(), roles: token.roles.clone(), authenticated: true })
    }
}

fn verify_jwt(jwt: &JwtSettings, token: &str) -> Result<Principal, AuthError> {
    // Only the configured algorithm is accepted, which rejects `none` and
    // any attempt to verify an RS256 key as an HS256 secret.
    let mut validation = Validation::new(jwt.algorithm);
    validation.leeway = jwt.leeway_seconds;
    validation.validate_nbf = true;
    // A configured issuer or audience must be present in the token, not
    // only match when present.
    let mut required = vec!["exp"];
    if jwt.issuer.is_some() {
        required.push("iss");
    }
    if jwt.audience.is_some() {
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    match &jwt.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &jwt.issuer {
        validation.set_issuer(&[issuer]);
    }

    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &jwt.key, &validation)
        .map_err(|error| AuthError::InvalidToken(jwt_reason(error.kind())))?;
    let claims = data.claims;

    let name = claims
        .get(&jwt.principal_claim)
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| AuthError::InvalidToken(format!("the {:?} claim is missing or not a string", jwt.principal_claim)))?;
    let roles = match claims.get(&jwt.roles_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(_) => return Err(AuthError::InvalidToken(format!("the {:?} claim is not a list of roles", jwt.roles_claim))),
    };
    let roles: Vec<String> = roles.into_iter().collect::<HashSet<_>>().into_iter().collect();
    Ok(Principal { name: name.to_owned(), roles, authenticated: true })
}

fn jwt_reason(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidAudience => "wrong audience".to_owned(),
        ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
        ErrorKind::InvalidSignature => "bad signature".to_owned(),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the {claim:?} claim is missing"),
        _ => "malformed token".to_owned(),
    }
}

/// Returns the SHA-256 of a token as lowercase hex, as `[[auth.tokens]]`
/// stores it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&Sha256::digest(b"secret-token"));
        Authenticator::new(vec![StaticToken { principal: "alice".into(), sha256, roles: vec!["editor".into()] }], None)
    }

    #[test]
    fn static_token_authenticates() {
        let principal = authenticator().authenticate(Some("Bearer secret-token")).unwrap();
        assert_eq!(principal.name, "alice");
        assert_eq!(principal.roles, vec!["editor"]);
        assert!(principal.authenticated);
    }

    #[test]
    fn bad_headers_are_rejected() {
        let auth = authenticator();
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some("secret-token")), Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(Some("Basic secret-token")), Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(Some("Bearer ")), Err(AuthError::Malformed));
        assert!(matches!(auth.authenticate(Some("Bearer other")), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn roles_admit_principals() {
        let viewer = Principal { name: "v".into(), roles: vec!["viewer".into()], authenticated: true };
        assert!(viewer.has_any_role(None));
        assert!(viewer.has_any_role(Some(&["*".to_owned()])));
        assert!(viewer.has_any_role(Some(&["viewer".to_owned(), "editor".to_owned()])));
        assert!(!viewer.has_any_role(Some(&["editor".to_owned()])));
    }

    #[test]
    fn token_hash_is_hex_sha256() {
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
