//! The same test bodies on every device this build and machine have: the
//! CPU always; `cuda:0` when the `cuda` feature is on and a GPU answers
//! (otherwise skipped with the reason printed; `CAKE_REQUIRE_GPU=1` turns
//! the skip into a failure, as `scripts/gpu-check.sh` sets it). Each op's
//! result on the device is compared with the CPU backend's:
//!
//! - exact: uploads, bf16/f16 widening, rows, embedding, add;
//! - 1e-5 relative: RMSNorm, RoPE, SiLU·mul, softmax (the GPU's `expf`,
//!   `sincosf` and sums differ from the CPU's in the last bits);
//! - attention: 1e-4 relative (online softmax in another order);
//! - matmul with bf16 weights: against the CPU product of the same
//!   bf16-rounded operands, within 1e-3 of Σ|x·w| (f32 accumulation in
//!   another order); with f32 weights within 1e-5 of Σ|x·w|.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use crate::common::Rng;
use cake_kernels::{Device, RopeTable, Tensor, ops};

fn devices() -> Vec<Device> {
    cake_kernels::test_devices()
}

fn on(d: Device, t: &Tensor) -> Tensor {
    Tensor::from_vec(t.to_vec().unwrap(), t.shape(), d).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec().unwrap()
}

fn refs(v: &[Tensor]) -> Vec<&Tensor> {
    v.iter().collect()
}

fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

fn assert_close(what: &str, d: Device, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what} on {d}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / (1.0 + w.abs());
        assert!(
            err <= tol,
            "{what} on {d}: [{i}] {g} vs {w} (rel {err:e} > {tol:e})"
        );
    }
}

#[test]
fn uploads_and_half_widening_are_exact() {
    let mut r = Rng::new(1);
    let data = r.vec(3 * 1000 + 7);
    let bf: Vec<u16> = data
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    let hf: Vec<u16> = data
        .iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect();
    for d in devices() {
        let shape = [3007];
        let a = Tensor::from_vec(data.clone(), &shape, d).unwrap();
        assert_eq!(host(&a), data, "from_vec on {d}");
        let b = Tensor::upload(&data, &shape, d).unwrap();
        assert_eq!(host(&b), data, "upload on {d}");
        let c = Tensor::from_half_bits(&bf, true, &shape, d).unwrap();
        let want: Vec<f32> = bf
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect();
        assert_eq!(host(&c), want, "bf16 widening on {d}");
        let e = Tensor::from_half_bits(&hf, false, &shape, d).unwrap();
        let want: Vec<f32> = hf
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect();
        assert_eq!(host(&e), want, "f16 widening on {d}");
        let rows = a.reshape(&[31, 97]).unwrap().rows(5, 9).unwrap();
        assert_eq!(host(&rows), data[5 * 97..9 * 97].to_vec(), "rows on {d}");
    }
}

