// Fused scaled dot-product attention for many narrow heads, on a CPU (Live DMD, Apache-2.0).
//
// One head at a time, each query row goes through scores, causal limit, softmax, attention dropout
// and the value product in vector registers and the L1 cache; the backward recomputes the weights
// from the row statistics the forward kept (max and 1 / sum) and the dropout mask from its
// counter-based draws, so no (L, L) tensor is ever written to memory. Inputs and outputs are read
// and written through strides, so the heads of a (B, L, H * D) projection need no copy into a
// head-major layout.
//
// Built at first use by dmd_model/native.py with the machine's C++ compiler (-O3 -march=native) and
// loaded with ctypes. Vectors are GCC/Clang vector extensions as wide as one register of the target
// (16 floats with AVX-512, 8 with AVX, else 4); keys and query rows go in blocks of that many lanes,
// padded and masked.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

// lanes per vector: one register of the widest vector unit the compiler targets (a wider GCC vector
// type than the unit would be split through the stack, several times slower)
#if defined(__AVX512F__)
#define DMD_LANES 16
#elif defined(__AVX__)
#define DMD_LANES 8
#else
#define DMD_LANES 4
#endif
constexpr int W = DMD_LANES;
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));
constexpr int MAX_D = 64;  // widest head handled (DMD's are 5 and 10 channels)

inline vf splat(float x) { return vf{} + x; }
inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// horizontal sum and max: halve the vector with shuffles until one lane is left
#if DMD_LANES == 16
#define DMD_HALVES(op)                                                                               \
    v = op(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)); \
    v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)); \
    v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)); \
    v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
inline vi lanes() { return vi{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }
#elif DMD_LANES == 8
#define DMD_HALVES(op)                                                    \
    v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3)); \
    v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5)); \
    v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
inline vi lanes() { return vi{0, 1, 2, 3, 4, 5, 6, 7}; }
#else
#define DMD_HALVES(op)                                        \
    v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1)); \
    v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2));
inline vi lanes() { return vi{0, 1, 2, 3}; }
#endif
inline vf vadd(vf a, vf b) { return a + b; }
inline float hsum(vf v) {
    DMD_HALVES(vadd)
    return v[0];
}
inline float hmax(vf v) {
    DMD_HALVES(vmax)
    return v[0];
}
inline vf select(vi mask, vf a, vf b) { return mask ? a : b; }  // lane-wise a where mask != 0

// lanes of the block of keys from `start` that are below `limit`
inline vi below(int64_t start, int64_t limit) { return lanes() < static_cast<int32_t>(limit - start); }

// exp(x) for x <= 0 (after the row maximum is subtracted): Cody-Waite reduction x = n ln2 + r,
// |r| <= ln2 / 2, with n rounded by the 1.5 * 2^23 trick, a degree-6 polynomial for exp(r) (the
// Cephes expf coefficients, about 1 ulp) and 2^n made in the exponent bits.
inline vf exp_nonpositive(vf x) {
    // below -80 the result is 0: exp(-80) = 1.8e-35 is nothing against a row sum >= 1, and a
    // subnormal result (from about -87.3 on) would make every product with it take a slow path
    const vi tiny = x < -80.0f;
    x = select(tiny, splat(-80.0f), x);
    const vf magic = splat(12582912.0f);
    const vf n = (x * 1.44269504088896341f + magic) - magic;
    const vf r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    return select(tiny, vf{}, p * two_n);
}

// Keep lanes for a vector of dropout draws: element `index[l]` of a stream draws the top 16 bits of the
// SplitMix64 output for counter index + 1, as a signed value in [-32768, 32767], and is kept when
// draw <= threshold.
inline int32_t draw16(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return static_cast<int32_t>(z >> 48) - 32768;
}

inline vi keep(uint64_t seed, const uint64_t* index, int32_t threshold) {
    int32_t d[W];
#pragma omp simd
    for (int l = 0; l < W; ++l) d[l] = draw16(seed, index[l]);
    vi v;
    std::memcpy(&v, d, sizeof v);
    return v <= threshold;
}

// 4 strides (batch, head, position, channel) in elements
struct View {
    const float* data;
    const int64_t* s;
    const float* at(int64_t b, int64_t h, int64_t l) const { return data + b * s[0] + h * s[1] + l * s[2]; }
};
struct MutView {
    float* data;
    const int64_t* s;
    float* at(int64_t b, int64_t h, int64_t l) const { return data + b * s[0] + h * s[1] + l * s[2]; }
};

