//! Tokens and permissions: signed, expiring JWTs (HS256) that grant read, write or admin access
//! to one document or to every document under a prefix.
//!
//! The relay is given one or more secrets. Each is either a plain secret or `KID:SECRET`; tokens
//! are signed with the first one (its key id goes into the token header), and verified with the
//! key their header names, so a new key can be added in front of the old one and the old one
//! dropped once its tokens have expired.
//!
//! Validity follows RFC 7519 to the second, with no leeway: a token is refused at and after its
//! `exp` second (not only after it), and before its `nbf` second when it has one.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token allows, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Receive the document and awareness; share awareness; no edits.
    Read,
    /// Read and edit.
    Write,
    /// Everything, including the document API.
    Admin,
}

impl Access {
    /// The lowercase name used in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Access {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "admin" => Ok(Access::Admin),
            other => Err(format!(
                "unknown access {other:?}: use read, write or admin"
            )),
        }
    }
}

/// The claims of a relay token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The one document this token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    /// Or: every document whose name starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_prefix: Option<String>,
    /// What the token allows.
    pub access: Access,
    /// Expiry, in seconds since the Unix epoch: the token is refused from this second on.
    pub exp: u64,
    /// Not before, in seconds since the Unix epoch: the token is refused before this second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// When it was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The user's id in the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The user's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Claims {
    /// Whether the token covers `room`. An admin token without a document covers every
    /// document; any other token must name the document or a prefix of it.
    pub fn covers(&self, room: &str) -> bool {
        match (&self.doc, &self.doc_prefix) {
            (Some(doc), _) => doc == room,
            (None, Some(prefix)) => room.starts_with(prefix.as_str()),
            (None, None) => self.access == Access::Admin,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("a token is required")]
    Missing,
    /// The token is not a JWT, is signed with an unknown key or a wrong signature, or its claims
    /// are not ours.
    #[error("the token is invalid")]
    Invalid,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token is not valid yet (its `nbf` is in the future).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The token is for other documents.
    #[error("the token is not valid for this document")]
    WrongDocument,
    /// The token does not allow this.
    #[error("the token does not allow {0}")]
    Insufficient(&'static str),
}

impl AuthError {
    /// The HTTP status for a refused request: 401 when the client must get a (new) token, 403
    /// when its valid token does not allow the request.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Missing
            | AuthError::Invalid
            | AuthError::Expired
            | AuthError::NotYetValid => http::StatusCode::UNAUTHORIZED,
            AuthError::WrongDocument | AuthError::Insufficient(_) => http::StatusCode::FORBIDDEN,
        }
    }
}

/// A secret given on the command line that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid --secret: {0}")]
pub struct KeyError(String);

struct Key {
    kid: Option<String>,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The relay's signing keys; the first one signs.
pub struct Keys {
    keys: Vec<Key>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        f.debug_struct("Keys")
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

/// The shortest secret accepted, in bytes: HS256 keys should be at least as long as the hash.
pub const MIN_SECRET_BYTES: usize = 16;

impl Keys {
    /// Parses secrets given as `SECRET` or `KID:SECRET` (a key id is letters, digits, `-`, `_`
    /// and `.`, up to 64 of them).
    ///
    /// # Errors
    /// [`KeyError`] for an empty list, a secret shorter than [`MIN_SECRET_BYTES`], a repeated key
    /// id, or several secrets of which one has no key id (tokens could not name it).
    pub fn parse(specs: &[String]) -> Result<Keys, KeyError> {
        if specs.is_empty() {
            return Err(KeyError("no secret given".into()));
        }
        let mut keys: Vec<Key> = Vec::new();
        for spec in specs {
            let (kid, secret) = split_key_spec(spec);
            let kid = kid.map(str::to_owned);
            if secret.len() < MIN_SECRET_BYTES {
                return Err(KeyError(format!(
                    "a secret must be at least {MIN_SECRET_BYTES} bytes long"
                )));
            }
            if keys.iter().any(|k| k.kid == kid) {
                return Err(KeyError(format!(
                    "key id {} is given twice",
                    kid.as_deref().unwrap_or("(none)")
                )));
            }
            keys.push(Key {
                kid,
                encoding: EncodingKey::from_secret(secret.as_bytes()),
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
            return Err(KeyError(
                "with several secrets, give each a key id: KID:SECRET".into(),
            ));
        }
        Ok(Keys { keys })
    }

    /// Signs `claims` with the first key.
    pub fn mint(&self, claims: &Claims) -> String {
        let key = &self.keys[0];
        let mut header = Header::new(Algorithm::HS256);
        header.kid = key.kid.clone();
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .expect("HS256 signing of serializable claims cannot fail")
    }

    /// Checks a token's signature and validity period now, and returns its claims.
    ///
    /// # Errors
    /// [`AuthError::Invalid`], [`AuthError::Expired`] or [`AuthError::NotYetValid`].
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, now_secs())
    }

