//! The JSON value a comparison walks, and the strict parser that builds it.
//!
//! Why not `serde_json::Value`: its numbers are `u64`, `i64` or `f64`, and without the
//! `float_roundtrip` feature its float parsing is not even correctly rounded, so two different
//! numbers on the wire (`0.9736888111888111` and `0.9736888111888112`) can become one `f64` and
//! compare equal. Its `arbitrary_precision` feature would keep the text, but it is a switch for the
//! whole build and changes how every other crate in the binary (kube, k8s-openapi) sees numbers.
//!
//! Here a [`Number`] keeps its text as written. Two numbers are equal when their *decimal values*
//! are: `1`, `1.0`, `1e0` and `10e-1` are equal; `0.1` and `0.10000000000000001` are not, although
//! they are the same `f64`. `-0` equals `0` (JSON's grammar gives them the same value, and so does
//! IEEE 754). Tolerances and argmax use the correctly rounded `f64` of the text ([`Number::as_f64`]).
//!
//! The parser follows RFC 8259 strictly (no comments, no trailing commas, no `NaN`, UTF-8 only),
//! borrows strings and numbers from the input when it can, never panics, and refuses:
//! - nesting 128 levels deep or more (the comparison recurses, and serde_json draws the same line);
//! - numbers outside `f64`'s range (`1e400`): no tolerance can be applied to them;
//! - exponents with more than 18 significant digits (`1e-0000000000000000000000001` is fine,
//!   `1e-9999999999999999999` is not), which no number a model emits needs.
//!
//! Objects keep their members sorted by key (byte order), a repeated key keeping its last value,
//! as `serde_json::Map` does; comparisons therefore report differences in key order.
use std::{borrow::Cow, fmt};

use serde::{Serialize, ser::SerializeMap, ser::SerializeSeq};

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 128;

/// Most significant digits (after leading zeros) an exponent may have.
const MAX_EXPONENT_DIGITS: usize = 18;

/// A JSON value whose numbers keep their text.
#[derive(Clone, Debug, Default)]
pub enum Json<'a> {
    #[default]
    Null,
    Bool(bool),
    Number(Number<'a>),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON number as written: text that matches RFC 8259's `number` production.
#[derive(Clone, Debug)]
pub struct Number<'a>(Cow<'a, str>);

/// A JSON object: members sorted by key, keys unique.
#[derive(Clone, Debug, Default)]
pub struct Object<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

/// Why a body is not JSON that can be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("EOF while parsing a value")]
    Eof,
    #[error("expected value")]
    ExpectedValue,
    #[error("expected `,` or `]`")]
    ExpectedArrayComma,
    #[error("expected `,` or `}}`")]
    ExpectedObjectComma,
    #[error("expected `:`")]
    ExpectedColon,
    #[error("key must be a string")]
    KeyMustBeString,
    #[error("invalid number")]
    InvalidNumber,
    #[error("number out of range")]
    NumberOutOfRange,
    #[error("invalid escape")]
    InvalidEscape,
    #[error("control character (\\u0000-\\u001F) found while parsing a string")]
    ControlCharacter,
    #[error("lone surrogate in hex escape")]
    LoneSurrogate,
    #[error("invalid UTF-8 in string")]
    InvalidUtf8,
    #[error("trailing characters")]
    TrailingCharacters,
    #[error("nested {MAX_DEPTH} levels deep or more")]
    TooDeep,
}

/// A [`Problem`] and where it was found (1-based, as editors count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{problem} at line {line} column {column}")]
pub struct ParseError {
    pub problem: Problem,
    pub line: usize,
    pub column: usize,
}

