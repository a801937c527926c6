//! Exact top-N over instances whose counts of one key add up (a key's
//! records may be spread over every partition): TPUT, the three-round
//! threshold algorithm (Cao and Wang, "Efficient top-K query calculation in
//! distributed networks", PODC 2004).
//!
//! 1. Each instance sends its own top `n`. The partial sums give a lower
//!    bound `tau1` of the true n-th count.
//! 2. Each instance sends every key it counted at least `T = ceil(tau1 / m)`
//!    times (m instances): a key whose total reaches `tau1` is that large
//!    somewhere, so it is among these. A key some instance did not send has
//!    less than `T` there, which bounds its total from above; keys whose
//!    upper bound is below the n-th best lower bound are dropped.
//! 3. The instances that did not send a remaining key give its exact count.
//!
//! The functions here are the algorithm without the network: the caller
//! asks, these decide what to ask next and what the answer is.

use std::collections::HashMap;

use super::part::{Item, best};

/// Round 1's outcome: the threshold for round 2.
pub fn threshold(tops: &[Vec<Item>], n: usize) -> u64 {
    let mut partial: HashMap<&str, u64> = HashMap::new();
    for top in tops {
        for (key, count, _) in top {
            *partial.entry(key).or_default() += count;
        }
    }
    let mut sums: Vec<u64> = partial.into_values().collect();
    sums.sort_unstable_by(|a, b| b.cmp(a));
    let tau1 = if n > 0 && sums.len() >= n {
        sums[n - 1]
    } else {
        0
    };
    let m = tops.len().max(1) as u64;
    tau1.div_ceil(m).max(1)
}

/// Round 2's outcome: what each instance counted of the candidates, and
/// what must still be asked of whom.
#[derive(Debug, Default)]
pub struct Candidates {
    /// key → count per instance (`None`: not sent in round 2).
    known: HashMap<String, Vec<Option<(u64, u64)>>>,
    instances: usize,
}

impl Candidates {
    /// `above[i]`: the items instance `i` counted at least `t` times.
    pub fn new(above: &[Vec<Item>], t: u64, n: usize) -> Self {
        let instances = above.len();
        let mut known: HashMap<String, Vec<Option<(u64, u64)>>> = HashMap::new();
        for (i, items) in above.iter().enumerate() {
            for (key, count, distinct) in items {
                known
                    .entry(key.clone())
                    .or_insert_with(|| vec![None; instances])[i] = Some((*count, *distinct));
            }
        }
        // The n-th best lower bound; keys that cannot reach it are dropped.
        let lower = |v: &Vec<Option<(u64, u64)>>| v.iter().flatten().map(|c| c.0).sum::<u64>();
        let mut lowers: Vec<u64> = known.values().map(lower).collect();
        lowers.sort_unstable_by(|a, b| b.cmp(a));
        let tau2 = if n > 0 && lowers.len() >= n {
            lowers[n - 1]
        } else {
            0
        };
        let unknown_most = t.saturating_sub(1);
        known.retain(|_, v| {
            let missing = v.iter().filter(|c| c.is_none()).count() as u64;
            lower(v) + missing * unknown_most >= tau2
        });
        Candidates { known, instances }
    }

    /// The keys instance `i` must still count for round 3.
    pub fn to_ask(&self, i: usize) -> Vec<String> {
        let mut keys: Vec<String> = self
            .known
            .iter()
            .filter(|(_, v)| v[i].is_none())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Round 3's answers from instance `i`.
    pub fn add(&mut self, i: usize, counts: &[Item]) {
        for (key, count, distinct) in counts {
            if let Some(v) = self.known.get_mut(key)
                && i < self.instances
            {
                v[i] = Some((*count, *distinct));
            }
        }
    }

    /// The exact top `n`: counts summed over instances, distinct
    /// addresses summed too (the caller replaces them with the size of
    /// the union where one address may be counted by several instances).
    pub fn top(&self, n: usize) -> Vec<Item> {
        let items = self
            .known
            .iter()
            .map(|(k, v)| {
                let (c, d) = v
                    .iter()
                    .flatten()
                    .fold((0, 0), |(c, d), x| (c + x.0, d + x.1));
                (k.clone(), c, d)
            })
            .filter(|i| i.1 > 0)
            .collect();
        best(items, n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::part::best;
    use super::*;
    use proptest::prelude::*;

    /// Runs the three rounds over in-memory instances.
    fn tput(instances: &[Vec<Item>], n: usize) -> Vec<Item> {
        let tops: Vec<Vec<Item>> = instances.iter().map(|i| best(i.clone(), n)).collect();
        let t = threshold(&tops, n);
        let above: Vec<Vec<Item>> = instances
            .iter()
            .map(|i| i.iter().filter(|x| x.1 >= t).cloned().collect())
            .collect();
        let mut c = Candidates::new(&above, t, n);
        for (i, inst) in instances.iter().enumerate() {
            let asked = c.to_ask(i);
            let counts: Vec<Item> = asked
                .iter()
                .map(|k| {
                    inst.iter()
                        .find(|x| &x.0 == k)
                        .cloned()
                        .unwrap_or((k.clone(), 0, 0))
                })
                .collect();
            c.add(i, &counts);
        }
        c.top(n)
    }

    fn truth(instances: &[Vec<Item>], n: usize) -> Vec<Item> {
        let mut all: HashMap<String, (u64, u64)> = HashMap::new();
        for inst in instances {
            for (k, c, d) in inst {
                let e = all.entry(k.clone()).or_default();
                e.0 += c;
                e.1 += d;
            }
        }
        best(all.into_iter().map(|(k, (c, d))| (k, c, d)).collect(), n)
    }

    proptest! {
        /// Keys spread over every instance, skewed and tied counts: the
        /// three rounds give exactly the top `n` of the sums.
        #[test]
        fn tput_equals_the_top_of_the_sums(
            spread in prop::collection::vec(
                prop::collection::vec((0u8..40, 1u64..50), 0..60), 1..5),
            n in 1usize..12,
        ) {
            let instances: Vec<Vec<Item>> = spread
                .iter()
                .map(|inst| {
                    let mut m: HashMap<String, u64> = HashMap::new();
                    for (k, c) in inst {
                        *m.entry(format!("10.0.0.{k}")).or_default() += c;
                    }
                    m.into_iter().map(|(k, c)| (k, c, 1)).collect()
                })
                .collect();
            prop_assert_eq!(tput(&instances, n), truth(&instances, n));
        }
    }

    #[test]
    fn a_key_no_instance_ranks_can_top_the_cluster() {
        // 10.0.0.9 is second everywhere and first in the sum.
        let inst = |own: &str| vec![(own.to_string(), 10, 1), ("10.0.0.9".to_string(), 8, 1)];
        let instances = vec![inst("10.0.0.1"), inst("10.0.0.2"), inst("10.0.0.3")];
        let top = tput(&instances, 1);
        assert_eq!(top, vec![("10.0.0.9".to_string(), 24, 3)]);
    }
}
