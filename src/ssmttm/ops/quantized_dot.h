// int8 and int4 weights times a few rows of activations quantized per row to int8: the packed
// layouts are ops/quantize.py's, and `quantized_linear` there is the twin. Included by
// cpu_kernels.cpp, whose linear_into sends packed weights here.
//
// Each row of x becomes int8 with its scale max |x| / 127, rounded as the twin rounds (127 / max in
// fp32, then to nearest even), zero-padded to the weights' padded width. A dot product is then exact
// in int32 (|w x| <= 255 x 127 a term, so well past 60k inputs before it could overflow) and scaled
// once: by the row scales for int8, by each group's scale for int4, in fp32.
//
// With AVX512-VNNI, vpdpbusd multiplies 64 unsigned bytes by 64 signed ones into 16 int32 sums in one
// instruction, a quarter of the instructions fp32 FMAs take for as many products. The weights are the
// unsigned side: int8 shifted by 128 (an XOR of the sign bit), int4's nibbles already stored + 8; the
// shift's share, 128 or 8 times the sum of x over the same columns, is subtracted exactly. Weight rows
// go in blocks of R against up to 8 rows of x at a time (R x NB int32 accumulators in registers); more
// rows of x loop over the block again while its weights are still in L1, so the weights are read from
// memory once whatever the number of rows. Without VNNI the same integer arithmetic runs in plain loops.
#pragma once

static constexpr int64_t QUANT_UNIT = 64;  // bytes of x (and int8 weights) one vpdpbusd reads

enum class Quant { int8, int4 };

// A packed weight's layout, read off its dtype and shape (check_packed has checked them).
struct QuantWeight {
  Quant kind;
  const uint8_t* data;
  int64_t out, in, padded;  // padded: the inputs a row's values cover, a multiple of QUANT_UNIT
  int64_t row_bytes;        // int8: in + 4; int4: groups x (2 + group / 2)
  int64_t group;            // int4's group size (0 for int8)

  static QuantWeight of(const torch::Tensor& w, int64_t in) {
    const auto* data = reinterpret_cast<const uint8_t*>(w.data_ptr());
    if (w.scalar_type() == torch::kInt8) {
      return {Quant::int8, data, w.size(0), in, (in + QUANT_UNIT - 1) / QUANT_UNIT * QUANT_UNIT, in + 4, 0};
    }
    const int64_t group = 2 * (w.size(2) - 2);
    return {Quant::int4, data, w.size(0), in, w.size(1) * group, w.size(1) * w.size(2), group};
  }
  const uint8_t* row(int64_t o) const { return data + o * row_bytes; }
  // Where the R rows after block o's start, as an integer: past the last block it lies beyond the
  // weights, which a prefetch may point at (it never faults) but pointer arithmetic may not.
  uintptr_t next_block(int64_t o, int64_t R) const {
    return reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>((o + R) * row_bytes);
  }
  float int8_scale(int64_t o) const {
    float s;
    std::memcpy(&s, row(o) + in, sizeof(float));
    return s;
  }
  float int4_scale(int64_t o, int64_t g) const {
    uint16_t s;
    std::memcpy(&s, row(o) + g * (2 + group / 2), sizeof(uint16_t));
    return widen_bf16(s);
  }
};

// x's rows as int8 (rows x padded, zero past `in`), their scales, and each row's sum of values
// (int8's correction: the weights' +128 times it).
struct QuantRows {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> sum;
  int64_t padded;

  QuantRows(const float* X, int64_t rows, int64_t in, int64_t padded_in)
      : q(rows * padded_in, 0), scale(rows), sum(rows), padded(padded_in) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* x = X + r * in;
      const float peak = abs_max(x, in);
      const float inverse = peak > 0.f ? 127.f / peak : 0.f;
      scale[r] = peak / 127.f;
      sum[r] = round_into(x, in, inverse, q.data() + r * padded);
    }
  }