/// Parses a whole JSON text (RFC 8259), borrowing from `input` where possible.
pub fn parse(input: &[u8]) -> Result<Json<'_>, ParseError> {
    // JSON text is UTF-8 (RFC 8259 §8.1): checked once for the whole body, so that strings and
    // numbers can be borrowed as `str` without checking each.
    let (text, result) = match std::str::from_utf8(input) {
        Ok(text) => {
            let mut parser = Parser { text, bytes: input, pos: 0 };
            let result = parser.document();
            (parser.pos, result)
        }
        Err(e) => (e.valid_up_to(), Err(Problem::InvalidUtf8)),
    };
    result.map_err(|problem| {
        let upto = input.get(..text.min(input.len())).unwrap_or_default();
        let line = 1 + upto.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + upto.iter().rev().take_while(|&&b| b != b'\n').count();
        ParseError { problem, line, column }
    })
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn document(&mut self) -> Result<Json<'a>, Problem> {
        let value = self.value(0)?;
        self.skip_whitespace();
        if self.pos < self.bytes.len() {
            return Err(Problem::TrailingCharacters);
        }
        Ok(value)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Json<'a>) -> Result<Json<'a>, Problem> {
        let end = self.pos.saturating_add(word.len());
        match self.bytes.get(self.pos..end) {
            Some(found) if found == word => {
                self.pos = end;
                Ok(value)
            }
            Some(_) => Err(Problem::ExpectedValue),
            None => {
                let rest = self.bytes.get(self.pos..).unwrap_or_default();
                Err(if word.starts_with(rest) { Problem::Eof } else { Problem::ExpectedValue })
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, Problem> {
        self.skip_whitespace();
        match self.peek() {
            None => Err(Problem::Eof),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'"') => {
                self.pos += 1;
                self.string().map(Json::String)
            }
            Some(b'-' | b'0'..=b'9') => self.number().map(Json::Number),
            Some(b'[') => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(Problem::TooDeep);
                }
                self.pos += 1;
                self.array(depth + 1)
            }
            Some(b'{') => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(Problem::TooDeep);
                }
                self.pos += 1;
                self.object(depth + 1)
            }
            Some(_) => Err(Problem::ExpectedValue),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, Problem> {
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                Some(_) => return Err(Problem::ExpectedArrayComma),
                None => return Err(Problem::Eof),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, Problem> {
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(Object::from_members(members)));
        }
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'"') => self.pos += 1,
                Some(_) => return Err(Problem::KeyMustBeString),
                None => return Err(Problem::Eof),
            }
            let key = self.string()?;
            self.skip_whitespace();
            match self.peek() {
                Some(b':') => self.pos += 1,
                Some(_) => return Err(Problem::ExpectedColon),
                None => return Err(Problem::Eof),
            }
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(Object::from_members(members)));
                }
                Some(_) => return Err(Problem::ExpectedObjectComma),
                None => return Err(Problem::Eof),
            }
        }
    }

    /// A string's contents; the opening quote is consumed.
    fn string(&mut self) -> Result<Cow<'a, str>, Problem> {
        let start = self.pos;
        // Fast path: no escapes, borrowed.
        loop {
            match self.peek() {
                None => return Err(Problem::Eof),
                Some(b'"') => {
                    let raw = self.text.get(start..self.pos).ok_or(Problem::InvalidUtf8)?;
                    self.pos += 1;
                    return Ok(Cow::Borrowed(raw));
                }
                Some(b'\\') => break,
                Some(0..=0x1f) => return Err(Problem::ControlCharacter),
                Some(_) => self.pos += 1,
            }
        }
        let mut out: Vec<u8> = self.bytes.get(start..self.pos).unwrap_or_default().to_vec();
        loop {
            match self.peek() {
                None => return Err(Problem::Eof),
                Some(b'"') => {
                    self.pos += 1;
                    return String::from_utf8(out).map(Cow::Owned).map_err(|_| Problem::InvalidUtf8);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(0..=0x1f) => return Err(Problem::ControlCharacter),
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// One escape after its backslash, appended to `out` as UTF-8.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Problem> {
        let Some(b) = self.peek() else { return Err(Problem::Eof) };
        self.pos += 1;
        let byte = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let first = self.hex4()?;
                let code = match first {
                    0xd800..=0xdbff => {
                        if self.bytes.get(self.pos..self.pos.saturating_add(2)) != Some(b"\\u") {
                            return Err(Problem::LoneSurrogate);
                        }
                        self.pos += 2;
                        let second = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&second) {
                            return Err(Problem::LoneSurrogate);
                        }
                        0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                    }
                    0xdc00..=0xdfff => return Err(Problem::LoneSurrogate),
                    code => code,
                };
                let c = char::from_u32(code).ok_or(Problem::LoneSurrogate)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            _ => return Err(Problem::InvalidEscape),
        };
        out.push(byte);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Problem> {
        let mut code = 0u32;
        for _ in 0..4 {
            let Some(b) = self.peek() else { return Err(Problem::Eof) };
            let digit = char::from(b).to_digit(16).ok_or(Problem::InvalidEscape)?;
            code = code * 16 + digit;
            self.pos += 1;
        }
        Ok(code)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Number<'a>, Problem> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            Some(_) => return Err(Problem::InvalidNumber),
            None => return Err(Problem::Eof),
        }
        let int_digits = self.pos - int_start;
        let mut bounded = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(if self.peek().is_none() { Problem::Eof } else { Problem::InvalidNumber });
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            let negative = self.peek() == Some(b'-');
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            let exp_start = self.pos;
            if self.digits() == 0 {
                return Err(if self.peek().is_none() { Problem::Eof } else { Problem::InvalidNumber });
            }
            let exp = self.bytes.get(exp_start..self.pos).unwrap_or_default();
            let significant = exp.iter().skip_while(|&&d| d == b'0').count();
            if significant > MAX_EXPONENT_DIGITS {
                return Err(Problem::NumberOutOfRange);
            }
            let value = exp.iter().fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
            // value < 10^(int digits + exponent) when the integer part is not 0, < 10^exponent
            // otherwise; at most 10^308 is always finite.
            let whole = if self.bytes.get(int_start) == Some(&b'0') { 0 } else { int_digits as i64 };
            bounded = negative || whole.saturating_add(value) <= 308;
        } else if int_digits > 308 {
            bounded = false;
        }
        let text = std::str::from_utf8(self.bytes.get(start..self.pos).unwrap_or_default())
            .map_err(|_| Problem::InvalidNumber)?;
        if !bounded && !text.parse::<f64>().is_ok_and(f64::is_finite) {
            self.pos = start;
            return Err(Problem::NumberOutOfRange);
        }
        Ok(Number(Cow::Borrowed(text)))
    }
}

