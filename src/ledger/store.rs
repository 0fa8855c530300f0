//! Schema, the single writer thread with group commit, and read-only access.
//!
//! One thread owns the writing connection. Appends queue on a channel; the writer drains up to
//! [`MAX_GROUP`] of them into one `BEGIN IMMEDIATE` transaction, commits with
//! `synchronous=FULL` (the WAL is fsynced at every commit), and only then answers each waiter.
//! A waiter therefore never sees a receipt for an event a power cut could take back, while one
//! fsync is shared by every lane that queued during the previous commit.

use super::chain::{self, Hash, RowFields, GENESIS};
use super::events::EventBody;
use super::photos::PhotoStore;
use super::{db_time, parse_db_time, LedgerError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Largest number of appends committed in one transaction.
pub const MAX_GROUP: usize = 512;

pub const DB_FILE: &str = "ledger.db";
pub const PHOTOS_DIR: &str = "photos";

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta(
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events(
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    photos      TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind_occurred ON events(kind, occurred_at);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'ledger events are append-only: record a correction event instead');
END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'ledger events are append-only: purge removes photo files, never events');
END;
"#;

/// The last event of the chain: what uplinks publish so that truncation and rewrites can be
/// detected against a copy kept elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: Hash,
}

impl ChainHead {
    pub const EMPTY: ChainHead = ChainHead {
        seq: 0,
        hash: GENESIS,
    };

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// `SEQ:HEX`, the form `ledger head` prints and `verify --expect-head` takes.
    pub fn parse(s: &str) -> Option<ChainHead> {
        let (seq, h) = s.trim().split_once(':')?;
        let seq = seq.parse().ok()?;
        let bytes = hex::decode(h).ok()?;
        Some(ChainHead {
            seq,
            hash: chain::hash_from_slice(&bytes)?,
        })
    }
}

impl std::fmt::Display for ChainHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash_hex())
    }
}

/// Proof that an event is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: i64,
    pub id: String,
    pub hash: Hash,
    pub recorded_at: DateTime<Utc>,
    /// Hex sha256 of each photo, in the order given.
    pub photos: Vec<String>,
}

/// One stored event, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: i64,
    pub id: String,
    pub recorded_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
    pub kind: String,
    pub body: EventBody,
    pub photos: Vec<String>,
}

enum Reply {
    Async(oneshot::Sender<Result<Receipt, LedgerError>>),
    Sync(mpsc::SyncSender<Result<Receipt, LedgerError>>),
}

impl Reply {
    fn send(self, r: Result<Receipt, LedgerError>) {
        // A waiter that gave up (lane task cancelled) is no reason to stop the writer.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(r);
            }
            Reply::Sync(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

struct Pending {
    kind: &'static str,
    body: String,
    photos: Vec<String>,
    photos_json: String,
    occurred_at: DateTime<Utc>,
    reply: Reply,
}

type Job = Box<dyn FnOnce(&mut Writer) + Send>;

enum Msg {
    Append(Pending),
    Job(Job),
}

struct Inner {
    data_dir: PathBuf,
    photos: PhotoStore,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    head: Arc<RwLock<ChainHead>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and exit.
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        if let Ok(mut g) = self.thread.lock() {
            if let Some(t) = g.take() {
                let _ = t.join();
            }
        }
    }
}

/// Handle to an open ledger. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

pub(crate) fn open_rw(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsynced at every commit, so a receipt survives power loss, not only a
    // process crash (NORMAL would only guarantee the latter).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 64 MB of page cache: bulk imports and big groups spill less often.
    conn.pragma_update(None, "cache_size", -65536)?;
    Ok(conn)
}

pub(crate) fn open_ro(data_dir: &Path) -> Result<Connection, LedgerError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(LedgerError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no ledger database here"),
        });
    }
    let conn = match probe_ro(&path) {
        Err(rusqlite::Error::SqliteFailure(e, _)) if needs_recovery(e.extended_code) => {
            // A writer killed while SQLite was creating the file (before it switched to WAL)
            // leaves a hot rollback journal that only a read-write connection may roll back.
            // Rolling it back is the crash recovery the next writer would do anyway: it
            // restores the last committed state and changes no committed event.
            let rw = Connection::open(&path)?;
            rw.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            drop(rw);
            probe_ro(&path)?
        }
        other => other?,
    };
    Ok(conn)
}

fn needs_recovery(extended_code: std::os::raw::c_int) -> bool {
    extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK
        || extended_code == rusqlite::ffi::SQLITE_READONLY_RECOVERY
}

/// Open read-only and touch the schema, so a database that needs recovery says so here rather
/// than at the first real query.
fn probe_ro(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(conn)
}

