//! Event-time tumbling windows and the watermark that closes them.
//!
//! Window arithmetic is exact for every `i64` input: intermediate values are
//! computed in `i128` and clamped, so the `i64::MIN` "unknown" watermark or a
//! hostile timestamp can never panic or wrap around.

mod progress;
mod time_record;

pub use progress::{Advanced, Progress, ProgressRules, Source};
pub use time_record::{
    floor_step, TimeRecord, HEARTBEAT_KEY, SCHEMA_HEARTBEAT, SCHEMA_WATERMARK, WATERMARK_KEY, WATERMARK_STEP_MS,
};

/// Rejected window parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window size must be positive, got {0} ms")]
    NonPositiveSize(i64),
    #[error("grace period must not be negative, got {0} ms")]
    NegativeGrace(i64),
}

/// The topology's prize windows (`windows.prize`: size and grace).
pub fn prize_windows(topology: &crate::topology::Topology) -> Result<TumblingWindows, WindowError> {
    let w = &topology.spec().windows.prize;
    TumblingWindows::new(w.size.as_millis() as i64, w.grace.as_millis() as i64)
}

/// Fixed-size, non-overlapping event-time windows `[start, start + size)`.
///
/// A window stays open for `grace_ms` after its end so that slightly late
/// events still count; it closes once the watermark reaches
/// [`closes_at`](Self::closes_at). Build it with [`new`](Self::new); the
/// fields are public for config plumbing, and out-of-range values are clamped
/// (size to >= 1, grace to >= 0) rather than panicking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TumblingWindows {
    pub size_ms: i64,
    pub grace_ms: i64,
}

impl TumblingWindows {
    pub fn new(size_ms: i64, grace_ms: i64) -> Result<Self, WindowError> {
        if size_ms <= 0 {
            return Err(WindowError::NonPositiveSize(size_ms));
        }
        if grace_ms < 0 {
            return Err(WindowError::NegativeGrace(grace_ms));
        }
        Ok(Self { size_ms, grace_ms })
    }

    fn size(&self) -> i64 {
        self.size_ms.max(1)
    }

    fn grace(&self) -> i64 {
        self.grace_ms.max(0)
    }

    /// Start of window number `k`. The lowest window's true start lies below
    /// `i64::MIN`, so it is clamped; that keeps starts distinct and ordered.
    fn start_of(&self, k: i128) -> i64 {
        clamp(k * i128::from(self.size()))
    }

    fn index_of(&self, start: i64) -> i128 {
        i128::from(start.div_euclid(self.size()))
    }

    /// Start of the window containing `event_time_ms`; floors toward negative
    /// infinity so pre-epoch times land in the right window.
    pub fn window_start(&self, event_time_ms: i64) -> i64 {
        self.start_of(self.index_of(event_time_ms))
    }

    /// Exclusive end of the window starting at `start`.
    pub fn window_end(&self, start: i64) -> i64 {
        self.start_of(self.index_of(start) + 1)
    }

    /// Watermark at which the window starting at `start` closes (end + grace).
    pub fn closes_at(&self, start: i64) -> i64 {
        self.window_end(start).saturating_add(self.grace())
    }

    pub fn is_closed(&self, start: i64, watermark: i64) -> bool {
        watermark >= self.closes_at(start)
    }

    /// True when the event's window has already been closed (and emitted), so
    /// the event can no longer be counted.
    pub fn is_late(&self, event_time_ms: i64, watermark: i64) -> bool {
        self.is_closed(self.window_start(event_time_ms), watermark)
    }

    /// Starts, ascending, of the windows that close as the watermark moves
    /// from `old_watermark` to `new_watermark`, i.e. whose `closes_at` lies in
    /// `(old, new]`. Advancing through any sequence of watermarks therefore
    /// yields every window exactly once.
    ///
    /// Lazy and uncapped: a jump from `i64::MIN` spans ~2^63 / size windows,
    /// so callers holding per-window state should prefer
    /// [`closed_windows`](Self::closed_windows).
    pub fn closed_between(&self, old_watermark: i64, new_watermark: i64) -> impl Iterator<Item = i64> {
        let first = self.first_index_closing_after(old_watermark);
        let end = self.first_index_closing_after(new_watermark).max(first);
        let this = *self;
        (first..end).map(move |k| this.start_of(k))
    }

    /// The closed windows among `open_starts`, sorted and deduplicated.
    pub fn closed_windows(&self, open_starts: impl IntoIterator<Item = i64>, watermark: i64) -> Vec<i64> {
        let mut closed: Vec<i64> = open_starts.into_iter().filter(|&start| self.is_closed(start, watermark)).collect();
        closed.sort_unstable();
        closed.dedup();
        closed
    }