// rows [0, L) of batch item b, all heads, into a contiguous (L, H * D) block, times `factor`
void gather_rows(const View& x, int64_t b, int64_t H, int64_t L, int64_t D, float* out, float factor) {
    for (int64_t j = 0; j < L; ++j)
        for (int64_t h = 0; h < H; ++h) {
            const float* src = x.at(b, h, j);
            float* dst = out + (j * H + h) * D;
            for (int64_t e = 0; e < D; ++e) dst[e] = src[e * x.s[3]] * factor;
        }
}

// rows [0, L) of batch item b, all heads, transposed into (H * D, ld) rows (zero padded), times `factor`
void gather_block_transposed(const View& x, int64_t b, int64_t H, int64_t L, int64_t D, int64_t ld, float* out,
                             float factor) {
    std::fill(out, out + H * D * ld, 0.0f);
    for (int64_t j = 0; j < L; ++j)
        for (int64_t h = 0; h < H; ++h) {
            const float* src = x.at(b, h, j);
            for (int64_t e = 0; e < D; ++e) out[(h * D + e) * ld + j] = src[e * x.s[3]] * factor;
        }
}

inline int64_t padded(int64_t n) { return (n + W - 1) / W * W; }

// keys or values of one head, transposed into D rows of `ld` (zero padded), so blocks of keys are contiguous
void gather_transposed(const View& x, int64_t b, int64_t h, int64_t L, int64_t D, int64_t ld, float* out) {
    std::fill(out, out + D * ld, 0.0f);
    for (int64_t j = 0; j < L; ++j) {
        const float* row = x.at(b, h, j);
        for (int64_t e = 0; e < D; ++e) out[e * ld + j] = row[e * x.s[3]];
    }
}

struct Problem {
    int64_t B, H, Lq, Lk, D;
    int64_t shift;  // < 0: every key visible; else key j is visible to query i when j <= i + shift
    float scale;
    const int32_t* thresholds;  // per head, or null: no dropout
    const float* row_scale;     // per head, or null
    uint64_t seed;
    int64_t limit(int64_t i) const { return shift < 0 ? Lk : std::min(Lk, i + shift + 1); }
    int32_t threshold(int64_t n) const { return thresholds ? thresholds[n] : 32767; }
    float rscale(int64_t n) const { return row_scale ? row_scale[n] : 1.0f; }
};

// scores of the (scaled) query row against keys [0, lim), blocks of W, -inf past lim; returns the max
inline float scores_row(const float* qi, const float* kt, int64_t D, int64_t ld, int64_t lim, float* s) {
    vf mx = splat(-INFINITY);
    for (int64_t j = 0; j < lim; j += W) {
        vf acc = qi[0] * load(kt + j);
        for (int64_t e = 1; e < D; ++e) acc += qi[e] * load(kt + e * ld + j);
        acc = select(below(j, lim), acc, splat(-INFINITY));
        store(s + j, acc);
        mx = mx > acc ? mx : acc;
    }
    return hmax(mx);
}

// work(lo, hi) over [0, n) on `threads` threads. Built with OpenMP, the threads are those of the
// OpenMP runtime already in the process (PyTorch's: the library names the same libgomp.so.1), so
// they do not compete with PyTorch's spinning workers; else plain threads.
template <class F>
void parallel_heads(int64_t n, int threads, F&& work) {
    threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
    const int64_t per = (n + threads - 1) / threads;
    if (threads == 1) {
        work(0, n);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; ++t) {
        const int64_t lo = t * per, hi = std::min(n, lo + per);
        if (lo < hi) work(lo, hi);
    }
#else
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) {
        const int64_t lo = t * per, hi = std::min(n, lo + per);
        if (lo < hi) pool.emplace_back([&work, lo, hi] { work(lo, hi); });
    }
    work(0, std::min(n, per));
    for (auto& th : pool) th.join();
#endif
}

}  // namespace