fn read_head(conn: &Connection) -> Result<ChainHead, LedgerError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => Ok(ChainHead::EMPTY),
        Some((seq, h)) => Ok(ChainHead {
            seq,
            hash: chain::hash_from_slice(&h).ok_or(LedgerError::Malformed {
                seq,
                reason: format!("stored hash is {} bytes, not 32", h.len()),
            })?,
        }),
    }
}

fn instance_id(conn: &Connection, data_dir: &Path) -> Result<String, LedgerError> {
    if let Some(v) = conn
        .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    {
        return Ok(v);
    }
    // Event ids must stay unique at the platforms even if a site reinstalls and starts a new
    // ledger, so each ledger gets its own prefix.
    let mut h = Sha256::new();
    h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(data_dir.to_string_lossy().as_bytes());
    let id = hex::encode(&h.finalize()[..4]);
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES('instance', ?1)",
        [&id],
    )?;
    conn.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
        r.get(0)
    })
    .map_err(Into::into)
}

impl Ledger {
    /// Open (creating if needed) the ledger in `data_dir`: `ledger.db` and `photos/`.
    pub fn open(data_dir: &Path) -> Result<Ledger, LedgerError> {
        std::fs::create_dir_all(data_dir).map_err(|e| LedgerError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let photos_dir = data_dir.join(PHOTOS_DIR);
        std::fs::create_dir_all(&photos_dir).map_err(|e| LedgerError::Io {
            path: photos_dir.clone(),
            source: e,
        })?;
        let conn = open_rw(&data_dir.join(DB_FILE))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::registry::SCHEMA)?;
        // Derived search/report tables and their triggers (not part of the chain).
        crate::report::index::ensure(&conn)?;
        let instance = instance_id(&conn, data_dir)?;
        let head = read_head(&conn)?;
        let shared = Arc::new(RwLock::new(head));
        let photos = PhotoStore::new(photos_dir);
        let (tx, rx) = mpsc::channel::<Msg>();
        let mut writer = Writer {
            conn,
            instance,
            photos: photos.clone(),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LedgerError::Io {
                path: data_dir.to_path_buf(),
                source: e,
            })?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                photos,
                tx: Mutex::new(Some(tx)),
                head: shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn photos(&self) -> &PhotoStore {
        &self.inner.photos
    }

    /// Last committed event as seen by this process.
    pub fn head(&self) -> ChainHead {
        *self.inner.head.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A read-only connection for views, exports and uplink cursors.
    pub fn reader(&self) -> Result<LedgerReader, LedgerError> {
        LedgerReader::open(&self.inner.data_dir)
    }

    fn send(&self, msg: Msg) -> Result<(), LedgerError> {
        let g = self.inner.tx.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(tx) => tx.send(msg).map_err(|_| LedgerError::Closed),
            None => Err(LedgerError::Closed),
        }
    }

    fn prepare(
        body: &EventBody,
        photos: Vec<String>,
        occurred_at: DateTime<Utc>,
        reply: Reply,
    ) -> Result<Pending, LedgerError> {
        Ok(Pending {
            kind: body.kind(),
            body: chain::canonical_json(body)?,
            photos_json: chain::canonical_json(&photos)?,
            photos,
            occurred_at,
            reply,
        })
    }

    /// Append one event; resolves only after the transaction holding it is committed (and its
    /// photos are on disk). This is what the lane engine's `ledger.record` awaits before any
    /// barrier command.
    pub async fn append(
        &self,
        body: EventBody,
        photos: Vec<Bytes>,
        occurred_at: DateTime<Utc>,
    ) -> Result<Receipt, LedgerError> {
        let hashes = if photos.is_empty() {
            Vec::new()
        } else {
            let store = self.inner.photos.clone();
            tokio::task::spawn_blocking(move || store_all(&store, &photos))
                .await
                .map_err(|e| LedgerError::Write(format!("photo writer task failed: {e}")))??
        };
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(Self::prepare(
            &body,
            hashes,
            occurred_at,
            Reply::Async(tx),
        )?))?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// [`Ledger::append`] for synchronous callers. Do not call from inside an async task.
    pub fn append_blocking(
        &self,
        body: EventBody,
        photos: Vec<Bytes>,
        occurred_at: DateTime<Utc>,
    ) -> Result<Receipt, LedgerError> {
        let hashes = store_all(&self.inner.photos, &photos)?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Append(Self::prepare(
            &body,
            hashes,
            occurred_at,
            Reply::Sync(tx),
        )?))?;
        rx.recv().map_err(|_| LedgerError::Closed)?
    }

    /// Run `f` in one write transaction on the writer thread (registry imports, backfills,
    /// purges): everything it appends and changes commits together or not at all.
    pub fn transaction_blocking<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T, LedgerError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Job(Box::new(move |w: &mut Writer| {
            let _ = tx.send(w.run_txn(f));
        })))?;
        rx.recv().map_err(|_| LedgerError::Closed)?
    }

    /// Async form of [`Ledger::transaction_blocking`].
    pub async fn transaction<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T, LedgerError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Job(Box::new(move |w: &mut Writer| {
            let _ = tx.send(w.run_txn(f));
        })))?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }
}

