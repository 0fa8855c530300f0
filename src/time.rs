//! Time: stored as UTC instants, shown and uploaded in the site's zone (GMT+8) in each
//! platform's format.

use chrono::{DateTime, FixedOffset, Utc};

/// China Standard Time. Every HJ 1321 platform expects GMT+8 wall-clock times.
pub fn site_zone() -> FixedOffset {
    // 8 h is within FixedOffset's ±24 h range, so this cannot fail.
    FixedOffset::east_opt(8 * 3600).unwrap_or(Utc.fix())
}

use chrono::Offset;

/// `yyyy-MM-dd HH:mm:ss` in GMT+8, the national ledger format.
pub fn ledger_format(t: DateTime<Utc>) -> String {
    t.with_timezone(&site_zone())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn formats_in_gmt8() {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 31, 16, 30, 5)
            .single()
            .unwrap_or_default();
        assert_eq!(ledger_format(t), "2027-01-01 00:30:05");
    }
}
