// Cake's CUDA kernels, compiled by NVRTC when a CUDA device is first used
// (kernels/src/cuda/mod.rs). No headers: bf16/f16 conversions are done on
// the bits so the source compiles with any NVRTC.
//
// Every kernel takes f32 activations in the same row-major layouts as the
// CPU backend (kernels/src/cpu); GEMMs go to cuBLAS instead.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_bits_to_f32(u16 b) {
    return __uint_as_float(((u32)b) << 16);
}

// Round to nearest even, NaN kept quiet (same rule as the `half` crate).
__device__ __forceinline__ u16 f32_to_bf16_bits(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((u >> 16) | 0x40u);
    }
    u32 rounding = 0x7fffu + ((u >> 16) & 1u);
    return (u16)((u + rounding) >> 16);
}

__device__ __forceinline__ float f16_bits_to_f32(u16 h) {
    u32 sign = ((u32)h & 0x8000u) << 16;
    u32 exp = ((u32)h >> 10) & 0x1fu;
    u32 man = (u32)h & 0x3ffu;
    if (exp == 0) {
        // Zero or subnormal: man * 2^-24, exact in f32.
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) {
        return __uint_as_float(sign | 0x7f800000u | (man << 13));
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

extern "C" __global__ void cast_f32_bf16(const float* x, u16* y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        y[i] = f32_to_bf16_bits(x[i]);
    }
}

// The chunk codecs' decode: stored bf16 / f16 payloads to f32 on the GPU.
extern "C" __global__ void bf16_to_f32(const u16* x, float* y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        y[i] = bf16_bits_to_f32(x[i]);
    }
}

extern "C" __global__ void f16_to_f32(const u16* x, float* y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        y[i] = f16_bits_to_f32(x[i]);
    }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    if (lane == 0) {
        part[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        v = lane < nw ? part[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            v += __shfl_xor_sync(0xffffffffu, v, o);
        }
        if (lane == 0) {
            total = v;
        }
    }
    __syncthreads();
    return total;
}

// One block per row of x[rows, d].
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int d,
                                    float eps) {
    const float* xr = x + (u64)blockIdx.x * d;
    float* o = out + (u64)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = xr[i];
        s = fmaf(v, v, s);
    }
    s = block_sum(s);
    float inv = 1.0f / sqrtf(s / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        o[i] = xr[i] * inv * w[i];
    }
}

// x[rows, heads, hd], rotate-half layout; one thread per (row, head, pair).
extern "C" __global__ void rope(float* x, int rows, int heads, int hd, u64 pos0,
                                const float* inv_freq) {
    int half = hd / 2;
    u64 n = (u64)rows * heads * half;
    for (u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x; t < n;
         t += (u64)gridDim.x * blockDim.x) {
        int i = (int)(t % half);
        u64 rh = t / half;
        u64 row = rh / heads;
        float pos = (float)(pos0 + row);
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        float* h = x + rh * hd;
        float x0 = h[i];
        float x1 = h[i + half];
        h[i] = x0 * c - x1 * s;
        h[i + half] = x1 * c + x0 * s;
    }
}

extern "C" __global__ void silu_mul(const float* g, const float* u, float* out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        float v = g[i];
        out[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

extern "C" __global__ void add_inplace(float* x, const float* y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        x[i] += y[i];
    }
}

// out[n, d] = table[ids[r], :]; one block per row.
extern "C" __global__ void embedding(const float* table, const u32* ids, float* out, int d) {
    const float* src = table + (u64)ids[blockIdx.x] * d;
    float* dst = out + (u64)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        dst[i] = src[i];
    }
}

// Flash-style causal attention of queries q[m, n_heads, hd] (positions
// q_pos0..q_pos0+m) over a KV cache held as chunks: chunk c holds
// positions starts[c]..starts[c+1] (the last one up to the total), its K at
// kptrs[c] and V at vptrs[c], each [len, kv_heads, hd]. Grid (ceil(m/BR),
// n_heads), 128 threads: 4 warps, each owning BR/4 query rows. Keys come in
// tiles of BC positions staged in shared memory; each lane scores one key
// of the tile, then the warp folds the tile into its rows' online softmax
// (running max, running sum, accumulator: lane owns dims lane + 32·i).
#define BR 16
#define BC 32
#define MAXD 128
#define RPW (BR / 4)
#define DPL (MAXD / 32)

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

