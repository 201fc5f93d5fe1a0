//! The `[auth]` section: static tokens and the JWT key.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::ConfigError;
use crate::auth::{Authenticator, JwtSettings, StaticToken};

/// Default tolerance for clock differences in `exp` and `nbf`.
const DEFAULT_LEEWAY_SECONDS: u64 = 30;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    #[serde(default)]
    tokens: Vec<TokenFile>,
    jwt: Option<JwtFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    principal: String,
    sha256: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    hs256_secret: Option<String>,
    /// A PEM public key; RS256 for an RSA key, ES256 for a P-256 key.
    public_key_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    principal_claim: Option<String>,
    roles_claim: Option<String>,
    leeway_seconds: Option<u64>,
}

/// Builds the authenticator. `base_dir` resolves `public_key_file`.
pub fn build(file: AuthFile, base_dir: &Path) -> Result<Authenticator, ConfigError> {
    let mut tokens = Vec::new();
    for (index, token) in file.tokens.into_iter().enumerate() {
        let key = format!("auth.tokens[{index}]");
        if token.principal.is_empty() {
            return Err(ConfigError::Invalid { key: format!("{key}.principal"), message: "must not be empty".to_owned() });
        }
        let digest = hex::decode(token.sha256.trim()).ok().filter(|bytes| bytes.len() == 32).ok_or_else(|| ConfigError::Invalid {
            key: format!("{key}.sha256"),
            message: "must be the SHA-256 of the token as 64 hex digits, such as the output of `printf %s TOKEN | sha256sum`".to_owned(),
        })?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&digest);
        tokens.push(StaticToken { principal: token.principal, sha256, roles: token.roles });
    }

    let jwt = match file.jwt {
        None => None,
        Some(jwt) => Some(build_jwt(jwt, base_dir)?),
    };
    Ok(Authenticator::new(tokens, jwt))
}

fn build_jwt(file: JwtFile, base_dir: &Path) -> Result<JwtSettings, ConfigError> {
    let (key, algorithm) = match (file.hs256_secret, file.public_key_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid { key: "auth.jwt".to_owned(), message: "set either hs256_secret or public_key_file, not both".to_owned() });
        }
        (None, None) => {
            return Err(ConfigError::Invalid { key: "auth.jwt".to_owned(), message: "set hs256_secret or public_key_file".to_owned() });
        }
        (Some(secret), None) => {
            if secret.len() < 32 {
                return Err(ConfigError::Invalid {
                    key: "auth.jwt.hs256_secret".to_owned(),
                    message: "must be at least 32 bytes long".to_owned(),
                });
            }
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|error| ConfigError::Invalid { key: "auth.jwt.hs256_secret".to_owned(), message: error.to_string() })?;
            (key, Algorithm::HS256)
        }
        (None, Some(relative)) => {
            let path = base_dir.join(&relative);
            let pem = std::fs::read(&path).map_err(|error| ConfigError::Invalid {
                key: "auth.jwt.public_key_file".to_owned(),
                message: format!("cannot read {}: {error}", path.display()),
            })?;
            match (DecodingKey::from_rsa_pem(&pem), DecodingKey::from_ec_pem(&pem)) {
                (Ok(key), _) => (key, Algorithm::RS256),
                (_, Ok(key)) => (key, Algorithm::ES256),
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "auth.jwt.public_key_file".to_owned(),
                        message: format!("{} is not a PEM RSA or EC public key", path.display()),
                    });
                }
            }
        }
    };

    Ok(JwtSettings {
        key,
        algorithm,
        issuer: file.issuer,
        audience: file.audience,
        principal_claim: file.principal_claim.unwrap_or_else(|| "sub".to_owned()),
        roles_claim: file.roles_claim.unwrap_or_else(|| "roles".to_owned()),
        leeway_seconds: file.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS),
    })
}
