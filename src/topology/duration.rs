//! Human durations in YAML (`250ms`, `60s`, `10m`, `24h`, `7d`).
//!
//! Kept as our own tiny parser so a bad value is reported with its YAML path
//! alongside every other validation problem instead of aborting the parse.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub fn as_millis(&self) -> u64 {
        self.0.as_millis() as u64
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m, h or d)"))?;
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().map_err(|_| format!("`{text}` does not start with a whole number"))?;
        let ms_per_unit = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(format!("unknown unit `{other}` in `{text}` (use ms, s, m, h or d)")),
        };
        n.checked_mul(ms_per_unit).map(Self::from_millis).ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms != 0 && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_prints_back_the_largest_exact_unit() {
        assert_eq!(HumanDuration::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(HumanDuration::parse("60s").unwrap().to_string(), "1m");
        assert_eq!(HumanDuration::parse("24h").unwrap().to_string(), "1d");
        assert_eq!(HumanDuration::parse("90m").unwrap().to_string(), "90m");
        assert!(HumanDuration::parse("10").is_err());
        assert!(HumanDuration::parse("10y").is_err());
        assert!(HumanDuration::parse("s").is_err());
    }
}