#[test]
fn big_upload_crosses_staging_buffers() {
    // 40 MB: several staging buffers, both reused.
    let data: Vec<f32> = (0..10_000_000).map(|i| (i % 4099) as f32 * 0.5).collect();
    for d in devices() {
        let t = Tensor::upload(&data, &[data.len()], d).unwrap();
        assert!(host(&t) == data, "upload of 40 MB on {d}");
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let mut r = Rng::new(2);
    let x = r.tensor(&[37, 4, 64]);
    let y = r.tensor(&[37, 4, 64]);
    let w = r.tensor(&[256]);
    let cpu_norm = host(&ops::rms_norm(&x.clone().reshape(&[37, 256]).unwrap(), &w, 1e-5).unwrap());
    let cpu_silu = host(&ops::silu_mul(&x, &y).unwrap());
    let mut cpu_add = x.clone();
    ops::add_inplace(&mut cpu_add, &y).unwrap();
    let table = RopeTable::new(64, 500_000.0, None);
    let mut cpu_rope = x.clone();
    ops::rope_inplace(&mut cpu_rope, 1000, &table).unwrap();
    let mut cpu_soft = x.clone();
    ops::softmax_inplace(&mut cpu_soft).unwrap();
    let emb = r.tensor(&[50, 96]);
    let ids = [3u32, 0, 49, 3, 17];
    let cpu_emb = host(&ops::embedding(&emb, &ids).unwrap());
    for d in devices() {
        let (xd, yd, wd) = (on(d, &x), on(d, &y), on(d, &w));
        let n = ops::rms_norm(&xd.clone().reshape(&[37, 256]).unwrap(), &wd, 1e-5).unwrap();
        assert_close("rms_norm", d, &host(&n), &cpu_norm, 1e-5);
        assert_close(
            "silu_mul",
            d,
            &host(&ops::silu_mul(&xd, &yd).unwrap()),
            &cpu_silu,
            1e-5,
        );
        let mut a = xd.clone();
        ops::add_inplace(&mut a, &yd).unwrap();
        assert_eq!(host(&a), host(&cpu_add), "add on {d}");
        let mut rr = xd.clone();
        ops::rope_inplace(&mut rr, 1000, &table).unwrap();
        assert_close("rope", d, &host(&rr), &host(&cpu_rope), 1e-5);
        let mut s = xd.clone();
        ops::softmax_inplace(&mut s).unwrap();
        assert_close("softmax", d, &host(&s), &host(&cpu_soft), 1e-5);
        assert_eq!(
            host(&ops::embedding(&on(d, &emb), &ids).unwrap()),
            cpu_emb,
            "embedding on {d}"
        );
    }
}

#[test]
fn matmul_matches_cpu() {
    let mut r = Rng::new(3);
    for (m, k, n) in [(1, 64, 48), (37, 256, 96), (128, 512, 384)] {
        let x = r.vec(m * k);
        let w = r.vec(n * k);
        let bound: Vec<f32> = (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..k).map(|p| (x[i * k + p] * w[j * k + p]).abs()).sum()
            })
            .collect();
        let cpu = |xv: Vec<f32>, wv: Vec<f32>| {
            let xt = Tensor::from_vec(xv, &[m, k], Device::Cpu).unwrap();
            let wt = Tensor::from_vec(wv, &[n, k], Device::Cpu).unwrap();
            host(&ops::matmul_t(&xt, &wt).unwrap())
        };
        let exact = cpu(x.clone(), w.clone());
        let rounded = cpu(bf16_round(&x), bf16_round(&w));
        for d in devices() {
            let xd = Tensor::from_vec(x.clone(), &[m, k], d).unwrap();
            // `weight`: f32 on the CPU, bf16 on a GPU.
            let wd = Tensor::weight(w.clone(), &[n, k], d).unwrap();
            let got = host(&ops::matmul_t(&xd, &wd).unwrap());
            let (want, tol) = if d.is_cpu() {
                (&exact, 0.0)
            } else {
                (&rounded, 1e-3)
            };
            for i in 0..m * n {
                let e = (got[i] - want[i]).abs();
                assert!(
                    e <= tol * bound[i] + 1e-6,
                    "matmul {m}x{k}x{n} (bf16 weight) on {d}: [{i}] {} vs {}",
                    got[i],
                    want[i]
                );
            }
            let wf = Tensor::from_vec(w.clone(), &[n, k], d).unwrap();
            let got = host(&ops::matmul_t(&xd, &wf).unwrap());
            for i in 0..m * n {
                let e = (got[i] - exact[i]).abs();
                assert!(
                    e <= 1e-5 * bound[i] + 1e-6,
                    "matmul {m}x{k}x{n} (f32 weight) on {d}: [{i}] {} vs {}",
                    got[i],
                    exact[i]
                );
            }
        }
    }
}

#[test]
fn matmul_many_equals_separate_calls() {
    let mut r = Rng::new(5);
    let x = r.vec(33 * 128);
    let ws: Vec<Vec<f32>> = [64, 32, 32].iter().map(|&n| r.vec(n * 128)).collect();
    for d in devices() {
        let xd = Tensor::from_vec(x.clone(), &[33, 128], d).unwrap();
        let wd: Vec<Tensor> = ws
            .iter()
            .map(|w| Tensor::weight(w.clone(), &[w.len() / 128, 128], d).unwrap())
            .collect();
        let many = ops::matmul_t_many(&xd, &refs(&wd)).unwrap();
        for (w, got) in wd.iter().zip(&many) {
            assert_eq!(host(got), host(&ops::matmul_t(&xd, w).unwrap()), "on {d}");
        }
    }
}

#[test]
fn attention_matches_cpu() {
    let mut r = Rng::new(4);
    // (m, heads, kv_heads, hd, q_pos0, chunk lengths of the cached part)
    let cases: &[(usize, usize, usize, usize, usize, &[usize])] = &[
        (1, 8, 2, 64, 300, &[128, 128, 44]),
        (37, 4, 4, 32, 0, &[]),
        (70, 8, 2, 128, 100, &[64, 36]),
        (16, 6, 3, 16, 33, &[33]),
    ];
    for &(m, nh, kvh, hd, p0, cuts) in cases {
        let q = r.tensor(&[m, nh, hd]);
        let mut lens: Vec<usize> = cuts.to_vec();
        lens.push(m);
        assert_eq!(lens.iter().sum::<usize>(), p0 + m);
        let ks: Vec<Tensor> = lens.iter().map(|&l| r.tensor(&[l, kvh, hd])).collect();
        let vs: Vec<Tensor> = lens.iter().map(|&l| r.tensor(&[l, kvh, hd])).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let want = host(&ops::attention(&q, p0, &refs(&ks), &refs(&vs), scale).unwrap());
        for d in devices() {
            let kd: Vec<Tensor> = ks
                .iter()
                .map(|t| Tensor::upload(&host(t), t.shape(), d).unwrap())
                .collect();
            let vd: Vec<Tensor> = vs.iter().map(|t| on(d, t)).collect();
            let got = host(&ops::attention(&on(d, &q), p0, &refs(&kd), &refs(&vd), scale).unwrap());
            assert_close(
                &format!("attention m={m} hd={hd} pos0={p0}"),
                d,
                &got,
                &want,
                1e-4,
            );
        }
    }
}

#[test]
fn gemm_rate_is_measured() {
    for d in devices() {
        let r = cake_kernels::device_gemm_gflops(d, 64, 64, 64, 2).unwrap();
        assert!(r > 0.0, "{d}: {r}");
    }
}
