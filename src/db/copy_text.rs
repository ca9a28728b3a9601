//! Validation log rows in PostgreSQL's COPY text format, written without `fmt`: this runs
//! for every validation, and `chrono`'s formatter alone cost more than the rest of the
//! request's own work (callgrind, ARCHITECTURE.md "Performance work").

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::domain::event::Validated;
use crate::domain::rules::Reason;

/// The columns every line has, in order.
pub const COLUMNS: &str = "validated_at, coupon_id, order_value, discount, final_amount, response_time_us, reason, \
     ip_address, coupon_code, user_id, order_id, user_agent";

/// A reason's code in `validation_reasons` ([`Reason::log_code`]).
pub fn reason_code(reason: Option<Reason>) -> Option<i16> {
    reason.map(Reason::log_code)
}

/// COPY text being built. A batch's rows mostly share their second, so the date and time of
/// day are spelled once per second.
#[derive(Debug, Default)]
pub struct CopyText {
    text: String,
    /// The Unix second last spelled, and its `YYYY-MM-DD HH:MM:SS`.
    second: Option<(i64, String)>,
}

impl CopyText {
    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Forgets the text (keeping its memory and the spelled second).
    pub fn clear(&mut self) {
        self.text.clear();
    }

    /// One line: `position` first when given (a spilled row's journal position), then
    /// [`COLUMNS`]; tab-separated, `\N` for NULL, text fields escaped.
    pub fn row(&mut self, position: Option<i64>, row: &Validated) {
        if let Some(position) = position {
            self.int(position);
            self.text.push('\t');
        }
        self.time(row.validated_at);
        self.text.push('\t');
        match row.coupon_id {
            Some(id) => self.int(id),
            None => self.null(),
        }
        for amount in [row.order_value, row.discount, row.final_amount] {
            self.text.push('\t');
            self.int(amount.get());
        }
        self.text.push('\t');
        self.int(i32::try_from(row.response_time_us).unwrap_or(i32::MAX));
        self.text.push('\t');
        match reason_code(row.reason) {
            Some(code) => self.int(code),
            None => self.null(),
        }
        self.text.push('\t');
        match row.ip_address {
            Some(ip) => self.ip(ip),
            None => self.null(),
        }
        for value in [
            Some(row.coupon_code.as_str()),
            Some(row.user_id.as_str()),
            row.order_id.as_deref(),
            row.user_agent.as_deref(),
        ] {
            self.text.push('\t');
            match value {
                Some(value) => self.escaped(value),
                None => self.null(),
            }
        }
        self.text.push('\n');
    }

    fn null(&mut self) {
        self.text.push_str("\\N");
    }

    fn int(&mut self, n: impl itoa::Integer) {
        self.text.push_str(itoa::Buffer::new().format(n));
    }

