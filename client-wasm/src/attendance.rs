//! The attendance sheet a leader's session keeps in memory, from the room states it observes.
//!
//! Groups whose sessions count towards CME/CPD must show who attended and for how long. The
//! server keeps nothing for that beyond what the meeting needs anyway (each member's
//! `joined_at_ms`); the leader's own client writes the sheet down as the meeting goes, and
//! the leader downloads it ([`Attendance::sheet`], [`Attendance::csv`]). Nothing of it is sent
//! anywhere or stored by the client: it lives as long as the page.
//!
//! A member is *present* while their status is `here` or `outside_circle` (the presenter
//! listening during reflection); `reconnecting` and `away` are absences. Members who leave the
//! state (their grace period ran out, they were removed, the meeting ended) stay on the sheet
//! with their last interval closed. Before the leader's session first saw them, a member
//! present then counts as present since their `joined_at_ms`. A member who comes back after
//! the grace period is a new membership on the server, and a second row here.

use std::collections::BTreeMap;

use balint_proto::room::{Role, RoomState, Status};
use serde::Serialize;

/// One member's attendance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attendee {
    name: String,
    role: Role,
    /// When the member arrived, as the server says, or when this session first saw them.
    joined_at_ms: u64,
    /// Intervals of presence; the last one is open (`None`) while the member is present.
    intervals: Vec<(u64, Option<u64>)>,
}

impl Attendee {
    fn is_present(&self) -> bool {
        self.intervals.last().is_some_and(|(_, end)| end.is_none())
    }

    fn close(&mut self, now_ms: u64) {
        if let Some((start, end @ None)) = self.intervals.last_mut() {
            *end = Some(now_ms.max(*start));
        }
    }

    fn present_ms(&self, now_ms: u64) -> u64 {
        self.intervals.iter().map(|&(start, end)| end.unwrap_or(now_ms).saturating_sub(start)).sum()
    }
}

/// The attendance log of one meeting, as a leader's session observed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attendance {
    title: Option<String>,
    /// The earliest arrival seen, or the first observation: the meeting's date.
    started_ms: Option<u64>,
    /// Member ids in order of first sight.
    order: Vec<String>,
    members: BTreeMap<String, Attendee>,
}

/// One interval of presence, for the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Interval {
    /// When it began (Unix milliseconds).
    pub start_ms: u64,
    /// When it ended; `None` while it lasts.
    pub end_ms: Option<u64>,
}

/// One row of the sheet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Display name.
    pub name: String,
    /// The member's role when last seen.
    pub role: Role,
    /// When they arrived (Unix milliseconds).
    pub joined_at_ms: u64,
    /// When they were last present; `None` while they are here.
    pub left_at_ms: Option<u64>,
    /// Minutes present, rounded to the nearest minute.
    pub minutes_present: u64,
    /// The intervals of presence.
    pub intervals: Vec<Interval>,
}

/// The whole sheet, as `RoomClient.attendance()` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sheet {
    /// The meeting's title.
    pub title: Option<String>,
    /// When the meeting started, as far as this session knows (Unix milliseconds).
    pub date: Option<u64>,
    /// Every member seen, in order of first sight.
    pub members: Vec<Row>,
}

