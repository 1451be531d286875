// CPU kernels for decoding, where a step touches every weight and state once for a few rows.
// Each has a PyTorch reference twin that the tests compare it with.
//
// mamba2_step: everything between in_proj and out_proj of a Mamba-2 layer in one call. Eager PyTorch runs about twenty small ops per layer and step, and reads and writes the
// (b, h, p, n) SSM state several times (decay, rank-1 update, readout). Here each state entry is
// read once and written once, with the readout accumulated on the way. The state may be stored in
// fp32 or bf16 (half the bytes); either way it is updated and read out in fp32 and rounded once on
// the store, as mamba_ssm's selective_state_update does. Twin: mamba2_step_ref.
//
// linear_rows: y = x W^T + b for 1-8 rows (1-4 without AVX-512). At these batch sizes MKL and
// oneDNN stream weights no faster than this loop, and on some CPUs several times slower
// (benchmarks/README.md). Twin: the fp32 matmul on the same weights. With int8 or int4 weights
// (any number of rows; quantized_dot.h) the twin is quantize.quantized_linear.
//
// block_step: a whole Mamba-2 or SiMBA block (RMSNorm, in_proj, mamba2_step, out_proj, residual;
// then any cross-attention to the text and any MLP, each after an RMSNorm, each with its residual)
// in one call, so that no small op runs between the weight reads. Twin: Block._step_modules.
//
// mamba3_step and mamba3_block_step: the same two for Mamba-3 (the mamba3 and simba3 kinds), SISO
// and MIMO. Twins: mamba3_step_ref (ops/mamba3_step.py) and Block._step_modules.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

static inline float silu(float v) { return v / (1.f + std::exp(-v)); }
static inline float softplus(float v) { return v > 20.f ? v : std::log1p(std::exp(v)); }
static inline float gelu(float v) { return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f)); }

// The activations over whole arrays: silu after the convolution and in the gated norm, gelu in the
// MLP. Scalar, their libm calls took about 1.3 ms of a 30 ms simba-300m step (ten thousand exp and
// four thousand erf a block; timed ad hoc on the 2-core Xeon VM). With AVX-512 they go 16 at a
// time through exp16 and erf16 below, as close to the exact functions as torch's own (tested).
#if defined(__AVX512F__)
#include <immintrin.h>
// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts, so r keeps fp32 precision);
// exp(r) = 1 + r + r^2 P(r) with Cephes' expf polynomial (relative error about 1e-7). scalef
// applies 2^n, going to zero and to infinity as exp does.
static inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.f)), _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}
// erf(x) = sign(x) (1 - t P(t) exp(-x^2)), t = 1 / (1 + 0.3275911 |x|): Abramowitz and Stegun
// 7.1.26, absolute error below 1.5e-7 (gelu multiplies it by x / 2).
static inline __m512 erf16(__m512 x) {
  const __m512 a = _mm512_abs_ps(x), one = _mm512_set1_ps(1.f);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), one));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  const __m512 y = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a)), one);
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}
static inline __m512 silu16(__m512 v) {
  return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
}
static inline __m512 gelu16(__m512 v) {
  const __m512 e = erf16(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.f), e));
}
// sin and cos of the same x: x = j pi/2 + r, |r| <= pi/4 (pi/2 in two parts, so r keeps fp32
// precision for the phases Mamba-3 keeps in [0, 2 pi)), then Cephes' sinf and cosf polynomials in r,
// swapped and negated by the quadrant j mod 4. Absolute error below 1e-7 on [0, 2 pi) (the same
// arithmetic in numpy against fp64 on two million points; fp32 sin is within 6e-8 there), and
// test_fused_mamba3.py holds this against torch's sin and cos at every quadrant boundary.
static inline void sincos16(__m512 x, __m512* sin_x, __m512* cos_x) {
  const __m512 j = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.636619772367581343f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(j, _mm512_set1_ps(1.57079637050628662f), x);
  r = _mm512_fnmadd_ps(j, _mm512_set1_ps(-4.37113900018624283e-8f), r);
  const __m512 z = _mm512_mul_ps(r, r);
  __m512 ps = _mm512_fmadd_ps(z, _mm512_set1_ps(-1.9515295891e-4f), _mm512_set1_ps(8.3321608736e-3f));
  ps = _mm512_fmadd_ps(ps, z, _mm512_set1_ps(-1.6666654611e-1f));
  const __m512 s = _mm512_fmadd_ps(_mm512_mul_ps(ps, z), r, r);
  __m512 pc = _mm512_fmadd_ps(z, _mm512_set1_ps(2.443315711809948e-5f), _mm512_set1_ps(-1.388731625493765e-3f));
  pc = _mm512_fmadd_ps(pc, z, _mm512_set1_ps(4.166664568298827e-2f));
  const __m512 c = _mm512_fmadd_ps(_mm512_mul_ps(pc, z), z, _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), z, _mm512_set1_ps(1.f)));
  const __m512i q = _mm512_cvtps_epi32(j);
  const __mmask16 odd = _mm512_test_epi32_mask(q, _mm512_set1_epi32(1));
  const __mmask16 sin_neg = _mm512_test_epi32_mask(q, _mm512_set1_epi32(2));
  const __mmask16 cos_neg = _mm512_test_epi32_mask(_mm512_add_epi32(q, _mm512_set1_epi32(1)), _mm512_set1_epi32(2));
  const __m512 sw = _mm512_mask_blend_ps(odd, s, c), cw = _mm512_mask_blend_ps(odd, c, s);
  *sin_x = _mm512_mask_sub_ps(sw, sin_neg, _mm512_setzero_ps(), sw);
  *cos_x = _mm512_mask_sub_ps(cw, cos_neg, _mm512_setzero_ps(), cw);
}
// The lanes of a 16-wide vector that `left` remaining values fill: all 16, or the first `left`.
static inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}
static void silu_inplace(float* v, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) _mm512_mask_storeu_ps(v + i, tail_mask(n - i), silu16(_mm512_maskz_loadu_ps(tail_mask(n - i), v + i)));
}
static void gelu_inplace(float* v, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) _mm512_mask_storeu_ps(v + i, tail_mask(n - i), gelu16(_mm512_maskz_loadu_ps(tail_mask(n - i), v + i)));
}
static void sin_cos(const float* x, float* sin_x, float* cos_x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    __m512 s, c;
    sincos16(_mm512_maskz_loadu_ps(m, x + i), &s, &c);
    _mm512_mask_storeu_ps(sin_x + i, m, s);
    _mm512_mask_storeu_ps(cos_x + i, m, c);
  }
}
// v *= silu(z); returns sum(v^2) of the result.
static float mul_silu(float* v, const float* z, int64_t n) {
  __m512 ss = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, v + i), silu16(_mm512_maskz_loadu_ps(m, z + i)));
    _mm512_mask_storeu_ps(v + i, m, r);
    ss = _mm512_fmadd_ps(r, r, ss);
  }
  return _mm512_reduce_add_ps(ss);
}
#else
static void silu_inplace(float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] = silu(v[i]);
}
static void gelu_inplace(float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] = gelu(v[i]);
}
static void sin_cos(const float* x, float* sin_x, float* cos_x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    sin_x[i] = std::sin(x[i]);
    cos_x[i] = std::cos(x[i]);
  }
}
static float mul_silu(float* v, const float* z, int64_t n) {
  float ss = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    v[i] *= silu(z[i]);
    ss += v[i] * v[i];
  }
  return ss;
}
#endif

// bf16 <-> fp32 as bit operations the compiler vectorises: widening is a 16-bit shift, narrowing
// rounds to nearest even (NaN stays NaN), as torch's own conversion does.
static inline float widen_bf16(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(float));
  return f;
}
static inline uint16_t narrow_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(float));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}
static inline float load_fp32(const float* s, int64_t n) { return s[n]; }
static inline float load_fp32(const uint16_t* s, int64_t n) { return widen_bf16(s[n]); }
static inline void store_state(float* s, int64_t n, float v) { s[n] = v; }
static inline void store_state(uint16_t* s, int64_t n, float v) { s[n] = narrow_bf16(v); }

// What a state row takes at entry n besides its decayed self: the step's input to the state.
// Mamba-2: one rank-1 term, input * B[n].
struct OneInput {
  const float* B;
  float input;
  float at(int64_t n) const { return input * B[n]; }
#if defined(__AVX512F__)
  __m512 at16(int64_t n, __mmask16 m) const { return _mm512_mul_ps(_mm512_set1_ps(input), _mm512_maskz_loadu_ps(m, B + n)); }
  __m512 at16(int64_t n) const { return _mm512_mul_ps(_mm512_set1_ps(input), _mm512_loadu_ps(B + n)); }
#endif
};

// Mamba-3's trapezoidal rule: the previous input's second share and this input's first,
// prev * k_prev[n] + now * k[n].
struct TwoInputs {
  const float *k_prev, *k;
  float prev, now;
  float at(int64_t n) const { return prev * k_prev[n] + now * k[n]; }
#if defined(__AVX512F__)
  __m512 at16(int64_t n, __mmask16 m) const {
    return _mm512_fmadd_ps(_mm512_set1_ps(prev), _mm512_maskz_loadu_ps(m, k_prev + n),
                           _mm512_mul_ps(_mm512_set1_ps(now), _mm512_maskz_loadu_ps(m, k + n)));
  }
  __m512 at16(int64_t n) const {
    return _mm512_fmadd_ps(_mm512_set1_ps(prev), _mm512_loadu_ps(k_prev + n),
                           _mm512_mul_ps(_mm512_set1_ps(now), _mm512_loadu_ps(k + n)));
  }
#endif
};

