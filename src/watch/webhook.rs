//! Whether a webhook request comes from the Git server that knows the secret: GitHub's
//! `X-Hub-Signature-256` (`sha256=<hex HMAC-SHA256 of the body>`), Gitea/Forgejo's
//! `X-Gitea-Signature` (the same HMAC, bare hex) and GitLab's `X-Gitlab-Token` (the secret
//! itself), all compared in constant time. Pure: the HTTP layer passes headers and body in.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Which Git server signed a request that verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    GitHub,
    Gitea,
    GitLab,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no signature header (X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token)")]
    Unsigned,
    #[error("bad signature")]
    BadSignature,
}

/// Checks the request's signature; `header(name)` returns a header's value (names lowercase).
pub fn verify<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    secret: &[u8],
) -> Result<Sender, Refused> {
    if let Some(sig) = header("x-hub-signature-256") {
        let hex = sig.strip_prefix("sha256=").ok_or(Refused::BadSignature)?;
        return hmac_matches(hex, body, secret)
            .then_some(Sender::GitHub)
            .ok_or(Refused::BadSignature);
    }
    if let Some(hex) = header("x-gitea-signature").or_else(|| header("x-forgejo-signature")) {
        return hmac_matches(hex, body, secret)
            .then_some(Sender::Gitea)
            .ok_or(Refused::BadSignature);
    }
    if let Some(token) = header("x-gitlab-token") {
        return bool::from(token.as_bytes().ct_eq(secret))
            .then_some(Sender::GitLab)
            .ok_or(Refused::BadSignature);
    }
    Err(Refused::Unsigned)
}

/// Whether `hex` is the HMAC-SHA256 of `body` with `secret` (constant-time).
fn hmac_matches(hex: &str, body: &[u8], secret: &[u8]) -> bool {
    let Ok(given) = hex::decode(hex.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    /// GitHub's documented example (docs.github.com, "Validating webhook deliveries").
    const GITHUB_EXAMPLE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn github_signature_of_the_documented_example_verifies() {
        let h = [("x-hub-signature-256", GITHUB_EXAMPLE)];
        assert_eq!(verify(headers(&h), BODY, SECRET), Ok(Sender::GitHub));
        assert_eq!(
            verify(headers(&h), b"Hello, World?", SECRET),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(headers(&h), BODY, b"another secret"),
            Err(Refused::BadSignature)
        );
        let bare = [("x-hub-signature-256", &GITHUB_EXAMPLE[7..])];
        assert_eq!(
            verify(headers(&bare), BODY, SECRET),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn gitea_and_gitlab_and_unsigned() {
        let gitea = [("x-gitea-signature", &GITHUB_EXAMPLE[7..])];
        assert_eq!(verify(headers(&gitea), BODY, SECRET), Ok(Sender::Gitea));
        let gitlab = [("x-gitlab-token", "It's a Secret to Everybody")];
        assert_eq!(verify(headers(&gitlab), BODY, SECRET), Ok(Sender::GitLab));
        let wrong = [("x-gitlab-token", "It's a Secret to Everybod")];
        assert_eq!(
            verify(headers(&wrong), BODY, SECRET),
            Err(Refused::BadSignature)
        );
        let junk = [("x-gitea-signature", "zz")];
        assert_eq!(
            verify(headers(&junk), BODY, SECRET),
            Err(Refused::BadSignature)
        );
        assert_eq!(verify(headers(&[]), BODY, SECRET), Err(Refused::Unsigned));
    }
}
