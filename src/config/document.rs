//! Phase one of loading: TOML text → raw serde structs, with every unknown key and type error
//! reported at its file:line:col. Paths into the document (`gates.0.lanes.1.camera`) are turned
//! back into spans only when an error is reported, so the happy path stays cheap.

use super::diag::{Diagnostic, SourceFile};
use serde::de::DeserializeOwned;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// A segment of a path into a TOML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}
impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}
impl From<&String> for Seg {
    fn from(s: &String) -> Self {
        Seg::Key(s.clone())
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Builds a path: `path!["gates", 0, "lanes", 1, "camera"]` (an array; `.to_vec()` to extend).
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => { [$($crate::config::document::Seg::from($seg)),*] };
}

/// Where a path points: the span of its key (for "unknown key", "state is unreachable") or its
/// value (for "bad address").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Key,
    Value,
}

impl SourceFile {
    /// Span of the key or value at `path`; falls back to the deepest existing ancestor, then the
    /// start of the file, so an error always has a position.
    pub fn span_of(&self, path: &[Seg], at: At) -> Range<usize> {
        let (root, _) = DeTable::parse_recoverable(&self.text);
        let mut key_span: Option<Range<usize>> = None;
        let mut cur_span = root.span();
        let mut cur = DeValue::Table(root.into_inner());
        for seg in path {
            let next = match (&cur, seg) {
                (DeValue::Table(t), Seg::Key(k)) => t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                    .map(|(key, v)| (Some(key.span()), v.span(), v.get_ref().clone())),
                (DeValue::Array(a), Seg::Index(i)) => {
                    a.get(*i).map(|v| (None, v.span(), v.get_ref().clone()))
                }
                _ => None,
            };
            match next {
                Some((k, vspan, v)) => {
                    key_span = k.or(Some(vspan.clone()));
                    cur_span = vspan;
                    cur = v;
                }
                None => break,
            }
        }
        match at {
            At::Key => key_span.unwrap_or(0..0),
            At::Value => {
                if key_span.is_none() {
                    0..0
                } else {
                    cur_span
                }
            }
        }
    }

    /// A diagnostic at the key or value a path points to.
    pub fn error_at(&self, path: &[Seg], at: At, message: impl Into<String>) -> Diagnostic {
        self.error(self.span_of(path, at), message)
    }
}

fn path_segments(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, index } => {
            path_segments(parent, out);
            out.push(Seg::Index(*index));
        }
        Path::Map { parent, key } => {
            path_segments(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => path_segments(parent, out),
    }
}

/// Shows a path the way a user writes it in TOML: `gates[0].lanes[1].camera`.
pub fn display_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Deserializes a whole file. Returns the value and the unknown-key diagnostics, or — when the
/// file cannot be read as `T` at all (syntax or type error) — that one error.
pub fn parse<T: DeserializeOwned>(file: &SourceFile) -> Result<(T, Vec<Diagnostic>), Diagnostic> {
    let de = toml::de::Deserializer::parse(&file.text).map_err(|e| toml_error(file, &e))?;
    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let value: T = serde_ignored::deserialize(de, |p| {
        let mut segs = Vec::new();
        path_segments(&p, &mut segs);
        unknown.push(segs);
    })
    .map_err(|e| toml_error(file, &e))?;
    let mut diags: Vec<Diagnostic> = unknown
        .into_iter()
        .map(|segs| {
            let key = match segs.last() {
                Some(Seg::Key(k)) => k.clone(),
                _ => display_path(&segs),
            };
            let parent = display_path(&segs[..segs.len().saturating_sub(1)]);
            let place = if parent.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{parent}`")
            };
            file.error_at(&segs, At::Key, format!("unknown key `{key}` {place}"))
                .help("check the spelling against docs/configuration.md, or remove the key")
        })
        .collect();
    diags.sort_by_key(|d| (d.line, d.col));
    Ok((value, diags))
}

fn toml_error(file: &SourceFile, e: &toml::de::Error) -> Diagnostic {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().trim().to_string();
    let help = if msg.contains("missing field") {
        "add the missing key; see docs/configuration.md for what it takes"
    } else if msg.contains("invalid type") {
        "give the value the type the key expects (string, number, array, table)"
    } else if msg.contains("unknown variant") {
        "use one of the values listed"
    } else {
        "fix the TOML at this position"
    };
    file.error(span, msg).help(help)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Item {
        id: String,
    }

    #[test]
    fn unknown_keys_are_all_reported_with_positions() {
        let f = SourceFile::new(
            "t.toml",
            "name = \"x\"\nnmae = 1\n[[items]]\nid = \"a\"\nidd = 2\n".into(),
        );
        let (_, diags) = parse::<Doc>(&f).unwrap();
        let got: Vec<_> = diags.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(2, 1), (5, 1)]);
        assert!(
            diags[1].message.contains("`idd` in `items[0]`"),
            "{}",
            diags[1].message
        );
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let f = SourceFile::new("t.toml", "name = 5\n".into());
        let d = parse::<Doc>(&f).err().unwrap();
        assert_eq!((d.line, d.col), (1, 8));
    }

    #[test]
    fn span_of_values_and_fallbacks() {
        let f = SourceFile::new(
            "t.toml",
            "[[items]]\nid = \"a\"\n[[items]]\nid = \"b\"\n".into(),
        );
        let s = f.span_of(&crate::path!["items", 1, "id"], At::Value);
        assert_eq!(f.line_col(s.start), (4, 6));
        let s = f.span_of(&crate::path!["items", 1, "id"], At::Key);
        assert_eq!(f.line_col(s.start), (4, 1));
        // missing leaf falls back to its parent
        let s = f.span_of(&crate::path!["items", 1, "nope"], At::Key);
        assert_eq!(f.line_col(s.start).0, 3);
    }
}
