//! Dates and times in a project's time zone (`timezone` in `project.toml`):
//! the Rhai functions and the Tera filter that format them. jiff does the
//! zone rules (daylight saving included) from the bundled time zone
//! database; this module only adapts it to scripts and templates. Time
//! values are what `now()` returns: milliseconds since 1970-01-01 UTC.
//! Calendar schedules (`[[timers]]` with `cron`) live in `runtime::schedule`.

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use rhai::{Dynamic, Engine, EvalAltResult, Map};

/// What `format_time(ms)` and the filter print without a pattern.
pub const DEFAULT_PATTERN: &str = "%Y-%m-%d %H:%M:%S";

/// The zone a `timezone` setting names; the server's own zone when empty.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() {
        return Ok(TimeZone::system());
    }
    TimeZone::get(name).map_err(|error| {
        format!("timezone `{name}` is not a known IANA time zone (like \"Europe/Rome\"): {error}")
    })
}

/// The zone's IANA name, or `UTC±hh:mm` when it has none.
pub fn zone_name(zone: &TimeZone) -> String {
    zone.iana_name().map_or_else(
        || zone.to_offset(Timestamp::now()).to_string(),
        str::to_string,
    )
}

/// `millis` as a date and time in `zone`.
pub fn zoned(millis: i64, zone: &TimeZone) -> Result<Zoned, String> {
    Timestamp::from_millisecond(millis)
        .map(|t| t.to_zoned(zone.clone()))
        .map_err(|e| format!("{millis} is not a time: {e}"))
}

/// Formats `millis` in `zone` with a strftime `pattern` (`%H:%M`, `%A %e %B`).
pub fn format(millis: i64, pattern: &str, zone: &TimeZone) -> Result<String, String> {
    let zoned = zoned(millis, zone)?;
    jiff::fmt::strtime::format(pattern, &zoned)
        .map_err(|e| format!("format_time: bad pattern {pattern:?}: {e}"))
}

/// Parses a `[[timers]]` cron pattern: five fields (minute first) or six
/// (seconds first), or a nickname like `@daily`.
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())
}

/// The first time after `after` that `cron` matches, in `after`'s zone.
pub fn next_run(cron: &croner::Cron, after: &Zoned) -> Result<Zoned, String> {
    cron.find_next_occurrence(after, false)
        .map_err(|e| e.to_string())
}

/// The parts of a date and time, for scripts that compute with them.
fn parts(zoned: &Zoned) -> Map {
    let mut map = Map::new();
    let mut put = |key: &str, value: i64| {
        map.insert(key.into(), Dynamic::from(value));
    };
    put("year", zoned.year().into());
    put("month", zoned.month().into());
    put("day", zoned.day().into());
    put("hour", zoned.hour().into());
    put("minute", zoned.minute().into());
    put("second", zoned.second().into());
    put("weekday", zoned.weekday().to_monday_one_offset().into());
    put("day_of_year", zoned.day_of_year().into());
    put("offset_minutes", (zoned.offset().seconds() / 60).into());
    map
}

fn script_error(message: String) -> Box<EvalAltResult> {
    message.into()
}

/// Registers `format_time(ms)`, `format_time(ms, pattern)`,
/// `local_time(ms)` and `time_zone()` for a project in `zone`.
pub fn register(engine: &mut Engine, zone: &TimeZone) {
    let tz = zone.clone();
    engine.register_fn(
        "format_time",
        move |millis: i64, pattern: &str| -> Result<String, Box<EvalAltResult>> {
            format(millis, pattern, &tz).map_err(script_error)
        },
    );
    let tz = zone.clone();
    engine.register_fn(
        "format_time",
        move |millis: i64| -> Result<String, Box<EvalAltResult>> {
            format(millis, DEFAULT_PATTERN, &tz).map_err(script_error)
        },
    );
    let tz = zone.clone();
    engine.register_fn(
        "local_time",
        move |millis: i64| -> Result<Map, Box<EvalAltResult>> {
            zoned(millis, &tz).map(|z| parts(&z)).map_err(script_error)
        },
    );
    let name = zone_name(zone);
    engine.register_fn("time_zone", move || name.clone());
}

/// Registers the `format_time` filter (`{{ ms | format_time(format="%H:%M") }}`)
/// on a project's templates.
pub fn register_filters(tera: &mut tera::Tera, zone: &TimeZone) {
    let tz = zone.clone();
    tera.register_filter(
        "format_time",
        move |millis: i64, kwargs: tera::Kwargs, _: &tera::State| -> tera::TeraResult<String> {
            let pattern: Option<String> = kwargs.get("format")?;
            format(millis, pattern.as_deref().unwrap_or(DEFAULT_PATTERN), &tz)
                .map_err(tera::Error::message)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_YEAR_2026_UTC: i64 = 1_767_225_600_000;
    const JULY_2025_UTC: i64 = 1_751_328_000_000;

    #[test]
    fn formats_in_the_zone_with_daylight_saving() {
        let rome = zone("Europe/Rome").unwrap();
        let cases = [
            (
                NEW_YEAR_2026_UTC,
                "%Y-%m-%d %H:%M %Z",
                "2026-01-01 01:00 CET",
            ),
            (JULY_2025_UTC, "%H:%M %:z", "02:00 +02:00"),
            (JULY_2025_UTC, "%A %e %B", "Tuesday  1 July"),
        ];
        for (millis, pattern, expected) in cases {
            assert_eq!(format(millis, pattern, &rome).unwrap(), expected);
        }
        assert_eq!(
            format(NEW_YEAR_2026_UTC, DEFAULT_PATTERN, &zone("UTC").unwrap()).unwrap(),
            "2026-01-01 00:00:00"
        );
    }

    #[test]
    fn bad_zones_and_patterns_are_errors_not_panics() {
        assert!(zone("Mars/Olympus").unwrap_err().contains("Mars/Olympus"));
        let utc = zone("UTC").unwrap();
        assert!(format(0, "%H:%", &utc).is_err());
        assert!(format(i64::MAX, "%H", &utc).is_err());
    }

    #[test]
    fn parts_are_local() {
        let rome = zone("Europe/Rome").unwrap();
        let parts = parts(&zoned(JULY_2025_UTC, &rome).unwrap());
        assert_eq!(parts["hour"].as_int().unwrap(), 2);
        assert_eq!(parts["weekday"].as_int().unwrap(), 2);
        assert_eq!(parts["offset_minutes"].as_int().unwrap(), 120);
    }
}
