//! Target expressions (SPEC §12): one grammar wherever a set of agents is named, in the API,
//! the CLI and batch definitions; and the label rules the agent, the inventory and the
//! center share.
//!
//! ```text
//! expr    = term { "or" term }
//! term    = factor { "and" factor }
//! factor  = "not" factor | "(" expr ")" | atom
//! atom    = label "=" value | label "in" "(" value { "," value } ")" | pattern { "," pattern }
//! ```
//!
//! A pattern is an agent id or ip, or a glob over them (`*`, `?`, `[...]`, `[!...]`).
//! Keywords are the lowercase words `and`, `or`, `not`, `in`; anything else is a word.
//! Errors carry the 1-based character position where parsing stopped.

use std::collections::BTreeMap;
use std::fmt;

/// An agent's labels: key → value.
pub type Labels = BTreeMap<String, String>;

/// Label keys and values: 1–64 of `[A-Za-z0-9_.-]`.
pub fn is_valid_label_text(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

/// Checks every key and value; the error names the first that breaks the rule.
pub fn validate_labels(labels: &Labels) -> Result<(), String> {
    for (key, value) in labels {
        if !is_valid_label_text(key) {
            return Err(format!("label key {key:?} must be 1-64 of [A-Za-z0-9_.-]"));
        }
        if !is_valid_label_text(value) {
            return Err(format!(
                "label {key}: value {value:?} must be 1-64 of [A-Za-z0-9_.-]"
            ));
        }
    }
    Ok(())
}

/// What a target selects on.
#[derive(Debug, Clone, Copy)]
pub struct AgentFacts<'a> {
    pub id: &'a str,
    pub ip: &'a str,
    pub labels: &'a Labels,
}

/// A parsed target expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Matches when any pattern matches the id or the ip.
    Patterns(Vec<String>),
    /// `label = value`, or `label in (v1, v2)`.
    Label {
        key: String,
        values: Vec<String>,
    },
    Not(Box<Target>),
    And(Box<Target>, Box<Target>),
    Or(Box<Target>, Box<Target>),
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            next: 0,
            end: text.chars().count() + 1,
        };
        if parser.tokens.is_empty() {
            return Err(TargetError {
                position: 1,
                message: "empty target".to_string(),
            });
        }
        let target = parser.expr()?;
        if let Some(token) = parser.peek() {
            return Err(parser.error_at(
                token.position,
                format!("unexpected {} after a complete target", token.kind),
            ));
        }
        Ok(target)
    }

    pub fn matches(&self, agent: &AgentFacts<'_>) -> bool {
        match self {
            Target::Patterns(patterns) => patterns
                .iter()
                .any(|pattern| glob_matches(pattern, agent.id) || glob_matches(pattern, agent.ip)),
            Target::Label { key, values } => agent
                .labels
                .get(key)
                .is_some_and(|value| values.iter().any(|wanted| wanted == value)),
            Target::Not(inner) => !inner.matches(agent),
            Target::And(left, right) => left.matches(agent) && right.matches(agent),
            Target::Or(left, right) => left.matches(agent) || right.matches(agent),
        }
    }
}

