//! Reserved resources: `--kube-reserved` and `--system-reserved`, the kubelet's
//! `cpu=100m,memory=256Mi,ephemeral-storage=1Gi,pid=1000` lists, subtracted from capacity to
//! give the node's allocatable.

use crate::quantity;

/// Resources held back from pods, summed over the lists given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    pub milli_cpu: u64,
    pub memory_bytes: u64,
    pub ephemeral_bytes: u64,
    pub pids: u64,
}

impl Reserved {
    /// Parses one list (e.g. the value of `--kube-reserved`); the error names the bad part.
    pub fn parse(raw: &str) -> Result<Reserved, String> {
        let mut reserved = Reserved::default();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not NAME=QUANTITY"))?;
            let milli = quantity::parse(value)
                .map(|m| m.0)
                .filter(|m| *m >= 0)
                .ok_or_else(|| format!("{value:?} is not a non-negative quantity"))?;
            // Whole units, rounded up: a reservation never holds back less than asked.
            let whole = u64::try_from((milli + 999) / 1000).unwrap_or(u64::MAX);
            match name {
                "cpu" => reserved.milli_cpu += u64::try_from(milli).unwrap_or(u64::MAX),
                "memory" => reserved.memory_bytes += whole,
                "ephemeral-storage" => reserved.ephemeral_bytes += whole,
                "pid" => reserved.pids += whole,
                other => {
                    return Err(format!(
                        "unknown resource {other:?} (cpu, memory, ephemeral-storage or pid)"
                    ));
                }
            }
        }
        Ok(reserved)
    }

    /// Both reservations together.
    pub fn plus(self, other: Reserved) -> Reserved {
        Reserved {
            milli_cpu: self.milli_cpu + other.milli_cpu,
            memory_bytes: self.memory_bytes + other.memory_bytes,
            ephemeral_bytes: self.ephemeral_bytes + other.ephemeral_bytes,
            pids: self.pids + other.pids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_add_up() {
        let kube = Reserved::parse("cpu=100m,memory=256Mi").expect("valid");
        let system =
            Reserved::parse("cpu=0.5, memory=1Gi,ephemeral-storage=1Gi,pid=100").expect("valid");
        assert_eq!(
            kube.plus(system),
            Reserved {
                milli_cpu: 600,
                memory_bytes: (256 << 20) + (1 << 30),
                ephemeral_bytes: 1 << 30,
                pids: 100,
            }
        );
        assert_eq!(Reserved::parse(""), Ok(Reserved::default()));
        assert!(Reserved::parse("gpu=1").is_err());
        assert!(Reserved::parse("memory").is_err());
        assert!(Reserved::parse("memory=-1Gi").is_err());
    }
}
