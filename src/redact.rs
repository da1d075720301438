//! Keeping credentials out of what tower-mq prints: `Debug` of configs, error
//! destinations and reasons, log fields.
//!
//! A connection URL keeps its scheme, user, host, port, path (database, vhost) and
//! query, with the password (and, in a NATS URL, a token in the user's place) shown as
//! `***`, and the value of any query parameter whose name speaks of a password, token
//! or secret (redis-rs takes `?pass=` on `unix://` URLs) likewise.

// Kafka alone only needs the names of secret properties.
#![cfg_attr(
    not(any(feature = "redis", feature = "nats", feature = "rabbitmq")),
    allow(dead_code)
)]

use std::borrow::Cow;

/// What replaces a secret.
pub(crate) const MASK: &str = "***";

/// Whether a user name alone in a URL (`scheme://name@host`) is a secret: NATS reads
/// it as a token; Redis and AMQP as a user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoneUser {
    /// A user name: shown.
    #[cfg_attr(not(any(feature = "redis", feature = "rabbitmq")), allow(dead_code))]
    Name,
    /// A token: masked.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Token,
}

/// The parts of a URL's user information, still percent-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserInfo<'a> {
    /// Everything between the scheme and the last `@` of the authority.
    pub(crate) raw: &'a str,
    /// The user (before the first `:`), or the whole when there is no `:`.
    pub(crate) user: &'a str,
    /// The password (after the first `:`), if there is a `:`.
    pub(crate) password: Option<&'a str>,
}

/// Splits `url` into the text before its user information, the user information, and
/// the text after its `@`. The user information ends at the last `@` before any query
/// or fragment, so a password holding an unencoded `@` or `/` is still found whole.
pub(crate) fn split(url: &str) -> Option<(&str, UserInfo<'_>, &str)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end_of_authority = rest.find(['?', '#']).unwrap_or(rest.len());
    let at = rest[..end_of_authority].rfind('@')?;
    let raw = &rest[..at];
    let (user, password) = match raw.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (raw, None),
    };
    Some((
        &url[..start],
        UserInfo {
            raw,
            user,
            password,
        },
        &rest[at + 1..],
    ))
}

/// `url` with its secrets masked (see the [module docs](self)).
pub(crate) fn url(url: &str, lone_user: LoneUser) -> Cow<'_, str> {
    let (head, masked_user, tail) = match split(url) {
        Some((head, info, tail)) => {
            let user = match (info.password, lone_user) {
                (Some(_), _) => Cow::Owned(format!("{}:{MASK}", info.user)),
                (None, LoneUser::Token) if !info.user.is_empty() => Cow::Borrowed(MASK),
                (None, _) => Cow::Borrowed(info.user),
            };
            (head, Some(user), tail)
        }
        None => ("", None, url),
    };
    let tail = query(tail);
    match (masked_user, tail) {
        (None, Cow::Borrowed(_)) => Cow::Borrowed(url),
        (None, Cow::Owned(tail)) => Cow::Owned(tail),
        (Some(user), tail) => Cow::Owned(format!("{head}{user}@{tail}")),
    }
}

