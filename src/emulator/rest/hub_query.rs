//! IoT Hub's query language, the part the emulator speaks: `SELECT * FROM devices` with an
//! optional `WHERE` of comparisons (`=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`) between paths into
//! the twin document (`deviceId`, `status`, `tags.site`, `properties.reported.fw`, ...) and
//! string, number, boolean or null literals, joined by `AND`, `OR`, `NOT` and parentheses,
//! plus `IS_DEFINED(path)`.
//!
//! Evaluated as IoT Hub's (Cosmos DB's) SQL does: a path that is not in the document is
//! *undefined*, and a comparison with an undefined side, or between values of different types,
//! is undefined rather than false, so `NOT` of it is undefined too and the twin is left out (a
//! twin without `tags.site` matches neither `tags.site = 'a'` nor `tags.site != 'a'`). Only a
//! condition that is true selects a twin.
//!
//! Anything else (projections, `TOP`, `GROUP BY`, `IN`, other functions, other collections
//! such as `devices.modules`) is refused with the reason, never skipped: a clause silently
//! ignored would return twins the caller asked to leave out.

use std::cmp::Ordering;

use serde_json::Value;

/// Parentheses and `NOT`s nested deeper than this are refused (the parser recurses).
const MAX_NESTING: usize = 64;

/// A parsed `SELECT * FROM devices [WHERE ...]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TwinQuery {
    condition: Option<Condition>,
}

impl TwinQuery {
    /// Parses a query; `Err` says what is not understood.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            at: 0,
            depth: 0,
        };
        let query = parser.query()?;
        match parser.peek() {
            None => Ok(query),
            Some(token) => Err(format!("unexpected {} after the query", token.describe())),
        }
    }

    /// Whether the twin document is selected.
    pub(super) fn matches(&self, twin: &Value) -> bool {
        self.condition
            .as_ref()
            .is_none_or(|c| c.evaluate(twin) == Some(true))
    }
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Compare(Operand, Comparison, Operand),
    IsDefined(Vec<String>),
    Not(Box<Condition>),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Vec<String>),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Condition {
    /// Three-valued: `None` is SQL's undefined.
    fn evaluate(&self, twin: &Value) -> Option<bool> {
        match self {
            Condition::Compare(left, comparison, right) => {
                compare(left.resolve(twin)?, *comparison, right.resolve(twin)?)
            }
            Condition::IsDefined(path) => Some(lookup(twin, path).is_some()),
            Condition::Not(inner) => inner.evaluate(twin).map(|b| !b),
            Condition::And(a, b) => match (a.evaluate(twin), b.evaluate(twin)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Condition::Or(a, b) => match (a.evaluate(twin), b.evaluate(twin)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }
}

impl Operand {
    fn resolve<'a>(&'a self, twin: &'a Value) -> Option<&'a Value> {
        match self {
            Operand::Path(path) => lookup(twin, path),
            Operand::Literal(value) => Some(value),
        }
    }
}

/// The value at `path`: the twin's own fields by any case (IoT Hub's documentation writes
/// both `deviceId` and `DeviceId`), properties and tags by their exact names.
fn lookup<'a>(twin: &'a Value, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let top = twin.as_object()?;
    let mut value = top.get(first.as_str()).or_else(|| {
        top.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(first))
            .map(|(_, v)| v)
    })?;
    for segment in rest {
        value = value.as_object()?.get(segment.as_str())?;
    }
    Some(value)
}

/// A comparison of two defined values; `None` when their types differ or cannot be ordered.
fn compare(left: &Value, comparison: Comparison, right: &Value) -> Option<bool> {
    let order = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?)?,
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => {
            // Documents compare for equality only.
            return match comparison {
                Comparison::Equal => Some(left == right),
                Comparison::NotEqual => Some(left != right),
                _ => None,
            };
        }
        _ => return None,
    };
    Some(match comparison {
        Comparison::Equal => order == Ordering::Equal,
        Comparison::NotEqual => order != Ordering::Equal,
        Comparison::Less => order == Ordering::Less,
        Comparison::LessOrEqual => order != Ordering::Greater,
        Comparison::Greater => order == Ordering::Greater,
        Comparison::GreaterOrEqual => order != Ordering::Less,
    })
}