// One row s (n,) of the state: s = s * decay + in, stored; returns sum(s * C).
template <typename T, typename In>
static inline float update_row(T* s, const In& in, const float* Cv, float decay, int64_t nstate) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t n = 0; n < nstate; ++n) {
    const float v = load_fp32(s, n) * decay + in.at(n);
    store_state(s, n, v);
    acc += v * Cv[n];
  }
  return acc;
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
// The rows in AVX-512. Each prefetches the state STATE_AHEAD entries ahead (8 rows of simba-300m's
// 512): the rows of a thread's heads are contiguous, so that is where it reads next. On the 2-core
// Xeon VM that took simba-300m's state update at batch 2 from 27 to 34 GB/s (reads and writes) in
// fp32; the bf16 row, after the rounding below, from 41 to 46 GB/s against 2 KB ahead (which had
// taken it from 3.7 to 2.1 ms a layer at batch 16).
#define STATE_AHEAD 4096
template <typename In>
inline float update_row(float* s, const In& in, const float* Cv, float decay, int64_t nstate) {
  const __m512 d = _mm512_set1_ps(decay);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t n = 0; n < nstate; n += 16) {
    const __mmask16 m = tail_mask(nstate - n);
    _mm_prefetch(reinterpret_cast<const char*>(s + n + STATE_AHEAD), _MM_HINT_T0);
    const __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, s + n), d, in.at16(n, m));
    _mm512_mask_storeu_ps(s + n, m, v);
    acc = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, Cv + n), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// 16 entries of a bf16 row at n (m: which of them): updated, rounded and stored; returns v * C.
template <typename In>
static inline __m512 update_16(uint16_t* s, const In& in, const float* Cv, __m512 d, int64_t n, __mmask16 m) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF), qnan = _mm512_set1_epi32(0x7FC0);
  const __m512i old = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + n)), 16);
  const __m512 v = _mm512_fmadd_ps(_mm512_castsi512_ps(old), d, in.at16(n, m));
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, bias)), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), qnan);
  _mm256_mask_storeu_epi16(s + n, m, _mm512_cvtepi32_epi16(rounded));
  return _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, Cv + n));
}

template <typename In>
inline float update_row(uint16_t* s, const In& in, const float* Cv, float decay, int64_t nstate) {
  const __m512 d = _mm512_set1_ps(decay);
  __m512 acc = _mm512_setzero_ps();
  int64_t n = 0;
#ifdef __AVX512BF16__
  // 32 entries a step, rounded by one instruction (VCVTNE2PS2BF16: to nearest even, as update_16
  // does, but a denormal becomes a zero of its sign and a NaN keeps its payload). update_16's
  // bit-by-bit rounding left the loop bound by its arithmetic, not by memory: 30 GB/s (reads and
  // writes) with the state in L2 on the 2-core Xeon VM, no faster than from memory; 45 GB/s this way.
  __m512 acc_odd = _mm512_setzero_ps();
  for (; n + 32 <= nstate; n += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(s + n + STATE_AHEAD), _MM_HINT_T0);
    const __m512i line = _mm512_loadu_si512(s + n);
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(line)), 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(line, 1)), 16));
    const __m512 v_lo = _mm512_fmadd_ps(lo, d, in.at16(n));
    const __m512 v_hi = _mm512_fmadd_ps(hi, d, in.at16(n + 16));
    acc = _mm512_fmadd_ps(v_lo, _mm512_loadu_ps(Cv + n), acc);
    acc_odd = _mm512_fmadd_ps(v_hi, _mm512_loadu_ps(Cv + n + 16), acc_odd);
    _mm512_storeu_si512(s + n, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v_hi, v_lo)));
  }
  acc = _mm512_add_ps(acc, acc_odd);
#endif
  for (; n < nstate; n += 16) {
    const __mmask16 m = tail_mask(nstate - n);
    _mm_prefetch(reinterpret_cast<const char*>(s + n + STATE_AHEAD), _MM_HINT_T0);
    acc = _mm512_add_ps(acc, update_16(s, in, Cv, d, n, m));
  }
  return _mm512_reduce_add_ps(acc);
}
#endif

// Argument checks. The loops below index raw pointers with sizes read off their tensors, so every
// size a loop uses is checked against every tensor it indexes, with the dtype, device and layout of
// each: a mismatch is a RuntimeError that names the argument, not a read or write out of bounds (a
// conv_state of batch 1 beside an SSM state of batch 2 once ended in "double free or corruption").
// They run once per call, before anything is written, so a refused call leaves the state as it was.
enum class Dtype { fp32, fp32_or_bf16, boolean };

static std::string shape_text(c10::IntArrayRef shape) {  // (2, 104, *): -1 stands for any size
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

// `t` is a `dtype` CPU tensor of `shape` (-1: any size), contiguous unless its loop reads the strides.
static void expect(const char* fn, const char* name, const torch::Tensor& t, c10::IntArrayRef shape, Dtype dtype,
                   bool contiguous = true) {
  const auto type = t.scalar_type();
  const bool dtype_ok = dtype == Dtype::boolean ? type == torch::kBool
                                                : type == torch::kFloat32 ||
                                                      (dtype == Dtype::fp32_or_bf16 && type == torch::kBFloat16);
  bool shape_ok = t.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; shape_ok && i < shape.size(); ++i) shape_ok = shape[i] < 0 || t.size(i) == shape[i];
  TORCH_CHECK(dtype_ok && shape_ok && t.device().is_cpu() && (!contiguous || t.is_contiguous()), fn, ": ", name,
              " must be ", contiguous ? "a contiguous " : dtype == Dtype::boolean ? "a " : "an ",
              dtype == Dtype::boolean ? "bool" : dtype == Dtype::fp32 ? "fp32" : "fp32 or bf16", " CPU tensor of shape ",
              shape_text(shape), ", not ", type, " ", shape_text(t.sizes()), t.is_contiguous() ? "" : " strided",
              t.device().is_cpu() ? "" : " on " + t.device().str());
}

static bool is_packed(const torch::Tensor& weight) {
  return weight.scalar_type() == torch::kInt8 || weight.scalar_type() == torch::kUInt8;
}

// A packed weight (ops/quantize.py): int8 (out, in + 4); int4 (out, groups, 2 + g / 2), g 32, 64 or
// 128, its groups covering `in` padded to a multiple of max(64, g).
static void check_packed(const char* fn, const char* name, const torch::Tensor& weight, int64_t out, int64_t in) {
  const bool int8 = weight.scalar_type() == torch::kInt8;
  const int64_t group = int8 || weight.dim() != 3 ? 0 : 2 * (weight.size(2) - 2);
  const int64_t unit = std::max<int64_t>(64, group), padded = (in + unit - 1) / unit * unit;
  const bool layout = int8 ? weight.dim() == 2 && weight.size(1) == in + 4
                           : weight.dim() == 3 && (group == 32 || group == 64 || group == 128) &&
                                 weight.size(1) * group == padded;
  const std::string shape = int8 ? shape_text({out, in + 4}) : "(" + std::string(out < 0 ? "*" : std::to_string(out)) +
                                                                  ", in / g padded, 2 + g / 2) with g 32, 64 or 128";
  TORCH_CHECK(layout && (out < 0 || weight.size(0) == out) && weight.device().is_cpu() && weight.is_contiguous(), fn,
              ": ", name, " must be a contiguous CPU ", int8 ? "int8" : "int4 (uint8)", " weight of shape ", shape,
              " for ", in, " inputs, not ", shape_text(weight.sizes()), weight.is_contiguous() ? "" : " strided",
              weight.device().is_cpu() ? "" : " on " + weight.device().str());
}

// A weight (out, in) as linear_into reads it, fp32, bf16 or packed; out -1: any.
static void check_weight(const char* fn, const char* name, const torch::Tensor& weight, int64_t out, int64_t in) {
  if (is_packed(weight)) return check_packed(fn, name, weight, out, in);
  expect(fn, name, weight, {out, in}, Dtype::fp32_or_bf16);
}

// A bias of `out` values in any strides (add_bias converts what it cannot read in place), or none.
static void check_bias(const char* fn, const char* name, const c10::optional<torch::Tensor>& bias, int64_t out) {
  if (bias.has_value()) expect(fn, name, *bias, {out}, Dtype::fp32_or_bf16, false);
}

// The sizes of a Mamba-2 step, from the SSM state (B, H, P, N) and ngroups.
struct Mamba2Dims {
  int64_t batch, heads, hdim, nstate, ngroups, conv_dim, width, d_inner, row;
};

