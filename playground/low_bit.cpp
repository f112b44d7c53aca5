// Few-row products y (m, n) = x (m, k) @ W (n, k)^T whose weight W is held as exact low-bit codes, decoded in
// registers: every weight is read as 6 or 9 bits instead of 32 (playground/low_bit.py says when that is exact).
//
//   q4 (GGUF Q4_1): W[j, 32b + t] = scale[j, b] * q + low[j, b], q in 0..15, element t of a block in the low
//                   nibble of its byte t and element t + 16 in the high one (GGUF's order);
//   q8 (GGUF Q8_0): W[j, 32b + t] = scale[j, b] * q, q in -127..127.
//
// Laid out for one stream per core: the rows in groups of four, and per group and block of 32 inputs one
// record: q4 {float scale[4]; float low[4]; uint8 codes[4][16]} (96 bytes), q8 {float scale[4]; int8
// codes[4][32]} (144 bytes). scale * q is exact in float32 (scale is a float16 value: 11 bits, q at most 8),
// so each weight comes out bit for bit as the float32 tensor holds it, FMA or not; each output is then one
// float32 dot product over k in 16 lanes, summed at the end (another order than MKL's: the same numbers to
// float rounding). Threads: torch's OpenMP runtime and thread count, groups split evenly.
#include <cstdint>
#include <vector>
#include <omp.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int GROUP = 4;
constexpr long CHUNK = 8;        // input rows per read of the weights: 8 x 576 floats stay in L1 (16 did not: 2x slower)
constexpr long Q4_RECORD = GROUP * (4 + 4 + 16), Q8_RECORD = GROUP * (4 + 32);

#ifdef __AVX512F__
typedef __m512 acc_t;
inline acc_t zero() { return _mm512_setzero_ps(); }
inline float total(acc_t a) { return _mm512_reduce_add_ps(a); }

// Rows r0 .. r0 + R - 1 of a group (R accumulator chains), each weight decoded once for all M input rows.
template <int M, int R>
void q4_group(const float* x, const uint8_t* group, long blocks, long k, float* y, long n, long j, int r0) {
    const __m512i nibble = _mm512_set1_epi32(15);
    acc_t acc[R][M];
    for (int r = 0; r < R; ++r) for (int i = 0; i < M; ++i) acc[r][i] = zero();
    for (long b = 0; b < blocks; ++b) {
        const uint8_t* record = group + b * Q4_RECORD;
        const float* scale = (const float*)record;
        const float* low = scale + GROUP;
        for (int r = 0; r < R; ++r) {
            __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(record + 32 + (r0 + r) * 16)));
            __m512 s = _mm512_set1_ps(scale[r0 + r]), o = _mm512_set1_ps(low[r0 + r]);
            __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(q, nibble)), s, o);
            __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4)), s, o);
            for (int i = 0; i < M; ++i) {
                acc[r][i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i * k + b * 32), acc[r][i]);
                acc[r][i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i * k + b * 32 + 16), acc[r][i]);
            }
        }
    }
    for (int r = 0; r < R; ++r) for (int i = 0; i < M; ++i) y[i * n + j + r0 + r] = total(acc[r][i]);
}

template <int M, int R>
void q8_group(const float* x, const uint8_t* group, long blocks, long k, float* y, long n, long j, int r0) {
    acc_t acc[R][M];
    for (int r = 0; r < R; ++r) for (int i = 0; i < M; ++i) acc[r][i] = zero();
    for (long b = 0; b < blocks; ++b) {
        const uint8_t* record = group + b * Q8_RECORD;
        const float* scale = (const float*)record;
        for (int r = 0; r < R; ++r) {
            const int8_t* q = (const int8_t*)(record + 16 + (r0 + r) * 32);
            const __m512 s = _mm512_set1_ps(scale[r0 + r]);
            __m512 w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)q))), s);
            __m512 w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + 16)))), s);
            for (int i = 0; i < M; ++i) {
                acc[r][i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i * k + b * 32), acc[r][i]);
                acc[r][i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i * k + b * 32 + 16), acc[r][i]);
            }
        }
    }
    for (int r = 0; r < R; ++r) for (int i = 0; i < M; ++i) y[i * n + j + r0 + r] = total(acc[r][i]);
}
#else
// Portable: the same weights, plain loops (the compiler vectorises what it can).
template <int M, int R>
void q4_group(const float* x, const uint8_t* group, long blocks, long k, float* y, long n, long j, int r0) {
    for (int r = r0; r < r0 + R; ++r) for (int i = 0; i < M; ++i) {
        float sum = 0.0f;
        for (long b = 0; b < blocks; ++b) {
            const uint8_t* record = group + b * Q4_RECORD;
            const float s = ((const float*)record)[r], o = ((const float*)record)[GROUP + r];
            for (int t = 0; t < 16; ++t) {
                const uint8_t q = record[32 + r * 16 + t];
                sum += (s * (q & 15) + o) * x[i * k + b * 32 + t];
                sum += (s * (q >> 4) + o) * x[i * k + b * 32 + t + 16];
            }
        }
        y[i * n + j + r] = sum;
    }
}

