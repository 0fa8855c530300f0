//! A persisted ledger cursor: the last sequence number an uplink has had acknowledged.
//! Written by write-then-rename so a crash leaves either the old or the new value, never a
//! torn one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cursor file {}: `{text}` is not a sequence number", path.display())]
    Malformed { path: PathBuf, text: String },
}

#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    value: i64,
}

impl Cursor {
    /// Reads the cursor, or starts at 0 when the file does not exist yet.
    pub fn open(path: &Path) -> Result<Cursor, CursorError> {
        let value = match std::fs::read_to_string(path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or_else(|| CursorError::Malformed {
                    path: path.to_path_buf(),
                    text: text.trim().chars().take(40).collect(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(CursorError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Cursor {
            path: path.to_path_buf(),
            value,
        })
    }

    pub fn get(&self) -> i64 {
        self.value
    }

    /// Persists `value` if it differs from the stored one.
    pub fn store(&mut self, value: i64) -> Result<(), CursorError> {
        if value == self.value {
            return Ok(());
        }
        let io = |source| CursorError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            writeln!(f, "{value}").map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.value = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let mut c = Cursor::open(&p).unwrap();
        assert_eq!(c.get(), 0);
        c.store(42).unwrap();
        assert_eq!(Cursor::open(&p).unwrap().get(), 42);
        std::fs::write(&p, "forty").unwrap();
        assert!(matches!(
            Cursor::open(&p),
            Err(CursorError::Malformed { .. })
        ));
        std::fs::write(&p, "-3").unwrap();
        assert!(Cursor::open(&p).is_err());
    }
}