// `rows` inputs (`input`: zxbcdt, or block_step's x) of `row` values each (`row_name`: zxbcdt's width,
// or in_proj's outputs) against the layer's state and parameters; `norm_name` is what the caller
// calls the gated norm's weight.
static Mamba2Dims check_mamba2(const char* fn, const char* input, const char* row_name, int64_t rows, int64_t row,
                               const torch::Tensor& conv_state, const torch::Tensor& conv_weight,
                               const torch::Tensor& conv_bias, const torch::Tensor& dt_bias, const torch::Tensor& A_log,
                               const torch::Tensor& D, const char* norm_name, const torch::Tensor& norm_weight,
                               const torch::Tensor& ssm_state, int64_t ngroups) {
  TORCH_CHECK(conv_state.dim() == 3 && ssm_state.dim() == 4 && conv_state.size(0) == rows && ssm_state.size(0) == rows,
              fn, ": ", input, " has ", rows, " rows, conv_state (batch, channels, width) is ",
              shape_text(conv_state.sizes()), " and ssm_state (batch, heads, head_dim, d_state) ",
              shape_text(ssm_state.sizes()), ": the state needs one input row per batch row");
  expect(fn, "ssm_state", ssm_state, {rows, -1, -1, -1}, Dtype::fp32_or_bf16);
  const int64_t heads = ssm_state.size(1), hdim = ssm_state.size(2), nstate = ssm_state.size(3);
  TORCH_CHECK(ngroups >= 1 && heads % ngroups == 0, fn, ": ngroups (", ngroups, ") must divide the ", heads,
              " heads of ssm_state");
  const int64_t d_inner = heads * hdim, conv_dim = d_inner + 2 * ngroups * nstate;
  expect(fn, "conv_state", conv_state, {rows, conv_dim, -1}, Dtype::fp32);
  const int64_t width = conv_state.size(2);
  TORCH_CHECK(width >= 1, fn, ": conv_state must hold a window of at least one input");
  if (conv_weight.dim() == 2) {
    expect(fn, "conv_weight", conv_weight, {conv_dim, width}, Dtype::fp32);
  } else {  // as nn.Conv1d stores it
    expect(fn, "conv_weight", conv_weight, {conv_dim, 1, width}, Dtype::fp32);
  }
  expect(fn, "conv_bias", conv_bias, {conv_dim}, Dtype::fp32);
  expect(fn, "dt_bias", dt_bias, {heads}, Dtype::fp32);
  expect(fn, "A_log", A_log, {heads}, Dtype::fp32);
  expect(fn, "D", D, {heads}, Dtype::fp32);
  expect(fn, norm_name, norm_weight, {d_inner}, Dtype::fp32);
  TORCH_CHECK(row == d_inner + conv_dim + heads, fn, ": ", row_name, " (", row, ") must be z ", d_inner, " + xBC ",
              conv_dim, " + dt ", heads, " = ", d_inner + conv_dim + heads, " for this state");
  return {rows, heads, hdim, nstate, ngroups, conv_dim, width, d_inner, row};
}

// Step 2 of mamba2_step for a state stored as T (float, or uint16_t holding bf16).
struct StateStep {
  const float *in, *xbc, *dtb, *alog, *skip;
  float* Y;
  int64_t heads, hdim, nstate, heads_per_group, ngroups, conv_dim, row, d_inner;

  template <typename T>
  void run(T* S, int64_t batch) const {
    at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / heads, h = bh % heads, g = h / heads_per_group;
        const float dt = softplus(in[b * row + d_inner + conv_dim + h] + dtb[h]);
        const float decay = std::exp(-dt * std::exp(alog[h]));
        const float* x = xbc + b * conv_dim + h * hdim;
        const float* Bv = xbc + b * conv_dim + d_inner + g * nstate;
        const float* Cv = xbc + b * conv_dim + d_inner + ngroups * nstate + g * nstate;
        for (int64_t p = 0; p < hdim; ++p) {
          const float acc = update_row(S + (bh * hdim + p) * nstate, OneInput{Bv, dt * x[p]}, Cv, decay, nstate);
          Y[b * d_inner + h * hdim + p] = acc + skip[h] * x[p];
        }
      }
    });
  }
};

// mamba2_step on arguments check_mamba2 has passed (and zxbcdt, contiguous fp32, with them).
static torch::Tensor mamba2_checked(const Mamba2Dims& dims, const torch::Tensor& zxbcdt, const torch::Tensor& conv_state,
                                    const torch::Tensor& conv_weight, const torch::Tensor& conv_bias,
                                    const torch::Tensor& dt_bias, const torch::Tensor& A_log, const torch::Tensor& D,
                                    const torch::Tensor& norm_weight, const torch::Tensor& ssm_state, double eps) {
  const int64_t batch = dims.batch, heads = dims.heads, hdim = dims.hdim, nstate = dims.nstate;
  const int64_t width = dims.width, conv_dim = dims.conv_dim, d_inner = dims.d_inner, row = dims.row;
  const int64_t ngroups = dims.ngroups, heads_per_group = heads / ngroups;

  auto conv_out = torch::empty({batch, conv_dim}, zxbcdt.options());
  auto y = torch::empty({batch, d_inner}, zxbcdt.options());
  const float* in = zxbcdt.data_ptr<float>();
  float* window = conv_state.data_ptr<float>();
  const float *cw = conv_weight.data_ptr<float>(), *cb = conv_bias.data_ptr<float>();
  const float *dtb = dt_bias.data_ptr<float>(), *alog = A_log.data_ptr<float>(), *skip = D.data_ptr<float>();
  const float* nw = norm_weight.data_ptr<float>();
  float *xbc = conv_out.data_ptr<float>(), *Y = y.data_ptr<float>();

  // 1. The convolution window takes the new input; output = silu(conv + bias).
  at::parallel_for(0, batch * conv_dim, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / conv_dim, c = i % conv_dim;
      float* w = window + i * width;
      float acc = cb[c];
      for (int64_t k = 0; k + 1 < width; ++k) {
        w[k] = w[k + 1];
        acc += cw[c * width + k] * w[k];
      }
      w[width - 1] = in[b * row + d_inner + c];
      acc += cw[c * width + width - 1] * w[width - 1];
      xbc[i] = acc;
    }
    silu_inplace(xbc + begin, end - begin);
  });

  // 2. The state update and readout, one pass over the state.
  const StateStep step{in, xbc, dtb, alog, skip, Y, heads, hdim, nstate, heads_per_group, ngroups, conv_dim, row, d_inner};
  if (ssm_state.scalar_type() == torch::kFloat32) {
    step.run(ssm_state.data_ptr<float>(), batch);
  } else {
    step.run(reinterpret_cast<uint16_t*>(ssm_state.data_ptr<at::BFloat16>()), batch);
  }

  // 3. Gated RMSNorm per group: rmsnorm(y * silu(z)) * weight.
  const int64_t group_size = d_inner / ngroups;
  at::parallel_for(0, batch * ngroups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / ngroups, off = (bg % ngroups) * group_size;
      float* v = Y + b * d_inner + off;
      const float* z = in + b * row + off;
      const float ss = mul_silu(v, z, group_size);
      const float scale = 1.f / std::sqrt(ss / group_size + static_cast<float>(eps));
      for (int64_t i = 0; i < group_size; ++i) v[i] *= scale * nw[off + i];
    }
  });
  return y;
}

torch::Tensor mamba2_step(torch::Tensor zxbcdt, torch::Tensor conv_state, torch::Tensor conv_weight,
                          torch::Tensor conv_bias, torch::Tensor dt_bias, torch::Tensor A_log, torch::Tensor D,
                          torch::Tensor norm_weight, torch::Tensor ssm_state, int64_t ngroups, double eps) {
  expect("mamba2_step", "zxbcdt", zxbcdt, {-1, -1}, Dtype::fp32);
  const auto dims = check_mamba2("mamba2_step", "zxbcdt", "zxbcdt's width", zxbcdt.size(0), zxbcdt.size(1), conv_state,
                                 conv_weight, conv_bias, dt_bias, A_log, D, "norm_weight", norm_weight, ssm_state, ngroups);
  return mamba2_checked(dims, zxbcdt, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, ssm_state, eps);
}

// mamba3_step: everything between in_proj and out_proj of a Mamba-3 layer (backbones/mamba3.py) in
// one call, one pass over the SSM state: per row and head, the in_proj row split and activated (dt,
// A dt, trap, the phase's turn), B and C normed, biased and turned by the updated phase into this
// position's k and q, the state decayed and fed the previous position's k and v (their second,
// (1 - trap) dt share) and this one's (trap dt), read out by q, the D skip, and the gate (with the
// per-head norm where the layer has one), over the R ranks of a MIMO layer. The state is stored in
// fp32 or bf16 and updated in fp32, rounded once on the store; the phase, k and v stay fp32, as
// Mamba3.empty_state makes them. Twin: ops/mamba3_step.py, mamba3_step_ref.

// The sizes of a Mamba-3 step, from its state: ssm (B, H, P, N), k (B, R, H, N), angle (B, H, S).
struct Mamba3Dims {
  int64_t batch, heads, hdim, nstate, ranks, angles, ngroups, d_inner, bc, row;
  bool mimo, head_norm;
};