#if defined(__AVX512F__) && defined(__AVX512BW__)
  // 16 at a time; the conversion rounds to nearest even (MXCSR's default), as nearbyint does.
  static float abs_max(const float* x, int64_t n) {
    __m512 peak = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) peak = _mm512_max_ps(peak, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - j), x + j)));
    return _mm512_reduce_max_ps(peak);
  }
  static int32_t round_into(const float* x, int64_t n, float inverse, int8_t* out) {
    const __m512 scale = _mm512_set1_ps(inverse);
    const __m512i low = _mm512_set1_epi32(-127), high = _mm512_set1_epi32(127);
    __m512i total = _mm512_setzero_si512();
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail_mask(n - j);
      __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), scale));
      v = _mm512_maskz_mov_epi32(m, _mm512_min_epi32(_mm512_max_epi32(v, low), high));
      total = _mm512_add_epi32(total, v);
      _mm_mask_storeu_epi8(out + j, m, _mm512_cvtepi32_epi8(v));
    }
    return _mm512_reduce_add_epi32(total);
  }
#else
  static float abs_max(const float* x, int64_t n) {
    float peak = 0.f;
    for (int64_t j = 0; j < n; ++j) peak = std::max(peak, std::fabs(x[j]));
    return peak;
  }
  static int32_t round_into(const float* x, int64_t n, float inverse, int8_t* out) {
    int32_t total = 0;
    for (int64_t j = 0; j < n; ++j) {
      out[j] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(x[j] * inverse))));
      total += out[j];
    }
    return total;
  }
#endif
};

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)

static inline void prefetch_l2(uintptr_t address) {
  _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T1);
}

// int8: 64 columns from i of R weight rows against NB rows of x, into acc. A masked load only where
// the row ends inside the 64 (`m`): with masked loads in the loop, gcc kept the 16 accumulators in
// memory as well as in registers, a 64-byte store after every vpdpbusd.
template <int NB, int R, bool MASKED>
static inline void int8_columns(const QuantWeight& W, const int8_t* xq, int64_t ld, __m512i (&acc)[R][NB], int64_t o,
                                int64_t i, __mmask64 m, uintptr_t next_block) {
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i x[NB];  // loaded once for the R weight rows
  for (int b = 0; b < NB; ++b) x[b] = _mm512_loadu_si512(xq + b * ld + i);
  for (int r = 0; r < R; ++r) {
    prefetch_l2(next_block + ((i / QUANT_UNIT) * R + r) * 64);
    const uint8_t* w = W.row(o + r) + i;
    // Masked, the padding loads as 0, +128 after the XOR, against x's zeros there.
    const __m512i raw = MASKED ? _mm512_maskz_loadu_epi8(m, w) : _mm512_loadu_si512(w);
    const __m512i shifted = _mm512_xor_si512(raw, sign);
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], shifted, x[b]);
  }
}

// int8: R weight rows against NB rows of x (x rows b0 .. b0 + NB).
template <int NB, int R>
static void int8_block(const QuantWeight& W, const QuantRows& X, float* Y, int64_t o, int64_t b0) {
  __m512i acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
  const uintptr_t next_block = W.next_block(o, R);
  const int8_t* xq = X.q.data() + b0 * X.padded;
  const int64_t body = W.in - W.in % QUANT_UNIT;
  for (int64_t i = 0; i < body; i += QUANT_UNIT) int8_columns<NB, R, false>(W, xq, X.padded, acc, o, i, 0, next_block);
  if (body < W.in) {
    const __mmask64 tail = (1ULL << (W.in - body)) - 1;
    int8_columns<NB, R, true>(W, xq, X.padded, acc, o, body, tail, next_block);
  }
  for (int r = 0; r < R; ++r) {
    const float ws = W.int8_scale(o + r);
    for (int b = 0; b < NB; ++b) {
      const int32_t dot = _mm512_reduce_add_epi32(acc[r][b]) - 128 * X.sum[b0 + b];
      Y[(b0 + b) * W.out + o + r] = static_cast<float>(dot) * (X.scale[b0 + b] * ws);
    }
  }
}

