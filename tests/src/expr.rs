//! A deliberately small subset of expr-lang, the language Argo Rollouts evaluates a metric's
//! `successCondition` and `failureCondition` in, so that tests can run the conditions written in
//! the deploy examples against a real daemon's answer:
//!
//! - `result`, its fields and elements: `result.decision`, `result.shadows[0].model_id`,
//!   `result["model_id"]` (a missing field is `nil`, as in expr-lang);
//! - string (`"..."` or `'...'`), number, `true`, `false` and `nil` literals;
//! - `==`, `!=`, `<`, `<=`, `>`, `>=` (ordering on numbers or strings);
//! - `&&` / `and`, `||` / `or`, `!` / `not`, parentheses.
//!
//! Anything else (functions, arithmetic, `in`, ternaries) is an error, never a silent false.
use serde_json::Value;

/// Why a condition could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("at byte {at}: {problem}")]
    Syntax { at: usize, problem: String },
    #[error("{0}")]
    Type(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    Op(&'static str),
}

fn tokens(text: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let syntax = |at, problem: &str| ExprError::Syntax { at, problem: problem.into() };
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'"' || c == b'\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(syntax(start, "unterminated string")),
                    Some(&q) if q == c => break,
                    Some(b'\\') => {
                        let escaped = *bytes.get(i + 1).ok_or_else(|| syntax(i, "dangling escape"))?;
                        s.push(match escaped {
                            b'n' => '\n',
                            b't' => '\t',
                            other => other as char,
                        });
                        i += 2;
                    }
                    Some(_) => {
                        let ch = text[i..].chars().next().expect("in bounds");
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            i += 1;
            out.push((start, Token::Str(s)));
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.' || bytes[i] == b'e') {
                i += 1;
            }
            let n = text[start..i].parse().map_err(|_| syntax(start, "bad number"))?;
            out.push((start, Token::Num(n)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, Token::Ident(text[start..i].to_string())));
        } else {
            let op = ["==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", "."]
                .into_iter()
                .find(|op| text[i..].starts_with(op))
                .ok_or_else(|| syntax(i, &format!("`{}` is not in the supported subset", c as char)))?;
            i += op.len();
            out.push((start, Token::Op(op)));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    next: usize,
    result: &'a Value,
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(at, _)| *at)
    }

    fn error(&self, problem: impl Into<String>) -> ExprError {
        ExprError::Syntax { at: self.at(), problem: problem.into() }
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.peek() == Some(&Token::Op(leak(op))) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, symbol: &str, word: &str) -> bool {
        if self.eat_op(symbol) {
            return true;
        }
        if matches!(self.peek(), Some(Token::Ident(w)) if w == word) {
            self.next += 1;
            return true;
        }
        false
    }

    fn or(&mut self) -> Result<Value, ExprError> {
        let mut left = self.and()?;
        while self.eat_word("||", "or") {
            let right = self.and()?;
            left = Value::Bool(truth(&left)? || truth(&right)?);
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Value, ExprError> {
        let mut left = self.not()?;
        while self.eat_word("&&", "and") {
            let right = self.not()?;
            left = Value::Bool(truth(&left)? && truth(&right)?);
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Value, ExprError> {
        if self.eat_word("!", "not") {
            return Ok(Value::Bool(!truth(&self.not()?)?));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Value, ExprError> {
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Token::Op(op @ ("==" | "!=" | "<" | "<=" | ">" | ">="))) => *op,
            _ => return Ok(left),
        };
        self.next += 1;
        let right = self.operand()?;
        compare(&left, op, &right).map(Value::Bool)
    }

    fn operand(&mut self) -> Result<Value, ExprError> {
        let Some((_, token)) = self.tokens.get(self.next).cloned() else {
            return Err(self.error("an operand is missing"));
        };
        self.next += 1;
        match token {
            Token::Str(s) => Ok(Value::String(s)),
            Token::Num(n) => Ok(Value::from(n)),
            Token::Op("(") => {
                let value = self.or()?;
                if !self.eat_op(")") {
                    return Err(self.error("`)` expected"));
                }
                Ok(value)
            }
            Token::Ident(word) => match word.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                "nil" => Ok(Value::Null),
                "result" => self.path(self.result.clone()),
                other => Err(ExprError::Syntax {
                    at: self.tokens[self.next - 1].0,
                    problem: format!("`{other}` is not in the supported subset (only `result`)"),
                }),
            },
            Token::Op(op) => Err(ExprError::Syntax {
                at: self.tokens[self.next - 1].0,
                problem: format!("`{op}` cannot start an operand"),
            }),
        }
    }

    fn path(&mut self, mut value: Value) -> Result<Value, ExprError> {
        loop {
            if self.eat_op(".") {
                let Some(Token::Ident(field)) = self.peek().cloned() else {
                    return Err(self.error("a field name must follow `.`"));
                };
                self.next += 1;
                value = value.get(&field).cloned().unwrap_or(Value::Null);
            } else if self.eat_op("[") {
                let key = self.operand()?;
                if !self.eat_op("]") {
                    return Err(self.error("`]` expected"));
                }
                value = match key {
                    Value::String(field) => value.get(&field).cloned().unwrap_or(Value::Null),
                    Value::Number(n) => n
                        .as_f64()
                        .filter(|i| i.fract() == 0.0 && *i >= 0.0)
                        .and_then(|i| value.get(i as usize).cloned())
                        .unwrap_or(Value::Null),
                    other => return Err(ExprError::Type(format!("cannot index with {other}"))),
                };
            } else {
                return Ok(value);
            }
        }
    }
}

/// The `&'static str` of a known operator (tokens hold them as statics).
fn leak(op: &str) -> &'static str {
    ["==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", "."]
        .into_iter()
        .find(|known| *known == op)
        .expect("a known operator")
}

fn truth(value: &Value) -> Result<bool, ExprError> {
    value.as_bool().ok_or_else(|| ExprError::Type(format!("{value} is not a boolean")))
}

fn compare(left: &Value, op: &str, right: &Value) -> Result<bool, ExprError> {
    let equal = match (left.as_f64(), right.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => left == right,
    };
    match op {
        "==" => return Ok(equal),
        "!=" => return Ok(!equal),
        _ => {}
    }
    let ordering = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
    .ok_or_else(|| ExprError::Type(format!("cannot order {left} and {right}")))?;
    Ok(match op {
        "<" => ordering.is_lt(),
        "<=" => ordering.is_le(),
        ">" => ordering.is_gt(),
        _ => ordering.is_ge(),
    })
}

/// Evaluates `condition` with `result` bound to `result`; the condition must yield a boolean.
pub fn evaluate(condition: &str, result: &Value) -> Result<bool, ExprError> {
    let mut parser = Parser { tokens: tokens(condition)?, next: 0, result, end: condition.len() };
    let value = parser.or()?;
    if parser.next < parser.tokens.len() {
        return Err(parser.error("unexpected text after the condition"));
    }
    truth(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_of_the_subset() {
        let r = json!({"decision": "PROMOTE", "n": 120, "ok": true, "list": [0.97, 0.5], "gone": null});
        let t = |c: &str| evaluate(c, &r).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert!(t(r#"result.decision == "PROMOTE""#));
        assert!(t("result.decision == 'PROMOTE'"));
        assert!(!t(r#"result.decision == "REJECT""#));
        assert!(t(r#"result.decision != "REJECT" && result.n >= 100"#));
        assert!(t(r#"result.n < 100 || result.ok"#));
        assert!(t(r#"not (result.n < 100) and result["decision"] == "PROMOTE""#));
        assert!(t("result.list[0] >= 0.95 && result.list[1] < 0.9"));
        assert!(t("result.missing == nil && result.gone == nil"));
        assert!(t("!false"));
        assert!(evaluate("result >= 0.95", &json!(0.97)).unwrap());
        assert!(evaluate(r#"result == "PROMOTE""#, &json!("PROMOTE")).unwrap());
    }

    #[test]
    fn outside_the_subset_is_an_error() {
        let r = json!({"n": 1});
        for bad in [
            "len(result) > 0",
            "result.n + 1 > 1",
            "result.n",
            "result.n >",
            "(result.n > 0",
            r#"result.n == "x"" && true"#,
            "other.n > 0",
            "result.n > 0 result",
            "result.n < 'a'",
        ] {
            assert!(evaluate(bad, &r).is_err(), "{bad} should not evaluate");
        }
    }
}