// `rows` inputs (`input`: zxbc, or the block kernel's x) of `row` values each (`row_name`) against
// the layer's state and parameters. mimo_x, mimo_z and mimo_o come together (a MIMO layer) or not at
// all; norm_weight is there when the layer norms each head's output before the gate.
static Mamba3Dims check_mamba3(const char* fn, const char* input, const char* row_name, int64_t rows, int64_t row,
                               const torch::Tensor& angle_state, const torch::Tensor& ssm_state,
                               const torch::Tensor& k_state, const torch::Tensor& v_state, int64_t ngroups,
                               const torch::Tensor& dt_bias, const torch::Tensor& B_norm, const torch::Tensor& C_norm,
                               const torch::Tensor& B_bias, const torch::Tensor& C_bias, const torch::Tensor& D,
                               const c10::optional<torch::Tensor>& mimo_x, const c10::optional<torch::Tensor>& mimo_z,
                               const c10::optional<torch::Tensor>& mimo_o,
                               const c10::optional<torch::Tensor>& norm_weight) {
  TORCH_CHECK(angle_state.dim() == 3 && ssm_state.dim() == 4 && k_state.dim() == 4 && v_state.dim() == 3 &&
                  angle_state.size(0) == rows && ssm_state.size(0) == rows && k_state.size(0) == rows &&
                  v_state.size(0) == rows,
              fn, ": ", input, " has ", rows, " rows, angle_state (batch, heads, angles) is ",
              shape_text(angle_state.sizes()), ", ssm_state (batch, heads, head_dim, d_state) ",
              shape_text(ssm_state.sizes()), ", k_state (batch, ranks, heads, d_state) ", shape_text(k_state.sizes()),
              " and v_state (batch, heads, head_dim) ", shape_text(v_state.sizes()),
              ": the state needs one input row per batch row");
  expect(fn, "ssm_state", ssm_state, {rows, -1, -1, -1}, Dtype::fp32_or_bf16);
  const int64_t heads = ssm_state.size(1), hdim = ssm_state.size(2), nstate = ssm_state.size(3);
  TORCH_CHECK(nstate >= 2 && nstate % 2 == 0, fn, ": ssm_state's d_state (", nstate, ") must be even");
  expect(fn, "k_state", k_state, {rows, -1, heads, nstate}, Dtype::fp32);
  const int64_t ranks = k_state.size(1);
  expect(fn, "v_state", v_state, {rows, heads, hdim}, Dtype::fp32);
  expect(fn, "angle_state", angle_state, {rows, heads, -1}, Dtype::fp32);
  const int64_t angles = angle_state.size(2);
  TORCH_CHECK(angles >= 1 && 2 * angles <= nstate, fn, ": angle_state's ", angles,
              " angles must turn between 1 and d_state / 2 = ", nstate / 2, " pairs");
  TORCH_CHECK(ngroups >= 1 && heads % ngroups == 0, fn, ": ngroups (", ngroups, ") must divide the ", heads,
              " heads of ssm_state");
  const bool mimo = mimo_x.has_value();
  TORCH_CHECK(mimo == mimo_z.has_value() && mimo == mimo_o.has_value(), fn,
              ": a MIMO layer needs all of mimo_x, mimo_z and mimo_o, a SISO layer none");
  TORCH_CHECK(ranks >= 1 && (mimo || ranks == 1), fn, ": k_state has ", ranks,
              " ranks; a SISO layer (no mimo_x) has 1");
  if (mimo) {
    expect(fn, "mimo_x", *mimo_x, {heads, ranks, hdim}, Dtype::fp32);
    expect(fn, "mimo_z", *mimo_z, {heads, ranks, hdim}, Dtype::fp32);
    expect(fn, "mimo_o", *mimo_o, {heads, ranks, hdim}, Dtype::fp32);
  }
  expect(fn, "dt_bias", dt_bias, {heads}, Dtype::fp32);
  expect(fn, "B_norm", B_norm, {nstate}, Dtype::fp32);
  expect(fn, "C_norm", C_norm, {nstate}, Dtype::fp32);
  expect(fn, "B_bias", B_bias, {heads, ranks, nstate}, Dtype::fp32);
  expect(fn, "C_bias", C_bias, {heads, ranks, nstate}, Dtype::fp32);
  expect(fn, "D", D, {heads}, Dtype::fp32);
  const int64_t d_inner = heads * hdim, bc = ranks * ngroups * nstate;
  if (norm_weight.has_value()) expect(fn, "norm_weight", *norm_weight, {d_inner}, Dtype::fp32);
  const int64_t width = 2 * d_inner + 2 * bc + 3 * heads + angles;
  TORCH_CHECK(row == width, fn, ": ", row_name, " (", row, ") must be z ", d_inner, " + x ", d_inner, " + B ", bc,
              " + C ", bc, " + dt, A and trap 3 x ", heads, " + angles ", angles, " = ", width, " for this state");
  return {rows, heads, hdim, nstate, ranks, angles, ngroups, d_inner, bc, row, mimo, norm_weight.has_value()};
}

static inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

// torch.remainder(v, 2 pi) in fp32: the phase kept in [0, 2 pi), as Mamba3.step keeps it. A phase
// already there is its own remainder (fmod would return it unchanged), so only one past the ends
// pays for the division.
static inline float wrap_phase(float v) {
  const float two_pi = static_cast<float>(2 * M_PI);
  if (v >= 0.f && v < two_pi) return v;
  float mod = std::fmod(v, two_pi);
  if (mod < 0.f) mod += two_pi;  // torch's rule for a positive divisor: the sign of the divisor
  return mod;
}

// out (n,) = rmsnorm(bc) * weight: B or C of one rank and group, shared by the group's heads.
static void rms_scaled(const float* bc, const float* weight, double eps, float* out, int64_t nstate) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t n = 0; n < nstate; ++n) ss += bc[n] * bc[n];
  const float scale = 1.f / std::sqrt(ss / nstate + static_cast<float>(eps));
#pragma omp simd
  for (int64_t n = 0; n < nstate; ++n) out[n] = bc[n] * scale * weight[n];
}

// out (n,) = normed + bias, then turned by the phase (sin_t, cos_t: s angles): pairs (2i, 2i + 1)
// for SISO, (i, i + n/2) for MIMO, as mamba3.py's `rotate`.
static void bias_and_turn(const float* normed, const float* bias, const float* cos_t, const float* sin_t,
                          int64_t angles, bool pairwise, float* out, int64_t nstate) {
#pragma omp simd
  for (int64_t n = 0; n < nstate; ++n) out[n] = normed[n] + bias[n];
  const int64_t stride = pairwise ? 2 : 1, other = pairwise ? 1 : nstate / 2;
#pragma omp simd
  for (int64_t i = 0; i < angles; ++i) {
    float *a = out + i * stride, *b = a + other;
    const float t0 = *a, t1 = *b;
    *a = t0 * cos_t[i] - t1 * sin_t[i];
    *b = t0 * sin_t[i] + t1 * cos_t[i];
  }
}

// One row s (n,) of a MIMO state, through `buf` (n,): s = s * decay + sum_r (prev_r k_prev_r + now_r k_r),
// stored once; y_r = s . q_r for each of the `ranks` ranks (k_prev, k, q: (ranks, n)).
template <typename T>
static void update_row_ranks(T* s, const float* k_prev, const float* k, const float* q, const float* prev,
                             const float* now, float decay, int64_t ranks, int64_t nstate, float* buf, float* y) {
  for (int64_t n = 0; n < nstate; ++n) buf[n] = load_fp32(s, n) * decay;
  for (int64_t r = 0; r < ranks; ++r) {
    const float *kp = k_prev + r * nstate, *kn = k + r * nstate;
    const float a = prev[r], b = now[r];
#pragma omp simd
    for (int64_t n = 0; n < nstate; ++n) buf[n] += a * kp[n] + b * kn[n];
  }
  for (int64_t n = 0; n < nstate; ++n) store_state(s, n, buf[n]);
  for (int64_t r = 0; r < ranks; ++r) {
    const float* qr = q + r * nstate;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t n = 0; n < nstate; ++n) acc += buf[n] * qr[n];
    y[r] = acc;
  }
}

// The step for a state stored as T (float, or uint16_t holding bf16). First, per row, what its heads
// share: the phase's turn before dt (pi tanh(angles)) and B and C normed. Then one (row, head) at a
// time: its phase, k and q, the state's rows, and the gate. Done per head, the shared part cost more
// than the state's rows at batch 16 (benchmarks/README.md, Mamba-3 decoding).
struct Mamba3StateStep {
  const Mamba3Dims& dims;
  const float *in, *dtb, *bw, *cw, *bb, *cb, *skip, *mx, *mz, *mo, *nw;
  float *angle, *K, *V, *Y;
  float a_floor;
  double b_eps, c_eps, norm_eps;