    /// Smallest window index whose `closes_at` exceeds `watermark`. Binary
    /// search over the monotone `closes_at` keeps this in lock-step with
    /// `is_closed` even where clamping bends the arithmetic.
    fn first_index_closing_after(&self, watermark: i64) -> i128 {
        let mut lo = self.index_of(i64::MIN);
        let mut hi = self.index_of(i64::MAX) + 1;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.closes_at(self.start_of(mid)) > watermark {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(size: i64, grace: i64) -> TumblingWindows {
        TumblingWindows::new(size, grace).unwrap()
    }

    #[test]
    fn new_rejects_non_positive_size_and_negative_grace() {
        assert_eq!(TumblingWindows::new(0, 0), Err(WindowError::NonPositiveSize(0)));
        assert_eq!(TumblingWindows::new(10, -1), Err(WindowError::NegativeGrace(-1)));
    }

    #[test]
    fn negative_times_floor_to_the_earlier_window() {
        let win = w(10, 0);
        assert_eq!(win.window_start(-1), -10);
        assert_eq!(win.window_start(-10), -10);
        assert_eq!(win.window_start(0), 0);
        assert_eq!(win.window_start(19), 10);
    }

    #[test]
    fn window_closes_only_after_grace() {
        let win = w(10, 5);
        assert_eq!(win.window_end(10), 20);
        assert_eq!(win.closes_at(10), 25);
        assert!(!win.is_closed(10, 24));
        assert!(win.is_closed(10, 25));
        assert!(!win.is_late(12, 24));
        assert!(win.is_late(12, 25));
    }

    #[test]
    fn nothing_is_late_under_the_unknown_watermark() {
        let win = w(10, 0);
        assert!(!win.is_late(i64::MIN, i64::MIN));
        assert!(!win.is_late(0, i64::MIN));
    }

    #[test]
    fn extreme_times_do_not_panic_and_stay_ordered() {
        let win = w(3, i64::MAX);
        assert_eq!(win.window_start(i64::MIN), i64::MIN);
        assert!(win.window_end(i64::MIN) > i64::MIN);
        assert_eq!(win.closes_at(win.window_start(i64::MAX)), i64::MAX);
        assert!(win.is_closed(0, i64::MAX));
        let first: Vec<i64> = win.closed_between(i64::MIN, i64::MAX).take(2).collect();
        assert_eq!(first, vec![i64::MIN, win.window_end(i64::MIN)]);
    }

    #[test]
    fn huge_watermark_jump_is_lazy() {
        let win = w(1, 0);
        let mut it = win.closed_between(i64::MIN, i64::MAX);
        assert_eq!(it.next(), Some(i64::MIN));
    }

    #[test]
    fn closed_between_is_empty_when_watermark_does_not_advance() {
        let win = w(10, 2);
        assert_eq!(win.closed_between(50, 50).count(), 0);
        assert_eq!(win.closed_between(50, 10).count(), 0);
    }

    #[test]
    fn closed_windows_filters_sorts_and_dedups() {
        let win = w(10, 0);
        assert_eq!(win.closed_windows([30, 0, 20, 10, 0], 30), vec![0, 10, 20]);
    }

    /// Reference: enumerate every aligned start near the interval and apply
    /// the textbook condition `old < start + size + grace <= new`.
    fn reference_closed_between(size: i64, grace: i64, old: i64, new: i64) -> Vec<i64> {
        let lo = (old - size - grace).div_euclid(size) - 1;
        let hi = new.div_euclid(size) + 1;
        (lo..=hi).map(|k| k * size).filter(|s| old < s + size + grace && s + size + grace <= new).collect()
    }

    proptest! {
        #[test]
        fn window_start_contains_the_event(size in 1i64..50, t in -10_000i64..10_000) {
            let win = w(size, 0);
            let start = win.window_start(t);
            prop_assert_eq!(start.rem_euclid(size), 0);
            prop_assert!(start <= t && t < win.window_end(start));
            prop_assert_eq!(win.window_end(start), start + size);
        }

        #[test]
        fn closed_between_matches_reference(
            size in 1i64..50, grace in 0i64..100, old in -1_000i64..1_000, step in 0i64..500,
        ) {
            let win = w(size, grace);
            let got: Vec<i64> = win.closed_between(old, old + step).collect();
            prop_assert_eq!(got, reference_closed_between(size, grace, old, old + step));
        }

        #[test]
        fn advancing_watermark_emits_each_window_once(
            size in 1i64..20, grace in 0i64..30, start in -500i64..500,
            steps in proptest::collection::vec(0i64..60, 1..20),
        ) {
            let win = w(size, grace);
            let mut wm = start;
            let mut emitted = Vec::new();
            for step in steps {
                let next = wm + step;
                for s in win.closed_between(wm, next) {
                    prop_assert!(win.is_closed(s, next) && !win.is_closed(s, wm));
                    emitted.push(s);
                }
                wm = next;
            }
            let all: Vec<i64> = win.closed_between(start, wm).collect();
            prop_assert_eq!(emitted, all);
        }

        #[test]
        fn late_events_are_exactly_those_in_closed_windows(
            size in 1i64..50, grace in 0i64..100, t in -1_000i64..1_000, wm in -1_000i64..1_000,
        ) {
            let win = w(size, grace);
            let start = win.window_start(t);
            prop_assert_eq!(win.is_late(t, wm), wm >= start + size + grace);
            let closed = win.closed_windows([start], wm);
            prop_assert_eq!(closed.contains(&start), win.is_late(t, wm));
        }
    }
}
