//! Deterministic fuzzing for the test suite: a seeded generator and byte-stream mutations (bit
//! flips, truncations, lying DER and MQTT length fields, insertions, splices), so that a
//! failing case is reproduced by its seed and case number, and every run is bounded.

use std::sync::atomic::{AtomicUsize, Ordering};

/// SplitMix64: tiny, fast and good enough to pick mutations; seeded, so runs repeat exactly.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/`n`.
    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random byte.
    pub(crate) fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// `n` random bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// One of `items`.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that lie about lengths: DER long forms and MQTT varint continuations.
const LIES: [&[u8]; 8] = [
    &[0x84, 0xFF, 0xFF, 0xFF, 0xFF],
    &[0x82, 0xFF, 0xFF],
    &[0x81],
    &[0x80],
    &[0x00],
    &[0xFF, 0xFF, 0xFF, 0x7F],
    &[0xFF, 0xFF, 0xFF, 0xFF, 0x01],
    &[0x7F],
];

/// One random mutation of `input` (never the same bytes back, unless `input` is empty).
pub(crate) fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    if out.is_empty() {
        let n = 1 + rng.below(16);
        return rng.bytes(n);
    }
    loop {
        match rng.below(8) {
            // Bit flips.
            0 | 1 => {
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(out.len());
                    out[at] ^= 1 << rng.below(8);
                }
            }
            // Truncation.
            2 => out.truncate(rng.below(out.len())),
            // A length field that lies, where a header is likely (the first bytes) or anywhere.
            3 => {
                let at = if rng.one_in(2) {
                    rng.below(out.len().min(8))
                } else {
                    rng.below(out.len())
                };
                let lie = rng.pick(&LIES);
                let end = (at + lie.len()).min(out.len());
                out.splice(at..end, lie.iter().copied());
            }
            // Random bytes overwritten.
            4 => {
                let at = rng.below(out.len());
                let n = 1 + rng.below(8);
                for i in at..(at + n).min(out.len()) {
                    out[i] = rng.byte();
                }
            }
            // Bytes inserted.
            5 => {
                let at = rng.below(out.len() + 1);
                let n = 1 + rng.below(8);
                let extra = rng.bytes(n);
                out.splice(at..at, extra);
            }
            // A slice removed.
            6 => {
                let at = rng.below(out.len());
                let n = 1 + rng.below(16);
                out.drain(at..(at + n).min(out.len()));
            }
            // A slice repeated (a splice of the input with itself).
            _ => {
                let at = rng.below(out.len());
                let n = 1 + rng.below(32);
                let piece: Vec<u8> = out[at..(at + n).min(out.len())].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, piece);
            }
        }
        if out != input {
            return out;
        }
    }
}

/// Panics on the emulator's runtime threads since [`watch_emulator_panics`] was first called.
static EMULATOR_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on the emulator's threads (a panicking connection task is caught by tokio and
/// would otherwise go unnoticed); returns the count so far.
pub(crate) fn watch_emulator_panics() -> usize {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("dpskit-emulator"))
            {
                EMULATOR_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    EMULATOR_PANICS.load(Ordering::SeqCst)
}
