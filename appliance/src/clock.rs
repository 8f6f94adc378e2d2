//! Time as the appliance stores and compares it: RFC 3339 text in UTC, to the second, so that
//! comparing the text compares the times (the store relies on it).

/// Now, as stored.
pub(crate) fn now_rfc3339() -> String {
    ferry_manifests::rfc3339(to_second(time::OffsetDateTime::now_utc()))
}

/// An RFC 3339 time with any offset and fraction (what agents send), in UTC, to the second.
pub(crate) fn utc_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| to_second(t.to_offset(time::UtcOffset::UTC)))
}

/// [`utc_time`] as stored text.
pub(crate) fn utc_rfc3339(text: &str) -> Option<String> {
    utc_time(text).map(ferry_manifests::rfc3339)
}

fn to_second(t: time::OffsetDateTime) -> time::OffsetDateTime {
    t.replace_nanosecond(0).expect("0 ns is within every second")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_times_are_stored_in_utc_to_the_second() {
        assert_eq!(
            utc_rfc3339("2026-03-01T01:30:00.987+01:00").as_deref(),
            Some("2026-03-01T00:30:00Z")
        );
        assert_eq!(utc_rfc3339("2026-03-01 00:30:00"), None);
        let now = now_rfc3339();
        assert_eq!(utc_rfc3339(&now), Some(now.clone()), "{now} is stored as it is");
    }
}