  template <typename T>
  void run(T* S) const {
    const int64_t heads = dims.heads, hdim = dims.hdim, nstate = dims.nstate, ranks = dims.ranks;
    const int64_t angles = dims.angles, d_inner = dims.d_inner, bc = dims.bc, ngroups = dims.ngroups;
    const int64_t heads_per_group = heads / ngroups, shared_row = angles + 2 * bc;
    std::vector<float> shared(dims.batch * shared_row);  // per row: pi tanh(angles), B normed, C normed
    at::parallel_for(0, dims.batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const float *B = in + b * dims.row + 2 * d_inner, *C = B + bc, *turn = C + bc + 3 * heads;
        float* out = shared.data() + b * shared_row;
        for (int64_t i = 0; i < angles; ++i) out[i] = static_cast<float>(M_PI) * std::tanh(turn[i]);
        for (int64_t j = 0; j < ranks * ngroups; ++j) {
          rms_scaled(B + j * nstate, bw, b_eps, out + angles + j * nstate, nstate);
          rms_scaled(C + j * nstate, cw, c_eps, out + angles + bc + j * nstate, nstate);
        }
      }
    });
    at::parallel_for(0, dims.batch * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> cos_t(angles), sin_t(angles), q(ranks * nstate), k(ranks * nstate), k_prev(ranks * nstate);
      std::vector<float> buf(nstate), prev(ranks), now(ranks), up_x(ranks), y_r(ranks), y(ranks * hdim), gz(hdim);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / heads, h = bh % heads, g = h / heads_per_group;
        const float* r_in = in + b * dims.row;  // z, x, B, C, dt, A, trap, angles
        const float* dd = r_in + 2 * d_inner + 2 * bc;
        const float *z = r_in + h * hdim, *x = r_in + d_inner + h * hdim;  // this head's
        const float *turn_pi = shared.data() + b * shared_row, *B = turn_pi + angles, *C = B + bc;
        const float dt = softplus(dd[h] + dtb[h]);
        const float raw_a = dd[heads + h];  // A = -max(heavy_tail(raw_a), a_floor)
        const float A = -std::max(std::max(raw_a, 0.f) + 1.f / (1.f - std::min(raw_a, 0.f)), a_floor);
        const float trap = sigmoid(dd[2 * heads + h]);
        const float alpha = std::exp(A * dt), beta = (1.f - trap) * dt * alpha, gamma = trap * dt;

        // The phase turns by pi tanh(angles) dt; this position's k and q are turned by it.
        float* theta = angle + bh * angles;
        for (int64_t i = 0; i < angles; ++i) theta[i] = wrap_phase(theta[i] + turn_pi[i] * dt);
        sin_cos(theta, sin_t.data(), cos_t.data(), angles);
        for (int64_t r = 0; r < ranks; ++r) {
          const int64_t at = r * nstate, bias_at = (h * ranks + r) * nstate, bc_at = (r * ngroups + g) * nstate;
          std::memcpy(k_prev.data() + at, K + ((b * ranks + r) * heads + h) * nstate, sizeof(float) * nstate);
          bias_and_turn(B + bc_at, bb + bias_at, cos_t.data(), sin_t.data(), angles, !dims.mimo, k.data() + at, nstate);
          bias_and_turn(C + bc_at, cb + bias_at, cos_t.data(), sin_t.data(), angles, !dims.mimo, q.data() + at, nstate);
        }

        // The state's rows: decayed, fed the previous and this position's inputs, read out by q.
        float* v_prev = V + bh * hdim;
        T* s_head = S + bh * hdim * nstate;
        for (int64_t p = 0; p < hdim; ++p) {
          if (!dims.mimo) {  // the presets' case: the AVX-512 rows where the build has them
            const TwoInputs inputs{k_prev.data(), k.data(), v_prev[p] * beta, x[p] * gamma};
            y[p] = update_row(s_head + p * nstate, inputs, q.data(), alpha, nstate) + x[p] * skip[h];
            continue;
          }
          for (int64_t r = 0; r < ranks; ++r) {  // x and the previous x up-projected to each rank
            const float up = mx[(h * ranks + r) * hdim + p];
            up_x[r] = x[p] * up;
            prev[r] = v_prev[p] * up * beta;
            now[r] = up_x[r] * gamma;
          }
          update_row_ranks(s_head + p * nstate, k_prev.data(), k.data(), q.data(), prev.data(), now.data(), alpha,
                           ranks, nstate, buf.data(), y_r.data());
          for (int64_t r = 0; r < ranks; ++r) y[r * hdim + p] = y_r[r] + up_x[r] * skip[h];
        }
        for (int64_t r = 0; r < ranks; ++r)
          std::memcpy(K + ((b * ranks + r) * heads + h) * nstate, k.data() + r * nstate, sizeof(float) * nstate);
        std::memcpy(v_prev, x, sizeof(float) * hdim);

        // The gate per rank, z up-projected for MIMO: (rmsnorm(y) * weight if normed) * silu(z);
        // a MIMO layer then sums its ranks with mimo_o.
        float* out = Y + b * d_inner + h * hdim;
        for (int64_t p = 0; p < hdim; ++p) out[p] = 0.f;
        for (int64_t r = 0; r < ranks; ++r) {
          float* yr = y.data() + r * hdim;
          const float* zr = z;
          if (dims.mimo) {
            for (int64_t p = 0; p < hdim; ++p) gz[p] = z[p] * mz[(h * ranks + r) * hdim + p];
            zr = gz.data();
          }
          if (dims.head_norm) {
            float ss = 0.f;
#pragma omp simd reduction(+ : ss)
            for (int64_t p = 0; p < hdim; ++p) ss += yr[p] * yr[p];
            const float scale = 1.f / std::sqrt(ss / hdim + static_cast<float>(norm_eps));
            for (int64_t p = 0; p < hdim; ++p) yr[p] *= scale * nw[h * hdim + p];
          }
          mul_silu(yr, zr, hdim);
          if (!dims.mimo) {
            for (int64_t p = 0; p < hdim; ++p) out[p] += yr[p];
            continue;
          }
          for (int64_t p = 0; p < hdim; ++p) out[p] += yr[p] * mo[(h * ranks + r) * hdim + p];
        }
      }
    });
  }
};

static const float* data_or_null(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// mamba3_step on arguments check_mamba3 has passed (and zxbc, contiguous fp32, with them).
static torch::Tensor mamba3_checked(const Mamba3Dims& dims, const torch::Tensor& zxbc, const torch::Tensor& angle_state,
                                    const torch::Tensor& ssm_state, const torch::Tensor& k_state,
                                    const torch::Tensor& v_state, const torch::Tensor& dt_bias, double a_floor,
                                    const torch::Tensor& B_norm, double B_eps, const torch::Tensor& C_norm,
                                    double C_eps, const torch::Tensor& B_bias, const torch::Tensor& C_bias,
                                    const torch::Tensor& D, const c10::optional<torch::Tensor>& mimo_x,
                                    const c10::optional<torch::Tensor>& mimo_z,
                                    const c10::optional<torch::Tensor>& mimo_o,
                                    const c10::optional<torch::Tensor>& norm_weight, double norm_eps) {
  auto y = torch::empty({dims.batch, dims.d_inner}, zxbc.options());
  const Mamba3StateStep step{dims,
                             zxbc.data_ptr<float>(),
                             dt_bias.data_ptr<float>(),
                             B_norm.data_ptr<float>(),
                             C_norm.data_ptr<float>(),
                             B_bias.data_ptr<float>(),
                             C_bias.data_ptr<float>(),
                             D.data_ptr<float>(),
                             data_or_null(mimo_x),
                             data_or_null(mimo_z),
                             data_or_null(mimo_o),
                             data_or_null(norm_weight),
                             angle_state.data_ptr<float>(),
                             k_state.data_ptr<float>(),
                             v_state.data_ptr<float>(),
                             y.data_ptr<float>(),
                             static_cast<float>(a_floor),
                             B_eps,
                             C_eps,
                             norm_eps};
  if (ssm_state.scalar_type() == torch::kFloat32) {
    step.run(ssm_state.data_ptr<float>());
  } else {
    step.run(reinterpret_cast<uint16_t*>(ssm_state.data_ptr<at::BFloat16>()));
  }
  return y;
}

torch::Tensor mamba3_step(torch::Tensor zxbc, torch::Tensor angle_state, torch::Tensor ssm_state, torch::Tensor k_state,
                          torch::Tensor v_state, int64_t ngroups, torch::Tensor dt_bias, double a_floor,
                          torch::Tensor B_norm, double B_eps, torch::Tensor C_norm, double C_eps, torch::Tensor B_bias,
                          torch::Tensor C_bias, torch::Tensor D, c10::optional<torch::Tensor> mimo_x,
                          c10::optional<torch::Tensor> mimo_z, c10::optional<torch::Tensor> mimo_o,
                          c10::optional<torch::Tensor> norm_weight, double norm_eps) {
  const char* fn = "mamba3_step";
  expect(fn, "zxbc", zxbc, {-1, -1}, Dtype::fp32);
  const auto dims = check_mamba3(fn, "zxbc", "zxbc's width", zxbc.size(0), zxbc.size(1), angle_state, ssm_state,
                                 k_state, v_state, ngroups, dt_bias, B_norm, C_norm, B_bias, C_bias, D, mimo_x, mimo_z,
                                 mimo_o, norm_weight);
  return mamba3_checked(dims, zxbc, angle_state, ssm_state, k_state, v_state, dt_bias, a_floor, B_norm, B_eps, C_norm,
                        C_eps, B_bias, C_bias, D, mimo_x, mimo_z, mimo_o, norm_weight, norm_eps);
}

// linear_rows: y = x W^T + b for a few fp32 rows x and fp32 or bf16 weights W, all rows of x in one
// pass over the weights; bf16 widens to fp32 (a 16-bit shift) on the fly and sums in fp32.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
// With AVX-512: four weight rows at a time against all rows of x, R x NB independent accumulators.
// The plain loop below keeps one dependency chain per x row and reloads x for every weight row;
// here each x vector is loaded once per four weight rows and the FMAs of different chains overlap,
// so the loop keeps up with memory (bf16 especially: benchmarks/README.md, weight streaming).
static inline __m512 load16(const float* w, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w); }
static inline __m512 load16(const uint16_t* w, __mmask16 m) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// How far ahead of the loads each weight row is prefetched: on the 2-core Xeon VM it took bf16
// weights from 18 to 21 GB/s (4 rows at a time leave the hardware prefetcher behind); fp32 is unchanged.
#define PREFETCH_BYTES 1024
template <typename T, int NB, int R>
static inline void fma_columns(const T* W, const float* X, __m512 (&acc)[R][NB], int64_t in, int64_t o, int64_t i,
                               __mmask16 m) {
  __m512 xv[NB];
  for (int b = 0; b < NB; ++b) xv[b] = _mm512_maskz_loadu_ps(m, X + b * in + i);
  for (int r = 0; r < R; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(W + (o + r) * in + i) + PREFETCH_BYTES, _MM_HINT_T0);
    const __m512 w = load16(W + (o + r) * in + i, m);
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_fmadd_ps(w, xv[b], acc[r][b]);
  }
}

template <typename T, int NB, int R>
static void dot_block(const T* W, const float* X, float* Y, int64_t out, int64_t in, int64_t o) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  const int64_t body = in - in % 16;
  for (int64_t i = 0; i < body; i += 16) fma_columns<T, NB, R>(W, X, acc, in, o, i, static_cast<__mmask16>(0xFFFF));
  if (body < in) fma_columns<T, NB, R>(W, X, acc, in, o, body, tail_mask(in - body));
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) Y[b * out + o + r] = _mm512_reduce_add_ps(acc[r][b]);
}

template <typename T, int NB, int R = 4>
static void dot_rows_avx512(const T* W, const float* X, float* Y, int64_t out, int64_t in) {
  const int64_t blocks = out / R;
  at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) dot_block<T, NB, R>(W, X, Y, out, in, blk * R);
  });
  for (int64_t o = blocks * R; o < out; ++o) dot_block<T, NB, 1>(W, X, Y, out, in, o);
}

// fp32 weights: eight weight rows at a time for one or two rows of x (a few percent faster than
// four on the 2-core Xeon VM, timed ad hoc), four for three or four.
static void dot_all(const float* W, const float* X, float* Y, int64_t rows, int64_t out, int64_t in) {
  switch (rows) {
    case 1: dot_rows_avx512<float, 1, 8>(W, X, Y, out, in); break;
    case 2: dot_rows_avx512<float, 2, 8>(W, X, Y, out, in); break;
    case 3: dot_rows_avx512<float, 3>(W, X, Y, out, in); break;
    case 4: dot_rows_avx512<float, 4>(W, X, Y, out, in); break;
    default: dot_rows_avx512<float, 8, 2>(W, X, Y, out, in); break;  // 16 accumulators + 8 x vectors in registers
  }
}