    /// Checks a token's signature, and its validity period at `now` (seconds since the Unix
    /// epoch): valid from its `nbf` second (if any) up to, not including, its `exp` second.
    ///
    /// # Errors
    /// [`AuthError::Invalid`], [`AuthError::Expired`] or [`AuthError::NotYetValid`].
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => self.keys.iter().find(|k| k.kid.is_none()),
        }
        .ok_or(AuthError::Invalid)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        // jsonwebtoken accepts a token during its `exp` second (it refuses only `exp < now`) and
        // reads its own clock: the period is checked below instead. `exp` stays required.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        if now >= claims.exp {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now < nbf) {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Splits a `--secret` value into its key id and its secret: `KID:SECRET` when the part before the
/// first colon is a key id, else the whole value is the secret.
pub fn split_key_spec(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once(':') {
        Some((kid, secret)) if is_key_id(kid) => (Some(kid), secret),
        _ => (None, spec),
    }
}

fn is_key_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What an accepted request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The access granted.
    pub access: Access,
    /// When the grant ends, in seconds since the Unix epoch (`None` on an open relay).
    pub expires_at: Option<u64>,
    /// Who was granted it.
    pub principal: Principal,
}

/// Who a connection speaks for, as far as the relay can tell: the token's user (`sub`), or the
/// token itself when it names none. On an open relay everyone is the same principal. Kept as a
/// keyed hash, so the relay holds no tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Principal(u64);

impl Principal {
    /// Everyone, on a relay without tokens.
    pub const ANYONE: Principal = Principal(0);

    /// Its value, for forwarding to the room's owner in cluster mode.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// The principal of a connection forwarded by relay `node`, which knew it as `raw`: the same
    /// user through the same relay keeps one principal; everyone stays everyone.
    pub(crate) fn forwarded(node: &str, raw: u64) -> Principal {
        use std::hash::{BuildHasher, Hasher};
        if raw == 0 {
            return Principal::ANYONE;
        }
        static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let mut hasher = KEY.get_or_init(std::hash::RandomState::new).build_hasher();
        hasher.write(node.as_bytes());
        hasher.write_u64(raw);
        Principal(hasher.finish() | 1)
    }

