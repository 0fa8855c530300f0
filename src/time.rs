//! Time: stored as UTC instants, shown and uploaded in the site's zone (GMT+8) in each
//! platform's format. The helpers live with the ledger, whose exports set the national format;
//! this module is where the rest of the gateway finds them.

pub use crate::ledger::{local_time, parse_local_time, site_zone};

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone as _, Utc};

    #[test]
    fn formats_and_parses_in_gmt8() {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 31, 16, 30, 5)
            .single()
            .unwrap_or_default();
        assert_eq!(local_time(t), "2027-01-01 00:30:05");
        assert_eq!(parse_local_time("2027-01-01 00:30:05"), Some(t));
    }
}