// bf16 weights go 32 columns at a time: one 512-bit load is a whole 64-byte line of a weight row,
// a 16-bit shift widens its even columns and a mask its odd ones, so x is split once per call into
// its even and odd columns (Xs, 32 floats a chunk: 16 even, then 16 odd). Against 16 columns a
// step (a 256-bit load widened on the shuffle port), with eight weight rows at a time, it streamed
// simba-300m's bf16 weights at 19-21 GB/s against 14-17 on the 2-core Xeon VM (1-4 rows of x, both
// loops in one process, timed ad hoc); a plain read of the same bytes made 20-26. A tiled weight
// layout gained nothing more, and AVX512-BF16 dot products (x split into bf16 parts) were slower.
// The columns past the last whole chunk take the 16-wide masked loop on the unsplit x.
//
// Prefetch: while a block of R rows streams, each load asks for one line of the next block into L2,
// in address order, so the memory sees one sequential stream a thread instead of R short ones; the
// loads then find their lines in L2. Against prefetching 512 bytes ahead within each row into L1,
// a whole simba-300m step with bf16 weights and state went from 30.4 to 33.7 steps/s at batch 2
// (30.9 to 33.2 in a second run), +12% at 1 row, +14% at 4 and +8% at 8; each pair timed
// interleaved in one process, ad hoc, on the 2-core Xeon VM. A fixed distance of 16-64 KB, or two
// blocks ahead, did no better. fp32 weights lost 5% this way and keep their in-row prefetch.
template <int NB, int R>
static void dot_block_bf16(const uint16_t* W, const float* X, const float* Xs, float* Y, int64_t out, int64_t in,
                           int64_t o) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  const int64_t body = in - in % 32;
  const __m512i odd = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  // One line of the next block per load: R x body / 32 loads cover its R x body columns. Past the
  // last block it points beyond the weights, which a prefetch may (it never faults); computed as an
  // integer, since pointer arithmetic out of the array would be undefined.
  const char* next_block =
      reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(W) + sizeof(uint16_t) * (o + R) * in);
  for (int64_t i = 0; i < body; i += 32) {
    __m512 even_x[NB], odd_x[NB];
    for (int b = 0; b < NB; ++b) {
      even_x[b] = _mm512_loadu_ps(Xs + b * body + i);
      odd_x[b] = _mm512_loadu_ps(Xs + b * body + i + 16);
    }
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(next_block + ((i / 32) * R + r) * 64, _MM_HINT_T1);
      const __m512i line = _mm512_loadu_si512(W + (o + r) * in + i);
      const __m512 even_w = _mm512_castsi512_ps(_mm512_slli_epi32(line, 16));
      const __m512 odd_w = _mm512_castsi512_ps(_mm512_and_si512(line, odd));
      for (int b = 0; b < NB; ++b) {
        acc[r][b] = _mm512_fmadd_ps(even_w, even_x[b], acc[r][b]);
        acc[r][b] = _mm512_fmadd_ps(odd_w, odd_x[b], acc[r][b]);
      }
    }
  }
  for (int64_t i = body; i < in; i += 16) fma_columns<uint16_t, NB, R>(W, X, acc, in, o, i, tail_mask(in - i));
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) Y[b * out + o + r] = _mm512_reduce_add_ps(acc[r][b]);
}

template <int NB, int R>
static void dot_rows_bf16(const uint16_t* W, const float* X, float* Y, int64_t out, int64_t in) {
  const int64_t body = in - in % 32;
  std::vector<float> split(NB * body);
  for (int b = 0; b < NB; ++b)
    for (int64_t i = 0; i < body; i += 32)
      for (int j = 0; j < 16; ++j) {
        split[b * body + i + j] = X[b * in + i + 2 * j];
        split[b * body + i + 16 + j] = X[b * in + i + 2 * j + 1];
      }
  const float* Xs = split.data();
  const int64_t blocks = out / R;
  at::parallel_for(0, blocks, 16 / R, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) dot_block_bf16<NB, R>(W, X, Xs, Y, out, in, blk * R);
  });
  for (int64_t o = blocks * R; o < out; ++o) dot_block_bf16<NB, 1>(W, X, Xs, Y, out, in, o);
}

// Register budget (32 vectors): R x NB accumulators plus 2 x NB x vectors.
static void dot_all(const uint16_t* W, const float* X, float* Y, int64_t rows, int64_t out, int64_t in) {
  switch (rows) {
    case 1: dot_rows_bf16<1, 8>(W, X, Y, out, in); break;
    case 2: dot_rows_bf16<2, 8>(W, X, Y, out, in); break;
    case 3: dot_rows_bf16<3, 4>(W, X, Y, out, in); break;
    case 4: dot_rows_bf16<4, 4>(W, X, Y, out, in); break;
    default: dot_rows_bf16<8, 1>(W, X, Y, out, in); break;  // 8 accumulators + 16 x vectors
  }
}
// Rows 5-8 run as 8, zero-padded: the extra FMAs are free, the weights are not. Past 8 rows the
// loop runs out of registers and MKL's W @ x.T is faster (16 rows on the Xeon VM: 12 against 15 GB/s).
static constexpr int64_t MAX_ROWS = 8;
static int64_t padded_rows(int64_t rows) { return rows <= 4 ? rows : 8; }
#else
// Without AVX-512: one weight row at a time, a 16-wide accumulator per row of x.
static inline float widen(float v) { return v; }
static inline float widen(uint16_t v) { return widen_bf16(v); }

template <typename T, int NB>
static void dot_rows(const T* W, const float* X, float* Y, int64_t out, int64_t in, int64_t begin, int64_t end) {
  constexpr int V = 16;
  const int64_t body = in - in % V;
  for (int64_t o = begin; o < end; ++o) {
    const T* w = W + o * in;
    float acc[NB][V] = {};
    for (int64_t i = 0; i < body; i += V) {
      for (int b = 0; b < NB; ++b) {
        const float* x = X + b * in + i;
#pragma omp simd
        for (int v = 0; v < V; ++v) acc[b][v] += widen(w[i + v]) * x[v];
      }
    }
    for (int b = 0; b < NB; ++b) {
      float sum = 0.f;
      for (int v = 0; v < V; ++v) sum += acc[b][v];
      for (int64_t i = body; i < in; ++i) sum += widen(w[i]) * X[b * in + i];
      Y[b * out + o] = sum;
    }
  }
}

template <typename T>
static void dot_all(const T* W, const float* X, float* Y, int64_t rows, int64_t out, int64_t in) {
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    switch (rows) {
      case 1: dot_rows<T, 1>(W, X, Y, out, in, begin, end); break;
      case 2: dot_rows<T, 2>(W, X, Y, out, in, begin, end); break;
      case 3: dot_rows<T, 3>(W, X, Y, out, in, begin, end); break;
      default: dot_rows<T, 4>(W, X, Y, out, in, begin, end); break;
    }
  });
}
static constexpr int64_t MAX_ROWS = 4;
static int64_t padded_rows(int64_t rows) { return rows; }
#endif

#include "quantized_dot.h"

// Y (rows, out) = X (rows, in) W^T, X and Y contiguous fp32; rows 5-7 go through padded copies.
// Packed weights take any number of rows (quantized_dot.h).
static void linear_into(const torch::Tensor& weight, const float* X, float* Y, int64_t rows, int64_t in) {
  if (is_packed(weight)) return quantized_linear_into(weight, X, Y, rows, in);
  const int64_t out = weight.size(0), padded = padded_rows(rows);
  std::vector<float> xpad, ypad;
  if (padded > rows) {
    xpad.assign(padded * in, 0.f);
    std::memcpy(xpad.data(), X, sizeof(float) * rows * in);
    ypad.resize(padded * out);
    X = xpad.data();
  }
  float* dst = padded > rows ? ypad.data() : Y;
  if (weight.scalar_type() == torch::kFloat32) {
    dot_all(weight.data_ptr<float>(), X, dst, padded, out, in);
  } else {
    dot_all(reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>()), X, dst, padded, out, in);
  }
  if (padded > rows) std::memcpy(Y, ypad.data(), sizeof(float) * rows * out);
}

// Y (rows, out) += bias, the bias fp32 or bf16 (cast_linear_weights casts biases with the weights).
// A bf16 bias is widened in the loop: converting it with `to` allocated a tensor and went through
// ATen's dispatch, ~40 us a call in a decoding step (fc1's alone: 0.9 ms of a simba-300m step).
static void add_bias(const c10::optional<torch::Tensor>& bias, float* Y, int64_t rows, int64_t out) {
  if (!bias.has_value()) return;
  const auto add = [&](const auto* bv) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) Y[r * out + o] += load_fp32(bv, o);  // bf16 widened
  };
  if (bias->scalar_type() == torch::kBFloat16 && bias->is_contiguous()) {
    add(reinterpret_cast<const uint16_t*>(bias->data_ptr<at::BFloat16>()));
    return;
  }
  const auto b = bias->to(torch::kFloat32).contiguous();  // no copy when it is already fp32
  add(b.data_ptr<float>());
}

torch::Tensor linear_rows(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias) {
  const int64_t max_rows = is_packed(weight) ? INT64_MAX : MAX_ROWS;
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= max_rows && x.device().is_cpu(),
              "linear_rows: x must be a CPU tensor of 1 to ", MAX_ROWS, " rows (any number with packed weights), not ",
              shape_text(x.sizes()), x.device().is_cpu() ? "" : " on " + x.device().str());
  x = x.contiguous().to(torch::kFloat32);
  const int64_t rows = x.size(0), in = x.size(1);
  check_weight("linear_rows", "weight", weight, -1, in);
  const int64_t out = weight.size(0);
  check_bias("linear_rows", "bias", bias, out);
  auto y = torch::empty({rows, out}, x.options());
  linear_into(weight, x.data_ptr<float>(), y.data_ptr<float>(), rows, in);
  add_bias(bias, y.data_ptr<float>(), rows, out);
  return y;
}