/// A number's parts: `[-]int[.frac][e exp]`.
struct Parts<'t> {
    negative: bool,
    int: &'t [u8],
    frac: &'t [u8],
    exp: i64,
}

impl Parts<'_> {
    /// The significant digits, their count, and the exponent `e` such that the value is
    /// `0.digits × 10^e`; `None` for zero.
    fn normalized(&self) -> Option<(impl Iterator<Item = u8> + '_, usize, i128)> {
        let all = || self.int.iter().chain(self.frac).copied();
        let leading = all().position(|d| d != b'0')?;
        let trailing = all().rev().position(|d| d != b'0').unwrap_or(0);
        let count = (self.int.len() + self.frac.len()).saturating_sub(leading + trailing);
        let exponent = self.int.len() as i128 - leading as i128 + i128::from(self.exp);
        Some((all().skip(leading).take(count), count, exponent))
    }
}

impl<'a> Number<'a> {
    /// Wraps `text` when it is a JSON number.
    pub fn new(text: impl Into<Cow<'a, str>>) -> Option<Self> {
        let text = text.into();
        let mut parser = Parser { text: &text, bytes: text.as_bytes(), pos: 0 };
        let ok = parser.number().is_ok() && parser.pos == text.len();
        ok.then_some(Number(text))
    }

