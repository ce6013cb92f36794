//! Deterministic randomness and math: xoshiro256** seeded by splitmix64, and fdlibm ports of `ln`,
//! `sin` and `cos` built from IEEE-754 operations only, so every platform draws the same values.

pub(super) const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function applied to `x + γ`: one step of a splitmix64 generator whose
/// state was `x`. Used to derive well-mixed, independent seeds from small integers.
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of one of a device's independent streams (0 = schedule, then two per field).
pub(super) fn stream_seed(device_key: u64, stream: u64) -> u64 {
    splitmix64(device_key ^ splitmix64(stream ^ 0x5354_5245_414D_0000))
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64 as its authors recommend, plus
/// the spare normal of Box–Muller.
#[derive(Debug, Clone)]
pub(super) struct Rng {
    pub(super) s: [u64; 4],
    pub(super) spare_normal: Option<f64>,
}

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        let mut state = seed;
        let mut s = [0; 4];
        for word in &mut s {
            *word = splitmix64(state);
            state = state.wrapping_add(GOLDEN_GAMMA);
        }
        if s == [0; 4] {
            // The one state xoshiro cannot leave; unreachable in practice.
            s[0] = GOLDEN_GAMMA;
        }
        Rng {
            s,
            spare_normal: None,
        }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(super) fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub(super) fn bit(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Uniform in [0, n) by multiply-shift (bias below 2^-64 × n, irrelevant here).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal by Box–Muller, keeping the second value for the next call.
    pub(super) fn normal(&mut self) -> f64 {
        if let Some(spare) = self.spare_normal.take() {
            return spare;
        }
        // 1 - [0, 1) is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.f64();
        let radius = (-2.0 * ln(u)).sqrt();
        let (sin, cos) = sin_cos_turns(self.f64());
        self.spare_normal = Some(radius * sin);
        radius * cos
    }
}

/// Natural logarithm (fdlibm `__ieee754_log`), so results do not depend on the platform's libm.
// fdlibm's published constants, verbatim, so they can be checked against the source.
#[allow(clippy::excessive_precision)]
pub(super) fn ln(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-01;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    const LG1: f64 = 6.666_666_666_666_735_130e-01;
    const LG2: f64 = 3.999_999_999_940_941_908e-01;
    const LG3: f64 = 2.857_142_874_366_239_149e-01;
    const LG4: f64 = 2.222_219_843_214_978_396e-01;
    const LG5: f64 = 1.818_357_216_161_805_012e-01;
    const LG6: f64 = 1.531_383_769_920_937_332e-01;
    const LG7: f64 = 1.479_819_860_511_658_591e-01;

    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    let mut x = x;
    let mut k: i32 = 0;
    let mut bits = x.to_bits();
    let mut hx = (bits >> 32) as u32;
    if hx < 0x0010_0000 {
        // Subnormal: scale into the normal range.
        k -= 54;
        x *= 18_014_398_509_481_984.0; // 2^54
        bits = x.to_bits();
        hx = (bits >> 32) as u32;
    } else if bits == 1.0_f64.to_bits() {
        return 0.0;
    }
    // Reduce x into [sqrt(2)/2, sqrt(2)].
    hx = hx.wrapping_add(0x3ff0_0000 - 0x3fe6_a09e);
    k += (hx >> 20) as i32 - 0x3ff;
    hx = (hx & 0x000f_ffff) + 0x3fe6_a09e;
    bits = (u64::from(hx) << 32) | (bits & 0xffff_ffff);
    x = f64::from_bits(bits);

    let f = x - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    let dk = f64::from(k);
    s * (hfsq + r) + dk * LN2_LO - hfsq + f + dk * LN2_HI
}

/// `(sin, cos)` of `turns` full turns (2π·turns radians). Working in turns makes the range
/// reduction exact (quarter turns are a power-of-two scaling), leaving only fdlibm's kernels.
pub(super) fn sin_cos_turns(turns: f64) -> (f64, f64) {
    let quarters = turns * 4.0;
    let quadrant = quarters.round();
    // Exact: both are close and quadrant is an integer.
    let r = quarters - quadrant;
    let angle = r * std::f64::consts::FRAC_PI_2; // in [-π/4, π/4]
    let (sin, cos) = (kernel_sin(angle), kernel_cos(angle));
    match (quadrant as i64).rem_euclid(4) {
        0 => (sin, cos),
        1 => (cos, -sin),
        2 => (-sin, -cos),
        _ => (-cos, sin),
    }
}

/// fdlibm `__kernel_sin` on [-π/4, π/4] (tail term 0).
// fdlibm's published constants, verbatim, so they can be checked against the source.
#[allow(clippy::excessive_precision)]
pub(super) fn kernel_sin(x: f64) -> f64 {
    const S1: f64 = -1.666_666_666_666_663_243_48e-01;
    const S2: f64 = 8.333_333_333_322_489_461_24e-03;
    const S3: f64 = -1.984_126_982_985_794_931_34e-04;
    const S4: f64 = 2.755_731_370_707_006_767_89e-06;
    const S5: f64 = -2.505_076_025_340_686_341_95e-08;
    const S6: f64 = 1.589_690_995_211_550_102_21e-10;
    let z = x * x;
    let v = z * x;
    let r = S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)));
    x + v * (S1 + z * r)
}

/// fdlibm `__kernel_cos` on [-π/4, π/4] (tail term 0).
// fdlibm's published constants, verbatim, so they can be checked against the source.
#[allow(clippy::excessive_precision)]
pub(super) fn kernel_cos(x: f64) -> f64 {
    const C1: f64 = 4.166_666_666_666_660_190_37e-02;
    const C2: f64 = -1.388_888_888_887_410_957_49e-03;
    const C3: f64 = 2.480_158_728_947_672_941_78e-05;
    const C4: f64 = -2.755_731_435_139_066_330_35e-07;
    const C5: f64 = 2.087_572_321_298_174_827_90e-09;
    const C6: f64 = -1.135_964_755_778_819_482_65e-11;
    let z = x * x;
    let w = z * z;
    let r = z * (C1 + z * (C2 + z * C3)) + w * w * (C4 + z * (C5 + z * C6));
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    w + (((1.0 - w) - hz) + z * r)
}