/// Why an expression does not parse, and where (1-based character position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target does not parse at position {position}: {message}")]
pub struct TargetError {
    pub position: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Open,
    Close,
    Comma,
    Equals,
    And,
    Or,
    Not,
    In,
    Word(String),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Open => f.write_str("\"(\""),
            Kind::Close => f.write_str("\")\""),
            Kind::Comma => f.write_str("\",\""),
            Kind::Equals => f.write_str("\"=\""),
            Kind::And => f.write_str("\"and\""),
            Kind::Or => f.write_str("\"or\""),
            Kind::Not => f.write_str("\"not\""),
            Kind::In => f.write_str("\"in\""),
            Kind::Word(word) => write!(f, "{word:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// 1-based character position of the token's first character.
    position: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, TargetError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().enumerate().peekable();
    while let Some((index, char)) = chars.next() {
        let position = index + 1;
        let kind = match char {
            c if c.is_whitespace() => continue,
            '(' => Kind::Open,
            ')' => Kind::Close,
            ',' => Kind::Comma,
            '=' => Kind::Equals,
            _ => {
                let mut word = String::from(char);
                // A `[...]` class may hold any character but `]`, so a glob like `web[1,2]`
                // stays one word.
                let mut in_class = char == '[';
                while let Some(&(_, next)) = chars.peek() {
                    let ends_word = next.is_whitespace() || matches!(next, '(' | ')' | ',' | '=');
                    if ends_word && !in_class {
                        break;
                    }
                    match next {
                        '[' => in_class = true,
                        ']' => in_class = false,
                        _ => {}
                    }
                    word.push(next);
                    chars.next();
                }
                if in_class {
                    return Err(TargetError {
                        position,
                        message: format!("unclosed \"[\" in {word:?}"),
                    });
                }
                match word.as_str() {
                    "and" => Kind::And,
                    "or" => Kind::Or,
                    "not" => Kind::Not,
                    "in" => Kind::In,
                    _ => Kind::Word(word),
                }
            }
        };
        tokens.push(Token { kind, position });
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    next: usize,
    /// The position just past the text, for "expected … at the end".
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn peek_kind(&self) -> Option<&Kind> {
        self.peek().map(|token| &token.kind)
    }

    fn take(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).cloned();
        if token.is_some() {
            self.next += 1;
        }
        token
    }

    fn error_at(&self, position: usize, message: String) -> TargetError {
        TargetError { position, message }
    }

    /// An error at the next token (or the end), saying what was expected there.
    fn expected(&self, what: &str) -> TargetError {
        match self.peek() {
            Some(token) => self.error_at(
                token.position,
                format!("expected {what}, found {}", token.kind),
            ),
            None => self.error_at(self.end, format!("expected {what} at the end")),
        }
    }

    fn expr(&mut self) -> Result<Target, TargetError> {
        let mut left = self.term()?;
        while self.peek_kind() == Some(&Kind::Or) {
            self.next += 1;
            let right = self.term()?;
            left = Target::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Target, TargetError> {
        let mut left = self.factor()?;
        while self.peek_kind() == Some(&Kind::And) {
            self.next += 1;
            let right = self.factor()?;
            left = Target::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Target, TargetError> {
        match self.peek_kind() {
            Some(Kind::Not) => {
                self.next += 1;
                Ok(Target::Not(Box::new(self.factor()?)))
            }
            Some(Kind::Open) => {
                self.next += 1;
                let inner = self.expr()?;
                match self.peek_kind() {
                    Some(Kind::Close) => {
                        self.next += 1;
                        Ok(inner)
                    }
                    _ => Err(self.expected("\")\"")),
                }
            }
            Some(Kind::Word(_)) => self.atom(),
            _ => Err(self.expected("an agent, a pattern, a label match, \"not\" or \"(\"")),
        }
    }

    fn atom(&mut self) -> Result<Target, TargetError> {
        let Some(Token {
            kind: Kind::Word(first),
            position,
        }) = self.take()
        else {
            return Err(self.expected("a word"));
        };
        match self.peek_kind() {
            Some(Kind::Equals) => {
                self.label_key(&first, position)?;
                self.next += 1;
                let value = self.value()?;
                Ok(Target::Label {
                    key: first,
                    values: vec![value],
                })
            }
            Some(Kind::In) => {
                self.label_key(&first, position)?;
                self.next += 1;
                if self.peek_kind() != Some(&Kind::Open) {
                    return Err(self.expected("\"(\" after \"in\""));
                }
                self.next += 1;
                let mut values = vec![self.value()?];
                loop {
                    match self.peek_kind() {
                        Some(Kind::Comma) => {
                            self.next += 1;
                            values.push(self.value()?);
                        }
                        Some(Kind::Close) => {
                            self.next += 1;
                            return Ok(Target::Label { key: first, values });
                        }
                        _ => return Err(self.expected("\",\" or \")\" in a value list")),
                    }
                }
            }
            _ => {
                let mut patterns = vec![first];
                while self.peek_kind() == Some(&Kind::Comma) {
                    self.next += 1;
                    match self.peek_kind() {
                        Some(Kind::Word(word)) => {
                            patterns.push(word.clone());
                            self.next += 1;
                        }
                        _ => return Err(self.expected("an agent or a pattern after \",\"")),
                    }
                }
                Ok(Target::Patterns(patterns))
            }
        }
    }

    fn label_key(&self, key: &str, position: usize) -> Result<(), TargetError> {
        if is_valid_label_text(key) {
            Ok(())
        } else {
            Err(self.error_at(
                position,
                format!("label {key:?} must be 1-64 of [A-Za-z0-9_.-]"),
            ))
        }
    }

    fn value(&mut self) -> Result<String, TargetError> {
        match self.peek().cloned() {
            Some(Token {
                kind: Kind::Word(word),
                position,
            }) => {
                if !is_valid_label_text(&word) {
                    return Err(self.error_at(
                        position,
                        format!("label value {word:?} must be 1-64 of [A-Za-z0-9_.-]"),
                    ));
                }
                self.next += 1;
                Ok(word)
            }
            _ => Err(self.expected("a label value")),
        }
    }
}

/// Shell-style glob: `*` any run, `?` one character, `[abc]`, `[a-z]`, `[!x]` or `[^x]` one
/// character of (or not of) a class. Without wildcards it is an exact match.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in practice and
    // never exponential, whatever the pattern.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_matches(&pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == '[' {
                        // An unclosed `[` is a plain character.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                literal if literal == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether `c` is in the class starting at `pattern[open]` (a `[`), and the index after the
/// class; `None` when the class is not closed.
fn class_matches(pattern: &[char], open: usize, c: char) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negated = matches!(pattern.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &current = pattern.get(i)?;
        if current == ']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|&end| end != ']') {
            let end = pattern[i + 2];
            if current <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if current == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn good_expressions_parse_to_the_expected_tree() {
        let word = |w: &str| Target::Patterns(vec![w.to_string()]);
        let label = |k: &str, vs: &[&str]| Target::Label {
            key: k.to_string(),
            values: vs.iter().map(|v| v.to_string()).collect(),
        };
        let and = |a, b| Target::And(Box::new(a), Box::new(b));
        let or = |a, b| Target::Or(Box::new(a), Box::new(b));
        let not = |a| Target::Not(Box::new(a));
        let table: Vec<(&str, Target)> = vec![
            ("agent-1", word("agent-1")),
            ("10.0.0.7", word("10.0.0.7")),
            (
                "a1, a2,10.0.0.3",
                Target::Patterns(vec!["a1".into(), "a2".into(), "10.0.0.3".into()]),
            ),
            ("web-*", word("web-*")),
            ("web[1,2]", word("web[1,2]")),
            ("role=web", label("role", &["web"])),
            ("role = web", label("role", &["web"])),
            ("dc in (bj,sh)", label("dc", &["bj", "sh"])),
            ("dc in ( bj )", label("dc", &["bj"])),
            (
                "role=web and dc in (bj, sh)",
                and(label("role", &["web"]), label("dc", &["bj", "sh"])),
            ),
            // `and` binds tighter than `or`.
            ("a or b and c", or(word("a"), and(word("b"), word("c")))),
            ("(a or b) and c", and(or(word("a"), word("b")), word("c"))),
            ("not role=db", not(label("role", &["db"]))),
            ("not not a", not(not(word("a")))),
            (
                "role=web and not (dc=sh or 10.0.0.*)",
                and(
                    label("role", &["web"]),
                    not(or(label("dc", &["sh"]), word("10.0.0.*"))),
                ),
            ),
            // Keywords are lowercase words only.
            ("AND", word("AND")),
        ];
        for (text, expected) in table {
            assert_eq!(Target::parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_expressions_name_the_position() {
        let table: &[(&str, usize, &str)] = &[
            ("", 1, "empty target"),
            ("   ", 1, "empty target"),
            ("role=", 6, "expected a label value at the end"),
            ("role=web and", 13, "at the end"),
            ("and role=web", 1, "found \"and\""),
            ("(a or b", 8, "expected \")\" at the end"),
            ("a or b)", 7, "unexpected \")\""),
            ("dc in bj", 7, "\"(\" after \"in\""),
            ("dc in (bj sh)", 11, "\",\" or \")\""),
            ("dc in (bj,)", 11, "expected a label value"),
            ("a,", 3, "after \",\""),
            ("a,,b", 3, "after \",\""),
            ("ro/le=web", 1, "label \"ro/le\""),
            ("role=w/b", 6, "label value \"w/b\""),
            ("web[1", 1, "unclosed \"[\""),
            ("a b", 3, "unexpected \"b\""),
            ("not", 4, "at the end"),
            ("=web", 1, "found \"=\""),
            ("role=web=x", 9, "unexpected \"=\""),
        ];
        for &(text, position, fragment) in table {
            match Target::parse(text) {
                Ok(target) => panic!("{text:?} parsed as {target:?}"),
                Err(err) => {
                    assert_eq!(err.position, position, "{text:?}: {err}");
                    assert!(err.message.contains(fragment), "{text:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn targets_select_on_ids_ips_and_labels() {
        let web_bj = labels(&[("role", "web"), ("dc", "bj")]);
        let db_sh = labels(&[("role", "db"), ("dc", "sh")]);
        let none = Labels::new();
        let agents = [
            AgentFacts {
                id: "web-1",
                ip: "10.0.0.1",
                labels: &web_bj,
            },
            AgentFacts {
                id: "db-1",
                ip: "10.0.1.1",
                labels: &db_sh,
            },
            AgentFacts {
                id: "bare",
                ip: "bare",
                labels: &none,
            },
        ];
        let selected = |text: &str| -> Vec<&str> {
            let target = Target::parse(text).unwrap();
            agents
                .iter()
                .filter(|agent| target.matches(agent))
                .map(|agent| agent.id)
                .collect()
        };
        assert_eq!(selected("*"), ["web-1", "db-1", "bare"]);
        assert_eq!(selected("role=web"), ["web-1"]);
        assert_eq!(selected("dc in (bj,sh)"), ["web-1", "db-1"]);
        assert_eq!(selected("not role=web"), ["db-1", "bare"]);
        assert_eq!(selected("10.0.1.*"), ["db-1"]);
        assert_eq!(selected("web-?,bare"), ["web-1", "bare"]);
        assert_eq!(selected("role=web or dc=sh"), ["web-1", "db-1"]);
        assert_eq!(selected("role=web and dc=sh"), Vec::<&str>::new());
        assert_eq!(selected("(web-1 or db-1) and not dc=bj"), ["db-1"]);
    }

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbb", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("web[12]", "web2", true),
            ("web[1-3]", "web3", true),
            ("web[1-3]", "web4", false),
            ("web[!1]", "web2", true),
            ("web[!1]", "web1", false),
            ("*-*-*", "a-b-c", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("[", "[", true),
        ] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn label_rules() {
        assert!(validate_labels(&labels(&[("role", "web"), ("k8s.zone-1", "a_b")])).is_ok());
        let err = validate_labels(&labels(&[("ro le", "web")])).unwrap_err();
        assert!(err.contains("\"ro le\""), "{err}");
        let err = validate_labels(&labels(&[("role", "")])).unwrap_err();
        assert!(err.contains("role"), "{err}");
        let long = "x".repeat(65);
        assert!(validate_labels(&labels(&[("role", long.as_str())])).is_err());
    }
}
