//! RFC 6901 JSON Pointers and the ignore patterns built on them.
//!
//! A comparison walks both bodies keeping the current location as unescaped segments; a pointer
//! string is only built when a difference is recorded, and ignore patterns match the segments
//! directly, so `~0`/`~1` escaping is handled once, here.
use std::borrow::Cow;

/// Escapes one segment per RFC 6901: `~` becomes `~0`, `/` becomes `~1`.
pub(crate) fn escape(segment: &str) -> Cow<'_, str> {
    if segment.contains(['~', '/']) {
        Cow::Owned(segment.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(segment)
    }
}

/// Undoes [`escape`]; `~1` is replaced first, as RFC 6901 requires.
pub(crate) fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Formats unescaped segments as a pointer (`""` for no segments).
pub(crate) fn to_pointer(segments: &[String]) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        out.push_str(&escape(segment));
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments, including none.
    Any,
}

/// One compiled ignore pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern(Vec<Segment>);

impl Pattern {
    /// Compiles a pointer or glob; `""` is the whole body, the leading `/` is optional.
    pub(crate) fn parse(text: &str) -> Self {
        if text.is_empty() {
            return Self(Vec::new());
        }
        let body = text.strip_prefix('/').unwrap_or(text);
        let mut segments = Vec::new();
        for raw in body.split('/') {
            let segment = match raw {
                "*" => Segment::One,
                "**" => Segment::Any,
                literal => Segment::Literal(unescape(literal)),
            };
            // Consecutive `**` match the same as one, and collapsing them bounds backtracking.
            if segment == Segment::Any && segments.last() == Some(&Segment::Any) {
                continue;
            }
            segments.push(segment);
        }
        Self(segments)
    }

    pub(crate) fn matches(&self, path: &[String]) -> bool {
        matches(&self.0, path)
    }
}

fn matches(pattern: &[Segment], path: &[String]) -> bool {
    if !pattern.contains(&Segment::Any) {
        return pattern.len() == path.len()
            && pattern.iter().zip(path).all(|(segment, part)| match segment {
                Segment::Literal(literal) => literal == part,
                Segment::One | Segment::Any => true,
            });
    }
    // `next[j]`: whether the pattern after the current segment matches `path[j..]`. Dynamic
    // programming keeps this O(pattern x path) however many `**` a configured pattern has.
    let n = path.len();
    let mut next = vec![false; n + 1];
    next[n] = true;
    let mut current = vec![false; n + 1];
    for segment in pattern.iter().rev() {
        for j in (0..=n).rev() {
            current[j] = match segment {
                Segment::Any => next[j] || (j < n && current[j + 1]),
                Segment::One => j < n && next[j + 1],
                Segment::Literal(literal) => j < n && path[j] == *literal && next[j + 1],
            };
        }
        std::mem::swap(&mut next, &mut current);
    }
    next[0]
}

/// The ignore patterns in force for one comparison.
#[derive(Clone, Debug, Default)]
pub(crate) struct IgnoreSet(Vec<Pattern>);

impl IgnoreSet {
    pub(crate) fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        Self(patterns.into_iter().map(Pattern::parse).collect())
    }

    pub(crate) fn matches(&self, path: &[String]) -> bool {
        self.0.iter().any(|pattern| pattern.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segments: &[&str]) -> Vec<String> {
        segments.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn escapes_and_unescapes_per_rfc_6901() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
        assert_eq!(unescape("a~1b~0c"), "a/b~c");
        // `~01` is `~` followed by `1`, not `/`.
        assert_eq!(unescape("~01"), "~1");
        assert_eq!(to_pointer(&path(&["outputs", "0", "a/b"])), "/outputs/0/a~1b");
        assert_eq!(to_pointer(&[]), "");
    }

    #[test]
    fn literal_patterns_match_exactly() {
        let p = Pattern::parse("/id");
        assert!(p.matches(&path(&["id"])));
        assert!(!p.matches(&path(&["id", "x"])));
        assert!(!p.matches(&path(&["ids"])));
        assert!(!p.matches(&[]));
        assert!(Pattern::parse("").matches(&[]));
        assert!(!Pattern::parse("").matches(&path(&["id"])));
        // "/" is the key "" (RFC 6901), not the root.
        assert!(Pattern::parse("/").matches(&path(&[""])));
        assert!(Pattern::parse("/a~1b").matches(&path(&["a/b"])));
        assert!(Pattern::parse("id").matches(&path(&["id"])));
    }

    #[test]
    fn star_matches_one_segment() {
        let p = Pattern::parse("/outputs/*/name");
        assert!(p.matches(&path(&["outputs", "0", "name"])));
        assert!(p.matches(&path(&["outputs", "17", "name"])));
        assert!(!p.matches(&path(&["outputs", "name"])));
        assert!(!p.matches(&path(&["outputs", "0", "1", "name"])));
    }

    #[test]
    fn double_star_matches_any_depth() {
        let p = Pattern::parse("**/timestamp");
        assert!(p.matches(&path(&["timestamp"])));
        assert!(p.matches(&path(&["a", "b", "timestamp"])));
        assert!(!p.matches(&path(&["a", "timestamp", "b"])));
        let q = Pattern::parse("/a/**/**/z");
        assert!(q.matches(&path(&["a", "z"])));
        assert!(q.matches(&path(&["a", "b", "c", "z"])));
        assert!(!q.matches(&path(&["b", "z"])));
        assert!(Pattern::parse("/**").matches(&[]));
    }

    #[test]
    fn many_double_stars_on_a_deep_path_stay_fast() {
        let p = Pattern::parse("/**/a/**/b/**/c/**/d/**/nope");
        let deep: Vec<String> = (0..120).map(|i| ["a", "b", "c", "d"][i % 4].to_string()).collect();
        assert!(!p.matches(&deep));
    }
}
