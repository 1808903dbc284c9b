//! The weighted pick: Vose's alias method. Building is O(n); a pick is one random u64, one
//! multiply, one compare: O(1) in the number of backends, lock-free and allocation-free.

use rand::RngCore;

use crate::balance::plan::shares;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Keep this slot's own backend when the low 32 random bits are below this.
    threshold: u32,
    /// Otherwise take this backend.
    alias: u32,
}

/// A selection table over `len()` backends. Weights ≤ 0 or not finite exclude a backend;
/// if no backend has a positive weight the table picks uniformly, so a service that has
/// backends is never black-holed.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    slots: Box<[Slot]>,
    shares: Box<[f64]>,
}

impl Table {
    /// A table over `weights`, normalised by `balance::plan::shares` (bad weights excluded,
    /// uniform if none is positive).
    pub fn new(weights: &[f64]) -> Table {
        Table::from_shares(shares(weights).into())
    }

    /// A table over shares that already sum to 1, as a Plan carries them.
    pub fn from_shares(shares: Box<[f64]>) -> Table {
        Table {
            slots: alias_slots(&shares),
            shares,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The fraction of picks backend `i` gets.
    pub fn share(&self, i: usize) -> f64 {
        self.shares.get(i).copied().unwrap_or(0.0)
    }

    /// Picks a backend index, or None when there are no backends.
    #[inline]
    pub fn pick<R: RngCore + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        self.pick_with(rng.next_u64())
    }

    /// The pick for one 64-bit random number: the high half chooses a slot, the low half
    /// decides between the slot's backend and its alias.
    #[inline]
    pub fn pick_with(&self, random: u64) -> Option<usize> {
        let n = self.slots.len() as u64;
        if n == 0 {
            return None;
        }
        let i = (((random >> 32) * n) >> 32) as usize;
        let slot = self.slots.get(i)?;
        if (random as u32) < slot.threshold {
            Some(i)
        } else {
            Some(slot.alias as usize)
        }
    }
}

/// Vose's alias construction over probabilities that sum to 1.
fn alias_slots(shares: &[f64]) -> Box<[Slot]> {
    let n = shares.len();
    let mut scaled: Vec<f64> = shares.iter().map(|p| p * n as f64).collect();
    let mut slots: Vec<Slot> = (0..n as u32)
        .map(|i| Slot {
            threshold: u32::MAX,
            alias: i,
        })
        .collect();
    // Excluded backends go on the small stack last so they are paired first, while there
    // are still large ones to alias to.
    let mut small: Vec<usize> = (0..n)
        .filter(|&i| scaled[i] < 1.0 && scaled[i] > 0.0)
        .collect();
    small.extend((0..n).filter(|&i| scaled[i] == 0.0));
    let mut large: Vec<usize> = (0..n).filter(|&i| scaled[i] >= 1.0).collect();
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        slots[s] = Slot {
            threshold: to_threshold(scaled[s]),
            alias: l as u32,
        };
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // Whatever remains is full up to rounding; an excluded backend must still never win.
    let heaviest = (0..n)
        .max_by(|&a, &b| shares[a].total_cmp(&shares[b]))
        .unwrap_or(0) as u32;
    for (i, slot) in slots.iter_mut().enumerate() {
        if shares[i] == 0.0 {
            if slot.alias as usize == i {
                slot.alias = heaviest;
            }
            slot.threshold = 0;
        }
    }
    slots.into_boxed_slice()
}

fn to_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn counts(table: &Table, picks: usize, seed: u64) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut c = vec![0; table.len()];
        for _ in 0..picks {
            c[table.pick(&mut rng).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn empty_table_picks_nothing() {
        assert_eq!(Table::new(&[]).pick_with(12345), None);
    }

    #[test]
    fn shares_follow_weights() {
        let t = Table::new(&[1.0, 2.0, 7.0]);
        let c = counts(&t, 100_000, 7);
        for (i, expect) in [0.1, 0.2, 0.7].iter().enumerate() {
            let got = c[i] as f64 / 100_000.0;
            assert!(
                (got - expect).abs() < 0.01,
                "backend {i}: {got} vs {expect}"
            );
        }
    }

    #[test]
    fn zero_weight_never_wins_even_over_all_random_slots() {
        let t = Table::new(&[3.0, 0.0, 1.0, 0.0]);
        // Exhaust the slot choice and both ends of the coin for every slot.
        for slot in 0..4u64 {
            // The smallest high half that lands on `slot`: ceil(slot · 2³² / 4).
            let hi = (slot << 32).div_ceil(4);
            for lo in [0u64, 1, u32::MAX as u64 / 2, u32::MAX as u64] {
                let pick = t.pick_with((hi << 32) | lo).unwrap();
                assert!(pick == 0 || pick == 2, "picked excluded backend {pick}");
            }
        }
        let c = counts(&t, 20_000, 1);
        assert_eq!(c[1] + c[3], 0);
    }

    #[test]
    fn all_zero_or_garbage_falls_back_to_uniform() {
        for w in [
            [0.0, 0.0, 0.0],
            [f64::NAN, -1.0, 0.0],
            [f64::INFINITY, 0.0, 0.0],
        ] {
            let t = Table::new(&w);
            for i in 0..3 {
                assert!((t.share(i) - 1.0 / 3.0).abs() < 1e-12, "{w:?}");
            }
        }
    }

    #[test]
    fn single_backend_always_wins() {
        let t = Table::new(&[5.0]);
        for r in [0, u64::MAX, 1 << 63] {
            assert_eq!(t.pick_with(r), Some(0));
        }
    }
}