impl Attendance {
    /// Takes note of a room state observed at `now_ms`.
    pub fn observe(&mut self, state: &RoomState, now_ms: u64) {
        if state.title.is_some() {
            self.title.clone_from(&state.title);
        }
        for view in &state.members {
            let present = matches!(view.status, Status::Here | Status::OutsideCircle);
            let known_arrival = (view.joined_at_ms > 0 && view.joined_at_ms <= now_ms).then_some(view.joined_at_ms);
            let attendee = self.members.entry(view.id.clone()).or_insert_with(|| {
                self.order.push(view.id.clone());
                Attendee {
                    name: view.name.clone(),
                    role: view.role,
                    joined_at_ms: known_arrival.unwrap_or(now_ms),
                    intervals: Vec::new(),
                }
            });
            attendee.name.clone_from(&view.name);
            attendee.role = view.role;
            match (present, attendee.is_present()) {
                (true, false) => {
                    // First seen and present: here since they arrived, as far as we know.
                    let start = if attendee.intervals.is_empty() { known_arrival.unwrap_or(now_ms) } else { now_ms };
                    attendee.intervals.push((start, None));
                }
                (false, true) => attendee.close(now_ms),
                _ => {}
            }
            let arrival = attendee.joined_at_ms;
            self.started_ms = Some(self.started_ms.map_or(arrival, |s| s.min(arrival)));
        }
        for (id, attendee) in &mut self.members {
            if !state.members.iter().any(|m| &m.id == id) {
                attendee.close(now_ms);
            }
        }
        self.started_ms.get_or_insert(now_ms);
    }

    /// The meeting ended (or this session left it) at `now_ms`: everyone's presence ends.
    pub fn close_all(&mut self, now_ms: u64) {
        for attendee in self.members.values_mut() {
            attendee.close(now_ms);
        }
    }

    /// Whether nothing has been observed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The sheet at `now_ms` (open intervals count up to it).
    pub fn sheet(&self, now_ms: u64) -> Sheet {
        let members = self
            .order
            .iter()
            .filter_map(|id| self.members.get(id))
            .map(|a| Row {
                name: a.name.clone(),
                role: a.role,
                joined_at_ms: a.joined_at_ms,
                left_at_ms: if a.is_present() { None } else { a.intervals.last().and_then(|(_, end)| *end) },
                minutes_present: (a.present_ms(now_ms) + 30_000) / 60_000,
                intervals: a.intervals.iter().map(|&(start_ms, end_ms)| Interval { start_ms, end_ms }).collect(),
            })
            .collect();
        Sheet { title: self.title.clone(), date: self.started_ms, members }
    }

    /// The sheet at `now_ms` as CSV (RFC 4180: a header row, CRLF line ends, fields with a
    /// comma, a quote or a line break quoted). Times are UTC, ISO 8601. A text field that a
    /// spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, a tab or a
    /// carriage return) is prefixed with a single quote.
    pub fn csv(&self, now_ms: u64) -> String {
        let sheet = self.sheet(now_ms);
        let title = sheet.title.as_deref().unwrap_or_default();
        let date = sheet.date.map(utc_date).unwrap_or_default();
        let mut out = String::from("meeting,date,name,role,joined_at_utc,left_at_utc,minutes_present\r\n");
        for row in &sheet.members {
            let fields = [
                text_field(title),
                date.clone(),
                text_field(&row.name),
                row.role.as_str().to_owned(),
                utc_time(row.joined_at_ms),
                row.left_at_ms.map(utc_time).unwrap_or_default(),
                row.minutes_present.to_string(),
            ];
            out.push_str(&fields.join(","));
            out.push_str("\r\n");
        }
        out
    }
}

/// A text field of the CSV: guarded against formula injection, then quoted as RFC 4180 asks.
fn text_field(value: &str) -> String {
    let guarded =
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{value}") } else { value.to_owned() };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// `YYYY-MM-DD` of a Unix time in milliseconds, in UTC.
fn utc_date(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time in milliseconds.
fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, min, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!("{}T{h:02}:{min:02}:{s:02}Z", utc_date(ms))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_iso_8601() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(1_767_261_600_000), "2026-01-01T10:00:00Z");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn text_fields_are_quoted_and_guarded() {
        assert_eq!(text_field("Ann"), "Ann");
        assert_eq!(text_field("Smith, Ann"), "\"Smith, Ann\"");
        assert_eq!(text_field("Ann \"Nan\" B"), "\"Ann \"\"Nan\"\" B\"");
        assert_eq!(text_field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(text_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(text_field("+1"), "'+1");
        assert_eq!(text_field("-2"), "'-2");
        assert_eq!(text_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text_field("Dr. =Ann"), "Dr. =Ann", "only a leading sign is a formula");
    }
}