// The bf16 at p as 16 fp32 lanes: a broadcast load of the 4 bytes from p (the scale, then two of its
// group's bytes), shifted so that the scale's bits are the float's upper half.
static inline __m512i bf16_bits_at(const uint8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm512_set1_epi32(word);
}
static inline __m512 widen_lanes(__m512i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)); }

// int4: a unit is 64 inputs, 1/2, 1 or 2 groups; its nibbles widened to 64 bytes in input order and
// the group scales of its 16 lanes (each lane sums 4 consecutive inputs).
template <int64_t G>
static inline void int4_unit(const QuantWeight& W, int64_t o, int64_t u, __m512i* values, __m512* scales) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const uint8_t* row = W.row(o);
  if constexpr (G == 32) {  // two groups of 16 bytes: [low A, high A, low B, high B]
    const uint8_t* a = row + (2 * u) * 18;
    const __m128i qa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 2));
    const __m128i qb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 20));
    const __m256i ya = _mm256_inserti128_si256(_mm256_castsi128_si256(qa), _mm_srli_epi16(qa, 4), 1);
    const __m256i yb = _mm256_inserti128_si256(_mm256_castsi128_si256(qb), _mm_srli_epi16(qb, 4), 1);
    *values = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(ya), yb, 1), low);
    *scales = widen_lanes(_mm512_mask_blend_epi32(0xFF00, bf16_bits_at(a), bf16_bits_at(a + 18)));
  } else if constexpr (G == 64) {  // one group of 32 bytes: [low, high]
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + u * 34 + 2));
    *values = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), low);
    *scales = widen_lanes(bf16_bits_at(row + u * 34));
  } else {  // half of a group of 64 bytes: its low nibbles for the first half, its high ones for the second
    const __m512i q = _mm512_loadu_si512(row + (u / 2) * 66 + 2);
    *values = _mm512_and_si512(u % 2 ? _mm512_srli_epi16(q, 4) : q, low);
    *scales = widen_lanes(bf16_bits_at(row + (u / 2) * 66));
  }
}

// Per row of x and unit, minus 8 times each lane's four inputs: the nibbles' +8, taken out before
// the unit's sum is scaled (the accumulator starts from it).
struct Int4Correction {
  std::vector<int32_t> lanes;  // rows x units x 16
  int64_t units;
  Int4Correction(const QuantRows& X, int64_t rows) : lanes(rows * (X.padded / QUANT_UNIT) * 16), units(X.padded / QUANT_UNIT) {
    const __m512i eight = _mm512_set1_epi8(8);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t u = 0; u < units; ++u) {
        const __m512i x = _mm512_loadu_si512(X.q.data() + r * X.padded + u * QUANT_UNIT);
        const __m512i shift = _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, x);
        _mm512_storeu_si512(lanes.data() + (r * units + u) * 16, _mm512_sub_epi32(_mm512_setzero_si512(), shift));
      }
  }
  __m512i at(int64_t r, int64_t u) const { return _mm512_loadu_si512(lanes.data() + (r * units + u) * 16); }
};

