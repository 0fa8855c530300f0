//! Content-addressed photo store: `photos/ab/cd/<sha256>.jpg`. A photo is written to a temp
//! file, fsynced, renamed into place and its directory fsynced before the event naming it is
//! committed, so a committed event never points at a photo that a crash could lose.

use super::LedgerError;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct PhotoStore {
    root: PathBuf,
}

/// What verification found for one photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhotoState {
    Ok,
    Missing,
    /// The file's content hashes to something else (swapped or edited).
    Changed {
        actual: String,
    },
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn io_err(path: &Path, e: std::io::Error) -> LedgerError {
    LedgerError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

impl PhotoStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PhotoStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the photo with this hex hash lives. The hash must be 64 hex digits (checked by
    /// callers that take it from outside; a short one yields a path that simply is not there).
    pub fn path_for(&self, hash: &str) -> PathBuf {
        let a = hash.get(0..2).unwrap_or("xx");
        let b = hash.get(2..4).unwrap_or("xx");
        self.root.join(a).join(b).join(format!("{hash}.jpg"))
    }

    /// Store a photo durably; returns its hex sha256. Storing the same bytes twice is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<String, LedgerError> {
        let hash = sha256_hex(bytes);
        let path = self.path_for(&hash);
        if path.exists() {
            return Ok(hash);
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.create_dirs_durably(&dir)?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            &hash[..8]
        ));
        {
            let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        // The rename is durable only once the directory entry is on disk.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&dir, e))?;
        Ok(hash)
    }

    /// Creates the missing levels of `dir` below the root, each made durable by an fsync of
    /// its parent: a new `ab/` or `ab/cd/` directory that a power cut could lose would take the
    /// photo in it along, while the event naming the photo survives. Only a new directory costs
    /// the extra fsync (at most 65,536 + 256 over the life of a store).
    fn create_dirs_durably(&self, dir: &Path) -> Result<(), LedgerError> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&self.root).map_err(|e| io_err(&self.root, e))?;
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        let mut cur = self.root.clone();
        for part in rel.components() {
            let parent = cur.clone();
            cur.push(part);
            match fs::create_dir(&cur) {
                Ok(()) => File::open(&parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_err(&parent, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&cur, e)),
            }
        }
        Ok(())
    }

    pub fn get(&self, hash: &str) -> Result<Vec<u8>, LedgerError> {
        let path = self.path_for(hash);
        fs::read(&path).map_err(|e| io_err(&path, e))
    }

    pub fn check(&self, hash: &str) -> PhotoState {
        let path = self.path_for(hash);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(_) => return PhotoState::Missing,
        };
        let mut h = Sha256::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(_) => return PhotoState::Missing,
            }
        }
        let actual = hex::encode(h.finalize());
        if actual == hash {
            PhotoState::Ok
        } else {
            PhotoState::Changed { actual }
        }
    }

    /// Remove a photo file (retention purge only). Missing files are fine.
    pub fn remove(&self, hash: &str) -> Result<bool, LedgerError> {
        let path = self.path_for(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path, e)),
        }
    }
}

/// A hex sha256 as found in the ledger or a CSV: exactly 64 lowercase hex digits.
pub fn is_photo_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
