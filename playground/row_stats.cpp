// What every decoding step reads from a row of logits, in one read of it: the top k logits (the argmax is
// the first), the log of the softmax's normaliser (lse), and the softmax's entropy. On a 49k-token
// vocabulary torch's argmax, topk, log_softmax and exp took ~75-110 us each on our CPU (a few hundred us a
// token, a twentieth of a step); this takes ~20 us a row (playground/row_stats.py says who calls it).
//
//   top:     the k largest logits, largest first; equal logits by index, lowest first (so the first is
//            torch.argmax's answer: the first maximal index);
//   lse:     m + log(S), S = sum_i exp(x_i - m), m the largest logit (float64 sums);
//   entropy: -sum_i p_i log p_i = log(S) - T / S, T = sum_i exp(x_i - m) (x_i - m), terms with p_i = 0 left
//            out (0 log 0 = 0, and a -inf logit would make 0 * -inf).
// exp is our own float32 polynomial (relative error < 2e-7, vectorised by the compiler), summed in float32
// over blocks of 256 and in float64 across them (float64 lanes ran 10x slower): lse and entropy come within
// ~1e-6 of torch's float64 log_softmax.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>
#include <omp.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace {

constexpr long BLOCK = 64;          // logits per test against the top list's bar
constexpr long SUM_BLOCK = 256;     // exp terms summed in float32 (16 lanes x 16), then added in float64

// exp(d) for d <= 0 (0 below -87.3: float32's smallest normal), as 2^n * p(r), r = d - n ln2 in [-ln2/2, ln2/2].
inline float exp_nonpositive(float d) {
    d = d < -87.3f ? -87.3f : d;
    float n = (d * 1.44269504f + 12582912.f) - 12582912.f;       // round to nearest (|d| log2 e < 2^22)
    float r = (d - n * 0.693359375f) + n * 2.12194440e-4f;          // ln2 in two parts: r is exact
    float p = 1.f + r * (1.f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666668e-2f + r * (8.3333340e-3f
              + r * 1.3888889e-3f)))));
    int32_t bits = (int32_t)(n + 127.f) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, 4);
    return d <= -87.3f ? 0.f : p * scale;
}

// Insert (v, i) into the top list (values descending, equal values by index ascending) of size k.
inline void insert(float* values, int64_t* indices, long& size, long k, float v, int64_t i) {
    long at = size < k ? size : k - 1;
    while (at > 0 && values[at - 1] < v) {
        if (at < k) { values[at] = values[at - 1]; indices[at] = indices[at - 1]; }
        --at;
    }
    values[at] = v;
    indices[at] = i;
    if (size < k) ++size;
}

// One thread's share of a row, x[begin, end): its top list (absolute indices) and, with sums, its largest
// logit m and s = sum exp(x - m), t = sum exp(x - m) (x - m) over the share.
struct Part {
    long size = 0;
    float m = -std::numeric_limits<float>::infinity();
    double s = 0.0, t = 0.0;
};

void top_list(const float* x, long begin, long end, long k, float* values, int64_t* indices, Part& part) {
    float bar = -std::numeric_limits<float>::infinity();     // the k-th largest so far (a new one must beat it)
    for (long start = begin; start < end; start += BLOCK) {
        long stop = start + BLOCK < end ? start + BLOCK : end;
        float best = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : best)
        for (long i = start; i < stop; ++i) best = x[i] > best ? x[i] : best;
        if (part.size == k && !(best > bar)) continue;      // nothing in this block makes the list
        for (long i = start; i < stop; ++i) {
            if (part.size < k || x[i] > bar) {
                insert(values, indices, part.size, k, x[i], i);
                if (part.size == k) bar = values[k - 1];
            }
        }
    }
}

void exp_sums(const float* x, long begin, long end, Part& part) {
    const float m = part.m;
    if (!(m > -std::numeric_limits<float>::infinity())) return;    // every logit -inf: nothing to add
    for (long start = begin; start < end; start += SUM_BLOCK) {    // float sums per block, float64 across
        long stop = start + SUM_BLOCK < end ? start + SUM_BLOCK : end;
        float bs = 0.f, bt = 0.f;
#pragma omp simd reduction(+ : bs, bt)
        for (long i = start; i < stop; ++i) {
            float d = x[i] - m;
            float e = exp_nonpositive(d);
            bs += e;
            bt += e > 0.f ? e * d : 0.f;
        }
        part.s += bs;
        part.t += bt;
    }
}

