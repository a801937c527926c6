//! Distinct addresses of a summarized pane: a HyperLogLog sketch (Flajolet
//! et al. 2007, with linear counting below 2.5 registers' worth). 1,024
//! one-byte registers: a standard error of 1.04 / √1024 ≈ 3.3 %, 1 KiB per
//! sketch however many addresses it has seen (a summarized pane keeps one). Sketches merge by taking the
//! larger register: the sketch of a range is the sketch of its panes.

use crate::vocab::IpKey;

/// Registers: 2^PRECISION.
const PRECISION: u32 = 10;
const REGISTERS: usize = 1 << PRECISION;

/// A HyperLogLog sketch of distinct addresses.
#[derive(Clone, PartialEq, Eq)]
pub struct Distinct {
    registers: Box<[u8; REGISTERS]>,
}

impl std::fmt::Debug for Distinct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Distinct(≈{})", self.estimate())
    }
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct {
            registers: Box::new([0; REGISTERS]),
        }
    }
}

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash(ip: IpKey) -> u64 {
    let bits = ip.to_bits();
    mix(mix(bits as u64) ^ (bits >> 64) as u64)
}

impl Distinct {
    pub fn add(&mut self, ip: IpKey) {
        let h = hash(ip);
        let index = (h >> (64 - PRECISION)) as usize;
        // The rank of the first set bit among the remaining bits (one more
        // than their number when none is set).
        let rest = h << PRECISION;
        let rank = (rest.leading_zeros().min(64 - PRECISION) + 1) as u8;
        let register = &mut self.registers[index];
        *register = (*register).max(rank);
    }

    /// Both sketches as one: the distinct addresses of either.
    pub fn merge(&mut self, other: &Distinct) {
        for (a, b) in self.registers.iter_mut().zip(other.registers.iter()) {
            *a = (*a).max(*b);
        }
    }

    /// The estimated number of distinct addresses added.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let (mut sum, mut zeros) = (0.0f64, 0usize);
        for &r in self.registers.iter() {
            sum += 2f64.powi(-i32::from(r));
            if r == 0 {
                zeros += 1;
            }
        }
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// The registers, as a checkpoint stores them.
    pub fn registers(&self) -> &[u8] {
        &self.registers[..]
    }

    /// A sketch from stored registers; `None` unless there are exactly as
    /// many as a sketch holds, each a possible rank.
    pub fn from_registers(bytes: &[u8]) -> Option<Distinct> {
        let registers: [u8; REGISTERS] = bytes.try_into().ok()?;
        let max_rank = (64 - PRECISION + 1) as u8;
        registers.iter().all(|r| *r <= max_rank).then(|| Distinct {
            registers: Box::new(registers),
        })
    }

    /// Bytes the sketch takes in memory.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + REGISTERS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(i: u64) -> IpKey {
        IpKey::from_bits((0x2001_0db8u128 << 96) | u128::from(i))
    }

    #[test]
    fn estimates_stay_within_five_standard_errors_across_sizes() {
        for n in [0u64, 1, 10, 100, 1_000, 10_000, 200_000] {
            let mut d = Distinct::default();
            for i in 0..n {
                d.add(v6(i));
                d.add(v6(i)); // a repeat changes nothing
            }
            let got = d.estimate() as f64;
            let standard_error = 1.04 / (REGISTERS as f64).sqrt();
            let allowed = (n as f64 * 5.0 * standard_error).max(1.0);
            assert!((got - n as f64).abs() <= allowed, "{n}: {got}");
        }
    }

    #[test]
    fn a_merge_is_the_sketch_of_the_union_and_registers_round_trip() {
        let (mut a, mut b, mut both) = (
            Distinct::default(),
            Distinct::default(),
            Distinct::default(),
        );
        for i in 0..30_000 {
            a.add(v6(i));
            both.add(v6(i));
        }
        for i in 20_000..50_000 {
            b.add(v6(i));
            both.add(v6(i));
        }
        a.merge(&b);
        assert_eq!(a, both);
        assert_eq!(Distinct::from_registers(a.registers()), Some(a.clone()));
        assert_eq!(Distinct::from_registers(&a.registers()[1..]), None);
        let mut bad = a.registers().to_vec();
        bad[7] = 200;
        assert_eq!(Distinct::from_registers(&bad), None);
    }
}