fn store_all(store: &PhotoStore, photos: &[Bytes]) -> Result<Vec<String>, LedgerError> {
    photos.iter().map(|p| store.put(p)).collect()
}

struct Writer {
    conn: Connection,
    instance: String,
    photos: PhotoStore,
    shared: Arc<RwLock<ChainHead>>,
}

/// A write transaction on the writer thread. Appends chain onto the head read inside the
/// transaction, so another process writing the same ledger (a CLI backfill while the gateway
/// runs) cannot fork the chain: `BEGIN IMMEDIATE` serialises them.
pub struct Txn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    head: ChainHead,
    instance: &'a str,
    photos: &'a PhotoStore,
    recorded_at: DateTime<Utc>,
    recorded_text: String,
}

impl<'a> Txn<'a> {
    /// The transaction's connection; statements prepared on it may be held across appends.
    pub fn conn(&self) -> &'a Connection {
        self.tx
    }

    pub fn photos(&self) -> &PhotoStore {
        self.photos
    }

    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// Append within this transaction. Photos must already be in the store (their hashes).
    pub fn append(
        &mut self,
        body: &EventBody,
        photos: &[String],
        occurred_at: DateTime<Utc>,
    ) -> Result<Receipt, LedgerError> {
        let body_text = chain::canonical_json(body)?;
        let photos_json = chain::canonical_json(&photos)?;
        insert_event(
            self.tx,
            &mut self.head,
            self.instance,
            self.recorded_at,
            &self.recorded_text,
            body.kind(),
            &body_text,
            photos,
            &photos_json,
            occurred_at,
        )
        .map_err(Into::into)
    }
}

impl Txn<'_> {
    /// Append a body given as canonical JSON text that must be exactly the canonical JSON of
    /// an [`EventBody`] of `kind` (bulk paths write it directly to skip building a value
    /// tree). Checked in debug builds.
    pub(crate) fn append_canonical(
        &mut self,
        kind: &'static str,
        body_text: &str,
        photos: &[String],
        occurred_at: DateTime<Utc>,
    ) -> Result<Receipt, LedgerError> {
        debug_assert!(
            serde_json::from_str::<EventBody>(body_text)
                .ok()
                .and_then(|b| chain::canonical_json(&b).ok().filter(|_| b.kind() == kind))
                .as_deref()
                == Some(body_text),
            "append_canonical body is not a canonical {kind} event: {body_text}"
        );
        let photos_json = chain::canonical_json(&photos)?;
        insert_event(
            self.tx,
            &mut self.head,
            self.instance,
            self.recorded_at,
            &self.recorded_text,
            kind,
            body_text,
            photos,
            &photos_json,
            occurred_at,
        )
        .map_err(Into::into)
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
    conn: &Connection,
    head: &mut ChainHead,
    instance: &str,
    recorded_at: DateTime<Utc>,
    recorded_text: &str,
    kind: &str,
    body: &str,
    photos: &[String],
    photos_json: &str,
    occurred_at: DateTime<Utc>,
) -> Result<Receipt, rusqlite::Error> {
    let seq = head.seq + 1;
    let id = format!("{instance}-{seq}");
    let occurred_text = if occurred_at == recorded_at {
        recorded_text.to_string()
    } else {
        db_time(occurred_at)
    };
    let hash = chain::row_hash(
        &head.hash,
        &RowFields {
            seq,
            id: &id,
            recorded_at: recorded_text,
            occurred_at: &occurred_text,
            kind,
            body,
            photos: photos_json,
        },
    );
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events(seq, id, recorded_at, occurred_at, kind, body, photos, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    stmt.execute(params![
        seq,
        id,
        recorded_text,
        occurred_text,
        kind,
        body,
        photos_json,
        &head.hash[..],
        &hash[..]
    ])?;
    *head = ChainHead { seq, hash };
    Ok(Receipt {
        seq,
        id,
        hash,
        recorded_at,
        photos: photos.to_vec(),
    })
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
        while let Ok(first) = rx.recv() {
            let mut after: Option<Job> = None;
            match first {
                Msg::Job(job) => {
                    job(self);
                    continue;
                }
                Msg::Append(p) => batch.push(p),
            }
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(Msg::Append(p)) => batch.push(p),
                    Ok(Msg::Job(job)) => {
                        after = Some(job);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(&mut batch);
            if let Some(job) = after {
                job(self);
            }
        }
    }

    fn set_head(&self, head: ChainHead) {
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = head;
    }

    fn commit_group(&mut self, batch: &mut Vec<Pending>) {
        let n = batch.len();
        match self.try_commit_group(batch) {
            Ok((head, receipts)) => {
                self.set_head(head);
                for (p, r) in batch.drain(..).zip(receipts) {
                    p.reply.send(Ok(r));
                }
                tracing::trace!(events = n, seq = head.seq, "ledger group committed");
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(events = n, error = %msg, "ledger group commit failed");
                for p in batch.drain(..) {
                    p.reply.send(Err(LedgerError::Write(msg.clone())));
                }
            }
        }
    }

    fn try_commit_group(
        &mut self,
        batch: &[Pending],
    ) -> Result<(ChainHead, Vec<Receipt>), LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut head = read_head(&tx)?;
        let recorded_at = Utc::now();
        let recorded_text = db_time(recorded_at);
        let mut receipts = Vec::with_capacity(batch.len());
        for p in batch {
            receipts.push(insert_event(
                &tx,
                &mut head,
                &self.instance,
                recorded_at,
                &recorded_text,
                p.kind,
                &p.body,
                &p.photos,
                &p.photos_json,
                p.occurred_at,
            )?);
        }
        tx.commit()?;
        Ok((head, receipts))
    }

    fn run_txn<T>(
        &mut self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head = read_head(&tx)?;
        let recorded_at = Utc::now();
        let mut txn = Txn {
            tx: &tx,
            head,
            instance: &self.instance,
            photos: &self.photos,
            recorded_at,
            recorded_text: db_time(recorded_at),
        };
        let value = f(&mut txn)?;
        let head = txn.head;
        tx.commit()?;
        self.set_head(head);
        Ok(value)
    }
}