    /// The number as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The nearest `f64` (correctly rounded; finite, since out-of-range numbers are refused).
    pub fn as_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }

    /// Whether the number is written as an integer (no fraction, no exponent), of any length.
    pub fn is_integer(&self) -> bool {
        !self.0.contains(['.', 'e', 'E'])
    }

    /// The value as a `u64`, when it is written as an integer in range.
    pub fn as_u64(&self) -> Option<u64> {
        if self.is_integer() { self.0.parse().ok() } else { None }
    }

    /// The value as an `i64`, when it is written as an integer in range.
    pub fn as_i64(&self) -> Option<i64> {
        if self.is_integer() { self.0.parse().ok() } else { None }
    }

    fn as_i128(&self) -> Option<i128> {
        if self.is_integer() { self.0.parse().ok() } else { None }
    }

    fn parts(&self) -> Parts<'_> {
        let bytes = self.0.as_bytes();
        let (negative, rest) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, bytes),
        };
        let (mantissa, exp) = match rest.iter().position(|&b| b == b'e' || b == b'E') {
            Some(at) => (rest.get(..at).unwrap_or_default(), rest.get(at + 1..).unwrap_or_default()),
            None => (rest, &[][..]),
        };
        let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
            Some(at) => (mantissa.get(..at).unwrap_or_default(), mantissa.get(at + 1..).unwrap_or_default()),
            None => (mantissa, &[][..]),
        };
        let (exp_negative, exp_digits) = match exp.split_first() {
            Some((b'-', digits)) => (true, digits),
            Some((b'+', digits)) => (false, digits),
            _ => (false, exp),
        };
        let magnitude = exp_digits
            .iter()
            .fold(0i64, |v, &d| v.saturating_mul(10).saturating_add(i64::from(d.wrapping_sub(b'0'))));
        Parts { negative, int, frac, exp: if exp_negative { -magnitude } else { magnitude } }
    }

    /// Whether two numbers have the same decimal value (`1 == 1.0 == 1e0`, `-0 == 0`).
    pub fn value_eq(&self, other: &Number<'_>) -> bool {
        if self.0 == other.0 {
            return true;
        }
        let (a, b) = (self.parts(), other.parts());
        match (a.normalized(), b.normalized()) {
            (None, None) => true,
            (Some((x, xn, xe)), Some((y, yn, ye))) => {
                a.negative == b.negative && xn == yn && xe == ye && x.eq(y)
            }
            _ => false,
        }
    }

    /// `|a - b|` when the numbers differ: exact for integers up to 38 digits, else in `f64`
    /// (so two values closer than `f64` can tell apart measure 0).
    pub fn distance(&self, other: &Number<'_>) -> f64 {
        if let (Some(i), Some(j)) = (self.as_i128(), other.as_i128()) {
            return i.abs_diff(j) as f64;
        }
        (self.as_f64() - other.as_f64()).abs()
    }

    /// The same number owning its text.
    pub fn into_owned(self) -> Number<'static> {
        Number(Cow::Owned(self.0.into_owned()))
    }

    /// An `f64`'s shortest round-trip text; `None` for NaN and infinities, which JSON cannot hold.
    pub fn from_f64(value: f64) -> Option<Number<'static>> {
        value.is_finite().then(|| Number(Cow::Owned(ryu::Buffer::new().format_finite(value).to_owned())))
    }

    /// An `f32`'s shortest round-trip text (so equal `f32`s, and only they, have equal values);
    /// `None` for NaN and infinities.
    pub fn from_f32(value: f32) -> Option<Number<'static>> {
        value.is_finite().then(|| Number(Cow::Owned(ryu::Buffer::new().format_finite(value).to_owned())))
    }
}

impl From<i64> for Number<'static> {
    fn from(value: i64) -> Self {
        Number(Cow::Owned(value.to_string()))
    }
}