// The row's top list and sums from its parts' (in vocabulary order): lists merged largest first, equal values
// keeping the earlier part's (lower) index first; s and t moved to the row's largest logit.
void merge(const Part* parts, const float* part_values, const int64_t* part_indices, long count, long k, bool sums,
           float* values, int64_t* indices, double* lse, double* entropy) {
    long size = 0;
    for (long p = 0; p < count; ++p)
        for (long j = 0; j < parts[p].size; ++j) {
            float v = part_values[p * k + j];
            if (size < k || v > values[k - 1]) insert(values, indices, size, k, v, part_indices[p * k + j]);
        }
    if (!sums) {                                            // the top list only (an argmax, a top-k)
        *lse = *entropy = std::numeric_limits<double>::quiet_NaN();
        return;
    }
    const double m = values[0];
    double s = 0.0, t = 0.0;
    for (long p = 0; p < count; ++p) {
        if (parts[p].s <= 0.0) continue;
        double shift = parts[p].m - m, scale = std::exp(shift);    // sum e^(x - m) (x - m) = e^shift (t_p + s_p shift)
        s += scale * parts[p].s;
        t += scale * (parts[p].t + parts[p].s * shift);
    }
    *lse = m + std::log(s);
    *entropy = std::log(s) - t / s;
}

// logits (n, V) float32 -> (top values (n, k) float32, top indices (n, k) int64, lse (n,) float64, entropy (n,)
// float64); sums false: lse and entropy are NaN (not computed: an argmax or a top-k needs only the first pass).
//
// Thread t of T reads the same share of every row that coded_linear's thread t wrote (outputs split evenly by
// groups of four): a row just written by the LM head sits half in each core's cache, and reading the other
// core's half from one thread took ~120 us a row (~20 us once cached).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> row_stats(const at::Tensor& logits, int64_t k, bool sums) {
    TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.device().is_cpu(),
                "row_stats: logits must be (n, V) float32 on the CPU");
    TORCH_CHECK(k >= 1 && k <= logits.size(1), "row_stats: 1 <= k <= V");
    at::Tensor x = logits.contiguous();
    const long n = x.size(0), vocab = x.size(1), groups = vocab / 4;
    const int threads = vocab >= 4096 ? at::get_num_threads() : 1;
    at::Tensor values = at::empty({n, k}, x.options());
    at::Tensor indices = at::empty({n, k}, x.options().dtype(at::kLong));
    at::Tensor lse = at::empty({n}, x.options().dtype(at::kDouble));
    at::Tensor entropy = at::empty({n}, x.options().dtype(at::kDouble));
    const float* px = x.data_ptr<float>();
    std::vector<Part> parts(n * threads);
    std::vector<float> part_values(n * threads * k);
    std::vector<int64_t> part_indices(n * threads * k);
    #pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const long begin = t == 0 ? 0 : 4 * (groups * t / T), end = t == T - 1 ? vocab : 4 * (groups * (t + 1) / T);
        for (long r = 0; r < n; ++r) {
            const long at = r * threads + t;
            Part& part = parts[at];
            top_list(px + r * vocab, begin, end, k, &part_values[at * k], &part_indices[at * k], part);
            if (sums && part.size) {
                part.m = part_values[at * k];
                exp_sums(px + r * vocab, begin, end, part);
            }
        }
    }
    for (long r = 0; r < n; ++r)
        merge(&parts[r * threads], &part_values[r * threads * k], &part_indices[r * threads * k], threads, k, sums,
              values.data_ptr<float>() + r * k, indices.data_ptr<int64_t>() + r * k,
              lse.data_ptr<double>() + r, entropy.data_ptr<double>() + r);
    return {values, indices, lse, entropy};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(playground, m) {
    m.def("row_stats(Tensor logits, int k, bool sums) -> (Tensor, Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(playground, CPU, m) { m.impl("row_stats", row_stats); }