// ---- tokens ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A name or keyword, as written.
    Word(String),
    String(String),
    Number(serde_json::Number),
    Symbol(&'static str),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("'{w}'"),
            Token::String(s) => format!("the string '{s}'"),
            Token::Number(n) => format!("the number {n}"),
            Token::Symbol(s) => format!("'{s}'"),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

const SYMBOLS: [&str; 14] = [
    "<=", ">=", "!=", "<>", "=", "<", ">", "(", ")", ".", ",", "*", "[", "]",
];

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            // A quote inside is doubled (SQL) or escaped with a backslash.
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("a string opened with {c} is never closed")),
                    Some('\\') if chars.get(i + 1).is_some() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                        value.push(c);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            tokens.push(Token::String(value));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '.')
                || (chars.get(i).is_some_and(|d| *d == '-' || *d == '+')
                    && matches!(chars[i - 1], 'e' | 'E'))
            {
                i += 1;
            }
            let literal: String = chars[start..i].iter().collect();
            let number = serde_json::from_str::<serde_json::Number>(&literal)
                .map_err(|_| format!("{literal} is not a number"))?;
            tokens.push(Token::Number(number));
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|d| d.is_alphanumeric() || *d == '_' || *d == '$')
            {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| {
            let symbol: Vec<char> = s.chars().collect();
            chars[i..].starts_with(&symbol)
        }) {
            tokens.push(Token::Symbol(symbol));
            i += symbol.len();
        } else {
            return Err(format!("unexpected character '{c}'"));
        }
    }
    Ok(tokens)
}

// ---- grammar -----------------------------------------------------------------------------

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

