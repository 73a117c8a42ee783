//! Tokens for relays started with `--secret`, signed the way the relay signs them
//! ([`relay::auth::Keys::mint`]).

use relay::config::{Config, Secret};

/// A secret for relays started with `--secret` (at least 16 bytes, as the relay requires).
pub const TEST_SECRET: &str = "integration-test-secret-0123456789";

/// Adjusts a test configuration to require tokens signed with [`TEST_SECRET`] (for
/// [`TestRelay::start_with`](crate::TestRelay::start_with)).
pub fn secured(config: &mut Config) {
    config.secrets = vec![Secret(TEST_SECRET.to_owned())];
}

/// Claims for a token covering `doc` (or, with `None`, no particular document) with `access`,
/// expiring at `exp` (seconds since the Unix epoch), for the user `u1` ("Ada").
pub fn claims(doc: Option<&str>, access: relay::auth::Access, exp: u64) -> relay::auth::Claims {
    relay::auth::Claims {
        doc: doc.map(str::to_owned),
        doc_prefix: None,
        access,
        exp,
        nbf: None,
        iat: Some(relay::auth::now_secs()),
        sub: Some("u1".into()),
        name: Some("Ada".into()),
    }
}

/// Signs `claims` with the first of `secrets` (`SECRET` or `KID:SECRET`), as the relay does.
pub fn sign_token(secrets: &[&str], claims: &relay::auth::Claims) -> String {
    let specs: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
    relay::auth::Keys::parse(&specs)
        .expect("usable test secrets")
        .mint(claims)
}

/// A token signed with [`TEST_SECRET`] for `doc` (`None`: every document, for admin tokens) with
/// `access`, valid for another hour.
pub fn token(doc: Option<&str>, access: relay::auth::Access) -> String {
    sign_token(
        &[TEST_SECRET],
        &claims(doc, access, relay::auth::now_secs() + 3600),
    )
}