/// Read-only access: views, exports, cursors for uplinks.
pub struct LedgerReader {
    pub(crate) conn: Connection,
    pub(crate) data_dir: PathBuf,
}

impl LedgerReader {
    pub fn open(data_dir: &Path) -> Result<LedgerReader, LedgerError> {
        Ok(LedgerReader {
            conn: open_ro(data_dir)?,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn photos(&self) -> PhotoStore {
        PhotoStore::new(self.data_dir.join(PHOTOS_DIR))
    }

    pub fn head(&self) -> Result<ChainHead, LedgerError> {
        read_head(&self.conn)
    }

    /// Events with `seq > after`, oldest first, at most `limit`. Uplinks keep their delivery
    /// position per destination as the last seq they had acknowledged.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRecord>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, recorded_at, occurred_at, kind, body, photos FROM events
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, limit], raw_row)?;
        rows.map(|r| decode(r?)).collect()
    }

    pub fn event(&self, seq: i64) -> Result<Option<EventRecord>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, recorded_at, occurred_at, kind, body, photos FROM events WHERE seq = ?1",
        )?;
        let raw = stmt.query_row([seq], raw_row).optional()?;
        raw.map(decode).transpose()
    }

    /// Ids are `<instance>-<seq>`, unique because seq is; no index on the text is needed.
    pub fn event_by_id(&self, id: &str) -> Result<Option<EventRecord>, LedgerError> {
        let Some(seq) = id.rsplit('-').next().and_then(|s| s.parse::<i64>().ok()) else {
            return Ok(None);
        };
        Ok(self.event(seq)?.filter(|e| e.id == id))
    }

    /// Events of the given kinds whose `occurred_at` lies in `[from, to)`, in time order.
    pub fn events_between(
        &self,
        kinds: &[&str],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<EventRecord>, LedgerError> {
        let mut out = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, recorded_at, occurred_at, kind, body, photos FROM events
             WHERE kind = ?1 AND occurred_at >= ?2 AND occurred_at < ?3",
        )?;
        let (f, t) = (db_time(from), db_time(to));
        for k in kinds {
            let rows = stmt.query_map(params![k, f, t], raw_row)?;
            for r in rows {
                out.push(decode(r?)?);
            }
        }
        out.sort_by_key(|a| (a.occurred_at, a.seq));
        Ok(out)
    }
}

pub(crate) type RawRow = (i64, String, String, String, String, String, String);

pub(crate) fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

pub(crate) fn decode(raw: RawRow) -> Result<EventRecord, LedgerError> {
    let (seq, id, rec, occ, kind, body, photos) = raw;
    let bad = |reason: String| LedgerError::Malformed { seq, reason };
    Ok(EventRecord {
        seq,
        id,
        recorded_at: parse_db_time(&rec).ok_or_else(|| bad(format!("recorded_at `{rec}`")))?,
        occurred_at: parse_db_time(&occ).ok_or_else(|| bad(format!("occurred_at `{occ}`")))?,
        body: serde_json::from_str(&body).map_err(|e| bad(format!("body: {e}")))?,
        photos: serde_json::from_str(&photos).map_err(|e| bad(format!("photos: {e}")))?,
        kind,
    })
}
