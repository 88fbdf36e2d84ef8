//! Dequantisation to `f32`, bit-for-bit as llama.cpp's reference `dequantize_row_*`
//! (`ggml-quants.c`) and gguf-py's `quants.py` compute it.
//!
//! Every product and sum below is evaluated in `f32` in the same order as the C reference
//! (e.g. Q4_K: `(d * sc) * q - (dmin * m)`), with no fused multiply-add, so the results are
//! identical to the reference's on any IEEE-754 machine.

use crate::types::{GgmlType, QK_K};

#[inline]
fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Dequantise `data` (a whole number of blocks of `ty`) and append the values to `out`.
///
/// # Panics
/// Never for supported types when `data.len()` is a multiple of the block size in bytes
/// (callers check both); returns `false` for an unsupported type.
pub(crate) fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) -> bool {
    let (_, bs) = ty.block_layout();
    debug_assert_eq!(data.len() % bs, 0);
    let blocks = data.chunks_exact(bs);
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| f16(c, 0))),
        GgmlType::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)),
        ),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, out)),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, out)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5_0(b, out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5_1(b, out)),
        GgmlType::Q2_K => blocks.for_each(|b| q2_k(b, out)),
        GgmlType::Q3_K => blocks.for_each(|b| q3_k(b, out)),
        GgmlType::Q4_K => blocks.for_each(|b| q4_k(b, out)),
        GgmlType::Q5_K => blocks.for_each(|b| q5_k(b, out)),
        GgmlType::Q6_K => blocks.for_each(|b| q6_k(b, out)),
        _ => return false,
    }
    true
}

/// `block_q8_0 { ggml_half d; int8_t qs[32]; }`: `y = qs * d`.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
}

/// `block_q4_0 { ggml_half d; uint8_t qs[16]; }`: low nibbles are elements 0..16, high
/// nibbles 16..32; `y = (q - 8) * d`.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
    out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
}

/// `block_q4_1 { ggml_half d, m; uint8_t qs[16]; }`: `y = q * d + m`.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    let m = f16(b, 2);
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

/// `block_q5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[16]; }`: bit `j` of `qh` is the fifth
/// bit of element `j`; `y = (q - 16) * d`.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for (j, &q) in qs.iter().enumerate() {
        let h = (((qh >> j) & 1) << 4) as u8;
        out.push(f32::from(((q & 0x0F) | h) as i8 - 16) * d);
    }
    for (j, &q) in qs.iter().enumerate() {
        let h = (((qh >> (j + 16)) & 1) << 4) as u8;
        out.push(f32::from(((q >> 4) | h) as i8 - 16) * d);
    }
}

/// `block_q5_1 { ggml_half d, m; uint8_t qh[4]; uint8_t qs[16]; }`: `y = q * d + m`.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    let m = f16(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for (j, &q) in qs.iter().enumerate() {
        let h = (((qh >> j) & 1) << 4) as u8;
        out.push(f32::from((q & 0x0F) | h) * d + m);
    }
    for (j, &q) in qs.iter().enumerate() {
        let h = (((qh >> (j + 16)) & 1) << 4) as u8;
        out.push(f32::from((q >> 4) | h) * d + m);
    }
}

/// `block_q2_K { uint8_t scales[16]; uint8_t qs[64]; ggml_half d, dmin; }`.
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16(b, 80);
    let dmin = f16(b, 82);
    let mut is = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0u32, 2, 4, 6] {
            for half in [&q[0..16], &q[16..32]] {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0F);
                let ml = dmin * f32::from(sc >> 4);
                out.extend(half.iter().map(|&v| dl * f32::from((v >> shift) & 3) - ml));
            }
        }
    }
}

/// `block_q3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; ggml_half d; }`:
/// sixteen 6-bit scales (offset 32), 2 low bits per value in `qs`, and a high bit in `hmask`
/// that subtracts 4 when it is clear.
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let hm = &b[0..32];
    let qs = &b[32..96];
    let sc = &b[96..108];
    let d_all = f16(b, 108);
    let mut scales = [0i8; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let low = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    let mut is = 0;
    let mut m: u8 = 1;
    for q in qs.chunks_exact(32) {
        for shift in [0u32, 2, 4, 6] {
            for (q16, h16) in [(&q[0..16], &hm[0..16]), (&q[16..32], &hm[16..32])] {
                let dl = d_all * f32::from(scales[is]);
                is += 1;
                out.extend(q16.iter().zip(h16).map(|(&v, &h)| {
                    let low = ((v >> shift) & 3) as i8;
                    let sub = if h & m != 0 { 0 } else { 4 };
                    dl * f32::from(low - sub)
                }));
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// `get_scale_min_k4`: the `j`-th 6-bit scale and min of a Q4_K/Q5_K block.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Sub-block `j`'s effective scale and min in a Q4_K/Q5_K block: `(d * sc, dmin * m)`,
/// the `d1`/`m1` (or `d2`/`m2`) of the reference.
#[inline]
fn sub_block_scale_min(j: usize, scales: &[u8], d: f32, min: f32) -> (f32, f32) {
    let (sc, m) = scale_min_k4(j, scales);
    (d * f32::from(sc), min * f32::from(m))
}

/// `block_q4_K { ggml_half d, dmin; uint8_t scales[12]; uint8_t qs[128]; }`.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    let min = f16(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (j, q) in qs.chunks_exact(32).enumerate() {
        let (d1, m1) = sub_block_scale_min(2 * j, scales, d, min);
        let (d2, m2) = sub_block_scale_min(2 * j + 1, scales, d, min);
        out.extend(q.iter().map(|&v| d1 * f32::from(v & 0x0F) - m1));
        out.extend(q.iter().map(|&v| d2 * f32::from(v >> 4) - m2));
    }
}

/// `block_q5_K { ggml_half d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; }`.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    let min = f16(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (j, ql) in qs.chunks_exact(32).enumerate() {
        let u1 = 1u8 << (2 * j);
        let u2 = 2u8 << (2 * j);
        let (d1, m1) = sub_block_scale_min(2 * j, scales, d, min);
        let (d2, m2) = sub_block_scale_min(2 * j + 1, scales, d, min);
        out.extend(ql.iter().zip(qh).map(|(&l, &h)| {
            let hi = if h & u1 != 0 { 16 } else { 0 };
            d1 * f32::from((l & 0x0F) + hi) - m1
        }));
        out.extend(ql.iter().zip(qh).map(|(&l, &h)| {
            let hi = if h & u2 != 0 { 16 } else { 0 };
            d2 * f32::from((l >> 4) + hi) - m2
        }));
    }
}

/// `block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; }`:
/// `y = d * scale * (q - 32)`, evaluated as `(d * scale) * q`.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
    }
}
