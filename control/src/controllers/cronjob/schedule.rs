//! Schedule: a CronJob's `spec.schedule` in the standard five-field cron syntax, as
//! upstream parses it (robfig/cron's `ParseStandard`): minute, hour, day of month, month,
//! day of week, each a `*` or `?`, a value, a range, a list and a `/step`, with month and
//! weekday names and the `@yearly` … `@hourly` shorthands; and the times it fires, in the
//! CronJob's time zone.
//!
//! Invariants: a day matches when both day fields match, unless neither is a wildcard, when
//! either one does (cron's rule); [`Schedule::next`] is strictly after the time given, on a
//! whole minute, and searches at most [`SEARCH_YEARS`] ahead (a schedule like `0 0 30 2 *`
//! never fires).

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// How far ahead a next time is looked for before the schedule counts as never firing.
pub const SEARCH_YEARS: i16 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("expected exactly 5 fields, found {0}: {1:?}")]
    FieldCount(usize, String),
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("failed to parse {field} field {text:?}: {why}")]
    Field {
        field: &'static str,
        text: String,
        why: String,
    },
}

/// One field: the values it allows as bits, and whether it was a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn has(self, value: i8) -> bool {
        self.bits & (1 << value) != 0
    }
}

struct Bounds {
    name: &'static str,
    min: u8,
    max: u8,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Bounds = Bounds {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
/// Names count from the field's minimum: JAN is 1, SUN is 0.
const MONTH: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Bounds = Bounds {
    name: "day-of-week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: Field,
    hour: Field,
    day: Field,
    month: Field,
    weekday: Field,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let expanded = if let Some(descriptor) = text.strip_prefix('@') {
            match descriptor {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                _ => return Err(Error::Descriptor(text.to_owned())),
            }
        } else {
            text
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(Error::FieldCount(fields.len(), text.to_owned()));
        };
        Ok(Schedule {
            minute: field(minute, &MINUTE)?,
            hour: field(hour, &HOUR)?,
            day: field(day, &DAY)?,
            month: field(month, &MONTH)?,
            weekday: field(weekday, &WEEKDAY)?,
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let day = self.day.has(date.day());
        let weekday = self.weekday.has(date.weekday().to_sunday_zero_offset());
        if self.day.star || self.weekday.star {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The first time after `after` that the schedule fires, in `tz`'s wall-clock time;
    /// None when it fires in none of the next [`SEARCH_YEARS`] years.
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        // The next whole minute.
        let mut t = local
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = local.year().saturating_add(SEARCH_YEARS);
        while t.year() <= limit {
            if !self.month.has(t.month()) {
                t = first_of_next_month(t)?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = DateTime::from_parts(t.date().tomorrow().ok()?, Time::midnight());
                continue;
            }
            if !self.hour.has(t.hour()) {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !self.minute.has(t.minute()) {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A wall-clock time a DST change skips maps past the gap; the time found must
            // still be later than `after`.
            let at = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

fn first_of_next_month(t: DateTime) -> Option<DateTime> {
    let first = t.date().first_of_month().checked_add(1.month()).ok()?;
    Some(DateTime::from_parts(first, Time::midnight()))
}

fn field(text: &str, bounds: &Bounds) -> Result<Field, Error> {
    let fail = |why: String| Error::Field {
        field: bounds.name,
        text: text.to_owned(),
        why,
    };
    let mut result = Field {
        bits: 0,
        star: false,
    };
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u8 = step
                    .parse()
                    .map_err(|_| fail(format!("bad step {step:?}")))?;
                if step == 0 {
                    return Err(fail("step of zero".into()));
                }
                (range, Some(step))
            }
            None => (part, None),
        };
        let (start, end, star) = if range == "*" || range == "?" {
            (bounds.min, bounds.max, true)
        } else {
            let (low, high) = match range.split_once('-') {
                Some((low, high)) => (
                    value(low, bounds).map_err(fail)?,
                    Some(value(high, bounds).map_err(fail)?),
                ),
                None => (value(range, bounds).map_err(fail)?, None),
            };
            // `5/10` runs from 5 to the field's end.
            let end = high.unwrap_or(if step.is_some() { bounds.max } else { low });
            (low, end, false)
        };
        if start > end {
            return Err(fail(format!(
                "beginning of range ({start}) beyond end of range ({end})"
            )));
        }
        let step = step.unwrap_or(1);
        let mut v = start;
        while v <= end {
            result.bits |= 1 << v;
            v = match v.checked_add(step) {
                Some(next) => next,
                None => break,
            };
        }
        // `*/2` is no wildcard for the day rule; `*` and `*/1` are.
        result.star |= star && step == 1;
    }
    Ok(result)
}

fn value(text: &str, bounds: &Bounds) -> Result<u8, String> {
    let lower = text.to_ascii_lowercase();
    let v = match bounds.names.iter().position(|n| *n == lower) {
        Some(i) => u8::try_from(i).unwrap_or(u8::MAX) + bounds.min,
        None => text
            .parse::<u8>()
            .map_err(|_| format!("bad value {text:?}"))?,
    };
    if v < bounds.min || v > bounds.max {
        return Err(format!(
            "value {v} out of range [{}, {}]",
            bounds.min, bounds.max
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .expect("parses")
            .next(at(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into())
    }

    #[test]
    fn next_times_follow_the_fields() {
        let cases = [
            (
                "*/1 * * * ?",
                "2026-11-27T04:12:30Z",
                "2026-11-27T04:13:00Z",
            ),
            ("* * * * *", "2026-11-27T04:12:00Z", "2026-11-27T04:13:00Z"),
            (
                "*/15 * * * *",
                "2026-11-27T04:12:00Z",
                "2026-11-27T04:15:00Z",
            ),
            (
                "5/20 * * * *",
                "2026-11-27T04:30:00Z",
                "2026-11-27T04:45:00Z",
            ),
            (
                "0 9-17/4 * * *",
                "2026-11-27T10:00:00Z",
                "2026-11-27T13:00:00Z",
            ),
            (
                "30 2 * * mon-fri",
                "2026-11-27T04:00:00Z",
                "2026-11-30T02:30:00Z",
            ),
            (
                "0 0 1 jan,JUL *",
                "2026-11-27T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            ("@monthly", "2026-11-27T00:00:00Z", "2026-12-01T00:00:00Z"),
            ("@weekly", "2026-11-27T00:00:00Z", "2026-11-29T00:00:00Z"),
            ("0 0 29 2 *", "2026-11-27T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 0 30 2 *", "2026-11-27T00:00:00Z", "never"),
        ];
        for (schedule, after, want) in cases {
            assert_eq!(next(schedule, after), want, "{schedule} after {after}");
        }
    }

    #[test]
    fn restricted_day_fields_match_either_a_wildcard_makes_both_count() {
        // The 13th, or a Friday: 2026-11-27 is a Friday.
        assert_eq!(
            next("0 0 13 * 5", "2026-11-20T12:00:00Z"),
            "2026-11-27T00:00:00Z"
        );
        // Every Friday, with the day of month a wildcard.
        assert_eq!(
            next("0 0 * * 5", "2026-11-28T00:00:00Z"),
            "2026-12-04T00:00:00Z"
        );
        // A stepped wildcard is a restriction: odd days, or Sundays.
        assert_eq!(
            next("0 0 */2 * 0", "2026-11-27T12:00:00Z"),
            "2026-11-29T00:00:00Z"
        );
    }

    #[test]
    fn times_are_wall_clock_in_the_time_zone() {
        let tz = TimeZone::get("America/New_York").expect("zoneinfo");
        let schedule = Schedule::parse("0 9 * * *").expect("parses");
        // 09:00 in New York is 14:00 UTC in winter.
        let next = schedule
            .next(at("2026-11-27T15:00:00Z"), &tz)
            .expect("fires");
        assert_eq!(next, at("2026-11-28T14:00:00Z"));
    }

    #[test]
    fn malformed_schedules_say_what_is_wrong() {
        let cases = [
            ("* * * *", "expected exactly 5 fields, found 4"),
            (
                "60 * * * *",
                "minute field \"60\": value 60 out of range [0, 59]",
            ),
            ("* * * foo *", "month field \"foo\": bad value"),
            ("*/0 * * * *", "step of zero"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1)",
            ),
            ("@every 5m", "unrecognized descriptor"),
            (
                "* * * * 7",
                "day-of-week field \"7\": value 7 out of range [0, 6]",
            ),
        ];
        for (schedule, want) in cases {
            let err = Schedule::parse(schedule).expect_err(schedule).to_string();
            assert!(err.contains(want), "{schedule}: {err}");
        }
    }
}
