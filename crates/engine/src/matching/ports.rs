//! Listening-port specifications (`TPortRange`): a number, an array of numbers, `{ from, to }`
//! ranges, or a mixed array of both (spec §3.1). Valid ports are 1-65535.

/// An inclusive port range; a single port has `from == to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl PortRange {
    pub fn single(p: u16) -> Self {
        PortRange { from: p, to: p }
    }

    pub fn contains(&self, p: u16) -> bool {
        self.from <= p && p <= self.to
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.from..=self.to
    }
}

/// Whether any range in the list contains `port`.
pub fn ports_contain(ranges: &[PortRange], port: u16) -> bool {
    ranges.iter().any(|r| r.contains(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = [PortRange::single(80), PortRange { from: 8000, to: 8002 }];
        assert!(ports_contain(&r, 80));
        assert!(ports_contain(&r, 8001));
        assert!(!ports_contain(&r, 8003));
        assert_eq!(r[1].iter().collect::<Vec<_>>(), vec![8000, 8001, 8002]);
    }
}