    fn of(claims: &Claims, token: &str) -> Principal {
        use std::hash::{BuildHasher, Hasher};
        // Random per process, so nobody can make two principals collide on purpose.
        static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let mut hasher = KEY.get_or_init(std::hash::RandomState::new).build_hasher();
        match &claims.sub {
            Some(sub) => {
                hasher.write(b"sub\0");
                hasher.write(sub.as_bytes());
            }
            None => {
                hasher.write(b"token\0");
                hasher.write(token.as_bytes());
            }
        }
        // 0 is ANYONE's.
        Principal(hasher.finish().max(1))
    }
}

/// Decides whether a request for `room` (or for the whole document API when `room` is `None`)
/// with `token` gets at least `needed` access.
///
/// Without keys the relay is open: everything is allowed.
///
/// # Errors
/// [`AuthError`] saying why not.
pub fn authorize(
    keys: Option<&Keys>,
    token: Option<&str>,
    room: Option<&str>,
    needed: Access,
) -> Result<Grant, AuthError> {
    let Some(keys) = keys else {
        return Ok(Grant {
            access: Access::Admin,
            expires_at: None,
            principal: Principal::ANYONE,
        });
    };
    let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
    let claims = keys.verify(token)?;
    let covered = match room {
        Some(room) => claims.covers(room),
        None => claims.doc.is_none() && claims.doc_prefix.is_none(),
    };
    if !covered {
        return Err(AuthError::WrongDocument);
    }
    if claims.access < needed {
        return Err(AuthError::Insufficient(match needed {
            Access::Read => "reading",
            Access::Write => "writing",
            Access::Admin => "administration",
        }));
    }
    Ok(Grant {
        access: claims.access,
        expires_at: Some(claims.exp),
        principal: Principal::of(&claims, token),
    })
}

/// How long a token expiring at `exp` (seconds since the Unix epoch) stays valid, seen at `now`:
/// until the start of its `exp` second, zero from then on, and `None` for an `exp` beyond what
/// the clock can represent (never, in practice).
pub fn until_expiry(exp: u64, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let expiry = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(exp))?;
    Some(expiry.duration_since(now).unwrap_or_default())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-test-secret";

    fn claims(doc: Option<&str>, access: Access, exp: u64) -> Claims {
        Claims {
            doc: doc.map(Into::into),
            doc_prefix: None,
            access,
            exp,
            nbf: None,
            iat: None,
            sub: Some("u1".into()),
            name: Some("Ada".into()),
        }
    }

    fn keys(specs: &[&str]) -> Keys {
        Keys::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid")
    }

    #[test]
    fn minted_token_verifies_and_round_trips_its_claims() {
        let keys = keys(&[SECRET]);
        let c = claims(Some("notes"), Access::Write, now_secs() + 60);
        assert_eq!(keys.verify(&keys.mint(&c)), Ok(c));
    }

    #[test]
    fn expiry_is_enforced_to_the_second() {
        let keys = keys(&[SECRET]);
        let expired = keys.mint(&claims(Some("d"), Access::Write, now_secs() - 1));
        assert_eq!(keys.verify(&expired), Err(AuthError::Expired));
        let valid = keys.mint(&claims(Some("d"), Access::Write, now_secs() + 2));
        assert!(keys.verify(&valid).is_ok());
    }