template <int64_t G, int NB, int R>
static void int4_block(const QuantWeight& W, const QuantRows& X, const Int4Correction& C, float* Y, int64_t o,
                       int64_t b0) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  // The next block's R rows, in address order, a unit's share of a row (33-36 bytes) per load: each
  // line about twice, as a step through it is shorter than a line.
  const uintptr_t next_block = W.next_block(o, R), share = W.row_bytes / C.units;
  for (int64_t u = 0; u < C.units; ++u) {
    __m512i x[NB];  // loaded once for the R weight rows
    for (int b = 0; b < NB; ++b) x[b] = _mm512_loadu_si512(X.q.data() + (b0 + b) * X.padded + u * QUANT_UNIT);
    for (int r = 0; r < R; ++r) {
      prefetch_l2(next_block + (u * R + r) * share);
      __m512i values;
      __m512 scales;
      int4_unit<G>(W, o + r, u, &values, &scales);
      for (int b = 0; b < NB; ++b) {
        const __m512i dot = _mm512_dpbusd_epi32(C.at(b0 + b, u), values, x[b]);
        acc[r][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scales, acc[r][b]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) Y[(b0 + b) * W.out + o + r] = _mm512_reduce_add_ps(acc[r][b]) * X.scale[b0 + b];
}

// R weight rows from o against every row of x, 8 at a time (the block's weights stay in L1 between).
template <int R>
static void quant_rows_block(const QuantWeight& W, const QuantRows& X, const Int4Correction* C, float* Y, int64_t o,
                             int64_t rows) {
  for (int64_t b0 = 0; b0 < rows; b0 += 8) {
    const int64_t nb = std::min<int64_t>(8, rows - b0);
#define QUANT_CASE(NB)                                                                \
  case NB:                                                                            \
    if (W.kind == Quant::int8) int8_block<NB, R>(W, X, Y, o, b0);                     \
    else if (W.group == 32) int4_block<32, NB, R>(W, X, *C, Y, o, b0);                \
    else if (W.group == 64) int4_block<64, NB, R>(W, X, *C, Y, o, b0);                \
    else int4_block<128, NB, R>(W, X, *C, Y, o, b0);                                  \
    break;
    switch (nb) {
      QUANT_CASE(1) QUANT_CASE(2) QUANT_CASE(3) QUANT_CASE(4) QUANT_CASE(5) QUANT_CASE(6) QUANT_CASE(7)
      default: QUANT_CASE(8)
    }
#undef QUANT_CASE
  }
}

static void quantized_dot(const QuantWeight& W, const QuantRows& X, float* Y, int64_t rows) {
  std::unique_ptr<Int4Correction> correction;
  if (W.kind == Quant::int4) correction = std::make_unique<Int4Correction>(X, rows);
  const Int4Correction* C = correction.get();
  // Two weight rows a block at 5 or more rows of x (2 x 8 accumulators), four below.
  const int64_t R = rows > 4 ? 2 : 4, blocks = W.out / R;
  at::parallel_for(0, blocks, 16 / R, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      if (R == 2) quant_rows_block<2>(W, X, C, Y, blk * R, rows);
      else quant_rows_block<4>(W, X, C, Y, blk * R, rows);
    }
  });
  for (int64_t o = blocks * R; o < W.out; ++o) quant_rows_block<1>(W, X, C, Y, o, rows);
}
#else

// The same sums in plain loops (the compiler vectorises the inner ones).
static void quantized_dot(const QuantWeight& W, const QuantRows& X, float* Y, int64_t rows) {
  at::parallel_for(0, W.out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const uint8_t* row = W.row(o);
      for (int64_t b = 0; b < rows; ++b) {
        const int8_t* x = X.q.data() + b * X.padded;
        if (W.kind == Quant::int8) {
          const int8_t* w = reinterpret_cast<const int8_t*>(row);
          int32_t dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < W.in; ++j) dot += static_cast<int32_t>(w[j]) * x[j];
          Y[b * W.out + o] = static_cast<float>(dot) * (X.scale[b] * W.int8_scale(o));
          continue;
        }
        const int64_t half = W.group / 2, groups = W.padded / W.group;
        float total = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
          const uint8_t* q = row + g * (2 + half) + 2;
          const int8_t* xg = x + g * W.group;
          int32_t dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < half; ++j)
            dot += (static_cast<int32_t>(q[j] & 15) - 8) * xg[j] + (static_cast<int32_t>(q[j] >> 4) - 8) * xg[j + half];
          total += static_cast<float>(dot) * W.int4_scale(o, g);
        }
        Y[b * W.out + o] = total * X.scale[b];
      }
    }
  });
}
#endif

// Y (rows, out) = quantize_rows(X) times the packed weight, X (rows, in) fp32; any number of rows.
static void quantized_linear_into(const torch::Tensor& weight, const float* X, float* Y, int64_t rows, int64_t in) {
  const QuantWeight W = QuantWeight::of(weight, in);
  const QuantRows Xq(X, rows, in, W.padded);
  quantized_dot(W, Xq, Y, rows);
}