/// Several URLs separated by commas (a NATS server list), each masked.
#[cfg(feature = "nats")]
pub(crate) fn url_list(urls: &str, lone_user: LoneUser) -> String {
    urls.split(',')
        .map(|one| url(one, lone_user))
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` (an error message, say) with every secret `url` holds masked wherever it
/// appears, e.g. a parser error that quotes the URL it refused.
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
pub(crate) fn in_text<'a>(text: &'a str, url: &str, lone_user: LoneUser) -> Cow<'a, str> {
    let mut secrets: Vec<&str> = Vec::new();
    if let Some((_, info, _)) = split(url) {
        match (info.password, lone_user) {
            (Some(password), _) => secrets.push(password),
            (None, LoneUser::Token) => secrets.push(info.user),
            (None, LoneUser::Name) => {}
        }
    }
    if let Some(query_start) = url.find('?') {
        for pair in url[query_start + 1..].split(['&', '#']) {
            if let Some((name, value)) = pair.split_once('=') {
                if is_secret_name(name) {
                    secrets.push(value);
                }
            }
        }
    }
    let mut text = Cow::Borrowed(text);
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            text = Cow::Owned(text.replace(secret, MASK));
        }
    }
    text
}

/// The value of the environment variable `name`, which holds a connection URL, or a
/// permanent `broker` connect error naming the variable (never quoting its value: it
/// may hold credentials).
pub(crate) fn url_from_env(
    broker: &'static str,
    name: &'static str,
) -> Result<String, tower_mq_core::Error> {
    let refuse = |why: &str| {
        tower_mq_core::Error::permanent(broker, tower_mq_core::Operation::Connect)
            .with_reason(format!("the environment variable `{name}` {why}"))
    };
    match std::env::var(name) {
        Ok(url) if url.trim().is_empty() => Err(refuse("is empty")),
        Ok(url) => Ok(url),
        Err(std::env::VarError::NotPresent) => Err(refuse("is not set")),
        Err(std::env::VarError::NotUnicode(_)) => Err(refuse("is not valid Unicode")),
    }
}

/// Whether a configuration or query parameter named `name` holds a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "token", "secret"]
        .iter()
        .any(|word| name.contains(word))
}

/// `tail` (what follows the authority's `@`) with secret query values masked.
fn query(tail: &str) -> Cow<'_, str> {
    let Some(query_start) = tail.find('?') else {
        return Cow::Borrowed(tail);
    };
    let (before, query) = tail.split_at(query_start + 1);
    let (query, fragment) = match query.find('#') {
        Some(i) => query.split_at(i),
        None => (query, ""),
    };
    let mut changed = false;
    let pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_name(name) => {
                changed = true;
                Cow::Owned(format!("{name}={MASK}"))
            }
            _ => Cow::Borrowed(pair),
        })
        .collect();
    if !changed {
        return Cow::Borrowed(tail);
    }
    Cow::Owned(format!("{before}{}{fragment}", pairs.join("&")))
}

/// Percent-decodes user information (`%40` is `@`); bytes that do not decode stay.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_password_and_keeps_the_rest() {
        assert_eq!(
            url("redis://:s3cret@127.0.0.1:6390/2", LoneUser::Name),
            "redis://:***@127.0.0.1:6390/2"
        );
        assert_eq!(
            url(
                "amqp://guest:s3cret@host:5672/%2f?heartbeat=5",
                LoneUser::Name
            ),
            "amqp://guest:***@host:5672/%2f?heartbeat=5"
        );
        assert_eq!(url("redis://app@host", LoneUser::Name), "redis://app@host");
        assert_eq!(
            url("nats://t0ken@host:4222", LoneUser::Token),
            "nats://***@host:4222"
        );
        assert_eq!(url("nats://host:4222", LoneUser::Token), "nats://host:4222");
        // An unencoded `@` or `/` in a password does not leak its end.
        assert_eq!(
            url("redis://u:s3/c@ret@host:1", LoneUser::Name),
            "redis://u:***@host:1"
        );
        assert_eq!(
            url("unix:///run/redis.sock?db=1&pass=s3cret", LoneUser::Name),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            url("u:s3cret@host:4222", LoneUser::Token),
            "u:***@host:4222"
        );
    }

    #[cfg(feature = "nats")]
    #[test]
    fn masks_each_url_of_a_list() {
        assert_eq!(
            url_list("nats://a:p1@h1:1,nats://tok@h2:2", LoneUser::Token),
            "nats://a:***@h1:1,nats://***@h2:2"
        );
    }

    #[test]
    fn masks_secrets_quoted_in_text() {
        assert_eq!(
            in_text(
                "Invalid URL: 'amqp://u:s3cret@:x'",
                "amqp://u:s3cret@:x",
                LoneUser::Name
            ),
            "Invalid URL: 'amqp://u:***@:x'"
        );
    }

    #[test]
    fn a_missing_variable_is_named_and_permanent() {
        let err = url_from_env("redis", "TOWER_MQ_TEST_NEVER_SET_8F3A").unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "redis connect failed (permanent): the environment variable \
             `TOWER_MQ_TEST_NEVER_SET_8F3A` is not set"
        );
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("p%40ss%2Fw"), "p@ss/w");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
