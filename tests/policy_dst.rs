//! Policy time points across daylight-saving changes, in a zone with DST.
//! One test in its own binary: it sets TZ for the whole process.

use chrono::{Local, TimeZone};
use snapfs::policy::schedule::time_point_after;
use snapfs::policy::Policy;

#[test]
fn time_points_across_dst_changes() {
    // Central European time, from the tz database (Debian's tzdata).
    assert!(
        std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists(),
        "this test needs the tzdata package"
    );
    std::env::set_var("TZ", "Europe/Berlin");
    let mut policy = Policy::default();
    policy.apply_text("at=2").unwrap();
    let next = |y, m, d, h| {
        let after = Local.with_ymd_and_hms(y, m, d, h, 0, 0).earliest().unwrap();
        time_point_after(&policy, &after).unwrap()
    };

    // 2026-03-29: clocks jump from 02:00 to 03:00; 02:00 does not exist,
    // the snapshot is taken at the first instant after the gap.
    // Compared as UTC instants: that is what the scheduler waits for.
    let utc = |t: chrono::DateTime<Local>| t.with_timezone(&chrono::Utc).to_rfc3339();
    let spring = next(2026, 3, 29, 0);
    assert_eq!(utc(spring), "2026-03-29T01:00:00+00:00", "03:00 CEST");
    // The day after, back to 02:00 (CEST now).
    assert_eq!(utc(next(2026, 3, 29, 4)), "2026-03-30T00:00:00+00:00");

    // 2026-10-25: 02:00-03:00 happens twice; one snapshot, at the first.
    let autumn = next(2026, 10, 25, 0);
    assert_eq!(utc(autumn), "2026-10-25T00:00:00+00:00", "02:00 CEST");
    let after = time_point_after(&policy, &autumn).unwrap();
    assert_eq!(
        utc(after),
        "2026-10-26T01:00:00+00:00",
        "next day, 02:00 CET"
    );
}
