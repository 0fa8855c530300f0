//! Configuration diagnostics: every error names file, line and column and says how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A loaded configuration file, kept so byte spans can be turned into line:col.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            path: path.into(),
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start);
        (line + 1, col + 1)
    }

    /// A diagnostic at a byte span of this file.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.line_col(span.start);
        Diagnostic {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
            help: None,
            stand_in: false,
        }
    }
}

/// One configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// A type error whose value was replaced by a stand-in so that reading could go on: other
    /// errors at the same position are its consequences and are not reported.
    pub stand_in: bool,
}

impl Diagnostic {
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// A diagnostic about a whole file (missing, unreadable).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: message.into(),
            help: None,
            stand_in: false,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

/// All errors found in a configuration, in file and position order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.message).cmp(&(&b.file, b.line, b.col, &b.message))
        });
        self.0.dedup();
        let stand_ins: Vec<(PathBuf, usize, usize)> = self
            .0
            .iter()
            .filter(|d| d.stand_in)
            .map(|d| (d.file.clone(), d.line, d.col))
            .collect();
        self.0.retain(|d| {
            d.stand_in
                || !stand_ins
                    .iter()
                    .any(|(f, l, c)| *f == d.file && *l == d.line && *c == d.col)
        });
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(
            f,
            "{} error{} found",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

/// Suggests the closest known name, for "did you mean" help.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let f = SourceFile::new("a.toml", "a = 1\nname = \"东门\" x\n".into());
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(6), (2, 1));
        let x = f.text.find(" x").unwrap() + 1;
        assert_eq!(f.line_col(x), (2, 13));
    }

    #[test]
    fn closest_suggests_typos_only() {
        assert_eq!(
            closest("barier.open", ["barrier.open", "sign.show"]),
            Some("barrier.open")
        );
        assert_eq!(closest("zzz", ["barrier.open"]), None);
    }
}
