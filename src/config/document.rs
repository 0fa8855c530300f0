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
pub fn parse<T: DeserializeOwned>(
    file: &SourceFile,
) -> Result<(T, Vec<Diagnostic>), Vec<Diagnostic>> {
    parse_documented(file, "docs/configuration.md")
}

/// [`parse`] for a file whose keys another page documents (`docs/lanes.md` for a lane machine,
/// `docs/profiles.md` for a device profile): unknown keys point there.
pub fn parse_documented<T: DeserializeOwned>(
    file: &SourceFile,
    doc: &str,
) -> Result<(T, Vec<Diagnostic>), Vec<Diagnostic>> {
    // A type error stops serde at the first bad value. To report them all at once, the bad value
    // is replaced by a stand-in of the expected type (or its statement blanked out when the
    // type cannot be told) and the text read again, until it deserialises or a fault cannot be
    // patched. The patched document is only used to find further errors: the caller fails the
    // load on any diagnostic, so a stand-in never reaches a running gateway.
    let mut text = file.text.clone();
    let mut edits = Edits::default();
    let mut type_errors: Vec<Diagnostic> = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    for _ in 0..MAX_TYPE_ERRORS {
        let (e, syntax) = match deserialize::<T>(&text) {
            Ok((value, unknown)) => {
                let mut diags = unknown_key_diags(file, unknown, doc);
                diags.extend(type_errors);
                diags.sort_by_key(|d| (d.line, d.col));
                return Ok((value, diags));
            }
            Err(e) => e,
        };
        if !type_errors.is_empty() {
            // A syntax error now is one our patching made; a missing field is a key we blanked.
            let ours = syntax || missing_field(&e).is_some_and(|k| blanked.contains(&k));
            if ours {
                return Err(type_errors);
            }
        }
        let span = e
            .span()
            .map(|s| edits.original(s.start)..edits.original(s.end));
        type_errors.push(toml_error(file, &e, span.clone()));
        if syntax || missing_field(&e).is_some() {
            return Err(type_errors);
        }
        let Some(span) = e.span() else {
            return Err(type_errors);
        };
        if let Some(stand_in) = stand_in(e.message()) {
            edits.replace(&mut text, span, stand_in);
            if let Some(d) = type_errors.last_mut() {
                d.stand_in = true;
            }
        } else {
            match blank_statement(&mut text, span) {
                Some(key) => blanked.push(key),
                None => return Err(type_errors),
            }
        }
    }
    Err(type_errors)
}

/// More type errors than this in one file are not worth listing one by one.
const MAX_TYPE_ERRORS: usize = 50;

/// Replacements made in the text, to map positions in it back to the file.
#[derive(Default)]
struct Edits(Vec<(usize, isize)>);

impl Edits {
    fn replace(&mut self, text: &mut String, span: Range<usize>, with: &str) {
        let delta = with.len() as isize - span.len() as isize;
        text.replace_range(span.clone(), with);
        self.0.push((span.start + with.len(), delta));
    }

    fn original(&self, mut pos: usize) -> usize {
        for &(end, delta) in self.0.iter().rev() {
            if pos >= end {
                pos = pos.saturating_add_signed(-delta);
            }
        }
        pos
    }
}

/// A value of the type serde said it expected, when the message names one.
fn stand_in(message: &str) -> Option<&'static str> {
    let expected = message.split("expected").nth(1)?.trim();
    let variant = expected.starts_with("one of") || expected.starts_with('`');
    Some(match expected {
        _ if variant => return None,
        e if e.contains("string") || e.contains("char") => "\"\"",
        e if e.contains("bool") => "false",
        e if e.contains("f32") || e.contains("f64") || e.contains("float") => "0.0",
        e if e.starts_with('u') || e.starts_with('i') || e.contains("integer") => "0",
        e if e.contains("sequence") || e.contains("array") => "[]",
        e if e.contains("map") || e.contains("struct") || e.contains("table") => "{}",
        _ => return None,
    })
}

type Parsed<T> = Result<(T, Vec<Vec<Seg>>), (toml::de::Error, bool)>;

