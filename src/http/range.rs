//! `Range: bytes=...` on blob requests, as registry clients send it when
//! resuming or fetching in parallel.

/// What to send for a blob of a known size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole blob with 200: no range, a malformed one, or several
    /// ranges at once (a full answer is allowed for those).
    Full,
    /// Bytes `start..end` (end exclusive) with 206.
    Partial { start: u64, end: u64 },
    /// 416: the range starts past the end.
    Unsatisfiable,
}

pub fn answer(header: Option<&str>, size: u64) -> RangeAnswer {
    // The unit is case-insensitive.
    let spec = header.map(str::trim).and_then(|h| {
        let (unit, spec) = h.split_once('=')?;
        unit.trim().eq_ignore_ascii_case("bytes").then_some(spec)
    });
    let Some(spec) = spec else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    // Digits only (no sign); a position too large to represent is past
    // the end of any blob.
    let parse = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(s.parse::<u64>().unwrap_or(u64::MAX))
    };

    let (start, end) = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => return RangeAnswer::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size),
            None => return RangeAnswer::Full,
        },
        // bytes=N-: from N to the end.
        (false, true) => match parse(first) {
            Some(start) => (start, size),
            None => return RangeAnswer::Full,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(last)) if last >= start => (start, size.min(last.saturating_add(1))),
            _ => return RangeAnswer::Full,
        },
        (true, true) => return RangeAnswer::Full,
    };
    if start >= size {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn ranges() {
        assert_eq!(answer(None, 10), Full);
        assert_eq!(answer(Some("bytes=0-3"), 10), Partial { start: 0, end: 4 });
        assert_eq!(answer(Some("bytes=4-"), 10), Partial { start: 4, end: 10 });
        assert_eq!(
            answer(Some("bytes=4-100"), 10),
            Partial { start: 4, end: 10 }
        );
        assert_eq!(answer(Some("bytes=-3"), 10), Partial { start: 7, end: 10 });
        assert_eq!(answer(Some("bytes=-30"), 10), Partial { start: 0, end: 10 });
        assert_eq!(answer(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(answer(Some("bytes=5-2"), 10), Full);
        assert_eq!(answer(Some("items=0-1"), 10), Full);
        assert_eq!(answer(Some("bytes=x-1"), 10), Full);
        assert_eq!(answer(Some("bytes=+1-2"), 10), Full);
        assert_eq!(answer(Some("BYTES=0-1"), 10), Partial { start: 0, end: 2 });
        assert_eq!(
            answer(Some("bytes=999999999999999999999-"), 10),
            Unsatisfiable
        );
    }
}
