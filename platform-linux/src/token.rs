//! Join tokens: what `tandem token` prints and `tandem join --token` reads.
//!
//! A token carries everything a new node needs to trust the cluster before it has a
//! certificate: the cluster id, the SHA-256 fingerprint of the cluster CA (pinned by the join
//! TLS handshake) and a random secret that proves the operator issued it. The cluster stores
//! only a digest of the secret (and the expiry), so a leaked state dir or log does not leak a
//! usable token. Parsing errors say which part is wrong and never echo any of the text.

use std::fmt;

use rand::RngCore;
use tandem_core::{hex, ClusterId};

/// The first part of every token; the digit is the token format version.
pub const TOKEN_PREFIX: &str = "tdm1";

/// A parsed join token. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster: ClusterId,
    pub ca_fingerprint: [u8; 32],
    pub secret: [u8; 16],
}

/// Why a text is not a join token. No variant carries any of the token's text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "not a tandem join token: it must start with `{TOKEN_PREFIX}.` (copy the whole line \
         printed by `tandem token`)"
    )]
    Prefix,
    #[error(
        "malformed join token: expected 4 parts separated by '.' \
         ({TOKEN_PREFIX}.CLUSTER.FINGERPRINT.SECRET), found {found}"
    )]
    FieldCount { found: usize },
    #[error("malformed join token: the {field} part is not hexadecimal")]
    NotHex { field: &'static str },
    #[error("malformed join token: the {field} part has {found} hex digits, expected {expected}")]
    Length {
        field: &'static str,
        expected: usize,
        found: usize,
    },
}

impl JoinToken {
    /// A new token with a fresh secret from the operating system's random source.
    pub fn generate(cluster: ClusterId, ca_fingerprint: [u8; 32]) -> JoinToken {
        let mut secret = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        JoinToken {
            cluster,
            ca_fingerprint,
            secret,
        }
    }

    /// `tdm1.<cluster hex>.<fingerprint hex>.<secret hex>`, all lower-case.
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.cluster,
            hex::encode(&self.ca_fingerprint),
            hex::encode(&self.secret)
        )
    }

    /// Parses a token; surrounding whitespace (from copy and paste) is ignored.
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        if parts.first() != Some(&TOKEN_PREFIX) {
            return Err(TokenError::Prefix);
        }
        let [_, cluster, fingerprint, secret] = parts.as_slice() else {
            return Err(TokenError::FieldCount { found: parts.len() });
        };
        Ok(JoinToken {
            cluster: ClusterId(decode_part(cluster, "cluster id")?),
            ca_fingerprint: decode_part(fingerprint, "CA fingerprint")?,
            secret: decode_part(secret, "secret")?,
        })
    }

    /// Lower-case hex SHA-256 of the secret: what the cluster stores to recognise the token.
    pub fn secret_digest(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.secret).as_ref())
    }
}

fn decode_part<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], TokenError> {
    if !text.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TokenError::NotHex { field });
    }
    let length_error = TokenError::Length {
        field,
        expected: 2 * N,
        found: text.len(),
    };
    if text.len() != 2 * N {
        return Err(length_error);
    }
    let bytes = hex::decode(text).ok_or(TokenError::NotHex { field })?;
    bytes.try_into().map_err(|_| length_error)
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("cluster", &self.cluster)
            .field("ca_fingerprint", &hex::encode(&self.ca_fingerprint))
            .field("secret", &"<hidden>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken::generate(ClusterId([0x5a; 16]), [0xc3; 32])
    }

    #[test]
    fn round_trips_through_text() {
        let token = token();
        let text = token.encode();
        assert!(text.starts_with(&format!("tdm1.{}.{}.", "5a".repeat(16), "c3".repeat(32))));
        assert_eq!(text.len(), 4 + 1 + 32 + 1 + 64 + 1 + 32);
        assert_eq!(JoinToken::parse(&text), Ok(token.clone()));
        assert_eq!(JoinToken::parse(&format!("  {text}\n")), Ok(token.clone()));
        assert_eq!(
            JoinToken::parse(&text.to_uppercase().replacen("TDM1", "tdm1", 1)),
            Ok(token)
        );
    }

    #[test]
    fn secrets_are_random_and_digested() {
        let (a, b) = (token(), token());
        assert_ne!(a.secret, b.secret);
        let digest = a.secret_digest();
        assert_eq!(digest.len(), 64);
        assert_ne!(digest, b.secret_digest());
        assert!(!digest.contains(&hex::encode(&a.secret)));
        assert!(!format!("{a:?}").contains(&hex::encode(&a.secret)));
    }

    fn error_of(text: &str) -> (TokenError, String) {
        let err = JoinToken::parse(text).unwrap_err();
        let message = err.to_string();
        (err, message)
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong_without_echoing() {
        let good = token().encode();
        let parts: Vec<&str> = good.split('.').collect();
        let secret = parts[3];

        let (err, text) = error_of(&good.replacen("tdm1", "tdm2", 1));
        assert_eq!(err, TokenError::Prefix);
        assert!(
            text.contains("must start with `tdm1.`") && !text.contains(secret),
            "{text}"
        );
        assert_eq!(error_of(secret).0, TokenError::Prefix);
        assert_eq!(error_of("").0, TokenError::Prefix);

        let (err, text) = error_of(&format!("tdm1.{}.{}", parts[1], parts[2]));
        assert_eq!(err, TokenError::FieldCount { found: 3 });
        assert!(
            text.contains("expected 4 parts") && text.contains("found 3"),
            "{text}"
        );
        assert_eq!(
            error_of(&format!("{good}.x")).0,
            TokenError::FieldCount { found: 5 }
        );

        let (err, text) = error_of(&format!(
            "tdm1.{}.{}.{}zz",
            parts[1],
            parts[2],
            &secret[2..]
        ));
        assert_eq!(err, TokenError::NotHex { field: "secret" });
        assert!(
            text.contains("the secret part is not hexadecimal") && !text.contains(&secret[2..])
        );
        let (err, _) = error_of(&format!("tdm1.{}.{}.{secret}", "é".repeat(16), parts[2]));
        assert_eq!(
            err,
            TokenError::NotHex {
                field: "cluster id"
            }
        );

        let (err, text) = error_of(&format!("tdm1.{}.{}.{secret}", parts[1], &parts[2][..62]));
        let expected = TokenError::Length {
            field: "CA fingerprint",
            expected: 64,
            found: 62,
        };
        assert_eq!(err, expected);
        assert!(
            text.contains("CA fingerprint part has 62 hex digits, expected 64"),
            "{text}"
        );
        let (err, _) = error_of(&format!("tdm1.{}0.{}.{secret}", parts[1], parts[2]));
        assert_eq!(
            err,
            TokenError::Length {
                field: "cluster id",
                expected: 32,
                found: 33
            }
        );
    }
}
