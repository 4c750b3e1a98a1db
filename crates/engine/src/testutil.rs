//! Test helpers shared across modules: a small deterministic random source, and mutations of
//! valid inputs for the tests that feed parsers of untrusted bytes (first bytes of a connection,
//! backend responses, WebSocket frames, route configs) with broken variants of them.

/// xorshift64*: deterministic, so a failing case reproduces.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        let x = &mut self.0;
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// Calls `f` with `count` broken variants of `seed`: 1-4 edits each (random or special bytes,
/// flipped bits, truncations, insertions, runs copied over other places).
pub(crate) fn mutations(seed: &[u8], count: usize, mut f: impl FnMut(&[u8])) {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    const SPECIAL: [u8; 8] = [0x00, 0xff, 0x7f, 0x80, b'\r', b'\n', b':', b' '];
    for _ in 0..count {
        let mut v = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(v.len());
            match rng.below(6) {
                0 => v[at] = rng.below(256) as u8,
                1 => v[at] = SPECIAL[rng.below(SPECIAL.len())],
                2 => v[at] ^= 1 << rng.below(8),
                3 => v.truncate(at),
                4 => v.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
                _ => {
                    // Copy a run of the input over another place (lengths that no longer match).
                    let from = rng.below(v.len());
                    let len = rng.below(16).min(v.len() - from).min(v.len() - at);
                    let run = v[from..from + len].to_vec();
                    v[at..at + len].copy_from_slice(&run);
                }
            }
            if v.is_empty() {
                break;
            }
        }
        f(&v);
    }
}