// block_step: one Mamba-2 or SiMBA block's decoding step, x + mixer(norm(x)), then any
// + cross(norm(x)) and any + mlp(norm(x)). Around its
// five weight reads and the state update, eager PyTorch runs about fifteen small ops a block, and
// after megabytes of weights have streamed through the caches each of them starts cold: tens of
// microseconds for ops on (2, 1024) on the 2-core Xeon VM, 6-10 ms of a 47-66 ms simba-300m step at batch 2
// (benchmarks/decode_speed.py). Here they are loops over a few thousand floats. The cross-attention
// projections are bias-free, as CrossAttention's are. Twin: Block._step_modules.
static void rms_norm_into(const float* x, const float* w, float* y, int64_t rows, int64_t d, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    float ss = 0.f;
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float scale = 1.f / std::sqrt(ss / d + static_cast<float>(eps));
    for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

// out (rows, H * hd) = softmax(q k^T / sqrt(hd)) v per row and head, over the text keys that `mask`
// (rows, L) keeps; k and v (rows, H, L, hd) in any strides (CrossState keeps them transposed). A row
// with no key left gets zeros, as scaled_dot_product_attention gives.
static void cross_attend(const float* q, const torch::Tensor& k, const torch::Tensor& v,
                         const c10::optional<torch::Tensor>& mask, float* out, int64_t rows) {
  const int64_t heads = k.size(1), keys = k.size(2), hd = k.size(3);
  const float *K = k.data_ptr<float>(), *V = v.data_ptr<float>();
  const bool* M = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  // Strides read once: Tensor::stride is a call, and the loops below run per key and element.
  const int64_t kb = k.stride(0), kh = k.stride(1), kl_ = k.stride(2), kj = k.stride(3);
  const int64_t vb = v.stride(0), vh = v.stride(1), vl_ = v.stride(2), vj = v.stride(3);
  const int64_t mb = M ? mask->stride(0) : 0, ml = M ? mask->stride(1) : 0;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  std::vector<float> p(keys);
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q + b * heads * hd + h * hd;
      float* oh = out + b * heads * hd + h * hd;
      float top = -INFINITY;
      for (int64_t l = 0; l < keys; ++l) {
        if (M && !M[b * mb + l * ml]) {
          p[l] = -INFINITY;
          continue;
        }
        const float* kl = K + b * kb + h * kh + l * kl_;
        float dot = 0.f;
        for (int64_t j = 0; j < hd; ++j) dot += qh[j] * kl[j * kj];
        p[l] = dot * scale;
        top = std::max(top, p[l]);
      }
      for (int64_t j = 0; j < hd; ++j) oh[j] = 0.f;
      if (top == -INFINITY) continue;  // every key masked
      float total = 0.f;
      for (int64_t l = 0; l < keys; ++l) total += (p[l] = p[l] == -INFINITY ? 0.f : std::exp(p[l] - top));
      for (int64_t l = 0; l < keys; ++l) {
        if (p[l] == 0.f) continue;
        const float w = p[l] / total;
        const float* vl = V + b * vb + h * vh + l * vl_;
        for (int64_t j = 0; j < hd; ++j) oh[j] += w * vl[j * vj];
      }
    }
  }
}

// What follows a block's mixer: any cross-attention to the text and any MLP, each after an RMSNorm,
// each with its residual. The same in every block kernel.
struct BlockRest {
  const c10::optional<torch::Tensor>&keys, &values, &key_mask, &cross_norm;
  double cross_eps;
  const c10::optional<torch::Tensor>&q_proj, &cross_out, &mlp_norm;
  double mlp_eps;
  const c10::optional<torch::Tensor>&fc1, &fc1_bias, &fc2, &fc2_bias;

  // Every size run() indexes with, against d_model `d` and x's `rows`; returns the MLP's width.
  int64_t check(const char* fn, int64_t d, int64_t rows) const {
    const bool cross = cross_norm.has_value();  // cross-attention to the text, between mixer and MLP
    TORCH_CHECK(cross == q_proj.has_value() && cross == keys.has_value() && cross == values.has_value() &&
                    cross == cross_out.has_value() && (cross || !key_mask.has_value()),
                fn, ": cross-attention needs its cross_norm, q_proj, keys, values and cross_out (and key_mask only with them)");
    if (cross) {
      expect(fn, "cross_norm", *cross_norm, {d}, Dtype::fp32);
      check_weight(fn, "q_proj", *q_proj, d, d);
      check_weight(fn, "cross_out", *cross_out, d, d);
      expect(fn, "keys", *keys, {rows, -1, -1, -1}, Dtype::fp32, false);  // cross_attend reads the strides
      TORCH_CHECK(keys->size(1) * keys->size(3) == d, fn, ": keys (rows, heads, text, head_dim) ",
                  shape_text(keys->sizes()), " must have heads x head_dim = ", d);
      expect(fn, "values", *values, keys->sizes(), Dtype::fp32, false);
      if (key_mask.has_value()) expect(fn, "key_mask", *key_mask, {rows, keys->size(2)}, Dtype::boolean, false);
    }
    const bool mlp = mlp_norm.has_value();  // a Mamba-2 stack's blocks have none
    TORCH_CHECK(mlp == fc1.has_value() && mlp == fc2.has_value(), fn, ": an MLP needs its mlp_norm, fc1 and fc2");
    if (!mlp) return 0;
    expect(fn, "mlp_norm", *mlp_norm, {d}, Dtype::fp32);
    check_weight(fn, "fc1", *fc1, -1, d);
    const int64_t hidden = fc1->size(0);
    check_bias(fn, "fc1_bias", fc1_bias, hidden);
    check_weight(fn, "fc2", *fc2, d, hidden);
    check_bias(fn, "fc2_bias", fc2_bias, d);
    return hidden;
  }

  // res (rows, d), the residual stream, += cross(norm(res)), then += mlp(norm(res)); `hidden` from check().
  void run(float* res, int64_t rows, int64_t d, int64_t hidden) const {
    std::vector<float> normed(rows * d), back(rows * d);
    if (cross_norm.has_value()) {
      std::vector<float> q(rows * d), attended(rows * d);
      rms_norm_into(res, cross_norm->data_ptr<float>(), normed.data(), rows, d, cross_eps);
      linear_into(*q_proj, normed.data(), q.data(), rows, d);
      cross_attend(q.data(), *keys, *values, key_mask, attended.data(), rows);
      linear_into(*cross_out, attended.data(), back.data(), rows, d);
      for (int64_t i = 0; i < rows * d; ++i) res[i] += back[i];
    }
    if (!mlp_norm.has_value()) return;
    std::vector<float> hid(rows * hidden);
    rms_norm_into(res, mlp_norm->data_ptr<float>(), normed.data(), rows, d, mlp_eps);
    linear_into(*fc1, normed.data(), hid.data(), rows, d);
    add_bias(fc1_bias, hid.data(), rows, hidden);
    gelu_inplace(hid.data(), rows * hidden);
    linear_into(*fc2, hid.data(), back.data(), rows, hidden);
    add_bias(fc2_bias, back.data(), rows, d);
    for (int64_t i = 0; i < rows * d; ++i) res[i] += back[i];
  }
};

// The checks every block kernel makes of x (rows, d) and its mixer_norm (d,) and in_proj; returns d.
static int64_t check_block_input(const char* fn, const torch::Tensor& x, const torch::Tensor& mixer_norm,
                                 const torch::Tensor& in_proj, const c10::optional<torch::Tensor>& in_bias) {
  expect(fn, "mixer_norm", mixer_norm, {-1}, Dtype::fp32);
  const int64_t d = mixer_norm.size(0);  // d_model
  expect(fn, "x", x, {-1, d}, Dtype::fp32);
  const int64_t rows = x.size(0);
  TORCH_CHECK(rows >= 1 && rows <= MAX_ROWS, fn, ": x must have 1 to ", MAX_ROWS, " rows, not ", rows);
  check_weight(fn, "in_proj", in_proj, -1, d);
  check_bias(fn, "in_bias", in_bias, in_proj.size(0));
  return d;
}

// in_proj(norm(res)) for the mixer: (rows, in_proj's outputs).
static torch::Tensor project_in(const float* res, const torch::Tensor& x, const torch::Tensor& mixer_norm,
                                double mixer_eps, const torch::Tensor& in_proj,
                                const c10::optional<torch::Tensor>& in_bias) {
  const int64_t rows = x.size(0), d = x.size(1);
  std::vector<float> normed(rows * d);
  rms_norm_into(res, mixer_norm.data_ptr<float>(), normed.data(), rows, d, mixer_eps);
  auto projected = torch::empty({rows, in_proj.size(0)}, x.options());
  linear_into(in_proj, normed.data(), projected.data_ptr<float>(), rows, d);
  add_bias(in_bias, projected.data_ptr<float>(), rows, in_proj.size(0));
  return projected;
}

// res (rows, d) += out_proj(y), y (rows, d_inner) the mixer's output.
static void project_out(float* res, const torch::Tensor& y, const torch::Tensor& out_proj,
                        const c10::optional<torch::Tensor>& out_bias, int64_t d) {
  const int64_t rows = y.size(0);
  std::vector<float> back(rows * d);
  linear_into(out_proj, y.data_ptr<float>(), back.data(), rows, y.size(1));
  add_bias(out_bias, back.data(), rows, d);
  for (int64_t i = 0; i < rows * d; ++i) res[i] += back[i];
}