impl From<u64> for Number<'static> {
    fn from(value: u64) -> Self {
        Number(Cow::Owned(value.to_string()))
    }
}

impl fmt::Display for Number<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> Object<'a> {
    /// Sorts members by key; a repeated key keeps its last value.
    pub fn from_members(mut members: Vec<(Cow<'a, str>, Json<'a>)>) -> Self {
        if !members.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable, so equal keys stay in document order and the last one is kept below.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            members.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(&mut later.1, &mut kept.1);
                }
                same
            });
        }
        Object(members)
    }

    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().and_then(|i| self.0.get(i)).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Members in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_owned(self) -> Object<'static> {
        Object(self.0.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned())).collect())
    }
}

impl<'a> FromIterator<(Cow<'a, str>, Json<'a>)> for Object<'a> {
    fn from_iter<T: IntoIterator<Item = (Cow<'a, str>, Json<'a>)>>(iter: T) -> Self {
        Object::from_members(iter.into_iter().collect())
    }
}

impl<'a> Json<'a> {
    /// A member of an object; `None` for other values.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.as_object()?.get(key)
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Json<'a>>> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<&Number<'a>> {
        match self {
            Json::Number(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(Number::as_f64)
    }

    pub fn as_u64(&self) -> Option<u64> {
        self.as_number()?.as_u64()
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Json::Number(_))
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Json::Array(_))
    }

    /// Whether the value is a number written as an integer.
    pub fn is_integer(&self) -> bool {
        self.as_number().is_some_and(Number::is_integer)
    }

    /// The same value owning all its text.
    pub fn into_owned(self) -> Json<'static> {
        match self {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::Number(n) => Json::Number(n.into_owned()),
            Json::String(s) => Json::String(Cow::Owned(s.into_owned())),
            Json::Array(items) => Json::Array(items.into_iter().map(Json::into_owned).collect()),
            Json::Object(o) => Json::Object(o.into_owned()),
        }
    }

    /// A string value.
    pub fn string(s: impl Into<String>) -> Json<'static> {
        Json::String(Cow::Owned(s.into()))
    }
}

/// Equality by value: numbers by decimal value, everything else exactly.
impl<'b> PartialEq<Json<'b>> for Json<'_> {
    fn eq(&self, other: &Json<'b>) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Bool(a), Json::Bool(b)) => a == b,
            (Json::Number(a), Json::Number(b)) => a.value_eq(b),
            (Json::String(a), Json::String(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y),
            (Json::Object(a), Json::Object(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|((k, x), (l, y))| k == l && x == y)
            }
            _ => false,
        }
    }
}

impl<'b> PartialEq<Number<'b>> for Number<'_> {
    fn eq(&self, other: &Number<'b>) -> bool {
        self.value_eq(other)
    }
}

/// Equality by value with a `serde_json::Value` (whose numbers are written as serde_json prints them).
impl PartialEq<serde_json::Value> for Json<'_> {
    fn eq(&self, other: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (self, other) {
            (Json::Null, V::Null) => true,
            (Json::Bool(a), V::Bool(b)) => a == b,
            (Json::Number(a), V::Number(b)) => Number::new(b.to_string()).is_some_and(|b| a.value_eq(&b)),
            (Json::String(a), V::String(b)) => a == b,
            (Json::Array(a), V::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y),
            (Json::Object(a), V::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| x == y))
            }
            _ => false,
        }
    }
}

impl From<&serde_json::Value> for Json<'static> {
    fn from(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(*b),
            serde_json::Value::Number(n) => Number::new(n.to_string()).map_or(Json::Null, Json::Number),
            serde_json::Value::String(s) => Json::string(s.clone()),
            serde_json::Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            serde_json::Value::Object(map) => {
                Json::Object(map.iter().map(|(k, v)| (Cow::Owned(k.clone()), Json::from(v))).collect())
            }
        }
    }
}