/// One serde pass; the flag on an error says it was a TOML syntax error.
fn deserialize<T: DeserializeOwned>(text: &str) -> Parsed<T> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| (e, true))?;
    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let value: T = serde_ignored::deserialize(de, |p| {
        let mut segs = Vec::new();
        path_segments(&p, &mut segs);
        unknown.push(segs);
    })
    .map_err(|e| (e, false))?;
    Ok((value, unknown))
}

fn missing_field(e: &toml::de::Error) -> Option<String> {
    let m = e.message();
    let rest = m.split("missing field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

/// Blanks `key = value` whose value starts at `span`, when the statement starts its line, and
/// returns the key. Anything else (a table header, an element inside an array) is left alone.
fn blank_statement(text: &mut String, span: Range<usize>) -> Option<String> {
    if span.start >= span.end || span.end > text.len() {
        return None;
    }
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let head = &text[line_start..span.start];
    let (key, _) = head.rsplit_once('=')?;
    let key = key
        .trim()
        .rsplit('.')
        .next()?
        .trim()
        .trim_matches('"')
        .to_string();
    if key.is_empty() || key.contains(['{', '[', ',']) {
        return None;
    }
    // Byte for byte, so that positions after it do not move.
    let blank: String = text[line_start..span.end]
        .bytes()
        .map(|b| if b == b'\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(line_start..span.end, &blank);
    Some(key)
}

fn unknown_key_diags(file: &SourceFile, unknown: Vec<Vec<Seg>>, doc: &str) -> Vec<Diagnostic> {
    unknown
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
                .help(format!(
                    "check the spelling against {doc}, or remove the key"
                ))
        })
        .collect()
}

fn toml_error(file: &SourceFile, e: &toml::de::Error, span: Option<Range<usize>>) -> Diagnostic {
    let span = span.unwrap_or(0..0);
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
        let (_, d) = parse::<Doc>(&f).unwrap();
        assert_eq!((d[0].line, d[0].col), (1, 8));
        assert!(d[0].message.contains("invalid type"), "{}", d[0].message);
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Opts {
        name: String,
        #[serde(default)]
        poll_ms: u32,
        #[serde(default)]
        label: String,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[test]
    fn every_type_error_is_reported_at_once_with_unknown_keys() {
        let f = SourceFile::new(
            "t.toml",
            "name = \"x\"\npoll_ms = \"100ms\"\nlabel = 7 # 名\nnmae = 1\n[[items]]\nid = 3\n"
                .into(),
        );
        // A required key of the wrong type gets a stand-in of its type, so reading goes on.
        let (_, d) = parse::<Opts>(&f).unwrap();
        let got: Vec<_> = d.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(2, 11), (3, 9), (4, 1), (6, 6)]);
        // With every bad value optional, the document deserialises and unknown keys join in.
        let f = SourceFile::new(
            "t.toml",
            "name = \"x\"\npoll_ms = \"100ms\"\nlabel = 7\nnmae = 1\n".into(),
        );
        let (_, d) = parse::<Opts>(&f).unwrap();
        let got: Vec<_> = d.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(2, 11), (3, 9), (4, 1)]);
        assert!(d[0].message.contains("invalid type"), "{}", d[0].message);
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    #[serde(rename_all = "lowercase")]
    enum Dir {
        In,
        Out,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Lane {
        #[serde(default)]
        dir: Option<Dir>,
        #[serde(default)]
        poll_ms: u32,
    }

    #[test]
    fn an_unknown_variant_is_blanked_and_reading_goes_on() {
        let f = SourceFile::new(
            "t.toml",
            "dir = \"sideways\" # 侧\npoll_ms = \"fast\"\n".into(),
        );
        let (_, d) = parse::<Lane>(&f).unwrap();
        let got: Vec<_> = d.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(1, 7), (2, 11)]);
        assert!(d[0].message.contains("unknown variant"), "{}", d[0].message);
    }

    #[test]
    fn a_missing_key_after_a_type_error_is_still_reported_once() {
        let f = SourceFile::new("t.toml", "poll_ms = true\n".into());
        let d = parse::<Opts>(&f).err().unwrap();
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[1].message.contains("missing field `name`"),
            "{}",
            d[1].message
        );
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