    /// `YYYY-MM-DD HH:MM:SS.ffffff+00`.
    fn time(&mut self, at: DateTime<Utc>) {
        let second = at.timestamp();
        match &self.second {
            Some((spelled, text)) if *spelled == second => self.text.push_str(text),
            _ => {
                let text = at.format("%Y-%m-%d %H:%M:%S").to_string();
                self.text.push_str(&text);
                self.second = Some((second, text));
            }
        }
        // A leap second's microseconds run past 999,999; PostgreSQL has no leap seconds.
        let mut micros = at.timestamp_subsec_micros().min(999_999);
        let mut digits = *b".000000+00";
        for digit in digits[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        self.text.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (idx, octet) in v4.octets().into_iter().enumerate() {
                    if idx > 0 {
                        self.text.push('.');
                    }
                    self.int(octet);
                }
            }
            IpAddr::V6(v6) => {
                use std::fmt::Write as _;
                let _ = write!(self.text, "{v6}");
            }
        }
    }

    /// Backslash, tab, newline and carriage return escaped.
    fn escaped(&mut self, value: &str) {
        if !value.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
            self.text.push_str(value);
            return;
        }
        for ch in value.chars() {
            match ch {
                '\\' => self.text.push_str("\\\\"),
                '\t' => self.text.push_str("\\t"),
                '\n' => self.text.push_str("\\n"),
                '\r' => self.text.push_str("\\r"),
                other => self.text.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::money::Cents;

    fn row() -> Validated {
        Validated {
            coupon_code: "A\\B\tC".into(),
            coupon_id: None,
            user_id: "u\n1".into(),
            order_id: None,
            order_value: Cents::new(1250).unwrap(),
            reason: Some(Reason::CouponNotFound),
            discount: Cents::ZERO,
            final_amount: Cents::new(1250).unwrap(),
            ip_address: Some("127.0.0.1".parse().unwrap()),
            user_agent: Some("x\ry".into()),
            response_time_us: 1_234_567,
            validated_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        }
    }

    fn line(position: Option<i64>, row: &Validated) -> String {
        let mut text = CopyText::default();
        text.row(position, row);
        String::from_utf8(text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn lines_escape_text_and_spell_nulls() {
        assert_eq!(
            line(None, &row()),
            "2026-01-02 03:04:05.000000+00\t\\N\t1250\t0\t1250\t1234567\t1\t127.0.0.1\tA\\\\B\\tC\tu\\n1\t\\N\tx\\ry\n"
        );
    }

    #[test]
    fn every_field_is_spelled_as_postgresql_reads_it() {
        let mut full = row();
        full.coupon_code = "SAVE10".into();
        full.user_id = "user_1".into();
        full.coupon_id = Some(42);
        full.order_id = Some("ord-9".into());
        full.reason = None;
        full.discount = Cents::new(125).unwrap();
        full.final_amount = Cents::new(1125).unwrap();
        full.ip_address = Some("2001:db8::1".parse().unwrap());
        full.user_agent = None;
        full.response_time_us = u64::MAX;
        full.validated_at = Utc.timestamp_opt(1_767_323_045, 7_654_321).unwrap();
        assert_eq!(
            line(Some(77), &full),
            "77\t2026-01-02 03:04:05.007654+00\t42\t1250\t125\t1125\t2147483647\t\\N\t2001:db8::1\tSAVE10\tuser_1\tord-9\t\\N\n"
        );
    }

    #[test]
    fn times_are_exact_to_the_microsecond_across_seconds_and_days() {
        // One writer, rows moving through seconds, a day boundary and back (a spilled row):
        // the spelled second must follow each row, the microseconds padded to six digits.
        let mut text = CopyText::default();
        let times = [
            (1_767_225_599, 999_999_000, "2025-12-31 23:59:59.999999+00"),
            (1_767_225_600, 0, "2026-01-01 00:00:00.000000+00"),
            (1_767_225_600, 1_000, "2026-01-01 00:00:00.000001+00"),
            (1_767_225_600, 120_000, "2026-01-01 00:00:00.000120+00"),
            (1_767_225_599, 5_000_000 / 10, "2025-12-31 23:59:59.000500+00"),
            (1_767_225_601, 999, "2026-01-01 00:00:01.000000+00"),
        ];
        for (secs, nanos, _) in times {
            let mut r = row();
            r.validated_at = Utc.timestamp_opt(secs, nanos).unwrap();
            text.row(None, &r);
        }
        let text = String::from_utf8(text.as_bytes().to_vec()).unwrap();
        let spelled: Vec<&str> = text.lines().map(|l| l.split('\t').next().unwrap()).collect();
        let expected: Vec<&str> = times.iter().map(|(_, _, s)| *s).collect();
        assert_eq!(spelled, expected);
        // And as chrono spells them.
        for (secs, nanos, s) in times {
            let at = Utc.timestamp_opt(secs, nanos).unwrap();
            assert_eq!(at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(), s);
        }
    }
}
