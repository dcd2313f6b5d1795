//! Eviction thresholds (`--eviction-hard`): the signal levels below which the node reports
//! pressure. They are also held back from allocatable, as the kubelet does, so that the
//! scheduler never fills a node into its own eviction threshold.

use std::collections::BTreeMap;
use std::fmt;

/// An eviction signal the agent observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl Signal {
    const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodefsAvailable,
        Signal::NodefsInodesFree,
        Signal::ImagefsAvailable,
        Signal::ImagefsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::ImagefsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A threshold: an absolute amount (bytes, inodes or pids) or a share of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantity {
    Absolute(u64),
    Percent(f64),
}

impl Quantity {
    /// The threshold as an amount, for a resource of `capacity`.
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            Quantity::Absolute(amount) => amount,
            // Rounded up, like the kubelet's resource.Quantity arithmetic on percentages.
            Quantity::Percent(pct) => (capacity as f64 * pct / 100.0).ceil() as u64,
        }
    }

    fn parse(raw: &str) -> Result<Self, String> {
        if let Some(pct) = raw.strip_suffix('%') {
            let pct: f64 = pct
                .parse()
                .map_err(|_| format!("{raw:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("{raw:?} is not between 0% and 100%"));
            }
            return Ok(Quantity::Percent(pct));
        }
        parse_quantity(raw).map(Quantity::Absolute)
    }
}

/// Parses a Kubernetes quantity of whole units: `100Mi`, `1G`, `5000`.
pub fn parse_quantity(raw: &str) -> Result<u64, String> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, m)| raw.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((raw, 1));
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{raw:?} is not a quantity such as 100Mi"))
}

/// The hard eviction thresholds in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds(BTreeMap<Signal, Quantity>);

impl Thresholds {
    /// The kubelet's Linux defaults.
    pub fn kubelet_defaults() -> Self {
        Self(BTreeMap::from([
            (Signal::MemoryAvailable, Quantity::Absolute(100 << 20)),
            (Signal::NodefsAvailable, Quantity::Percent(10.0)),
            (Signal::NodefsInodesFree, Quantity::Percent(5.0)),
            (Signal::ImagefsAvailable, Quantity::Percent(15.0)),
            (Signal::ImagefsInodesFree, Quantity::Percent(5.0)),
        ]))
    }

    /// Parses `signal<quantity,...>`. As with the kubelet's flag, the given list replaces
    /// the defaults rather than adding to them.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut thresholds = BTreeMap::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, quantity) = item
                .split_once('<')
                .ok_or_else(|| format!("{item:?} is not signal<quantity"))?;
            let signal = Signal::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    let known: Vec<_> = Signal::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown signal {name:?} (known: {})", known.join(", "))
                })?;
            thresholds.insert(signal, Quantity::parse(quantity)?);
        }
        Ok(Self(thresholds))
    }

    pub fn get(&self, signal: Signal) -> Option<Quantity> {
        self.0.get(&signal).copied()
    }

    /// Signal name to threshold (bytes, counts or percentages), as the configuration file
    /// spells them.
    pub fn to_map(&self) -> BTreeMap<&'static str, String> {
        self.0
            .iter()
            .map(|(signal, quantity)| {
                let value = match quantity {
                    Quantity::Absolute(n) => n.to_string(),
                    Quantity::Percent(p) => format!("{p}%"),
                };
                (signal.name(), value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_and_percent_thresholds() {
        let t = Thresholds::parse("memory.available<1Gi, pid.available<5%,nodefs.available<500M")
            .expect("valid");
        assert_eq!(
            t.get(Signal::MemoryAvailable),
            Some(Quantity::Absolute(1 << 30))
        );
        assert_eq!(
            t.get(Signal::PidAvailable).map(|q| q.of(4_000_000)),
            Some(200_000)
        );
        assert_eq!(
            t.get(Signal::NodefsAvailable),
            Some(Quantity::Absolute(500_000_000))
        );
        assert_eq!(
            t.get(Signal::ImagefsAvailable),
            None,
            "a given list replaces the defaults"
        );
    }

    #[test]
    fn kubelet_defaults() {
        let t = Thresholds::kubelet_defaults();
        assert_eq!(
            t.get(Signal::MemoryAvailable).map(|q| q.of(0)),
            Some(100 * 1024 * 1024)
        );
        assert_eq!(
            t.get(Signal::NodefsAvailable).map(|q| q.of(1000)),
            Some(100)
        );
        assert_eq!(t.get(Signal::PidAvailable), None);
    }

    #[test]
    fn refuses_unknown_signals_and_bad_quantities() {
        for bad in [
            "memory.free<1Gi",
            "memory.available>1Gi",
            "memory.available<1Xi",
            "nodefs.available<120%",
            "pid.available<-1",
        ] {
            assert!(Thresholds::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100Mi"), Ok(100 << 20));
        assert_eq!(parse_quantity("2k"), Ok(2000));
        assert_eq!(parse_quantity("42"), Ok(42));
        assert!(parse_quantity("16Ei").is_err(), "overflow is an error");
        assert!(parse_quantity("1.5Gi").is_err());
    }
}