template <int M, int R>
void q8_group(const float* x, const uint8_t* group, long blocks, long k, float* y, long n, long j, int r0) {
    for (int r = r0; r < r0 + R; ++r) for (int i = 0; i < M; ++i) {
        float sum = 0.0f;
        for (long b = 0; b < blocks; ++b) {
            const uint8_t* record = group + b * Q8_RECORD;
            const float s = ((const float*)record)[r];
            const int8_t* q = (const int8_t*)(record + 16 + r * 32);
            for (int t = 0; t < 32; ++t) sum += (s * q[t]) * x[i * k + b * 32 + t];
        }
        y[i * n + j + r] = sum;
    }
}
#endif

typedef void (*GroupFn)(const float*, const uint8_t*, long, long, float*, long, long, int);

template <int M, int R> struct Q4 { static constexpr GroupFn fn = q4_group<M, R>; };
template <int M, int R> struct Q8 { static constexpr GroupFn fn = q8_group<M, R>; };

// One group for M input rows: all four weight rows at once while 4 * M accumulators fit the registers,
// else two at a time (the group's records are then re-read from the core's cache, not from memory).
template <template <int, int> class F, int M>
void group_rows(const float* x, const uint8_t* group, long blocks, long k, float* y, long n, long j) {
    constexpr int R = M <= 4 ? 4 : 2;
    for (int r0 = 0; r0 < GROUP; r0 += R) F<M, R>::fn(x, group, blocks, k, y, n, j, r0);
}

template <template <int, int> class F>
void product(const float* x, const uint8_t* data, long record, float* y, long m, long n, long k, int threads) {
    typedef void (*RowsFn)(const float*, const uint8_t*, long, long, float*, long, long);
    static constexpr RowsFn by_rows[CHUNK] = {
        group_rows<F, 1>, group_rows<F, 2>, group_rows<F, 3>, group_rows<F, 4>,
        group_rows<F, 5>, group_rows<F, 6>, group_rows<F, 7>, group_rows<F, 8>};
    const long blocks = k / 32, groups = n / GROUP;
    #pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const long g0 = groups * t / T, g1 = groups * (t + 1) / T;
        for (long i = 0; i < m; i += CHUNK) {       // up to CHUNK input rows per read of the weights
            const long rows = m - i < CHUNK ? m - i : CHUNK;
            for (long g = g0; g < g1; ++g)
                by_rows[rows - 1](x + i * k, data + g * blocks * record, blocks, k, y + i * n, n, g * GROUP);
        }
    }
}

}  // namespace

// playground::coded_linear(x (..., k) float32, data (n / 4, k / 32, record) uint8, bits 4 | 8) -> (..., n): a
// torch operator, so a compiled graph calls it through the dispatcher alone (~2 us; as a Python operator
// each of a step's 121 products paid ~13 us more).
at::Tensor coded_linear(const at::Tensor& x, const at::Tensor& data, int64_t bits) {
    TORCH_CHECK(x.scalar_type() == at::kFloat && data.scalar_type() == at::kByte && data.is_contiguous()
                && (bits == 4 || bits == 8), "coded_linear: float32 input and uint8 codes of 4 or 8 bits");
    const at::Tensor input = x.contiguous();
    const long k = input.size(-1), n = data.size(0) * GROUP, m = input.numel() / k;
    TORCH_CHECK(data.size(1) * 32 == k && data.size(2) == (bits == 4 ? Q4_RECORD : Q8_RECORD),
                "coded_linear: codes of another shape than the input's");
    std::vector<int64_t> sizes = input.sizes().vec();
    sizes.back() = n;
    at::Tensor y = at::empty(sizes, input.options());
    const int threads = at::get_num_threads();
    if (bits == 4)
        product<Q4>(input.data_ptr<float>(), data.data_ptr<uint8_t>(), Q4_RECORD, y.data_ptr<float>(), m, n, k, threads);
    else
        product<Q8>(input.data_ptr<float>(), data.data_ptr<uint8_t>(), Q8_RECORD, y.data_ptr<float>(), m, n, k, threads);
    return y;
}

TORCH_LIBRARY_FRAGMENT(playground, m) { m.def("coded_linear(Tensor x, Tensor data, int bits) -> Tensor"); }
TORCH_LIBRARY_IMPL(playground, CPU, m) { m.impl("coded_linear", coded_linear); }
