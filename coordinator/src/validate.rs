//! Validation of every user-supplied value that can reach a command line, a file name or the store.
//!
//! The same rules guard the REST API, the job engine and the SSH driver: a value that passes
//! here contains no shell metacharacters, no whitespace and no leading dash, so it can be handed
//! to `lttng`, `ssh` or an analysis command as one argv item.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_HOSTNAME: usize = 253;
/// Longest POSIX user name accepted (the useradd default limit).
const MAX_USERNAME: usize = 32;

/// Checks a DNS host name (RFC 1123 labels) or an IPv4/IPv6 address literal.
pub fn hostname(value: &str) -> Result<(), String> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    dns_name(value)
}

/// Checks a DNS host name (RFC 1123 labels), not an address.
/// The name an agent registers or enrolls under: a DNS name in its one spelling (lowercase,
/// no trailing dot), as `tracesd` sends it, so that `Web-1` or `web-1.` cannot stand beside
/// `web-1` as another host.
pub fn agent_hostname(value: &str) -> Result<(), String> {
    dns_name(value)?;
    if value.ends_with('.') || value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lowercase without a trailing dot (as tracesd sends it)".into());
    }
    Ok(())
}

pub fn dns_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_HOSTNAME {
        return Err(format!("is longer than {MAX_HOSTNAME} characters"));
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("has an empty label or a label longer than 63 characters".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with '-'".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "contains the character {c:?}; only letters, digits, '-', '_' and '.' are allowed"
            ));
        }
    }
    Ok(())
}

/// Parses an IPv4 address.
pub fn ipv4(value: &str) -> Result<Ipv4Addr, String> {
    value
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("{value:?} is not an IPv4 address"))
}

/// Parses an IPv6 address (link-local scope suffixes such as `%eth0` are not accepted).
pub fn ipv6(value: &str) -> Result<Ipv6Addr, String> {
    value
        .parse::<Ipv6Addr>()
        .map_err(|_| format!("{value:?} is not an IPv6 address"))
}

/// Checks a POSIX portable user name: `[a-z_][a-z0-9_-]*[$]?`, at most 32 characters.
pub fn username(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_USERNAME {
        return Err(format!("is longer than {MAX_USERNAME} characters"));
    }
    let mut chars = value.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first == '_') {
        return Err("must start with a lowercase letter or '_'".into());
    }
    let body = value.strip_suffix('$').unwrap_or(value);
    if let Some(c) = body
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "contains the character {c:?}; a user name is lowercase letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a TCP port number given as a JSON integer.
pub fn port(value: i64) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{value} is not a port number (1-65535)"))
}

/// Checks a name used for analysis profiles and other identifiers: `[a-z0-9][a-z0-9_-]*`.
pub fn identifier(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(
            "must be lowercase letters, digits, '_' and '-', starting with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// Checks an absolute path without `..`, control characters or shell metacharacters.
pub fn abs_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') || value.len() > 1024 {
        return Err("must be an absolute path of at most 1024 characters".into());
    }
    if value.split('/').any(|part| part == "..") {
        return Err("must not contain '..'".into());
    }
    if let Some(c) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.' | '+' | '@' | ','))
    }) {
        return Err(format!("contains the character {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in [
            "localhost",
            "a.b-c.example",
            "host_1",
            "10.0.0.1",
            "fe80::1",
            "x.",
            "A1",
        ] {
            assert!(hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "x-",
            "a..b",
            "a b",
            "a;b",
            "$(id)",
            "`id`",
            "a\nb",
            "localhost; touch x #",
            "a/b",
            "ü.de",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usernames() {
        for ok in ["root", "_svc", "a-b_c9", "machine$"] {
            assert!(username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Root",
            "9a",
            "-a",
            "a b",
            "a;b",
            "$(id)",
            "a$b",
            &"a".repeat(33),
        ] {
            assert!(username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_and_addresses() {
        assert_eq!(port(22), Ok(22));
        assert!(port(0).is_err() && port(65536).is_err() && port(-1).is_err());
        assert!(ipv4("127.0.0.1").is_ok() && ipv4("::1").is_err() && ipv4("1.2.3").is_err());
        assert!(ipv6("fe80::1").is_ok() && ipv6("127.0.0.1").is_err());
        assert!(abs_path("/var/lib/lttng-relayd").is_ok());
        for bad in ["rel", "/a/../b", "/a;b", "/a b", "/$(x)"] {
            assert!(abs_path(bad).is_err(), "{bad}");
        }
    }
}