    #[test]
    fn a_token_is_refused_at_its_exp_second_and_before_its_nbf_second() {
        let keys = keys(&[SECRET]);
        let token = keys.mint(&Claims {
            nbf: Some(1_000),
            ..claims(Some("d"), Access::Write, 2_000)
        });
        // RFC 7519: not before `nbf`, and not at or after `exp`.
        assert_eq!(keys.verify_at(&token, 999), Err(AuthError::NotYetValid));
        assert!(keys.verify_at(&token, 1_000).is_ok());
        assert!(keys.verify_at(&token, 1_999).is_ok());
        assert_eq!(keys.verify_at(&token, 2_000), Err(AuthError::Expired));
        assert_eq!(keys.verify_at(&token, 2_001), Err(AuthError::Expired));
        assert_eq!(
            AuthError::NotYetValid.status(),
            http::StatusCode::UNAUTHORIZED
        );
        // `exp` stays required, though jsonwebtoken no longer checks its value.
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"doc": "d", "access": "read"}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        assert_eq!(keys.verify_at(&no_exp, 1_500), Err(AuthError::Invalid));
    }

    #[test]
    fn a_connection_ends_at_the_start_of_the_exp_second() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(
            until_expiry(100, at(99_300)),
            Some(Duration::from_millis(700))
        );
        assert_eq!(until_expiry(100, at(100_000)), Some(Duration::ZERO));
        assert_eq!(until_expiry(100, at(100_500)), Some(Duration::ZERO));
        assert_eq!(until_expiry(u64::MAX, at(100_500)), None);
    }

    #[test]
    fn forged_or_foreign_tokens_are_invalid() {
        let keys = keys(&[SECRET]);
        let other = self::keys(&["another-secret-of-16-bytes"]);
        let token = other.mint(&claims(Some("d"), Access::Admin, now_secs() + 60));
        assert_eq!(keys.verify(&token), Err(AuthError::Invalid));
        assert_eq!(keys.verify("not.a.jwt"), Err(AuthError::Invalid));
        let good = keys.mint(&claims(Some("d"), Access::Read, now_secs() + 60));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_payload = {
            let admin = keys.mint(&claims(Some("d"), Access::Admin, now_secs() + 60));
            admin.split('.').nth(1).expect("payload").to_owned()
        };
        parts[1] = &forged_payload;
        // A read token's signature over an admin token's payload.
        assert_eq!(keys.verify(&parts.join(".")), Err(AuthError::Invalid));
    }

    #[test]
    fn rotation_verifies_old_and_new_keys_and_signs_with_the_first() {
        let old = keys(&["old:old-secret-0123456789"]);
        let rotated = keys(&["new:new-secret-0123456789", "old:old-secret-0123456789"]);
        let old_token = old.mint(&claims(Some("d"), Access::Read, now_secs() + 60));
        assert!(rotated.verify(&old_token).is_ok());
        let new_token = rotated.mint(&claims(Some("d"), Access::Read, now_secs() + 60));
        assert_eq!(
            jsonwebtoken::decode_header(&new_token)
                .expect("header")
                .kid
                .as_deref(),
            Some("new")
        );
        assert_eq!(old.verify(&new_token), Err(AuthError::Invalid));
    }

    #[test]
    fn key_parsing_refuses_unusable_secrets() {
        assert!(Keys::parse(&[]).is_err());
        assert!(Keys::parse(&["short".into()]).is_err());
        assert!(Keys::parse(&["a:0123456789abcdef".into(), "a:0123456789abcdeg".into()]).is_err());
        assert!(Keys::parse(&["0123456789abcdef".into(), "b:0123456789abcdeg".into()]).is_err());
        // A secret with a colon whose first part is not a key id stays whole.
        let k = Keys::parse(&["pass phrase: with a colon".into()]).expect("valid");
        assert_eq!(k.keys[0].kid, None);
        assert_eq!(
            split_key_spec("pass phrase: with a colon"),
            (None, "pass phrase: with a colon")
        );
        assert_eq!(
            split_key_spec("k1:0123456789abcdef"),
            (Some("k1"), "0123456789abcdef")
        );
    }

    #[test]
    fn documents_prefixes_and_admin_scope() {
        let exact = claims(Some("notes"), Access::Write, 0);
        assert!(exact.covers("notes") && !exact.covers("notes2"));
        let prefix = Claims {
            doc: None,
            doc_prefix: Some("team/".into()),
            ..exact.clone()
        };
        assert!(prefix.covers("team/a") && !prefix.covers("other"));
        let admin_all = claims(None, Access::Admin, 0);
        assert!(admin_all.covers("anything"));
        let write_all = claims(None, Access::Write, 0);
        assert!(!write_all.covers("anything"));
    }

    #[test]
    fn authorize_maps_each_refusal_to_its_status() {
        let keys = keys(&[SECRET]);
        let exp = now_secs() + 60;
        let read = keys.mint(&claims(Some("d"), Access::Read, exp));
        let admin = keys.mint(&claims(None, Access::Admin, exp));
        let k = Some(&keys);
        assert_eq!(
            authorize(k, None, Some("d"), Access::Read),
            Err(AuthError::Missing)
        );
        assert_eq!(
            authorize(k, Some(&read), Some("e"), Access::Read),
            Err(AuthError::WrongDocument)
        );
        assert_eq!(
            authorize(k, Some(&read), Some("d"), Access::Read).map(|g| g.access),
            Ok(Access::Read)
        );
        let denied = authorize(k, Some(&read), None, Access::Admin).expect_err("not admin");
        assert_eq!(denied.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(
            authorize(k, Some(&admin), None, Access::Admin).map(|g| g.expires_at),
            Ok(Some(exp))
        );
        assert_eq!(AuthError::Expired.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            authorize(None, None, Some("d"), Access::Admin).map(|g| g.access),
            Ok(Access::Admin)
        );
    }
}
