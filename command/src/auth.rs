//! Access control for writes: when `COMMAND_API_TOKENS` is set, POST/PUT/DELETE need
//! `Authorization: Bearer <token>` with one of those tokens (401 without, 403 with a wrong
//! one). Reads of health/ready/metrics stay open. Tokens are compared in constant time and
//! never logged.

use shared::http::ApiError;

/// The accepted tokens; empty means writes are open (local development).
#[derive(Clone, Default)]
pub struct Tokens(Vec<Vec<u8>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

/// How the placeholder in rendered deployment files starts (`cargo xtask render` writes
/// `REPLACE-ME-with-…` into `command.env` and the Kubernetes Secret). A deployment that still
/// holds it must not start: it would accept a token printed in the repository.
pub const PLACEHOLDER_PREFIX: &str = "REPLACE-ME";

/// Why a token list is refused, for the start-up error.
pub const PLACEHOLDER_REASON: &str =
    "still holds the placeholder of the rendered deployment files; \
     set a real token (e.g. the output of `openssl rand -hex 16`) in command.env (Compose) or in \
     the Secret command-api-tokens (Kubernetes), or an empty value to run with writes open";

impl Tokens {
    /// Parses the configured list, refusing the rendered placeholder ([`PLACEHOLDER_REASON`]).
    pub fn from_setting(list: &str) -> Result<Tokens, &'static str> {
        let tokens = Tokens::parse(list);
        if tokens
            .0
            .iter()
            .any(|t| t.starts_with(PLACEHOLDER_PREFIX.as_bytes()))
        {
            return Err(PLACEHOLDER_REASON);
        }
        Ok(tokens)
    }

    /// Parses a comma-separated list; blanks are ignored.
    pub fn parse(list: &str) -> Tokens {
        Tokens(
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| t.as_bytes().to_vec())
                .collect(),
        )
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, header: Option<&str>) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(value) = header else {
            return Err(ApiError::Unauthorized);
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(ApiError::Unauthorized);
        };
        // Compare against every token, always, so the time taken says nothing about which
        // token (or how much of one) matched.
        let mut ok = false;
        for t in &self.0 {
            ok |= constant_time_eq(t, token.trim().as_bytes());
        }
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// Equal length and equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &str, expect: Result<usize, ()>) {
        let got = Tokens::from_setting(list).map(|t| t.len()).map_err(|_| ());
        assert_eq!(got, expect, "{list:?}");
    }

    #[test]
    fn the_rendered_placeholder_is_refused() {
        check("", Ok(0));
        check("s3cret", Ok(1));
        check("a,b", Ok(2));
        check("not-REPLACE-ME", Ok(1));
        check("REPLACE-ME-with-the-output-of-openssl-rand-hex-16", Err(()));
        check(
            "s3cret, REPLACE-ME-with-the-output-of-openssl-rand-hex-16",
            Err(()),
        );
        check(" REPLACE-ME ", Err(()));
        assert!(PLACEHOLDER_REASON.contains("openssl rand"));
    }

    #[test]
    fn tokens() {
        let open = Tokens::parse(" , ");
        assert!(!open.enabled());
        assert_eq!(open.check(None), Ok(()));
        let t = Tokens::parse("s3cret, other");
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(None), Err(ApiError::Unauthorized));
        assert_eq!(t.check(Some("Basic abc")), Err(ApiError::Unauthorized));
        assert_eq!(t.check(Some("Bearer wrong")), Err(ApiError::Forbidden));
        assert_eq!(t.check(Some("Bearer s3cre")), Err(ApiError::Forbidden));
        assert_eq!(t.check(Some("Bearer s3cret!")), Err(ApiError::Forbidden));
        assert_eq!(t.check(Some("Bearer s3cret")), Ok(()));
        assert_eq!(t.check(Some("Bearer other")), Ok(()));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