extern "C" {

int dmd_attention_max_head_dim() { return MAX_D; }

// the 16-bit dropout draws of elements start .. start + count - 1 of the stream `seed` (for tests)
void dmd_dropout_draws(uint64_t seed, uint64_t start, int64_t count, int32_t* out) {
    for (int64_t i = 0; i < count; ++i) out[i] = draw16(seed, start + static_cast<uint64_t>(i));
}

// out (B, H, Lq, D), through its strides, = dropout(softmax(scale q k^T, causal limit)) v * row_scale.
// stats (B * H * Lq * 2) receives each row's max and 1 / sum for the backward (may be null).
// A head whose threshold is 32767 (or with no thresholds) keeps every weight and draws nothing.
// Work is shared out by batch item, whose rows of every head are first copied together (whole cache
// lines, in order). W query rows go through together, one per lane, so every reduction (max, sum, the value
// product) runs along the keys within lanes, and a block of causal rows stops at its last row's limit.
int dmd_attention_forward(const float* q, const int64_t* qs, const float* k, const int64_t* ks,
                          const float* v, const int64_t* vs, float* out, const int64_t* os, float* stats,
                          int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t shift, float scale,
                          const int32_t* thresholds, const float* row_scale, uint64_t seed, int threads) {
    if (D > MAX_D || D < 1) return 1;
    const Problem pb{B, H, Lq, Lk, D, shift, scale, thresholds, row_scale, seed};
    const View Q{q, qs}, K{k, ks}, V{v, vs};
    const MutView O{out, os};
    const int64_t d = H * D;
    parallel_heads(B, threads, [&](int64_t lo, int64_t hi) {
        const int64_t lq = padded(Lq);
        std::vector<float> buf(Lk * W + 2 * Lk * d + 2 * d * lq + 2 * H * lq);
        float* s = buf.data();          // scores, (Lk, W rows)
        float* kb = s + Lk * W;         // keys of the batch item, (Lk, H * D) contiguous
        float* vb = kb + Lk * d;        // values
        float* qt = vb + Lk * d;        // queries, scaled and transposed: (H * D, lq)
        float* ot = qt + d * lq;        // outputs, transposed
        float* st = ot + d * lq;        // row statistics, (H, 2, lq)
        vf qv[MAX_D], acc[MAX_D];
        uint64_t rowbase[W], index[W];
        for (int64_t b = lo; b < hi; ++b) {
            gather_rows(K, b, H, Lk, D, kb, 1.0f);
            gather_rows(V, b, H, Lk, D, vb, 1.0f);
            gather_block_transposed(Q, b, H, Lq, D, lq, qt, scale);
            for (int64_t h = 0; h < H; ++h) {
                const int64_t n = b * H + h;
                const float* kc = kb + h * D;
                const float* vc = vb + h * D;
                const int32_t thr = pb.threshold(n);
                const float rs = pb.rscale(n);
                for (int64_t r0 = 0; r0 < Lq; r0 += W) {
                    const int64_t rows = std::min<int64_t>(W, Lq - r0);
                    vi lim = {};
                    for (int l = 0; l < W; ++l) {
                        const int64_t i = r0 + l;  // spare lanes (i >= Lq) compute garbage, never stored
                        lim[l] = static_cast<int32_t>(pb.limit(std::min(i, Lq - 1)));
                        rowbase[l] = static_cast<uint64_t>((n * Lq + i) * Lk);
                    }
                    for (int64_t e = 0; e < D; ++e) qv[e] = load(qt + (h * D + e) * lq + r0);
                    const int64_t keys = pb.limit(r0 + rows - 1);
                    vf mx = splat(-INFINITY);
                    for (int64_t j = 0; j < keys; ++j) {
                        const float* kj = kc + j * d;
                        vf sj = qv[0] * kj[0];
                        for (int64_t e = 1; e < D; ++e) sj += qv[e] * kj[e];
                        sj = select(static_cast<int32_t>(j) < lim, sj, splat(-INFINITY));
                        store(s + j * W, sj);
                        mx = vmax(mx, sj);
                    }
                    vf sum = vf{};
                    for (int64_t e = 0; e < D; ++e) acc[e] = vf{};
                    for (int64_t j = 0; j < keys; ++j) {
                        vf p = select(static_cast<int32_t>(j) < lim, exp_nonpositive(load(s + j * W) - mx), vf{});
                        sum += p;
                        if (thr < 32767) {
                            for (int l = 0; l < W; ++l) index[l] = rowbase[l] + j;
                            p = select(keep(pb.seed, index, thr), p, vf{});
                        }
                        const float* vj = vc + j * d;
                        for (int64_t e = 0; e < D; ++e) acc[e] += p * vj[e];
                    }
                    const vf inv = 1.0f / sum;
                    const vf factor = inv * rs;
                    for (int64_t e = 0; e < D; ++e) store(ot + (h * D + e) * lq + r0, acc[e] * factor);
                    store(st + (2 * h) * lq + r0, mx);
                    store(st + (2 * h + 1) * lq + r0, inv);
                }
            }
            for (int64_t i = 0; i < Lq; ++i)
                for (int64_t h = 0; h < H; ++h) {
                    float* orow = O.at(b, h, i);
                    for (int64_t e = 0; e < D; ++e) orow[e * os[3]] = ot[(h * D + e) * lq + i];
                    if (stats) {
                        const int64_t n = b * H + h;
                        stats[2 * (n * Lq + i)] = st[2 * h * lq + i];
                        stats[2 * (n * Lq + i) + 1] = st[(2 * h + 1) * lq + i];
                    }
                }
        }
    });
    return 0;
}

// Gradients of dmd_attention_forward with respect to q, k and v (written, not accumulated), from
// the output gradient and the forward's row statistics; the same seed gives the same masks.
int dmd_attention_backward(const float* q, const int64_t* qs, const float* k, const int64_t* ks,
                           const float* v, const int64_t* vs, const float* gout, const int64_t* gos,
                           const float* stats, float* gq, const int64_t* gqs, float* gk, const int64_t* gks,
                           float* gv, const int64_t* gvs, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                           int64_t shift, float scale, const int32_t* thresholds, const float* row_scale,
                           uint64_t seed, int threads) {
    if (D > MAX_D || D < 1) return 1;
    const Problem pb{B, H, Lq, Lk, D, shift, scale, thresholds, row_scale, seed};
    const View Q{q, qs}, K{k, ks}, V{v, vs}, G{gout, gos};
    const MutView GQ{gq, gqs}, GK{gk, gks}, GV{gv, gvs};
    const int64_t ld = padded(Lk);
    parallel_heads(B * H, threads, [&](int64_t lo, int64_t hi) {
        std::vector<float> buf(4 * D * ld + 3 * ld + W);
        float* kt = buf.data();
        float* vt = kt + D * ld;
        float* gkt = vt + D * ld;
        float* gvt = gkt + D * ld;
        float* p = gvt + D * ld;  // softmax weights (normalised)
        float* t = p + ld;        // p' * dP'
        float qi[MAX_D], qraw[MAX_D], go[MAX_D];
        vf accq[MAX_D];
        uint64_t index[W];
        for (int64_t n = lo; n < hi; ++n) {
            const int64_t b = n / H, h = n % H;
            gather_transposed(K, b, h, Lk, D, ld, kt);
            gather_transposed(V, b, h, Lk, D, ld, vt);
            std::fill(gkt, gkt + 2 * D * ld, 0.0f);
            const int32_t thr = pb.threshold(n);
            const float rs = pb.rscale(n);
            for (int64_t i = 0; i < Lq; ++i) {
                const int64_t lim = pb.limit(i);
                const float* qrow = Q.at(b, h, i);
                for (int64_t e = 0; e < D; ++e) {
                    qraw[e] = qrow[e * qs[3]];
                    qi[e] = qraw[e] * scale;
                }
                scores_row(qi, kt, D, ld, lim, p);
                const float m = stats[2 * (n * Lq + i)], inv = stats[2 * (n * Lq + i) + 1];
                const float* grow = G.at(b, h, i);
                for (int64_t e = 0; e < D; ++e) go[e] = grow[e * gos[3]] * rs;
                const uint64_t base = static_cast<uint64_t>((n * Lq + i) * Lk);
                // p, p' (dropped out), dV^T += go p'^T, dP' = go . v, t = p' dP'
                vf rowsum = vf{};
                for (int64_t j = 0; j < lim; j += W) {
                    const vf pj = select(below(j, lim), exp_nonpositive(load(p + j) - m) * inv, vf{});
                    store(p + j, pj);
                    vf pd = pj;
                    if (thr < 32767) {
                        for (int l = 0; l < W; ++l) index[l] = base + j + l;
                        pd = select(keep(pb.seed, index, thr), pd, vf{});
                    }
                    vf dpp = vf{};
                    for (int64_t e = 0; e < D; ++e) {
                        float* gve = gvt + e * ld + j;
                        store(gve, load(gve) + go[e] * pd);
                        dpp += go[e] * load(vt + e * ld + j);
                    }
                    const vf tj = pd * dpp;
                    store(t + j, tj);
                    rowsum += tj;
                }
                // softmax backward of the masked gradient: dS = p' dP' - p rowsum(p' dP') (times scale);
                // dQ = dS K, dK^T += q^T dS
                const float rsum = hsum(rowsum);
                for (int64_t e = 0; e < D; ++e) accq[e] = vf{};
                for (int64_t j = 0; j < lim; j += W) {
                    const vf ds = (load(t + j) - load(p + j) * rsum) * scale;
                    for (int64_t e = 0; e < D; ++e) {
                        accq[e] += ds * load(kt + e * ld + j);
                        float* gke = gkt + e * ld + j;
                        store(gke, load(gke) + qraw[e] * ds);
                    }
                }
                float* gqrow = GQ.at(b, h, i);
                for (int64_t e = 0; e < D; ++e) gqrow[e * gqs[3]] = hsum(accq[e]);
            }
            for (int64_t j = 0; j < Lk; ++j) {
                float* gkrow = GK.at(b, h, j);
                float* gvrow = GV.at(b, h, j);
                for (int64_t e = 0; e < D; ++e) {
                    gkrow[e * gks[3]] = gkt[e * ld + j];
                    gvrow[e * gvs[3]] = gvt[e * ld + j];
                }
            }
        }
    });
    return 0;
}

}  // extern "C"