impl From<serde_json::Value> for Json<'static> {
    fn from(value: serde_json::Value) -> Self {
        Json::from(&value)
    }
}

impl Serialize for Number<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The text is a valid JSON number, so the raw value always builds; serde_json writes it
        // as is.
        match serde_json::value::RawValue::from_string(self.0.to_string()) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(&self.0),
        }
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(o) => {
                let mut map = serializer.serialize_map(Some(o.len()))?;
                for (k, v) in o.iter() {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(text) => f.write_str(&text),
            Err(_) => Err(fmt::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn num(text: &str) -> Number<'_> {
        Number::new(text).unwrap_or_else(|| panic!("{text} is a JSON number"))
    }

    fn problem(text: &str) -> Problem {
        parse(text.as_bytes()).expect_err(text).problem
    }

    #[test]
    fn equal_values_written_differently_are_equal() {
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1e0"),
            ("1", "10e-1"),
            ("1.0", "0.1E1"),
            ("100", "1e2"),
            ("100", "1E+2"),
            ("0.5", "5e-1"),
            ("1e308", "1.0e308"),
            ("-0", "0"),
            ("-0.0", "0e5"),
            ("0.000", "0"),
            ("123.4500", "1.2345e2"),
            ("-1.5", "-15e-1"),
        ] {
            assert!(num(a).value_eq(&num(b)), "{a} == {b}");
            assert!(num(b).value_eq(&num(a)), "{b} == {a}");
        }
    }

    #[test]
    fn different_values_are_different_even_as_one_f64() {
        for (a, b) in [
            ("0.9736888111888111", "0.9736888111888112"),
            ("0.1", "0.10000000000000001"),
            ("9007199254740993", "9007199254740992"),
            ("18446744073709551617", "18446744073709551616"),
            ("123456789012345678901234567890123456789012", "123456789012345678901234567890123456789013"),
            ("5e-324", "0"),
            ("1e-400", "0"),
            ("1e-400", "1e-401"),
            ("1", "-1"),
            ("1e2", "1e3"),
            ("1.1", "11"),
            ("10", "1"),
        ] {
            assert!(!num(a).value_eq(&num(b)), "{a} != {b}");
            assert!(!num(b).value_eq(&num(a)), "{b} != {a}");
        }
        // The pairs that serde_json (and f64) cannot tell apart.
        assert_eq!(num("0.1").as_f64(), num("0.10000000000000001").as_f64());
        assert_eq!(num("1e-400").as_f64(), 0.0);
    }

    #[test]
    fn distance_is_exact_for_long_integers_and_f64_otherwise() {
        assert_eq!(num("18446744073709551617").distance(&num("18446744073709551616")), 1.0);
        assert_eq!(num("-170141183460469231731687303715884105728").distance(&num("0")), 2f64.powi(127));
        assert_eq!(num("0.5").distance(&num("0.25")), 0.25);
        assert_eq!(num("0.1").distance(&num("0.10000000000000001")), 0.0);
    }

    #[test]
    fn integer_accessors() {
        assert_eq!(num("42").as_u64(), Some(42));
        assert_eq!(num("-42").as_i64(), Some(-42));
        assert_eq!(num("42.0").as_u64(), None);
        assert_eq!(num("4e1").as_u64(), None);
        assert_eq!(num("-1").as_u64(), None);
        assert_eq!(num("18446744073709551616").as_u64(), None);
        assert!(num("18446744073709551616").is_integer());
        assert!(!num("1.0").is_integer());
    }

    #[test]
    fn floats_print_their_shortest_round_trip_text() {
        assert_eq!(Number::from_f32(0.1).unwrap().as_str(), "0.1");
        assert_eq!(Number::from_f64(f64::from(0.1f32)).unwrap().as_str(), "0.10000000149011612");
        assert_eq!(Number::from_f32(1e-30).unwrap().as_str(), "1e-30");
        assert_eq!(Number::from_f32(f32::NAN), None);
        assert_eq!(Number::from_f64(f64::INFINITY), None);
        assert_eq!(Number::from(-7i64).as_str(), "-7");
    }

    #[test]
    fn numbers_outside_f64_range_are_refused() {
        for text in ["1e400", "-1e400", "10e308", "1e309", &format!("1{}", "0".repeat(309))] {
            assert_eq!(problem(text), Problem::NumberOutOfRange, "{text}");
        }
        for text in ["1e308", "1.7976931348623157e308", "0e999", "0.0001e311", "1e-99999", &"9".repeat(308)] {
            assert!(parse(text.as_bytes()).is_ok(), "{text}");
        }
        assert_eq!(problem("1e-1000000000000000000"), Problem::NumberOutOfRange);
        assert!(parse(b"1e-000000000000000000000000001").is_ok());
    }

    #[test]
    fn grammar_is_strict() {
        for (text, want) in [
            ("", Problem::Eof),
            ("   ", Problem::Eof),
            ("[1,]", Problem::ExpectedValue),
            ("[1 2]", Problem::ExpectedArrayComma),
            ("{\"a\":1,}", Problem::KeyMustBeString),
            ("{\"a\" 1}", Problem::ExpectedColon),
            ("{\"a\":1 \"b\":2}", Problem::ExpectedObjectComma),
            ("{1:2}", Problem::KeyMustBeString),
            ("01", Problem::TrailingCharacters),
            ("[01]", Problem::ExpectedArrayComma),
            ("1.", Problem::Eof),
            ("1.e5", Problem::InvalidNumber),
            (".5", Problem::ExpectedValue),
            ("+1", Problem::ExpectedValue),
            ("-", Problem::Eof),
            ("-a", Problem::InvalidNumber),
            ("1e", Problem::Eof),
            ("1e+", Problem::Eof),
            ("NaN", Problem::ExpectedValue),
            ("Infinity", Problem::ExpectedValue),
            ("tru", Problem::Eof),
            ("trux", Problem::ExpectedValue),
            ("nul", Problem::Eof),
            ("\"a", Problem::Eof),
            ("\"a\nb\"", Problem::ControlCharacter),
            ("\"\\x\"", Problem::InvalidEscape),
            ("\"\\u12\"", Problem::InvalidEscape),
            ("\"\\ud800\"", Problem::LoneSurrogate),
            ("\"\\ud800\\u0041\"", Problem::LoneSurrogate),
            ("\"\\udc00\"", Problem::LoneSurrogate),
            ("1 2", Problem::TrailingCharacters),
            ("[1] x", Problem::TrailingCharacters),
            ("/* c */ 1", Problem::ExpectedValue),
        ] {
            assert_eq!(problem(text), want, "{text:?}");
        }
        assert_eq!(parse(b"\"\xff\"").unwrap_err().problem, Problem::InvalidUtf8);
        assert_eq!(parse(b"\"\\n\xc3\"").unwrap_err().problem, Problem::InvalidUtf8);
    }

    #[test]
    fn errors_say_where() {
        let err = parse(b"{\n  \"a\": [1,\n  ]}").unwrap_err();
        assert_eq!((err.line, err.column), (3, 3));
        assert_eq!(err.to_string(), "expected value at line 3 column 3");
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(problem(&deep), Problem::TooDeep);
        let objects = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(problem(&objects), Problem::TooDeep);
        // serde_json draws the line at the same depth.
        assert!(serde_json::from_str::<serde_json::Value>(&ok).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
    }

    #[test]
    fn strings_decode_escapes_and_borrow_when_they_can() {
        let Json::Array(items) =
            parse(br#"["plain", "a\"b\\c\/d\b\f\n\r\t", "\u00e9\ud83d\ude00", "caf\u00e9 ok"]"#).unwrap()
        else {
            panic!("array")
        };
        assert!(matches!(&items[0], Json::String(Cow::Borrowed("plain"))));
        assert_eq!(items[1].as_str(), Some("a\"b\\c/d\u{8}\u{c}\n\r\t"));
        assert_eq!(items[2].as_str(), Some("é😀"));
        assert_eq!(items[3].as_str(), Some("café ok"));
        assert!(matches!(parse("\"naïve\"".as_bytes()).unwrap(), Json::String(Cow::Borrowed("naïve"))));
    }

    #[test]
    fn objects_sort_keys_and_keep_the_last_duplicate() {
        let value = parse(br#"{"b": 1, "a": 2, "b": 3, "c": {"z": null, "y": true}}"#).unwrap();
        let object = value.as_object().unwrap();
        let keys: Vec<&str> = object.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(object.get("b").and_then(Json::as_u64), Some(3));
        assert_eq!(value, serde_json::json!({"a": 2, "b": 3, "c": {"y": true, "z": null}}));
        assert_eq!(object.get("nope").map(|_| ()), None);
    }

    #[test]
    fn serializes_numbers_exactly_as_written() {
        let text = r#"{"a":[0.10000000000000001,1E+2,-0,18446744073709551617,1e-400],"b":"x\"y"}"#;
        let value = parse(text.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), text);
        assert_eq!(value.to_string(), text);
    }

    #[test]
    fn equality_with_serde_values_is_by_value() {
        assert_eq!(
            parse(b"[1.0, 2e0, \"x\", null, true]").unwrap(),
            serde_json::json!([1, 2, "x", null, true])
        );
        assert_ne!(parse(b"[1]").unwrap(), serde_json::json!([1, 2]));
        assert_ne!(parse(b"{\"a\": 1}").unwrap(), serde_json::json!({"b": 1}));
        assert_ne!(parse(b"\"1\"").unwrap(), serde_json::json!(1));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        /// Accepts exactly what serde_json accepts, on short texts over JSON's alphabet (which never
        /// reach the limits where the two differ on purpose: exponents of 19 digits or more).
        #[test]
        fn accepts_what_serde_json_accepts(text in r#"[\[\]{}",:0-9eE.+\- tfalsenru\\]{0,16}"#) {
            let ours = parse(text.as_bytes());
            let theirs = serde_json::from_str::<serde_json::Value>(&text);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}: {:?} vs {:?}", text, ours, theirs);
            if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                prop_assert!(ours == theirs, "{:?}", text);
            }
        }

        #[test]
        fn round_trips_serde_json_output(value in crate::compare::tests::arb_json()) {
            let text = value.to_string();
            let parsed = parse(text.as_bytes()).unwrap();
            prop_assert!(parsed == value);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn equal_f32_and_only_they_have_equal_text(a in any::<u32>(), b in any::<u32>()) {
            let (x, y) = (f32::from_bits(a), f32::from_bits(b));
            if let (Some(p), Some(q)) = (Number::from_f32(x), Number::from_f32(y)) {
                prop_assert_eq!(p.value_eq(&q), x == y, "{} vs {}", p, q);
                prop_assert_eq!(p.as_f64() as f32, x);
            }
        }

        #[test]
        fn value_eq_agrees_with_integer_arithmetic(a in -1000i64..1000, e in -5i32..5, b in -1000i64..1000, f in -5i32..5) {
            // a·10^e = b·10^f exactly when a·10^(e+5) = b·10^(f+5), in integers.
            let (p, q) = (format!("{a}e{e}"), format!("{b}e{f}"));
            let (x, y) = (num(&p), num(&q));
            let exact = i128::from(a) * 10i128.pow((e + 5) as u32) == i128::from(b) * 10i128.pow((f + 5) as u32);
            prop_assert_eq!(x.value_eq(&y), exact, "{} vs {}", p, q);
        }
    }
}
