//! Topics and topic patterns.
//!
//! A topic is a dot-separated list of non-empty tokens (`order.placed`). A
//! pattern matches topics NATS-style: `*` stands for exactly one token and
//! `>`, allowed only as the last token, for one or more tokens. This module
//! knows nothing of events or subscribers.

use std::fmt;

/// The longest topic accepted, in bytes.
pub const TOPIC_BYTES_MAX: usize = 256;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// Empty string.
    Empty,
    /// Longer than [`TOPIC_BYTES_MAX`].
    TooLong(String),
    /// A token is empty (`order..placed`, `.order`).
    EmptyToken(String),
    /// A character that is not allowed.
    BadChar {
        /// The offending topic.
        topic: String,
        /// The character.
        ch: char,
    },
    /// A wildcard in a topic (as opposed to a pattern).
    Wildcard(String),
    /// `>` not in last position, or mixed into a token.
    MisplacedTail(String),
    /// `*` mixed into a token.
    MisplacedStar(String),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => f.write_str(
                "the topic is empty; name it with dot-separated tokens, e.g. `order.placed`",
            ),
            TopicError::TooLong(t) => write!(
                f,
                "topic `{t}…` is longer than {TOPIC_BYTES_MAX} bytes; use a shorter name"
            ),
            TopicError::EmptyToken(t) => write!(
                f,
                "topic `{t}` has an empty token; tokens are separated by single dots"
            ),
            TopicError::BadChar { topic, ch } => write!(
                f,
                "topic `{topic}` contains `{ch}`; use letters, digits, `-`, `_` and `.` between tokens"
            ),
            TopicError::Wildcard(t) => write!(
                f,
                "topic `{t}` contains a wildcard; `*` and `>` are for subscriptions, not for events"
            ),
            TopicError::MisplacedTail(p) => write!(
                f,
                "pattern `{p}`: `>` must be a whole token and the last one, e.g. `order.>`"
            ),
            TopicError::MisplacedStar(p) => {
                write!(f, "pattern `{p}`: `*` must be a whole token, e.g. `order.*`")
            }
        }
    }
}

impl std::error::Error for TopicError {}

fn check_token_chars(whole: &str, token: &str) -> Result<(), TopicError> {
    if token.is_empty() {
        return Err(TopicError::EmptyToken(whole.to_string()));
    }
    match token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(ch) => Err(TopicError::BadChar {
            topic: whole.to_string(),
            ch,
        }),
        None => Ok(()),
    }
}

fn check_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong(
            crate::prefix_at_char(s, 32).to_string(),
        ));
    }
    Ok(())
}

/// Check that `topic` is a valid event topic (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_length(topic)?;
    for token in topic.split('.') {
        if token == "*" || token == ">" {
            return Err(TopicError::Wildcard(topic.to_string()));
        }
        check_token_chars(topic, token)?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Star,
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
    tail: bool,
}

impl Pattern {
    /// Parse a pattern such as `order.*` or `order.>`.
    pub fn parse(text: &str) -> Result<Pattern, TopicError> {
        check_length(text)?;
        let parts: Vec<&str> = text.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        let mut tail = false;
        for (i, part) in parts.iter().enumerate() {
            match *part {
                ">" if i + 1 == parts.len() => tail = true,
                ">" => return Err(TopicError::MisplacedTail(text.to_string())),
                "*" => tokens.push(Token::Star),
                p if p.contains('>') => return Err(TopicError::MisplacedTail(text.to_string())),
                p if p.contains('*') => return Err(TopicError::MisplacedStar(text.to_string())),
                p => {
                    check_token_chars(text, p)?;
                    tokens.push(Token::Literal(p.to_string()));
                }
            }
        }
        Ok(Pattern {
            text: text.to_string(),
            tokens,
            tail,
        })
    }

    /// Does `topic` match this pattern? `topic` is assumed valid.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in &self.tokens {
            match (token, parts.next()) {
                (_, None) => return false,
                (Token::Star, Some(_)) => {}
                (Token::Literal(l), Some(p)) if l == p => {}
                _ => return false,
            }
        }
        if self.tail {
            parts.next().is_some()
        } else {
            parts.next().is_none()
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).expect("valid pattern").matches(t)
    }

    #[test]
    fn literal_matches_only_itself() {
        assert!(m("order.placed", "order.placed"));
        assert!(!m("order.placed", "order.placed.eu"));
        assert!(!m("order.placed", "order"));
        assert!(!m("order.placed", "order.shipped"));
    }

    #[test]
    fn star_is_exactly_one_token() {
        assert!(m("order.*", "order.placed"));
        assert!(!m("order.*", "order"));
        assert!(!m("order.*", "order.placed.eu"));
        assert!(m("*.placed", "order.placed"));
        assert!(m("*", "order"));
        assert!(!m("*", "order.placed"));
    }

    #[test]
    fn tail_is_one_or_more_tokens() {
        assert!(m("order.>", "order.placed"));
        assert!(m("order.>", "order.placed.eu"));
        assert!(!m("order.>", "order"));
        assert!(m(">", "anything.at.all"));
        assert!(!m("order.>", "inventory.reserved"));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert_eq!(
            Pattern::parse("order.>.x"),
            Err(TopicError::MisplacedTail("order.>.x".into()))
        );
        assert_eq!(
            Pattern::parse("ord*"),
            Err(TopicError::MisplacedStar("ord*".into()))
        );
        assert_eq!(
            Pattern::parse("a..b"),
            Err(TopicError::EmptyToken("a..b".into()))
        );
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn topics_refuse_wildcards_and_odd_characters() {
        assert!(validate_topic("order.placed").is_ok());
        assert!(validate_topic("order-v2.placed_eu").is_ok());
        assert!(matches!(
            validate_topic("order.*"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            validate_topic("order placed"),
            Err(TopicError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            validate_topic(&"a".repeat(300)),
            Err(TopicError::TooLong(_))
        ));
    }
}
