//! Corrections (更正) of earlier pass-like events: a new `correction` event that references the
//! old one, never an edit in place. One check serves the CLI (`ecogate ledger correct`) and the
//! API (`POST /api/v1/corrections`), so both refuse the same things with the same words.

use super::events::{Correction, EventBody};
use super::store::{Ledger, LedgerReader, Receipt};
use super::LedgerError;
use chrono::Utc;
use ecogate_drivers::Mass;

/// Kinds a correction may reference: those the ledger views and the report index read.
pub const CORRECTABLE: [&str; 4] = ["pass_attempt", "manual_release", "backfill", "weighing"];

/// The heaviest net load a correction may give: far above any legal road vehicle (49 t), low
/// enough that sums over years of passes cannot overflow.
pub const MAX_NET_KG: i64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum CorrectError {
    #[error("`refs`: no event with id `{0}` in the ledger")]
    NoSuchEvent(String),
    #[error("`refs`: event `{id}` is a `{kind}`; only {} events can be corrected", CORRECTABLE.join(", "))]
    NotCorrectable { id: String, kind: String },
    #[error("`refs`: event `{0}` was voided by an earlier correction")]
    AlreadyVoid(String),
    #[error(
        "nothing to correct: give void, or at least one of plate, color, direction, cargo, net"
    )]
    Nothing,
    #[error("`void` withdraws the event; it cannot be combined with new values")]
    VoidWithValues,
    #[error("`{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

fn field(field: &'static str, message: impl Into<String>) -> CorrectError {
    CorrectError::Field {
        field,
        message: message.into(),
    }
}

/// Checks a correction against the ledger as it is now: the referenced event exists, is
/// pass-like and not voided, and the new values make sense for it.
pub fn check(reader: &LedgerReader, c: &Correction) -> Result<(), CorrectError> {
    if c.operator.trim().is_empty() {
        return Err(field("operator", "say who makes the correction"));
    }
    if c.reason.trim().is_empty() {
        return Err(field("reason", "say why the record is corrected"));
    }
    let has_values = c.plate.is_some()
        || c.color.is_some()
        || c.direction.is_some()
        || c.cargo.is_some()
        || c.net.is_some();
    match (c.void, has_values) {
        (false, false) => return Err(CorrectError::Nothing),
        (true, true) => return Err(CorrectError::VoidWithValues),
        _ => {}
    }
    if let Some(p) = &c.plate {
        let n = p.chars().count();
        if !(5..=16).contains(&n) || p.chars().any(char::is_whitespace) {
            return Err(field("plate", format!("`{p}` is not a plate number")));
        }
    }
    if let Some(cargo) = &c.cargo {
        if cargo.trim().is_empty() || cargo.chars().count() > 64 {
            return Err(field("cargo", "give the cargo name (1–64 characters)"));
        }
    }
    if let Some(net) = c.net {
        if net < Mass::from_kg(0) || net > Mass::from_kg(MAX_NET_KG) {
            return Err(field(
                "net",
                format!("{net} kg is outside 0–{MAX_NET_KG} kg"),
            ));
        }
    }
    let Some(old) = reader.event_by_id(&c.refs)? else {
        return Err(CorrectError::NoSuchEvent(c.refs.clone()));
    };
    if !CORRECTABLE.contains(&old.kind.as_str()) {
        return Err(CorrectError::NotCorrectable {
            id: old.id,
            kind: old.kind,
        });
    }
    // A weighing has no plate colour or direction of its own to correct; its pass does.
    if old.kind == "weighing" && (c.color.is_some() || c.direction.is_some()) {
        return Err(field(
            if c.color.is_some() {
                "color"
            } else {
                "direction"
            },
            "a weighing takes these from its pass: correct the pass instead",
        ));
    }
    let voided = reader
        .events_between(&["correction"], old.occurred_at, far_future())?
        .into_iter()
        .any(|e| matches!(&e.body, EventBody::Correction(k) if k.refs == c.refs && k.void));
    if voided {
        return Err(CorrectError::AlreadyVoid(c.refs.clone()));
    }
    Ok(())
}

fn far_future() -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::days(365 * 100)
}

/// Checks and appends a correction; the views, the report index and the exports apply it from
/// then on.
pub async fn record(ledger: &Ledger, c: Correction) -> Result<Receipt, CorrectError> {
    let reader = ledger.reader()?;
    let checked = {
        let c = c.clone();
        tokio::task::spawn_blocking(move || check(&reader, &c))
            .await
            .map_err(|e| LedgerError::Write(format!("correction check: {e}")))?
    };
    checked?;
    Ok(ledger
        .append(EventBody::Correction(c), Vec::new(), Utc::now())
        .await?)
}
