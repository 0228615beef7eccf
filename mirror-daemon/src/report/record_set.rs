//! Which files `mirror-daemon report` reads: the names given, each one a file, a directory or a
//! glob pattern, expanded into the files of a rotated set (`records.jsonl`, `records.jsonl.1`,
//! `records.jsonl.2.gz`, …), and each file opened plain or through gzip as its first bytes say.
//!
//! Patterns are expanded here rather than by a shell because a Kubernetes Job's `args` or a CI
//! step often has none; `*` and `?` in the last path component are understood.
use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
};

/// One input of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

/// Why the inputs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("cannot open {path}: {error}")]
    Open { path: PathBuf, error: io::Error },
    #[error("cannot list {path}: {error}")]
    List { path: PathBuf, error: io::Error },
    #[error("{path} holds no record file (only hidden files or subdirectories, which are not read)")]
    EmptyDirectory { path: PathBuf },
    #[error("no file matches {pattern}")]
    NoMatch { pattern: String },
}

/// Whether `name` is a pattern (`*` or `?`).
fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// Whether `name` matches `pattern` (`*` any run of characters, `?` one character).
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// A name cut into text and number runs.
type NaturalKey = Vec<(u8, u128, String)>;

/// Sort key that puts `name.2` before `name.10`: digit runs compare as numbers.
fn natural_key(name: &str) -> NaturalKey {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits > 0 {
            key.push((1, rest[..digits].parse().unwrap_or(u128::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            key.push((0, 0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    key
}

/// The visible regular files of `dir` whose name `keep` accepts, in natural order.
fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, SetError> {
    let list = |error| SetError::List { path: dir.to_path_buf(), error };
    let mut files: Vec<(NaturalKey, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list)? {
        let entry = entry.map_err(list)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        // Hidden files are skipped: a rotation compresses through a hidden temporary file.
        if name.starts_with('.') || !keep(&name) {
            continue;
        }
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            files.push((natural_key(&name), entry.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// What the report reads for the names given, in order, each file once. A name is `-` (stdin),
/// a file, a directory (every visible regular file in it, not recursively) or a pattern. Within
/// a directory or a pattern's matches, a file whose compressed twin `NAME.gz` is there too is
/// skipped: it is a rotated file whose compression was just finishing.
pub fn expand(names: &[PathBuf]) -> Result<Vec<Source>, SetError> {
    let mut out: Vec<Source> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |out: &mut Vec<Source>, path: PathBuf| {
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if seen.insert(key) {
            out.push(Source::File(path));
        }
    };
    for name in names {
        if name.as_os_str() == "-" {
            out.push(Source::Stdin);
            continue;
        }
        let file_name = name.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let set = if name.is_dir() {
            let files = files_in(name, |_| true)?;
            if files.is_empty() {
                return Err(SetError::EmptyDirectory { path: name.clone() });
            }
            files
        } else if !name.exists() && is_pattern(file_name) {
            let dir = match name.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let files = files_in(dir, |n| matches(file_name, n))
                .map_err(|_| SetError::NoMatch { pattern: name.display().to_string() })?;
            if files.is_empty() {
                return Err(SetError::NoMatch { pattern: name.display().to_string() });
            }
            files
        } else {
            add(&mut out, name.clone());
            continue;
        };
        let twin = |p: &PathBuf| {
            let mut gz = p.as_os_str().to_owned();
            gz.push(".gz");
            set.contains(&PathBuf::from(gz))
        };
        for path in set.iter().filter(|p| !twin(p)) {
            add(&mut out, path.clone());
        }
    }
    Ok(out)
}

/// Opens a record file, decompressing it when it starts with the gzip magic bytes (whatever
/// its name).
pub fn open(path: &Path) -> Result<Box<dyn BufRead>, SetError> {
    let error = |error| SetError::Open { path: path.to_path_buf(), error };
    let mut reader = BufReader::new(File::open(path).map_err(error)?);
    let gzip = reader.fill_buf().map_err(error)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("records.jsonl*", "records.jsonl"));
        assert!(matches("records.jsonl*", "records.jsonl.10.gz"));
        assert!(matches("*.jsonl", "node-a.jsonl"));
        assert!(matches("node-?.jsonl*", "node-b.jsonl.1"));
        assert!(!matches("node-?.jsonl", "node-ab.jsonl"));
        assert!(!matches("records.jsonl*", "other.jsonl"));
        assert!(matches("*a*b", "xxaxxb"));
        assert!(!matches("*a*b", "xxaxxbx"));
    }

    #[test]
    fn rotated_files_sort_by_number() {
        let mut names = ["r.jsonl.10.gz", "r.jsonl", "r.jsonl.2.gz", "r.jsonl.1"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["r.jsonl", "r.jsonl.1", "r.jsonl.2.gz", "r.jsonl.10.gz"]);
    }
}