extern "C" __global__ void __launch_bounds__(128) attention(
    const float* q, float* out, const u64* kptrs, const u64* vptrs, const u64* starts,
    int nchunks, int m, int n_heads, int kv_heads, int hd, u64 q_pos0, float scale) {
    __shared__ float qs[BR][MAXD];
    __shared__ float ks[BC][MAXD + 1];
    __shared__ float vs[BC][MAXD];
    __shared__ const float* krow[BC];
    __shared__ const float* vrow[BC];

    const int h = blockIdx.y;
    const int kvh = h / (n_heads / kv_heads);
    const int r0 = blockIdx.x * BR;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;

    for (int idx = tid; idx < BR * hd; idx += blockDim.x) {
        int r = idx / hd;
        int d = idx % hd;
        float v = 0.0f;
        if (r0 + r < m) {
            v = q[((u64)(r0 + r) * n_heads + h) * hd + d];
        }
        qs[r][d] = v;
    }

    float mrow[RPW];
    float lrow[RPW];
    float acc[RPW][DPL];
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        mrow[rr] = NEG_INF;
        lrow[rr] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            acc[rr][i] = 0.0f;
        }
    }

    const int rows_here = min(BR, m - r0);
    const u64 last_pos = q_pos0 + (u64)r0 + (u64)rows_here - 1;
    for (u64 k0 = 0; k0 <= last_pos; k0 += BC) {
        __syncthreads();
        if (tid < BC) {
            u64 p = k0 + tid;
            const float* kr = 0;
            const float* vr = 0;
            if (p <= last_pos) {
                int c = 0;
                while (c + 1 < nchunks && starts[c + 1] <= p) {
                    c++;
                }
                u64 off = (p - starts[c]) * kv_heads + kvh;
                kr = (const float*)kptrs[c] + off * hd;
                vr = (const float*)vptrs[c] + off * hd;
            }
            krow[tid] = kr;
            vrow[tid] = vr;
        }
        __syncthreads();
        for (int idx = tid; idx < BC * hd; idx += blockDim.x) {
            int j = idx / hd;
            int d = idx % hd;
            const float* kr = krow[j];
            ks[j][d] = kr ? kr[d] : 0.0f;
            vs[j][d] = kr ? vrow[j][d] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            const int r = warp + rr * 4;
            if (r >= rows_here) {
                continue;
            }
            const u64 qpos = q_pos0 + (u64)(r0 + r);
            if (k0 > qpos) {
                continue;
            }
            const u64 p = k0 + lane;
            const bool live = p <= qpos;
            float s = NEG_INF;
            if (live) {
                float dot = 0.0f;
                for (int d = 0; d < hd; d++) {
                    dot = fmaf(qs[r][d], ks[lane][d], dot);
                }
                s = dot * scale;
            }
            // Lane 0's key (position k0 <= qpos) is always live, so the
            // tile max is finite.
            const float mnew = fmaxf(mrow[rr], warp_max(s));
            const float pj = live ? expf(s - mnew) : 0.0f;
            const float corr = expf(mrow[rr] - mnew);
            lrow[rr] = lrow[rr] * corr + warp_sum(pj);
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                acc[rr][i] *= corr;
            }
            for (int j = 0; j < BC; j++) {
                const float pb = __shfl_sync(0xffffffffu, pj, j);
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    const int d = lane + 32 * i;
                    if (d < hd) {
                        acc[rr][i] = fmaf(pb, vs[j][d], acc[rr][i]);
                    }
                }
            }
            mrow[rr] = mnew;
        }
    }

#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        const int r = warp + rr * 4;
        if (r < rows_here) {
            float* o = out + ((u64)(r0 + r) * n_heads + h) * hd;
            const float inv = 1.0f / lrow[rr];
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int d = lane + 32 * i;
                if (d < hd) {
                    o[d] = acc[rr][i] * inv;
                }
            }
        }
    }
}