// The state comes first (conv_state, ssm_state, and for cross-attention the text keys, values and
// mask), then the block's weights in the order Mamba2BlockKernel holds them.
torch::Tensor block_step(torch::Tensor x, torch::Tensor conv_state, torch::Tensor ssm_state,
                         c10::optional<torch::Tensor> keys, c10::optional<torch::Tensor> values,
                         c10::optional<torch::Tensor> key_mask, torch::Tensor mixer_norm, double mixer_eps,
                         torch::Tensor in_proj, c10::optional<torch::Tensor> in_bias, torch::Tensor conv_weight,
                         torch::Tensor conv_bias, torch::Tensor dt_bias, torch::Tensor A_log, torch::Tensor D,
                         torch::Tensor gate_norm, int64_t ngroups, double gate_eps, torch::Tensor out_proj,
                         c10::optional<torch::Tensor> out_bias, c10::optional<torch::Tensor> cross_norm,
                         double cross_eps, c10::optional<torch::Tensor> q_proj, c10::optional<torch::Tensor> cross_out,
                         c10::optional<torch::Tensor> mlp_norm, double mlp_eps, c10::optional<torch::Tensor> fc1,
                         c10::optional<torch::Tensor> fc1_bias, c10::optional<torch::Tensor> fc2,
                         c10::optional<torch::Tensor> fc2_bias) {
  const char* fn = "block_step";
  const int64_t d = check_block_input(fn, x, mixer_norm, in_proj, in_bias), rows = x.size(0);
  const auto dims = check_mamba2(fn, "x", "in_proj's outputs", rows, in_proj.size(0), conv_state, conv_weight, conv_bias,
                                 dt_bias, A_log, D, "gate_norm", gate_norm, ssm_state, ngroups);
  check_weight(fn, "out_proj", out_proj, d, dims.d_inner);
  check_bias(fn, "out_bias", out_bias, d);
  const BlockRest rest{keys,     values,   key_mask, cross_norm, cross_eps, q_proj,  cross_out,
                       mlp_norm, mlp_eps,  fc1,      fc1_bias,   fc2,       fc2_bias};
  const int64_t hidden = rest.check(fn, d, rows);

  auto out = x.clone();  // the residual stream
  float* res = out.data_ptr<float>();
  const auto zxbcdt = project_in(res, x, mixer_norm, mixer_eps, in_proj, in_bias);
  const auto y = mamba2_checked(dims, zxbcdt, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, gate_norm,
                                ssm_state, gate_eps);
  project_out(res, y, out_proj, out_bias, d);
  rest.run(res, rows, d, hidden);
  return out;
}

// mamba3_block_step: block_step with a Mamba-3 mixer (the mamba3 and simba3 kinds): x + mixer(norm(x)),
// then any + cross(norm(x)) and any + mlp(norm(x)), as block_step. Twin: Block._step_modules.
// The state first (the mixer's, then the text's keys, values and mask), then the block's weights
// in the order Mamba3BlockKernel holds them.
torch::Tensor mamba3_block_step(
    torch::Tensor x, torch::Tensor angle_state, torch::Tensor ssm_state, torch::Tensor k_state, torch::Tensor v_state,
    c10::optional<torch::Tensor> keys, c10::optional<torch::Tensor> values, c10::optional<torch::Tensor> key_mask,
    torch::Tensor mixer_norm, double mixer_eps, torch::Tensor in_proj, c10::optional<torch::Tensor> in_bias,
    int64_t ngroups, torch::Tensor dt_bias, double a_floor, torch::Tensor B_norm, double B_eps, torch::Tensor C_norm,
    double C_eps, torch::Tensor B_bias, torch::Tensor C_bias, torch::Tensor D, c10::optional<torch::Tensor> mimo_x,
    c10::optional<torch::Tensor> mimo_z, c10::optional<torch::Tensor> mimo_o, c10::optional<torch::Tensor> norm_weight,
    double norm_eps, torch::Tensor out_proj, c10::optional<torch::Tensor> out_bias,
    c10::optional<torch::Tensor> cross_norm, double cross_eps, c10::optional<torch::Tensor> q_proj,
    c10::optional<torch::Tensor> cross_out, c10::optional<torch::Tensor> mlp_norm, double mlp_eps,
    c10::optional<torch::Tensor> fc1, c10::optional<torch::Tensor> fc1_bias, c10::optional<torch::Tensor> fc2,
    c10::optional<torch::Tensor> fc2_bias) {
  const char* fn = "mamba3_block_step";
  const int64_t d = check_block_input(fn, x, mixer_norm, in_proj, in_bias), rows = x.size(0);
  const auto dims = check_mamba3(fn, "x", "in_proj's outputs", rows, in_proj.size(0), angle_state, ssm_state, k_state,
                                 v_state, ngroups, dt_bias, B_norm, C_norm, B_bias, C_bias, D, mimo_x, mimo_z, mimo_o,
                                 norm_weight);
  check_weight(fn, "out_proj", out_proj, d, dims.d_inner);
  check_bias(fn, "out_bias", out_bias, d);
  const BlockRest rest{keys,     values,   key_mask, cross_norm, cross_eps, q_proj,  cross_out,
                       mlp_norm, mlp_eps,  fc1,      fc1_bias,   fc2,       fc2_bias};
  const int64_t hidden = rest.check(fn, d, rows);

  auto out = x.clone();  // the residual stream
  float* res = out.data_ptr<float>();
  const auto zxbc = project_in(res, x, mixer_norm, mixer_eps, in_proj, in_bias);
  const auto y = mamba3_checked(dims, zxbc, angle_state, ssm_state, k_state, v_state, dt_bias, a_floor, B_norm, B_eps,
                                C_norm, C_eps, B_bias, C_bias, D, mimo_x, mimo_z, mimo_o, norm_weight, norm_eps);
  project_out(res, y, out_proj, out_bias, d);
  rest.run(res, rows, d, hidden);
  return out;
}

int64_t linear_max_rows() { return MAX_ROWS; }

// The array activations, for the tests to hold them to torch's over any inputs.
torch::Tensor activation(torch::Tensor x, const std::string& name) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu(), "activation: fp32 CPU input");
  TORCH_CHECK(name == "silu" || name == "gelu", "activation: silu or gelu, not ", name);
  auto y = x.contiguous().clone();
  (name == "silu" ? silu_inplace : gelu_inplace)(y.data_ptr<float>(), y.numel());
  return y;
}

// Named arguments: Python may pass them by name, and the checks' errors use the same names.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using py::arg;
  m.def("mamba2_step", &mamba2_step, "fused Mamba-2 decoding step", arg("zxbcdt"), arg("conv_state"),
        arg("conv_weight"), arg("conv_bias"), arg("dt_bias"), arg("A_log"), arg("D"), arg("norm_weight"),
        arg("ssm_state"), arg("ngroups"), arg("eps"));
  m.def("linear_rows", &linear_rows, "x W^T + b for a few fp32 rows, fp32, bf16, int8 or int4 weights", arg("x"), arg("weight"),
        arg("bias") = py::none());
  m.def("block_step", &block_step,
        "one Mamba-2 or SiMBA block's decoding step: the mixer, any cross-attention and any MLP, each after an RMSNorm",
        arg("x"), arg("conv_state"), arg("ssm_state"), arg("keys"), arg("values"), arg("key_mask"), arg("mixer_norm"),
        arg("mixer_eps"), arg("in_proj"), arg("in_bias"), arg("conv_weight"), arg("conv_bias"), arg("dt_bias"),
        arg("A_log"), arg("D"), arg("gate_norm"), arg("ngroups"), arg("gate_eps"), arg("out_proj"), arg("out_bias"),
        arg("cross_norm"), arg("cross_eps"), arg("q_proj"), arg("cross_out"), arg("mlp_norm"), arg("mlp_eps"),
        arg("fc1"), arg("fc1_bias"), arg("fc2"), arg("fc2_bias"));
  m.def("mamba3_step", &mamba3_step, "fused Mamba-3 decoding step", arg("zxbc"), arg("angle_state"),
        arg("ssm_state"), arg("k_state"), arg("v_state"), arg("ngroups"), arg("dt_bias"), arg("a_floor"),
        arg("B_norm"), arg("B_eps"), arg("C_norm"), arg("C_eps"), arg("B_bias"), arg("C_bias"), arg("D"),
        arg("mimo_x"), arg("mimo_z"), arg("mimo_o"), arg("norm_weight"), arg("norm_eps"));
  m.def("mamba3_block_step", &mamba3_block_step,
        "one Mamba-3 or SiMBA-3 block's decoding step: the mixer, any cross-attention and any MLP, each after an RMSNorm",
        arg("x"), arg("angle_state"), arg("ssm_state"), arg("k_state"), arg("v_state"), arg("keys"), arg("values"),
        arg("key_mask"), arg("mixer_norm"), arg("mixer_eps"), arg("in_proj"), arg("in_bias"), arg("ngroups"),
        arg("dt_bias"), arg("a_floor"), arg("B_norm"), arg("B_eps"), arg("C_norm"), arg("C_eps"), arg("B_bias"),
        arg("C_bias"), arg("D"), arg("mimo_x"), arg("mimo_z"), arg("mimo_o"), arg("norm_weight"), arg("norm_eps"),
        arg("out_proj"), arg("out_bias"), arg("cross_norm"), arg("cross_eps"), arg("q_proj"), arg("cross_out"),
        arg("mlp_norm"), arg("mlp_eps"), arg("fc1"), arg("fc1_bias"), arg("fc2"), arg("fc2_bias"));
  m.def("activation", &activation, "silu or gelu over a tensor, as block_step applies them", arg("x"), arg("name"));
  m.def("linear_max_rows", &linear_max_rows, "the most rows linear_rows takes: 8 with AVX-512, else 4");
}
