//! The session statements clients send besides queries, answered by the session itself:
//! `SET` (accepted and ignored), `SHOW` of the common parameters, transaction control
//! (no-ops: every query reads a snapshot, nothing is ever written), `DISCARD`/`RESET`/
//! `DEALLOCATE`, and `SELECT version()`. Also splits a simple-query string into statements.
//! Pure.

/// A statement the session answers without the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// `SET …`: answered `SET`, changes nothing.
    Set,
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `SHOW name`: one row, one text column named after the parameter.
    Show {
        /// Column name (the parameter as written, lower case).
        name: String,
        /// The value.
        value: String,
    },
    /// `SELECT version()`.
    Version,
    /// `DISCARD …`, `RESET …`, `DEALLOCATE …`, `CLOSE …`: answered with their tag.
    Tag(&'static str),
}

/// The string `SELECT version()` answers: PostgreSQL-shaped, since drivers parse it.
pub(crate) fn version_string() -> String {
    format!(
        "PostgreSQL 16.6 on Ferrite {} (SQL by Apache DataFusion; read-only)",
        env!("CARGO_PKG_VERSION")
    )
}

/// Which of the session's own statements `sql` is, if any. An unknown `SHOW` parameter is an
/// `Err` with the PostgreSQL message.
pub(crate) fn classify(sql: &str) -> Result<Option<Command>, String> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    let words: Vec<String> = trimmed
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    let command = match first {
        "set" => Command::Set,
        "begin" => Command::Begin,
        "start" if words.get(1).map(String::as_str) == Some("transaction") => Command::Begin,
        "commit" | "end" => Command::Commit,
        "rollback" | "abort" => Command::Rollback,
        "discard" => Command::Tag("DISCARD ALL"),
        "reset" => Command::Tag("RESET"),
        "deallocate" => Command::Tag("DEALLOCATE"),
        "close" => Command::Tag("CLOSE CURSOR"),
        "show" => {
            let name = words[1..].join(" ");
            let value = show(&name)
                .ok_or_else(|| format!("unrecognized configuration parameter \"{name}\""))?;
            Command::Show {
                name: name.replace(' ', "_"),
                value,
            }
        }
        "select" if words[1..].concat() == "version()" => Command::Version,
        _ => return Ok(None),
    };
    Ok(Some(command))
}

/// The value of a run-time parameter, as `SHOW` reports it.
fn show(name: &str) -> Option<String> {
    let value = match name {
        "server_version" => "16.6",
        "server_version_num" => "160006",
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "timezone" | "time zone" => "UTC",
        "transaction isolation level" | "transaction_isolation" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "on",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "search_path" => "public",
        "max_identifier_length" => "63",
        "lc_messages" | "lc_collate" | "lc_ctype" => "C.UTF-8",
        "is_superuser" => "off",
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0",
        "extra_float_digits" => "1",
        _ => return None,
    };
    Some(value.to_owned())
}

/// Split a simple-query string into its statements at `;` outside quotes, identifiers,
/// dollar-quoted strings and comments. Empty statements are dropped.
pub(crate) fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == q {
                        // A doubled quote is an escaped one.
                        if bytes.get(i + 1) == Some(&q) {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$ (a $1 placeholder has no closing `$` before a non-word byte).
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(end) = tag_end.filter(|e| bytes[*e] == b'$') {
                    let tag = &sql[i..=end];
                    if tag[1..tag.len() - 1].bytes().all(|b| b.is_ascii_digit()) && tag.len() > 2 {
                        i += 1;
                        continue;
                    }
                    match sql[end + 1..].find(tag) {
                        Some(close) => i = end + 1 + close + tag.len() - 1,
                        None => i = bytes.len(),
                    }
                }
            }
            b';' => {
                let stmt = sql[start..i].trim();
                if !stmt.is_empty() {
                    out.push(stmt);
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let stmt = sql.get(start..).unwrap_or("").trim();
    if !stmt.is_empty() {
        out.push(stmt);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn session_statements_are_recognised() {
        assert_eq!(
            classify("SET extra_float_digits = 3").unwrap(),
            Some(Command::Set)
        );
        assert_eq!(classify("begin;").unwrap(), Some(Command::Begin));
        assert_eq!(
            classify("START TRANSACTION READ ONLY").unwrap(),
            Some(Command::Begin)
        );
        assert_eq!(classify("COMMIT").unwrap(), Some(Command::Commit));
        assert_eq!(classify("rollback").unwrap(), Some(Command::Rollback));
        assert_eq!(
            classify("SELECT version()").unwrap(),
            Some(Command::Version)
        );
        assert_eq!(
            classify("select VERSION ( )").unwrap(),
            Some(Command::Version)
        );
        assert_eq!(
            classify("SHOW TimeZone").unwrap(),
            Some(Command::Show {
                name: "timezone".to_owned(),
                value: "UTC".to_owned()
            })
        );
        assert!(classify("SHOW nonsense").is_err());
        assert_eq!(classify("SELECT 1").unwrap(), None);
        assert_eq!(classify("select version() || 'x'").unwrap(), None);
    }

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("BEGIN; SELECT 'a;b', \"c;\" FROM t -- x;y\n; COMMIT;"),
            ["BEGIN", "SELECT 'a;b', \"c;\" FROM t -- x;y", "COMMIT"]
        );
        assert_eq!(
            split_statements("select 'it''s;'; /* ; */ select 2"),
            ["select 'it''s;'", "/* ; */ select 2"]
        );
        assert_eq!(
            split_statements("select $$a;b$$; select $1"),
            ["select $$a;b$$", "select $1"]
        );
        assert!(split_statements(" ; ;").is_empty());
    }
}