/// Words that end an operand or a condition: never a path's name.
const RESERVED: [&str; 17] = [
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "TRUE",
    "FALSE",
    "NULL",
    "IN",
    "NIN",
    "GROUP",
    "BY",
    "ORDER",
    "TOP",
    "AS",
    "IS_DEFINED",
];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), String> {
        match self.next() {
            Some(t) if t.is_keyword(keyword) => Ok(()),
            Some(t) => Err(format!("expected {keyword}, found {}", t.describe())),
            None => Err(format!("expected {keyword}, found the end of the query")),
        }
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), String> {
        match self.next() {
            Some(Token::Symbol(s)) if s == symbol => Ok(()),
            Some(t) => Err(format!("expected '{symbol}', found {}", t.describe())),
            None => Err(format!("expected '{symbol}', found the end of the query")),
        }
    }

    fn query(&mut self) -> Result<TwinQuery, String> {
        self.expect_keyword("SELECT")?;
        match self.next() {
            Some(Token::Symbol("*")) => {}
            Some(t) if t.is_keyword("TOP") => {
                return Err("TOP is not supported by the emulator: page with \
                            x-ms-max-item-count instead"
                    .into());
            }
            Some(t) => {
                return Err(format!(
                    "only SELECT * is supported by the emulator (projections and aggregates \
                     are not), found {}",
                    t.describe()
                ));
            }
            None => return Err("expected '*' after SELECT".into()),
        }
        self.expect_keyword("FROM")?;
        match self.next() {
            Some(t) if t.is_keyword("devices") => {}
            Some(t) => {
                return Err(format!(
                    "only FROM devices is supported by the emulator, found {}",
                    t.describe()
                ));
            }
            None => return Err("expected devices after FROM".into()),
        }
        if let Some(Token::Symbol(".")) = self.peek() {
            return Err(
                "only FROM devices is supported by the emulator (not modules or jobs)".into(),
            );
        }
        let condition = match self.peek() {
            None => None,
            Some(t) if t.is_keyword("WHERE") => {
                self.at += 1;
                Some(self.or()?)
            }
            Some(t) if t.is_keyword("GROUP") || t.is_keyword("ORDER") => {
                return Err(format!("{} is not supported by the emulator", t.describe()));
            }
            Some(t) => return Err(format!("expected WHERE, found {}", t.describe())),
        };
        Ok(TwinQuery { condition })
    }

    fn or(&mut self) -> Result<Condition, String> {
        let mut left = self.and()?;
        while self.peek().is_some_and(|t| t.is_keyword("OR")) {
            self.at += 1;
            left = Condition::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, String> {
        let mut left = self.not()?;
        while self.peek().is_some_and(|t| t.is_keyword("AND")) {
            self.at += 1;
            left = Condition::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn nested<T>(
        &mut self,
        inner: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<T, String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!(
                "the condition nests deeper than {MAX_NESTING} levels"
            ));
        }
        let out = inner(self);
        self.depth -= 1;
        out
    }

    fn not(&mut self) -> Result<Condition, String> {
        if self.peek().is_some_and(|t| t.is_keyword("NOT")) {
            self.at += 1;
            return self.nested(|p| Ok(Condition::Not(Box::new(p.not()?))));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Condition, String> {
        match self.peek() {
            Some(Token::Symbol("(")) => {
                self.at += 1;
                let inner = self.nested(Self::or)?;
                self.expect_symbol(")")?;
                Ok(inner)
            }
            Some(Token::Word(w))
                if matches!(self.tokens.get(self.at + 1), Some(Token::Symbol("("))) =>
            {
                let name = w.clone();
                if !name.eq_ignore_ascii_case("IS_DEFINED") {
                    return Err(format!(
                        "the function {name} is not supported by the emulator (only IS_DEFINED)"
                    ));
                }
                self.at += 2;
                let path = self.path()?;
                self.expect_symbol(")")?;
                Ok(Condition::IsDefined(path))
            }
            _ => {
                let left = self.operand()?;
                let comparison = match self.next() {
                    Some(Token::Symbol(s)) => match s {
                        "=" => Comparison::Equal,
                        "!=" | "<>" => Comparison::NotEqual,
                        "<" => Comparison::Less,
                        "<=" => Comparison::LessOrEqual,
                        ">" => Comparison::Greater,
                        ">=" => Comparison::GreaterOrEqual,
                        other => {
                            return Err(format!("expected a comparison, found '{other}'"));
                        }
                    },
                    Some(t) if t.is_keyword("IN") || t.is_keyword("NIN") => {
                        return Err(format!(
                            "{} is not supported by the emulator: compare with = and OR",
                            t.describe()
                        ));
                    }
                    Some(t) => {
                        return Err(format!("expected a comparison, found {}", t.describe()));
                    }
                    None => return Err("expected a comparison, found the end of the query".into()),
                };
                let right = self.operand()?;
                Ok(Condition::Compare(left, comparison, right))
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.peek() {
            Some(Token::String(s)) => {
                let value = Value::String(s.clone());
                self.at += 1;
                Ok(Operand::Literal(value))
            }
            Some(Token::Number(n)) => {
                let value = Value::Number(n.clone());
                self.at += 1;
                Ok(Operand::Literal(value))
            }
            Some(t) if t.is_keyword("TRUE") || t.is_keyword("FALSE") => {
                let value = Value::Bool(t.is_keyword("TRUE"));
                self.at += 1;
                Ok(Operand::Literal(value))
            }
            Some(t) if t.is_keyword("NULL") => {
                self.at += 1;
                Ok(Operand::Literal(Value::Null))
            }
            _ => Ok(Operand::Path(self.path()?)),
        }
    }

    fn path(&mut self) -> Result<Vec<String>, String> {
        let mut path = vec![self.name()?];
        while let Some(Token::Symbol(".")) = self.peek() {
            self.at += 1;
            path.push(self.name()?);
        }
        if let Some(Token::Symbol("[")) = self.peek() {
            return Err("bracket paths ([...]) are not supported by the emulator: use dots".into());
        }
        Ok(path)
    }

    fn name(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) if !RESERVED.iter().any(|r| w.eq_ignore_ascii_case(r)) => Ok(w),
            Some(t) => Err(format!("expected a property name, found {}", t.describe())),
            None => Err("expected a property name, found the end of the query".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Parsing, evaluation with SQL's undefined, and refusals of what is not understood.

    use super::*;
    use serde_json::json;

    fn twins() -> Vec<Value> {
        vec![
            json!({"deviceId": "a1", "status": "enabled", "tags": {"site": "lab", "floor": 2},
                   "properties": {"desired": {"interval": 5},
                                  "reported": {"fw": "1.2", "battery": 80, "ok": true}}}),
            json!({"deviceId": "a2", "status": "disabled", "tags": {"site": "plant", "floor": 1},
                   "properties": {"desired": {"interval": 10},
                                  "reported": {"fw": "1.3", "battery": 15, "ok": false}}}),
            json!({"deviceId": "b1", "status": "enabled", "tags": {},
                   "properties": {"desired": {}, "reported": {"battery": null}}}),
        ]
    }

    fn selected(query: &str) -> Vec<String> {
        let query = TwinQuery::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
        twins()
            .iter()
            .filter(|t| query.matches(t))
            .map(|t| t["deviceId"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn comparisons_select_by_id_tags_and_properties() {
        assert_eq!(selected("SELECT * FROM devices"), ["a1", "a2", "b1"]);
        assert_eq!(
            selected("select * from DEVICES where deviceId = 'a2'"),
            ["a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE DeviceId = \"b1\""),
            ["b1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.site = 'lab'"),
            ["a1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.floor >= 2"),
            ["a1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.floor < 2"),
            ["a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.floor <= 2.0"),
            ["a1", "a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE properties.reported.battery > 20"),
            ["a1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE properties.desired.interval = 10"),
            ["a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE properties.reported.ok = false"),
            ["a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE properties.reported.battery = null"),
            ["b1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE status <> 'enabled'"),
            ["a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE deviceId > 'a1'"),
            ["a2", "b1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.floor > -1e1"),
            ["a1", "a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE 2 = tags.floor"),
            ["a1"]
        );
    }

    #[test]
    fn and_or_not_and_parentheses_combine() {
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.site = 'lab' OR tags.site = 'plant'"),
            ["a1", "a2"]
        );
        assert_eq!(
            selected(
                "SELECT * FROM devices WHERE (tags.site = 'lab' OR tags.site = 'plant') \
                 AND properties.reported.battery < 50"
            ),
            ["a2"]
        );
        // AND binds tighter than OR.
        assert_eq!(
            selected(
                "SELECT * FROM devices WHERE deviceId = 'b1' OR tags.site = 'plant' AND \
                 tags.floor = 2"
            ),
            ["b1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE NOT (status = 'enabled')"),
            ["a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE IS_DEFINED(tags.site) AND NOT tags.floor = 1"),
            ["a1"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE NOT is_defined(properties.reported.fw)"),
            ["b1"]
        );
    }

    #[test]
    fn undefined_and_mismatched_types_select_nothing_either_way() {
        // b1 has no tags.site: neither = nor != nor NOT = selects it.
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.site != 'lab'"),
            ["a2"]
        );
        assert_eq!(
            selected("SELECT * FROM devices WHERE NOT tags.site = 'lab'"),
            ["a2"]
        );
        // A number compared with a string is undefined, not false.
        assert!(selected("SELECT * FROM devices WHERE tags.floor = '2'").is_empty());
        assert!(selected("SELECT * FROM devices WHERE NOT tags.floor = '2'").is_empty());
        // Undefined OR true is true; undefined AND false is false.
        assert_eq!(
            selected("SELECT * FROM devices WHERE tags.site = 'x' OR deviceId = 'b1'"),
            ["b1"]
        );
        // Property names are exact below the twin's own fields.
        assert!(selected("SELECT * FROM devices WHERE tags.SITE = 'lab'").is_empty());
    }

    #[test]
    fn strings_take_escaped_quotes() {
        let query = TwinQuery::parse("SELECT * FROM devices WHERE tags.name = 'it''s'").unwrap();
        assert!(query.matches(&json!({"tags": {"name": "it's"}})));
        let query = TwinQuery::parse(r"SELECT * FROM devices WHERE tags.name = 'it\'s'").unwrap();
        assert!(query.matches(&json!({"tags": {"name": "it's"}})));
        assert!(!query.matches(&json!({"tags": {"name": "its"}})));
    }

    #[test]
    fn what_is_not_understood_is_refused_with_its_reason() {
        for (query, reason) in [
            ("SELECT deviceId FROM devices", "only SELECT *"),
            ("SELECT COUNT() AS n FROM devices", "only SELECT *"),
            ("SELECT TOP 5 * FROM devices", "TOP"),
            ("SELECT * FROM devices.modules", "modules"),
            ("SELECT * FROM jobs", "only FROM devices"),
            ("SELECT * FROM devices WHERE deviceId IN ['a']", "IN"),
            ("SELECT * FROM devices GROUP BY tags.site", "GROUP"),
            (
                "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'a')",
                "STARTSWITH",
            ),
            (
                "SELECT * FROM devices WHERE tags['site'] = 'lab'",
                "bracket",
            ),
            (
                "SELECT * FROM devices WHERE tags.site = 'lab",
                "never closed",
            ),
            (
                "SELECT * FROM devices WHERE tags.site",
                "expected a comparison",
            ),
            (
                "SELECT * FROM devices WHERE tags.site = 'a' AND",
                "end of the query",
            ),
            (
                "SELECT * FROM devices WHERE (tags.site = 'a'",
                "expected ')'",
            ),
            (
                "SELECT * FROM devices WHERE tags.site = 'a' tags.x = 1",
                "after the query",
            ),
            (
                "SELECT * FROM devices WHERE tags.site ~ 'a'",
                "unexpected character",
            ),
            ("SELECT * FROM devices LIMIT 1", "expected WHERE"),
            ("DELETE FROM devices", "expected SELECT"),
            ("", "expected SELECT"),
            ("SELECT * FROM devices WHERE tags.x = 1.2.3", "not a number"),
        ] {
            let error = TwinQuery::parse(query).expect_err(query);
            assert!(error.contains(reason), "{query}: {error}");
        }
        let deep = format!(
            "SELECT * FROM devices WHERE {}deviceId = 'a'{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        assert!(
            TwinQuery::parse(&deep)
                .unwrap_err()
                .contains("nests deeper")
        );
        let nots = format!(
            "SELECT * FROM devices WHERE {}deviceId = 'a'",
            "NOT ".repeat(MAX_NESTING + 1)
        );
        assert!(
            TwinQuery::parse(&nots)
                .unwrap_err()
                .contains("nests deeper")
        );
    }
}
