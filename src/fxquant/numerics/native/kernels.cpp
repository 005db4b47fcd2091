// fxquant native CPU kernels: one memory pass where pure torch makes several.
//
// Every kernel computes exactly the IEEE operations of the pure-torch formula it replaces
// (same operations, same order, same rounding; compiled without -ffast-math and without
// floating-point contraction), so results are bit-identical.  The Python side
// (fxquant/numerics/native.py) checks that once per process on tricky inputs before using them,
// and the test suite checks it on exhaustive sweeps.
//
//   fake_quant(x, scale, zero_point, qmin, qmax, inner, reciprocal, with_mask) -> (out, mask)
//       r    = round_half_even(x / s)        (or x * (1 / s) with `reciprocal`)
//       c    = clamp(r, qmin - zp, qmax - zp) (NaN stays NaN)
//       out  = c * s + 0.0                   (+0.0 turns -0.0 into +0.0)
//       mask = (r == c)                      (uint8; the straight-through estimator's mask)
//     x is contiguous, viewed as [outer, C, inner]; scale / zero_point have C elements (C = 1:
//     per tensor); without `with_mask` the mask is empty.
//   masked_grad(grad, mask) -> grad * float(mask)
//   histogram(x, shift, bins) -> int64 [bins]
//       bin = floor(x * 2**shift) + bins / 2, where -0.0 from an underflowing negative x
//       counts as -1 (every x must land in [0, bins): the caller sizes the range)
//   histogram_observe(x, hist!, range_exp, min_val!, max_val!) -> status
//       float32: the counts of x at the range 2**range_exp added to hist and min_val / max_val
//       taken to torch.minimum / maximum with x's aminmax, in place, in that same pass; status
//       1 (nothing touched) when a value lies outside the range (or is NaN / Inf) or x holds a
//       -0.0 (whose sign in a zero minimum only aminmax's own order decides)
//   div_channel_backward(grad, out, d, inner) -> (grad / d, (out / d) * grad)
//     the two element-wise parts of the gradient of out = y / d, d per channel [C] of a
//     contiguous [outer, C, inner] tensor.
//   div_channel_backward_sum(grad, out, d, inner, lanes) -> (grad / d, sum of (out / d) * grad)
//       the sum over every dimension but C in at::sum's order (no tensor of the products);
//   set_sum_lanes(lanes): the channel division's backward uses it (0: off; set after the
//       self-check matched at::sum with torch's vector width)
//
//   observe_qparams(x, min_val!, max_val!, averaging, axis, qmin, qmax, symmetric, is_signed,
//                   power_of_two, eps, bits, compute) -> (scale, zero_point, status)
//       MinMaxObserver (averaging < 0) / MovingAverageMinMaxObserver statistics of x, then
//       choose_qparams of the new range, in one call: the same ATen operations as the Python
//       observers (aminmax / amin / amax, minimum / maximum, add_ with alpha) and, per tensor,
//       the float64 arithmetic of fxquant.numerics.qparams._choose_qparams_float.  status 0:
//       done; 1: nothing touched (the caller runs its Python path: first per-channel batch,
//       NaN / Inf, empty or non-float32 x); 2: statistics updated, qparams left to the caller
//       (cases the Python arithmetic handles differently: power of two, zero scales ...).
//
//   scale_round(x, out!, mult, inner, add, with_add, post, with_post, lo, hi, with_clamp)
//       float32 only; x and out contiguous, viewed as [outer, C, inner], mult C float32 values:
//       v = x * mult[c]; v = (v + 1.5 * 2**23) - 1.5 * 2**23 (round half to even below 2**22);
//       then clamp(v, lo, hi) (with_clamp), v + add (with_add) and v * post (with_post); out
//       may be x itself.  The arithmetic
//       of the runtime simulation's code recovery and requantization
//       (fxquant.runtime_math.ort.round_).
//   grid_lookup(x, scale, inv, zp, qmin, qmax, table) -> (out, ok)
//       float32: the code c = clamp(round(x * inv) + zp, qmin, qmax) of every element (as
//       scale_round), out = table[c - qmin]; ok is False (and out unspecified) unless every
//       element equals its grid value (c - zp) * scale (NaN never does): a function of the
//       grid's values evaluated once per code and gathered.
//
//   mlas_logistic(x, coeffs, times_x) -> out
//       ONNX Runtime's Sigmoid (MLAS MlasComputeLogistic, FMA3: clamp(p(t) / q(t) + 0.5, 0, 1)
//       with t = clamp(x, -18, 18), each polynomial step a true fused multiply-add; coeffs:
//       the 5 numerator and 6 denominator float32 coefficients), times x with times_x.
//
//   ort_layer_norm(x, weight, bias, eps) -> out
//       ONNX Runtime's float LayerNormalization of each row of a contiguous float32 (rows, n)
//       x, n a multiple of 8 (fxquant.runtime_math.ort.layer_norm).
//
//   same_bytes(a[], b[]) -> int
//       1 when each a[i] holds the bytes of b[i] (dtype and shape included; None pairs match),
//       0 when one does not, -1 when a tensor is not a contiguous CPU tensor: the kept-constant
//       check of the runtime simulation (memcmp).
//
//   qlinear_add(a, b, params) -> out   (params: float32 [inv_a, za, inv_b, zb, ra, rb, fixed,
//                                        qmin, qmax, zc, sc])
//       ONNX Runtime's QLinearAdd (MLAS, FMA kernel) of two float32 tensors of one shape on
//       their grids, dequantized: qa = round(a * inv_a) + za (as scale_round), qb likewise;
//       v = fma(qa, ra, fma(qb, rb, fixed)) (true fused multiply-adds, as MLAS's vfmadd);
//       q = clamp(round(v), qmin, qmax); out = (q - zc) * sc.
//
//   observe_clamped(x, min_val!, max_val!, lo, hi, averaging, ...) -> (scale, zero_point, status)
//       observe_qparams (per tensor) of clamp(x, lo, hi) from x's own range
//   act_observe(x, min_val!, max_val!, lo, hi, averaging, ...) -> (clamp(x, lo, hi), status)
//       the activation's output and its observation (statistics only) in one pass
//
// Some come as autograd operators whose backward runs in C++ (no Python function call per
// quantizer and step):
//   fake_quant_ste(x, scale, zero_point, qmin, qmax, inner, reciprocal) -> out
//       forward fake_quant with the mask saved; backward masked_grad (grad * mask)
//   act_fake_quant_ste(x, scale, zero_point, qmin, qmax, lo, hi, gate_hi, reciprocal) -> out
//       fake_quant_ste(relu6(x)) (hardtanh(lo, hi)) or of relu(x) (!gate_hi, (0, inf)) in one
//       pass; backward: the activation's backward of the quantizer's (a 1-byte code per value)
//   channel_divide(y, d) -> y / d   (d shaped [1, C, 1, ...], y contiguous [N, C, ...])
//       backward: grad / d, and -sum((out / d) * grad) over the dimensions where d is 1,
//       the bits of autograd's own rule for a division (negation is exact);
//   channel_divide_(y!, d): the same, written over y
//   bn_fold_scale(w, var, gamma?, eps) -> (w * sf, sf, min |sf|), sf = gamma / sqrt(var + eps)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kGrain = 1 << 15;

template <typename T>
inline T round_half_even(T v) {
  return std::nearbyint(v);  // default rounding mode: to nearest, ties to even
}

template <typename T>
inline T clamp_nan(T v, T lo, T hi) {
  // torch.clamp: NaN propagates; otherwise min(max(v, lo), hi)
  T a = v < lo ? lo : v;
  return a > hi ? hi : a;
}

template <typename T, bool kRecip, bool kMask>
void fq_row(const T* __restrict x, T* __restrict out, uint8_t* __restrict mask, int64_t n,
            T s, T inv, T lo, T hi) {
  const T zero = T(0);
  for (int64_t i = 0; i < n; ++i) {
    T v = kRecip ? x[i] * inv : x[i] / s;
    T r = round_half_even(v);
    T c = clamp_nan(r, lo, hi);
    out[i] = c * s + zero;
    if (kMask) mask[i] = static_cast<uint8_t>(r == c);
  }
}

template <typename T, bool kRecip, bool kMask>
void fq_channels_last(const T* __restrict x, T* __restrict out, uint8_t* __restrict mask,
                      int64_t n_channels, const T* s, const T* inv, const T* lo, const T* hi) {
  const T zero = T(0);
  for (int64_t c = 0; c < n_channels; ++c) {
    T v = kRecip ? x[c] * inv[c] : x[c] / s[c];
    T r = round_half_even(v);
    T q = clamp_nan(r, lo[c], hi[c]);
    out[c] = q * s[c] + zero;
    if (kMask) mask[c] = static_cast<uint8_t>(r == q);
  }
}

template <typename T, bool kRecip, bool kMask>
void fq_impl(const at::Tensor& x, at::Tensor& out, at::Tensor& mask, const at::Tensor& scale,
             const at::Tensor& zp, int64_t qmin, int64_t qmax, int64_t inner) {
  const int64_t n_channels = scale.numel();
  const int64_t numel = x.numel();
  const T* xp = x.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  uint8_t* mp = kMask ? reinterpret_cast<uint8_t*>(mask.mutable_data_ptr<bool>()) : nullptr;
  const T* sp = scale.const_data_ptr<T>();
  // the zero points as T (zp.to(T)): an int32 tensor read directly, others converted
  const bool int_zp = zp.scalar_type() == at::kInt && zp.is_contiguous();
  const at::Tensor zpt = int_zp ? zp : zp.to(x.scalar_type()).contiguous();
  const int32_t* zpi = int_zp ? zpt.const_data_ptr<int32_t>() : nullptr;
  const T* zpf = int_zp ? nullptr : zpt.const_data_ptr<T>();
  std::vector<T> inv(n_channels), lo(n_channels), hi(n_channels);
  for (int64_t c = 0; c < n_channels; ++c) {
    const T z = int_zp ? static_cast<T>(zpi[c]) : zpf[c];
    inv[c] = T(1) / sp[c];
    lo[c] = static_cast<T>(qmin) - z;  // exact: integers below 2**24 in magnitude
    hi[c] = static_cast<T>(qmax) - z;
  }
  const T* lop = lo.data();
  const T* hip = hi.data();
  if (n_channels == 1) {
    at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
      fq_row<T, kRecip, kMask>(xp + b, op + b, kMask ? mp + b : nullptr, e - b, sp[0], inv[0],
                               lop[0], hip[0]);
    });
    return;
  }
  if (inner == 1) {  // channels on the last axis: rows of C elements
    const int64_t rows = numel / n_channels;
    const int64_t grain = std::max<int64_t>(1, kGrain / n_channels);
    at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t off = r * n_channels;
        fq_channels_last<T, kRecip, kMask>(xp + off, op + off, kMask ? mp + off : nullptr,
                                           n_channels, sp, inv.data(), lop, hip);
      }
    });
    return;
  }
  const int64_t rows = numel / inner;  // outer * C rows of `inner` contiguous elements
  const int64_t grain = std::max<int64_t>(1, kGrain / inner);
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t c = r % n_channels;
      const int64_t off = r * inner;
      fq_row<T, kRecip, kMask>(xp + off, op + off, kMask ? mp + off : nullptr, inner, sp[c],
                               inv[c], lop[c], hip[c]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> fake_quant(const at::Tensor& x, const at::Tensor& scale_in,
                                              const at::Tensor& zero_point, int64_t qmin,
                                              int64_t qmax, int64_t inner, bool reciprocal,
                                              bool with_mask) {
  TORCH_CHECK(x.device().is_cpu() && scale_in.device().is_cpu() && zero_point.device().is_cpu(),
              "fxquant::fake_quant: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fxquant::fake_quant: float32 / float64 only");
  const int64_t n_channels = scale_in.numel();
  // per tensor, x may also be a dense tensor in another dimension order (a transposed view):
  // the op is element-wise, so its memory is processed in storage order (data_ptr is its lowest
  // address); out and mask take x's strides (empty_like preserves a dense layout)
  TORCH_CHECK(x.is_contiguous() || (n_channels == 1 && inner == 1 &&
                                    x.is_non_overlapping_and_dense()),
              "fxquant::fake_quant: x must be contiguous (or dense, per tensor)");
  TORCH_CHECK(n_channels >= 1 && zero_point.numel() == n_channels,
              "fxquant::fake_quant: scale / zero point sizes differ");
  // as the pure-torch path: scale.to(x.dtype); bounds qmin - zp and qmax - zp in x's dtype
  // (exact: integers below 2**24 in magnitude)
  at::Tensor scale = scale_in.to(x.scalar_type()).contiguous().reshape({n_channels});
  at::Tensor zp = zero_point.reshape({n_channels});
  TORCH_CHECK(inner >= 1 && x.numel() % (n_channels * inner) == 0,
              "fxquant::fake_quant: x does not split into [outer, C, inner]");
  at::Tensor out = at::empty_like(x);
  at::Tensor mask = with_mask ? at::empty_like(x, x.options().dtype(at::kBool))
                              : at::empty({0}, x.options().dtype(at::kBool));
  if (x.numel() == 0) return {out, mask};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fxquant_fake_quant", [&] {
    if (reciprocal) {
      if (with_mask) fq_impl<scalar_t, true, true>(x, out, mask, scale, zp, qmin, qmax, inner);
      else fq_impl<scalar_t, true, false>(x, out, mask, scale, zp, qmin, qmax, inner);
    } else {
      if (with_mask) fq_impl<scalar_t, false, true>(x, out, mask, scale, zp, qmin, qmax, inner);
      else fq_impl<scalar_t, false, false>(x, out, mask, scale, zp, qmin, qmax, inner);
    }
  });
  return {out, mask};
}

template <typename T>
void masked_grad_impl(const T* __restrict g, const uint8_t* __restrict m, T* __restrict o,
                      int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] * static_cast<T>(m[i]);
}

at::Tensor masked_grad(const at::Tensor& grad, const at::Tensor& mask) {
  TORCH_CHECK(grad.device().is_cpu() && mask.device().is_cpu(),
              "fxquant::masked_grad: CPU tensors only");
  TORCH_CHECK(grad.is_contiguous() && mask.is_contiguous() && grad.sizes() == mask.sizes(),
              "fxquant::masked_grad: contiguous tensors of one shape only");
  TORCH_CHECK(mask.scalar_type() == at::kBool, "fxquant::masked_grad: mask must be bool");
  at::Tensor out = at::empty_like(grad);
  const uint8_t* mp = reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fxquant_masked_grad", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, grad.numel(), kGrain, [&](int64_t b, int64_t e) {
      masked_grad_impl<scalar_t>(gp + b, mp + b, op + b, e - b);
    });
  });
  return out;
}

template <typename T>
void bin_indices(const T* __restrict x, int64_t n, T factor, int32_t half,
                 int32_t* __restrict idx) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    T fl = std::floor(v * factor);
    fl = (fl == T(0) && v < T(0)) ? T(-1) : fl;  // an underflowing negative value: bin -1
    idx[i] = static_cast<int32_t>(fl) + half;
  }
}

// exact running minimum / maximum of float32 blocks, whether a block holds a NaN, and whether
// it holds a -0.0 (the sign of a zero minimum / maximum is then the one torch.aminmax's
// evaluation order gives, which only aminmax itself reproduces; without a -0.0 every zero is
// +0.0 and the extremes of the non-NaN values have one bit pattern whatever the order)
struct BlockRange {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  bool neg_zero = false;
  bool nan = false;

  void add(const float* __restrict x, int64_t n) {
    int64_t i = 0;
    float l = lo, h = hi;
    uint32_t nz = 0, nn = 0;
    // four independent accumulators per extreme (one would wait on the min / max latency at
    // every vector); a NaN v is dropped by the min / max of a later vector and counted apart
#if defined(__AVX512F__)
    __m512 vl[4], vh[4];
    for (int a = 0; a < 4; ++a) {
      vl[a] = _mm512_set1_ps(l);
      vh[a] = _mm512_set1_ps(h);
    }
    __mmask16 knan = 0, knz = 0;
    const __m512i negzero = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    for (; i + 64 <= n; i += 64) {
      for (int a = 0; a < 4; ++a) {
        const __m512 v = _mm512_loadu_ps(x + i + 16 * a);
        vl[a] = _mm512_min_ps(vl[a], v);
        vh[a] = _mm512_max_ps(vh[a], v);
        knan = static_cast<__mmask16>(knan | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
        knz = static_cast<__mmask16>(
            knz | _mm512_cmpeq_epi32_mask(_mm512_castps_si512(v), negzero));
      }
    }
    for (; i + 16 <= n; i += 16) {
      const __m512 v = _mm512_loadu_ps(x + i);
      vl[0] = _mm512_min_ps(vl[0], v);
      vh[0] = _mm512_max_ps(vh[0], v);
      knan = static_cast<__mmask16>(knan | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
      knz = static_cast<__mmask16>(
          knz | _mm512_cmpeq_epi32_mask(_mm512_castps_si512(v), negzero));
    }
    alignas(64) float lanes_lo[64], lanes_hi[64];
    for (int a = 0; a < 4; ++a) {
      _mm512_store_ps(lanes_lo + 16 * a, vl[a]);
      _mm512_store_ps(lanes_hi + 16 * a, vh[a]);
    }
    for (int k = 0; k < 64; ++k) {
      l = lanes_lo[k] < l ? lanes_lo[k] : l;
      h = lanes_hi[k] > h ? lanes_hi[k] : h;
    }
    nz = knz ? 1u : 0u;
    nn = knan ? 1u : 0u;
#elif defined(__AVX2__)
    __m256 vl[4], vh[4], vnan[4];
    __m256i vnz[4];
    for (int a = 0; a < 4; ++a) {
      vl[a] = _mm256_set1_ps(l);
      vh[a] = _mm256_set1_ps(h);
      vnan[a] = _mm256_setzero_ps();
      vnz[a] = _mm256_setzero_si256();
    }
    const __m256i negzero = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    for (; i + 32 <= n; i += 32) {
      for (int a = 0; a < 4; ++a) {
        const __m256 v = _mm256_loadu_ps(x + i + 8 * a);
        vl[a] = _mm256_min_ps(vl[a], v);
        vh[a] = _mm256_max_ps(vh[a], v);
        vnan[a] = _mm256_or_ps(vnan[a], _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        vnz[a] = _mm256_or_si256(vnz[a],
                                 _mm256_cmpeq_epi32(_mm256_castps_si256(v), negzero));
      }
    }
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      vl[0] = _mm256_min_ps(vl[0], v);
      vh[0] = _mm256_max_ps(vh[0], v);
      vnan[0] = _mm256_or_ps(vnan[0], _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      vnz[0] = _mm256_or_si256(vnz[0], _mm256_cmpeq_epi32(_mm256_castps_si256(v), negzero));
    }
    alignas(32) float lanes_lo[32], lanes_hi[32];
    for (int a = 0; a < 4; ++a) {
      _mm256_store_ps(lanes_lo + 8 * a, vl[a]);
      _mm256_store_ps(lanes_hi + 8 * a, vh[a]);
      nz |= _mm256_testz_si256(vnz[a], vnz[a]) ? 0u : 1u;
      nn |= _mm256_testz_ps(vnan[a], vnan[a]) ? 0u : 1u;
    }
    for (int k = 0; k < 32; ++k) {
      l = lanes_lo[k] < l ? lanes_lo[k] : l;
      h = lanes_hi[k] > h ? lanes_hi[k] : h;
    }
#endif
    for (; i < n; ++i) {
      const float v = x[i];
      l = v < l ? v : l;
      h = v > h ? v : h;
      uint32_t bits;
      std::memcpy(&bits, &x[i], sizeof(bits));
      nz |= static_cast<uint32_t>(bits == 0x80000000u);
      nn |= static_cast<uint32_t>(v != v);
    }
    lo = l;
    hi = h;
    neg_zero = neg_zero || nz != 0;
    nan = nan || nn != 0;
  }
};

template <typename T, bool kRange = false>
void histogram_impl(const T* __restrict x, int64_t n, T factor, int64_t bins,
                    int64_t* __restrict counts, bool* bad, BlockRange* range = nullptr) {
  // indices computed in vectorised blocks, then counted into four interleaved 32-bit
  // sub-histograms (consecutive equal bins do not wait on one another), flushed before they
  // could overflow
  constexpr int kWays = 4;
  constexpr int64_t kBlock = 1024;
  const int32_t half = static_cast<int32_t>(bins / 2);
  std::vector<uint32_t> local(static_cast<size_t>(kWays * bins), 0);
  uint32_t* lp = local.data();
  int32_t idx[kBlock];
  uint32_t range_check = 0;
  int64_t since_flush = 0;
  int64_t zeros = 0;  // elements of the bin of zero counted apart (below)
  auto flush = [&] {
    for (int w = 0; w < kWays; ++w)
      for (int64_t b = 0; b < bins; ++b) {
        counts[b] += lp[w * bins + b];
        lp[w * bins + b] = 0;
      }
    since_flush = 0;
  };
#if defined(__AVX512F__)
  int32_t rest[kBlock + 16];  // the indices outside the bin of zero (written 16 at a time)
  const __m512i zero_bin = _mm512_set1_epi32(half);
#endif
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t m = std::min(kBlock, n - start);
    bin_indices<T>(x + start, m, factor, half, idx);
    uint32_t acc = 0;
    for (int64_t i = 0; i < m; ++i) acc |= static_cast<uint32_t>(idx[i]);
    if (acc >= static_cast<uint32_t>(bins)) {  // some index negative or >= bins
      range_check = 1;
      break;
    }
    if constexpr (kRange) range->add(x + start, m);
    const int32_t* sc = idx;
    int64_t ns = m;
#if defined(__AVX512F__)
    // A block whose values are a quarter or more in the bin of zero (about half of a ReLU's
    // outputs are) counts that bin with vector compares and scatters only the other indices:
    // runs of one bin make the scatter wait on itself (standalone harness, 2**19 values:
    // ReLU-like 0.87 -> 0.54 ns per value; Gaussian 0.59 -> 0.63 for the zero count)
    __mmask16 in_zero_bin[kBlock / 16];  // one compare per vector, kept for the compaction
    int64_t in_zero = 0, j = 0;
    for (; j + 16 <= m; j += 16) {
      in_zero_bin[j / 16] = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(idx + j), zero_bin);
      in_zero += __builtin_popcount(static_cast<unsigned>(in_zero_bin[j / 16]));
    }
    if (in_zero * 4 >= m) {
      ns = 0;
      for (j = 0; j + 16 <= m; j += 16) {
        const __mmask16 z = in_zero_bin[j / 16];
        _mm512_storeu_si512(rest + ns, _mm512_maskz_compress_epi32(
                                           static_cast<__mmask16>(~z), _mm512_loadu_si512(idx + j)));
        ns += 16 - __builtin_popcount(static_cast<unsigned>(z));
      }
      for (; j < m; ++j) {
        if (idx[j] == half) {
          ++in_zero;
        } else {
          rest[ns++] = idx[j];
        }
      }
      zeros += in_zero;
      sc = rest;
    }
#endif
    int64_t i = 0;
    for (; i + kWays <= ns; i += kWays) {
      ++lp[sc[i]];
      ++lp[bins + sc[i + 1]];
      ++lp[2 * bins + sc[i + 2]];
      ++lp[3 * bins + sc[i + 3]];
    }
    for (; i < ns; ++i) ++lp[sc[i]];
    since_flush += m;
    if (since_flush >= (int64_t(1) << 30)) flush();
  }
  flush();
  counts[half] += zeros;
  if (range_check) *bad = true;
}

// a whole-tensor pass split into at most one chunk per thread (at least 2**16 elements each):
// thread_chunks(n) of them, fn(chunk, begin, end) run on each non-empty one in parallel
int64_t thread_chunks(int64_t n) {
  const int64_t grain = 1 << 16;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / grain));
}

template <typename F>
void run_chunks(int64_t n, int64_t chunks, const F& fn) {
  const int64_t per = (n + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const int64_t lo = c * per;
      const int64_t hi = std::min(n, lo + per);
      if (hi > lo) fn(c, lo, hi);
    }
  });
}

at::Tensor histogram(const at::Tensor& x, int64_t shift, int64_t bins) {
  TORCH_CHECK(x.device().is_cpu(), "fxquant::histogram: CPU tensors only");
  TORCH_CHECK(x.is_contiguous(), "fxquant::histogram: x must be contiguous");
  TORCH_CHECK(bins >= 2 && (bins & (bins - 1)) == 0, "fxquant::histogram: bins must be 2**k");
  TORCH_CHECK(bins <= (int64_t(1) << 30), "fxquant::histogram: at most 2**30 bins");
  const int64_t n = x.numel();
  const int64_t chunks = thread_chunks(n);
  at::Tensor partial = at::zeros({chunks, bins}, x.options().dtype(at::kLong));
  int64_t* pp = partial.mutable_data_ptr<int64_t>();
  std::vector<char> bad(static_cast<size_t>(chunks), 0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fxquant_histogram", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t factor = static_cast<scalar_t>(std::ldexp(1.0, static_cast<int>(shift)));
    run_chunks(n, chunks, [&](int64_t c, int64_t lo, int64_t hi) {
      bool chunk_bad = false;
      histogram_impl<scalar_t>(xp + lo, hi - lo, factor, bins, pp + c * bins, &chunk_bad);
      bad[c] = chunk_bad;
    });
  });
  for (int64_t c = 0; c < chunks; ++c)
    TORCH_CHECK(!bad[c], "fxquant::histogram: a value lies outside the histogram's range");
  return chunks == 1 ? partial[0] : partial.sum(0);
}

// A per-tensor HistogramObserver's whole observation of a float32 batch in one pass, if the
// batch fits the current range: status 0 (hist += counts, min_val / max_val updated in place,
// as torch.minimum / torch.maximum of the batch's aminmax); 1: nothing touched (a value at or
// beyond 2**exp -- the range must grow --, NaN / Inf, a -0.0, other dtypes): the caller runs its
// two-pass path.
int64_t histogram_observe(const at::Tensor& x, at::Tensor& hist, const at::Tensor& range_exp,
                          at::Tensor& min_val, at::Tensor& max_val) {
  constexpr int64_t kUntouchedStatus = 1;
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || !x.is_contiguous() ||
      x.numel() == 0 || hist.scalar_type() != at::kLong || hist.dim() != 1 ||
      !hist.is_contiguous() || !hist.device().is_cpu() || range_exp.numel() != 1 ||
      range_exp.scalar_type() != at::kLong || min_val.numel() != 1 || max_val.numel() != 1 ||
      min_val.scalar_type() != at::kFloat || max_val.scalar_type() != at::kFloat ||
      !min_val.device().is_cpu() || !max_val.device().is_cpu() || !range_exp.device().is_cpu())
    return kUntouchedStatus;
  const int64_t bins = hist.size(0);
  if (bins < 2 || (bins & (bins - 1)) != 0 || bins > (int64_t(1) << 30)) return kUntouchedStatus;
  int log_half = 0;
  while ((int64_t(1) << (log_half + 1)) < bins) ++log_half;
  const int64_t shift = log_half - range_exp.item<int64_t>();
  if (shift > 126 || shift < -126) return kUntouchedStatus;  // factor not a normal float32
  const float factor = std::ldexp(1.0f, static_cast<int>(shift));
  const int64_t n = x.numel();
  const int64_t chunks = thread_chunks(n);
  std::vector<int64_t> partial(static_cast<size_t>(chunks * bins), 0);
  std::vector<BlockRange> ranges(static_cast<size_t>(chunks));
  std::vector<char> bad(static_cast<size_t>(chunks), 0);
  const float* xp = x.const_data_ptr<float>();
  run_chunks(n, chunks, [&](int64_t c, int64_t lo, int64_t hi) {
    bool chunk_bad = false;
    histogram_impl<float, true>(xp + lo, hi - lo, factor, bins, partial.data() + c * bins,
                                &chunk_bad, &ranges[c]);
    bad[c] = chunk_bad;
  });
  BlockRange all;
  for (int64_t c = 0; c < chunks; ++c) {
    if (bad[c] || ranges[c].neg_zero) return kUntouchedStatus;
    all.lo = std::min(all.lo, ranges[c].lo);
    all.hi = std::max(all.hi, ranges[c].hi);
  }
  // -2**exp itself lands in bin 0, but the observer's rule (|x| < 2**exp) grows the range for it
  if (-all.lo * factor >= static_cast<float>(bins / 2)) return kUntouchedStatus;
  int64_t* hp = hist.mutable_data_ptr<int64_t>();
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t k = 0; k < bins; ++k) hp[k] += partial[c * bins + k];
  float* mn = min_val.mutable_data_ptr<float>();
  float* mx = max_val.mutable_data_ptr<float>();
  *mn = std::min(*mn, all.lo);  // torch.minimum of two non-NaN floats: std::min
  *mx = std::max(*mx, all.hi);
  return 0;
}

template <typename T>
void div_backward_row(const T* __restrict g, const T* __restrict o, T* __restrict gy,
                      T* __restrict gd, int64_t n, T d) {
  for (int64_t i = 0; i < n; ++i) {
    gy[i] = g[i] / d;
    gd[i] = (o[i] / d) * g[i];
  }
}

std::tuple<at::Tensor, at::Tensor> div_channel_backward(const at::Tensor& grad,
                                                        const at::Tensor& out,
                                                        const at::Tensor& d, int64_t inner) {
  TORCH_CHECK(grad.device().is_cpu(), "fxquant::div_channel_backward: CPU tensors only");
  TORCH_CHECK(grad.is_contiguous() && out.is_contiguous() && d.is_contiguous() &&
                  grad.sizes() == out.sizes(),
              "fxquant::div_channel_backward: contiguous tensors of one shape only");
  TORCH_CHECK(grad.scalar_type() == out.scalar_type() && d.scalar_type() == out.scalar_type(),
              "fxquant::div_channel_backward: one dtype only");
  const int64_t n_channels = d.numel();
  TORCH_CHECK(inner >= 1 && grad.numel() % (n_channels * inner) == 0,
              "fxquant::div_channel_backward: grad does not split into [outer, C, inner]");
  at::Tensor gy = at::empty_like(grad);
  at::Tensor gd = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fxquant_div_channel_backward", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* op = out.const_data_ptr<scalar_t>();
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    scalar_t* gyp = gy.mutable_data_ptr<scalar_t>();
    scalar_t* gdp = gd.mutable_data_ptr<scalar_t>();
    const int64_t rows = grad.numel() / inner;
    const int64_t grain = std::max<int64_t>(1, kGrain / inner);
    at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t off = r * inner;
        div_backward_row<scalar_t>(gp + off, op + off, gyp + off, gdp + off, inner,
                                   dp[r % n_channels]);
      }
    });
  });
  return {gy, gd};
}

// -- torch.sum's order, for the division's reduction --------------------------------------------
// at::sum of a contiguous float32 [outer, C, inner] tensor over every dimension but C (the sum
// autograd's division rule takes) adds, for each channel, the rows n = 0 .. outer - 1 in order
// to an output that starts at +0.0; each row of `inner` elements is summed by torch's cascade
// (SumKernel.cpp: rows of at least one vector in `lanes`-wide vectors, four of them
// interleaved, in levels of 16 and more; shorter rows in scalars, four interleaved).  The steps
// below follow that order, so the sum needs no tensor of the division's products: one pass
// fewer over memory, and one buffer fewer.  Pinned against at::sum at load
// (selfcheck.sum_lanes_match); where it differs the kernel is not used (set_sum_lanes).
std::atomic<int64_t> g_sum_lanes{0};

int64_t ceil_log2(int64_t x) {  // ATen's utils::CeilLog2
  if (x <= 2) return 1;
  int64_t bits = 0;
  for (uint64_t v = static_cast<uint64_t>(x) - 1; v; v >>= 1) ++bits;
  return bits;
}

// L floats as one GCC / Clang vector (the compiler picks the instructions: one AVX2 / AVX-512
// register where -march=native has it); element-wise + * / are the IEEE operations of scalars
template <int L>
struct Lanes {
  typedef float type __attribute__((vector_size(L * sizeof(float))));
};

template <int L>
inline typename Lanes<L>::type load_lanes(const float* p) {
  typename Lanes<L>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// multi_row_sum of nrows = 4 interleaved rows, then row_sum's fold of the four: the values are
// `nvals` of type V (a float, or the L lanes of one vector), value(j) the j-th; the result is
// the four rows' sum, per lane
template <typename V, typename F>
V cascade_sum(int64_t nvals, F value) {
  constexpr int64_t kLevels = 4;
  const V zero{};
  const int64_t groups = nvals / 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(groups) / kLevels);
  const int64_t level_step = int64_t(1) << level_power;
  V acc[kLevels][4];
  for (int k = 0; k < 4; ++k) acc[0][k] = zero;
  int64_t i = 0;
  if (groups < level_step) {  // no level is ever carried: levels 1.. stay +0.0 throughout
    for (; i < groups; ++i)
      for (int k = 0; k < 4; ++k) acc[0][k] += value(i * 4 + k);
    for (int k = 0; k < 4; ++k) acc[0][k] += zero;  // adding them turns -0.0 into +0.0
  } else {
    const int64_t level_mask = level_step - 1;
    for (int64_t j = 1; j < kLevels; ++j)
      for (int k = 0; k < 4; ++k) acc[j][k] = zero;
    for (; i + level_step <= groups;) {
      for (int64_t j = 0; j < level_step; ++j, ++i)
        for (int k = 0; k < 4; ++k) acc[0][k] += value(i * 4 + k);
      for (int64_t j = 1; j < kLevels; ++j) {
        for (int k = 0; k < 4; ++k) {
          acc[j][k] += acc[j - 1][k];
          acc[j - 1][k] = zero;
        }
        if ((i & (level_mask << (j * level_power))) != 0) break;
      }
    }
    for (; i < groups; ++i)
      for (int k = 0; k < 4; ++k) acc[0][k] += value(i * 4 + k);
    for (int64_t j = 1; j < kLevels; ++j)
      for (int k = 0; k < 4; ++k) acc[0][k] += acc[j][k];
  }
  for (int64_t r = groups * 4; r < nvals; ++r) acc[0][0] += value(r);
  for (int k = 1; k < 4; ++k) acc[0][0] += acc[0][k];
  return acc[0][0];
}

// one row of n values as at::sum's inner loop sums it (vectorized_inner_sum / scalar_inner_sum):
// vec(j) gives the L values j * L .. j * L + L - 1 as a vector, one(k) the value k; each is
// asked for once
template <int L, typename FV, typename F1>
float torch_row_sum(int64_t n, FV vec, F1 one) {
  if (n < L) return cascade_sum<float>(n, one);
  const int64_t nvec = n / L;
  const typename Lanes<L>::type lanes = cascade_sum<typename Lanes<L>::type>(nvec, vec);
  float total = 0.0f;
  for (int64_t k = nvec * L; k < n; ++k) total += one(k);
  for (int l = 0; l < L; ++l) total += lanes[l];
  return total;
}

// rows [b, e) of div_channel_backward_sum: gy = g / d written, the sum of (o / d) * g of each
// row into row_sums[r]
template <int L>
void div_backward_rows_sum(const float* g, const float* o, const float* d, float* gy,
                           float* row_sums, int64_t b, int64_t e, int64_t inner,
                           int64_t n_channels) {
  using V = typename Lanes<L>::type;
  int64_t c = b % n_channels;
  if (inner >= L) {  // the products stay in registers
    for (int64_t r = b; r < e; ++r) {
      const int64_t off = r * inner;
      const float dr = d[c];
      V dv;
      for (int l = 0; l < L; ++l) dv[l] = dr;
      const float* gr = g + off;
      const float* orow = o + off;
      float* gyr = gy + off;
      row_sums[r] = torch_row_sum<L>(
          inner,
          [&](int64_t j) {
            const V gv = load_lanes<L>(gr + j * L);
            const V q = gv / dv;
            std::memcpy(gyr + j * L, &q, sizeof(q));
            return (load_lanes<L>(orow + j * L) / dv) * gv;
          },
          [&](int64_t k) {
            gyr[k] = gr[k] / dr;
            return (orow[k] / dr) * gr[k];
          });
      if (++c == n_channels) c = 0;
    }
    return;
  }
  // rows shorter than a vector: the divisions run over runs of whole rows of one outer index
  // (each element's divisor from `dexp`), the products into a buffer the sums then read
  std::vector<float> dexp(static_cast<size_t>(n_channels * inner));
  for (int64_t ch = 0; ch < n_channels; ++ch)
    std::fill_n(dexp.data() + ch * inner, inner, d[ch]);
  std::vector<float> t(static_cast<size_t>(n_channels * inner));
  for (int64_t r = b; r < e;) {
    const int64_t run = std::min(e - r, n_channels - c);
    const int64_t off = r * inner;
    const float* dx = dexp.data() + c * inner;
    float* tp = t.data();
    for (int64_t k = 0; k < run * inner; ++k) {
      gy[off + k] = g[off + k] / dx[k];
      tp[k] = (o[off + k] / dx[k]) * g[off + k];
    }
    for (int64_t j = 0; j < run; ++j) {
      const float* row = tp + j * inner;
      row_sums[r + j] = torch_row_sum<L>(
          inner, [&](int64_t v) { return load_lanes<L>(row + v * L); },
          [&](int64_t k) { return row[k]; });
    }
    r += run;
    c = 0;
  }
}

// (grad / d, sum over all but C of (out / d) * grad) for float32 [outer, C, inner], the sum in
// at::sum's order for `lanes`-wide vectors (8: AVX2, 16: AVX512)
std::tuple<at::Tensor, at::Tensor> div_channel_backward_sum(const at::Tensor& grad,
                                                            const at::Tensor& out,
                                                            const at::Tensor& d, int64_t inner,
                                                            int64_t lanes) {
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat && d.scalar_type() == at::kFloat,
              "fxquant::div_channel_backward_sum: float32 CPU tensors only");
  TORCH_CHECK(grad.is_contiguous() && out.is_contiguous() && d.is_contiguous() &&
                  grad.sizes() == out.sizes(),
              "fxquant::div_channel_backward_sum: contiguous tensors of one shape only");
  TORCH_CHECK(lanes == 8 || lanes == 16, "fxquant::div_channel_backward_sum: 8 or 16 lanes");
  const int64_t n_channels = d.numel();
  TORCH_CHECK(n_channels >= 1 && inner >= 1 && grad.numel() % (n_channels * inner) == 0,
              "fxquant::div_channel_backward_sum: grad does not split into [outer, C, inner]");
  const int64_t rows = grad.numel() / inner;
  at::Tensor gy = at::empty_like(grad);
  std::vector<float> row_sums(static_cast<size_t>(rows));
  const float* gp = grad.const_data_ptr<float>();
  const float* op = out.const_data_ptr<float>();
  const float* dp = d.const_data_ptr<float>();
  float* gyp = gy.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kGrain / inner);
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    if (lanes == 16)
      div_backward_rows_sum<16>(gp, op, dp, gyp, row_sums.data(), b, e, inner, n_channels);
    else
      div_backward_rows_sum<8>(gp, op, dp, gyp, row_sums.data(), b, e, inner, n_channels);
  });
  at::Tensor sums = at::zeros({n_channels}, grad.options());
  float* sp = sums.mutable_data_ptr<float>();
  for (int64_t r = 0, c = 0; r < rows; ++r) {
    sp[c] += row_sums[static_cast<size_t>(r)];
    if (++c == n_channels) c = 0;
  }
  return {gy, sums};
}

int64_t set_sum_lanes(int64_t lanes) {
  TORCH_CHECK(lanes == 0 || lanes == 8 || lanes == 16, "fxquant::set_sum_lanes: 0, 8 or 16");
  return g_sum_lanes.exchange(lanes);
}

// -- fused observer statistics + qparams -------------------------------------------------------
constexpr int64_t kDone = 0, kUntouched = 1, kObservedOnly = 2;

std::tuple<at::Tensor, at::Tensor> channel_aminmax(const at::Tensor& v) {
  at::Tensor lo = at::amin(v, 1), hi = at::amax(v, 1);
  if (at::logical_or(lo == 0, hi == 0).any().item<bool>()) return at::aminmax(v, 1);
  return {lo, hi};
}

bool all_finite(const at::Tensor& lo, const at::Tensor& hi) {
  if (lo.dim() == 0) return std::isfinite(lo.item<double>()) && std::isfinite(hi.item<double>());
  if (std::isfinite(at::sub(lo, hi).sum().item<double>())) return true;
  return at::isfinite(lo).all().item<bool>() && at::isfinite(hi).all().item<bool>();
}

bool has_stats(const at::Tensor& mn, const at::Tensor& mx) {
  if (mn.dim() == 0) return mn.item<double>() <= mx.item<double>();
  return mn.numel() > 0 && at::le(mn, mx).all().item<bool>();
}

float to_float32(double v) { return static_cast<float>(v); }  // nearest, ties to even

// fxquant.numerics.qparams._choose_qparams_float, step by step; false where it returns None
bool choose_scalar(double lo, double hi, int64_t qmin, int64_t qmax, bool symmetric,
                   bool is_signed, double eps, float* scale_out, int64_t* zp_out) {
  lo = std::min(lo, 0.0);
  hi = std::max(hi, 0.0);
  double scale, zp;
  if (symmetric) {
    const double amax = std::max(-lo, hi);
    if (is_signed) {
      zp = 0.0;
      scale = amax / static_cast<double>(qmax);
    } else {
      const int64_t mid = (qmin + qmax + 1) / 2;  // qmin >= 0: floor division
      zp = static_cast<double>(mid);
      scale = amax / static_cast<double>(qmax - mid);
    }
    scale = std::max(scale, eps);
    if (!(scale > 0.0 && scale < INFINITY)) return false;
  } else {
    scale = std::max((hi - lo) / static_cast<double>(qmax - qmin), eps);
    if (!(scale > 0.0 && scale < INFINITY)) return false;
    zp = std::min(std::max(static_cast<double>(qmin) - std::nearbyint(lo / scale),
                           static_cast<double>(qmin)), static_cast<double>(qmax));
  }
  const float s32 = std::max(to_float32(scale), to_float32(eps));
  if (!(s32 < INFINITY)) return false;
  *scale_out = s32;
  *zp_out = static_cast<int64_t>(zp);
  return true;
}

// torch.aminmax(x) of a whole contiguous float32 tensor in one pass on all threads (BlockRange
// per chunk): the same two values, since the extremes of finite, NaN-free data without a -0.0
// have one bit pattern; a NaN or a -0.0 anywhere hands the tensor to aminmax itself (the NaN to
// its propagation, the zero to its order), as does any other tensor.
std::tuple<at::Tensor, at::Tensor> tensor_aminmax(const at::Tensor& x) {
  if (x.scalar_type() != at::kFloat || !x.is_contiguous() || !x.device().is_cpu() ||
      x.numel() == 0)
    return at::aminmax(x);
  const int64_t n = x.numel();
  const int64_t chunks = thread_chunks(n);
  std::vector<BlockRange> ranges(static_cast<size_t>(chunks));
  const float* xp = x.const_data_ptr<float>();
  run_chunks(n, chunks, [&](int64_t c, int64_t lo, int64_t hi) { ranges[c].add(xp + lo, hi - lo); });
  BlockRange all;
  for (const BlockRange& r : ranges) {
    if (r.nan || r.neg_zero) return at::aminmax(x);
    all.lo = std::min(all.lo, r.lo);
    all.hi = std::max(all.hi, r.hi);
  }
  return {at::scalar_tensor(all.lo, x.options()), at::scalar_tensor(all.hi, x.options())};
}

// MinMaxObserver per channel on axis 0 of a contiguous float32 x (a weight), then the
// symmetric signed qparams, with plain loops instead of a dozen small ATen operations.  Every
// value is the one of the ATen path: amin / amax of a row and minimum / maximum of two floats
// are exact and order-free unless a zero is involved (its sign is then the evaluation order's),
// so any zero among the row extremes returns false and the ATen path runs; so do non-finite
// values, a first batch (min_val not yet [C]) and the grids the ATen path handles differently.
// The scale max(-min, max) clamped at 0, / qmax, clamped at eps: a zero there ends as eps
// whatever its sign.
bool observe_minmax_rows(const at::Tensor& x, at::Tensor& min_val, at::Tensor& max_val,
                         int64_t qmax, double eps, bool compute, at::Tensor* scale_out) {
  const int64_t c = x.size(0);
  if (c == 0 || !x.is_contiguous() || min_val.dim() != 1 || min_val.size(0) != c ||
      max_val.dim() != 1 || max_val.size(0) != c || !min_val.is_contiguous() ||
      !max_val.is_contiguous())
    return false;
  const int64_t k = x.numel() / c;
  if (k == 0) return false;
  std::vector<float> lo(static_cast<size_t>(c)), hi(static_cast<size_t>(c));
  const float* xp = x.const_data_ptr<float>();
  for (int64_t r = 0; r < c; ++r) {
    BlockRange row;
    row.add(xp + r * k, k);
    if (row.nan || !std::isfinite(row.lo) || !std::isfinite(row.hi) || row.lo == 0.0f ||
        row.hi == 0.0f)
      return false;
    lo[r] = row.lo;
    hi[r] = row.hi;
  }
  float* mn = min_val.mutable_data_ptr<float>();
  float* mx = max_val.mutable_data_ptr<float>();
  for (int64_t r = 0; r < c; ++r) {  // torch.minimum / maximum: no ties (no zero in lo / hi)
    mn[r] = lo[r] < mn[r] ? lo[r] : mn[r];
    mx[r] = hi[r] > mx[r] ? hi[r] : mx[r];
  }
  if (!compute) return true;
  at::Tensor scale = at::empty({c}, x.options());
  float* sp = scale.mutable_data_ptr<float>();
  const float q = static_cast<float>(qmax), e = static_cast<float>(eps);
  for (int64_t r = 0; r < c; ++r) {
    float v = std::max(-mn[r], mx[r]);
    v = v < 0.0f ? 0.0f : v;
    v = v / q;
    sp[r] = v < e ? e : v;
  }
  *scale_out = scale;
  return true;
}

// The per-tensor path of observe_qparams on plain values (no small ATen operations: each costs
// more than observing a small activation).  x contiguous float32 on the CPU, min_val / max_val
// 0-dim float32 CPU tensors.  Every value is the one of the ATen path below:
//  * the range: tensor_aminmax's (one pass; NaN, -0.0 and +-inf go to the ATen path);
//  * torch.minimum / maximum of two 0-dim tensors: the scalar std::min / std::max (a NaN, or
//    zeros of both signs, whose order decides, go to the ATen path);
//  * add_(lo - min_val, alpha) of 0-dim tensors: torch's scalar kernel, one fused multiply-add
//    with alpha as float32 (pinned by the self-check, selfcheck._check_observe);
//  * the qparams: choose_scalar on the updated statistics, as below.
// Returns false (nothing written) where the ATen path must decide.
// x's range as BlockRange finds it, on all threads; false where x holds a NaN or a -0.0
bool tensor_range_fast(const at::Tensor& x, float* lo_out, float* hi_out) {
  const int64_t n = x.numel();
  const int64_t chunks = thread_chunks(n);
  const float* xp = x.const_data_ptr<float>();
  BlockRange all;
  if (chunks == 1) {
    all.add(xp, n);
    if (all.nan || all.neg_zero) return false;
  } else {
    std::vector<BlockRange> ranges(static_cast<size_t>(chunks));
    run_chunks(n, chunks, [&](int64_t c, int64_t b, int64_t e) { ranges[c].add(xp + b, e - b); });
    for (const BlockRange& r : ranges) {
      if (r.nan || r.neg_zero) return false;
      all.lo = std::min(all.lo, r.lo);
      all.hi = std::max(all.hi, r.hi);
    }
  }
  *lo_out = all.lo;
  *hi_out = all.hi;
  return true;
}

bool observer_state_plain(const at::Tensor& min_val, const at::Tensor& max_val) {
  return min_val.dim() == 0 && max_val.dim() == 0 && max_val.device().is_cpu() &&
         !min_val.is_same(max_val);
}

// the scalar part of observe_tensor_fast: the statistics updated with the batch range [lo, hi]
// and the qparams; `like` gives the qparams' device
bool observe_range_fast(float lo, float hi, at::Tensor& min_val, at::Tensor& max_val,
                        double averaging, int64_t qmin, int64_t qmax, bool symmetric,
                        bool is_signed, bool power_of_two, double eps, bool compute,
                        const at::Tensor& like, std::tuple<at::Tensor, at::Tensor, int64_t>* out) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return false;
  float* mn = min_val.mutable_data_ptr<float>();
  float* mx = max_val.mutable_data_ptr<float>();
  const float m0 = *mn, x0 = *mx;
  if (std::isnan(m0) || std::isnan(x0)) return false;
  auto order_decides = [](float a, float b) {
    return a == 0.0f && b == 0.0f && std::signbit(a) != std::signbit(b);
  };
  float m1, x1;
  if (averaging < 0) {  // MinMaxObserver._combine
    if (order_decides(m0, lo) || order_decides(x0, hi)) return false;
    m1 = std::min(m0, lo);
    x1 = std::max(x0, hi);
  } else if (!(static_cast<double>(m0) <= static_cast<double>(x0))) {  // first batch
    m1 = lo;
    x1 = hi;
  } else {
    const float a = static_cast<float>(averaging);
    m1 = std::fma(a, lo - m0, m0);
    x1 = std::fma(a, hi - x0, x0);
  }
  *mn = m1;
  *mx = x1;
  const at::Tensor none;
  if (!compute || power_of_two || !(static_cast<double>(m1) <= static_cast<double>(x1))) {
    *out = {none, none, kObservedOnly};
    return true;
  }
  float s32;
  int64_t zp;
  if (!choose_scalar(m1, x1, qmin, qmax, symmetric, is_signed, eps, &s32, &zp)) {
    *out = {none, none, kObservedOnly};
    return true;
  }
  *out = {at::scalar_tensor(s32, like.options()),
          at::scalar_tensor(zp, like.options().dtype(at::kInt)), kDone};
  return true;
}

bool observe_tensor_fast(const at::Tensor& x, at::Tensor& min_val, at::Tensor& max_val,
                         double averaging, int64_t qmin, int64_t qmax, bool symmetric,
                         bool is_signed, bool power_of_two, double eps, bool compute,
                         std::tuple<at::Tensor, at::Tensor, int64_t>* out) {
  float lo, hi;
  if (!x.is_contiguous() || !observer_state_plain(min_val, max_val) ||
      !tensor_range_fast(x, &lo, &hi))
    return false;
  return observe_range_fast(lo, hi, min_val, max_val, averaging, qmin, qmax, symmetric,
                            is_signed, power_of_two, eps, compute, x, out);
}

// act(x) = clamp(x, lo, hi) written to a new tensor (torch.relu / F.relu6's values, -0.0 and NaN
// included: a value neither below lo nor above hi is kept as it is) and observe_qparams (per
// tensor, statistics only) of it, its range taken block by block right after each block is
// written (still in cache).  Status 1 (nothing observed; the caller observes y itself) where y
// holds a NaN or a -0.0 or the observer's state is not plain.
std::tuple<at::Tensor, int64_t> act_observe(const at::Tensor& x, at::Tensor& min_val,
                                            at::Tensor& max_val, double lo, double hi,
                                            double averaging, int64_t qmin, int64_t qmax,
                                            bool symmetric, bool is_signed, bool power_of_two,
                                            double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "fxquant::act_observe: a contiguous float32 CPU tensor");
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  const float alo = static_cast<float>(lo), ahi = static_cast<float>(hi);
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const int64_t chunks = thread_chunks(n);
  std::vector<BlockRange> ranges(static_cast<size_t>(chunks));
  constexpr int64_t kBlock = 8192;
  run_chunks(n, chunks, [&](int64_t c, int64_t b, int64_t e) {
    for (int64_t s0 = b; s0 < e; s0 += kBlock) {
      const int64_t s1 = std::min(e, s0 + kBlock);
      for (int64_t i = s0; i < s1; ++i) yp[i] = clamp_nan(xp[i], alo, ahi);
      ranges[c].add(yp + s0, s1 - s0);
    }
  });
  if (n == 0 || min_val.scalar_type() != at::kFloat || max_val.scalar_type() != at::kFloat ||
      !min_val.device().is_cpu() || !observer_state_plain(min_val, max_val))
    return {y, kUntouched};
  BlockRange all;
  for (const BlockRange& r : ranges) {
    if (r.nan || r.neg_zero) return {y, kUntouched};
    all.lo = std::min(all.lo, r.lo);
    all.hi = std::max(all.hi, r.hi);
  }
  std::tuple<at::Tensor, at::Tensor, int64_t> got;
  if (!observe_range_fast(all.lo, all.hi, min_val, max_val, averaging, qmin, qmax, symmetric,
                          is_signed, power_of_two, eps, false, x, &got))
    return {y, kUntouched};
  return {y, kObservedOnly};
}

// observe_qparams (per tensor) of act(x) = clamp(x, lo, hi) (hardtanh; relu: hi = +inf) without
// act(x): its range is act of x's range (a non-decreasing function), given that x holds no NaN
// and no -0.0 (else nothing is touched: status 1)
std::tuple<at::Tensor, at::Tensor, int64_t> observe_clamped(
    const at::Tensor& x, at::Tensor& min_val, at::Tensor& max_val, double lo, double hi,
    double averaging, int64_t qmin, int64_t qmax, bool symmetric, bool is_signed,
    bool power_of_two, double eps, bool compute) {
  const at::Tensor none;
  std::tuple<at::Tensor, at::Tensor, int64_t> got{none, none, kUntouched};
  float xlo, xhi;
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || x.numel() == 0 ||
      !x.is_contiguous() || min_val.scalar_type() != at::kFloat ||
      max_val.scalar_type() != at::kFloat || !min_val.device().is_cpu() ||
      !observer_state_plain(min_val, max_val) || !tensor_range_fast(x, &xlo, &xhi))
    return got;
  const float alo = static_cast<float>(lo), ahi = static_cast<float>(hi);
  if (!observe_range_fast(clamp_nan(xlo, alo, ahi), clamp_nan(xhi, alo, ahi), min_val, max_val,
                          averaging, qmin, qmax, symmetric, is_signed, power_of_two, eps,
                          compute, x, &got))
    return {none, none, kUntouched};
  return got;
}

std::tuple<at::Tensor, at::Tensor, int64_t> observe_qparams(
    const at::Tensor& x, at::Tensor& min_val, at::Tensor& max_val, double averaging,
    int64_t axis, int64_t qmin, int64_t qmax, bool symmetric, bool is_signed, bool power_of_two,
    double eps, int64_t bits, bool compute) {
  const at::Tensor none;
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || x.numel() == 0 ||
      min_val.scalar_type() != at::kFloat || max_val.scalar_type() != at::kFloat ||
      !min_val.device().is_cpu())
    return {none, none, kUntouched};
  const double min_normal_eps = 1.1754943508222875e-38, max_normal_eps = 3.4028234663852886e+38;
  if (axis == 0 && averaging < 0 && x.dim() >= 1 && min_val.device().is_cpu() &&
      max_val.device().is_cpu() && symmetric && is_signed && bits <= 24 && !power_of_two &&
      eps >= min_normal_eps && eps <= max_normal_eps) {
    at::Tensor scale;
    if (observe_minmax_rows(x, min_val, max_val, qmax, eps, compute, &scale)) {
      if (!compute) return {none, none, kObservedOnly};
      return {scale, at::zeros(scale.sizes(), scale.options().dtype(at::kInt)), kDone};
    }
  }
  if (axis < 0) {
    std::tuple<at::Tensor, at::Tensor, int64_t> got;
    if (observe_tensor_fast(x, min_val, max_val, averaging, qmin, qmax, symmetric, is_signed,
                            power_of_two, eps, compute, &got))
      return got;
  }
  at::Tensor lo, hi;
  if (axis < 0) {
    std::tie(lo, hi) = tensor_aminmax(x);
  } else {
    const int64_t c = x.size(axis);
    std::tie(lo, hi) = channel_aminmax(x.movedim(axis, 0).reshape({c, -1}));
  }
  if (!all_finite(lo, hi) || min_val.sizes() != lo.sizes()) return {none, none, kUntouched};
  if (averaging < 0) {  // MinMaxObserver._combine
    at::minimum_out(min_val, min_val, lo);
    at::maximum_out(max_val, max_val, hi);
  } else if (!has_stats(min_val, max_val)) {  // MovingAverageMinMaxObserver: first batch
    min_val.copy_(lo);
    max_val.copy_(hi);
  } else {
    min_val.add_(at::sub(lo, min_val), averaging);
    max_val.add_(at::sub(hi, max_val), averaging);
  }
  if (!compute || power_of_two || !has_stats(min_val, max_val)) return {none, none, kObservedOnly};
  if (axis < 0) {
    float s32;
    int64_t zp;
    if (!choose_scalar(min_val.item<double>(), max_val.item<double>(), qmin, qmax, symmetric,
                       is_signed, eps, &s32, &zp))
      return {none, none, kObservedOnly};
    return {at::scalar_tensor(s32, x.options()),
            at::scalar_tensor(zp, x.options().dtype(at::kInt)), kDone};
  }
  // choose_qparams' float32 path: symmetric signed grids of at most 24 bits, normal eps
  const double min_normal = 1.1754943508222875e-38, max_normal = 3.4028234663852886e+38;
  if (!(symmetric && is_signed && bits <= 24 && eps >= min_normal && eps <= max_normal))
    return {none, none, kObservedOnly};
  at::Tensor scale = at::maximum(min_val.neg(), max_val).clamp_min_(0.0).div_(qmax);
  scale.clamp_min_(eps);
  return {scale, at::zeros(scale.sizes(), scale.options().dtype(at::kInt)), kDone};
}

constexpr float kRounder = 12582912.0f;  // 1.5 * 2**23

struct Bounds {
  bool on;
  float lo, hi;
};

// round(x * m), half to even below 2**22: torch's x * m, add_(1.5 * 2**23), sub_(1.5 * 2**23)
inline float round_scaled(float x, float m) {
  float v = x * m;
  v = v + kRounder;
  return v - kRounder;
}

template <bool kAdd, bool kPost>
inline float scale_round_one(float x, float m, float add, float post, Bounds c) {
  float v = round_scaled(x, m);
  if (c.on) v = clamp_nan(v, c.lo, c.hi);
  if (kAdd) v = v + add;
  if (kPost) v = v * post;
  return v;
}

template <bool kAdd, bool kPost>
void scale_round_row(const float* x, float* out, int64_t n, float m, float add, float post,
                     Bounds c) {
  for (int64_t i = 0; i < n; ++i) out[i] = scale_round_one<kAdd, kPost>(x[i], m, add, post, c);
}

template <bool kAdd, bool kPost>
void scale_round_impl(const float* xp, float* op, const float* mp, int64_t n_channels,
                      int64_t inner, int64_t numel, float add, float post, Bounds bounds) {
  if (n_channels == 1) {
    at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
      scale_round_row<kAdd, kPost>(xp + b, op + b, e - b, mp[0], add, post, bounds);
    });
    return;
  }
  if (inner == 1) {  // channels last: rows of C elements
    const int64_t rows = numel / n_channels;
    const int64_t grain = std::max<int64_t>(1, kGrain / n_channels);
    at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const float* x = xp + r * n_channels;
        float* o = op + r * n_channels;
        for (int64_t c = 0; c < n_channels; ++c)
          o[c] = scale_round_one<kAdd, kPost>(x[c], mp[c], add, post, bounds);
      }
    });
    return;
  }
  const int64_t rows = numel / inner;
  const int64_t grain = std::max<int64_t>(1, kGrain / inner);
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      scale_round_row<kAdd, kPost>(xp + r * inner, op + r * inner, inner, mp[r % n_channels],
                                   add, post, bounds);
  });
}

void scale_round(const at::Tensor& x, const at::Tensor& out, const at::Tensor& mult,
                 int64_t inner, double add, bool with_add, double post, bool with_post,
                 double lo, double hi, bool with_clamp) {
  TORCH_CHECK(x.device().is_cpu() && out.device().is_cpu() && mult.device().is_cpu(),
              "fxquant::scale_round: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat &&
                  mult.scalar_type() == at::kFloat,
              "fxquant::scale_round: float32 only");
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous() && mult.is_contiguous() &&
                  x.sizes() == out.sizes(),
              "fxquant::scale_round: contiguous x and out of one shape only");
  const int64_t n_channels = mult.numel();
  const int64_t numel = x.numel();
  TORCH_CHECK(n_channels >= 1 && inner >= 1 && numel % (n_channels * inner) == 0,
              "fxquant::scale_round: x does not split into [outer, C, inner]");
  if (numel == 0) return;
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float* mp = mult.const_data_ptr<float>();
  const float a = static_cast<float>(add), p = static_cast<float>(post);
  const Bounds c{with_clamp, static_cast<float>(lo), static_cast<float>(hi)};
  if (with_add && with_post)
    scale_round_impl<true, true>(xp, op, mp, n_channels, inner, numel, a, p, c);
  else if (with_add)
    scale_round_impl<true, false>(xp, op, mp, n_channels, inner, numel, a, p, c);
  else if (with_post)
    scale_round_impl<false, true>(xp, op, mp, n_channels, inner, numel, a, p, c);
  else
    scale_round_impl<false, false>(xp, op, mp, n_channels, inner, numel, a, p, c);
}

// out[i] = table[k[i]] with scalar loads: vector gathers are slow on CPUs with the Gather Data
// Sampling mitigation (measured 5x slower than this loop on the bench machine)
__attribute__((optimize("no-tree-vectorize"))) void gather_row(const int32_t* __restrict k,
                                                              float* __restrict out,
                                                              const float* __restrict table,
                                                              int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = table[k[i]];
}

// 1 if every element of x lies on the grid; out = table[code].  The codes are computed (and
// checked) vectorised a block at a time, then gathered with scalar loads.
int lookup_row(const float* __restrict x, float* __restrict out, const float* __restrict table,
               int64_t n, float m, float z, float base, float lo, float hi, float shift,
               float s) {
  constexpr int64_t kBlock = 1024;
  int32_t idx[kBlock];
  int good = 1;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const float* xb = x + start;
#pragma omp simd reduction(& : good)
    for (int64_t i = 0; i < len; ++i) {
        const float xi = xb[i];
      float v = round_scaled(xi, m);
      v = v + z;
      v = v - base;
      v = v >= lo ? v : lo;  // NaN lands on 0, then fails the comparison below
      v = v > hi ? hi : v;
      const int32_t k = static_cast<int32_t>(v);
      // the grid value of code k, as torch.arange(qmin, qmax + 1).sub_(zp).mul_(s) computes it
      // (k + qmin and its difference with zp are exact integers in float32)
      const float g = ((static_cast<float>(k) + base) - shift) * s;
      good &= static_cast<int>(g == xi);
      idx[i] = k;
    }
    gather_row(idx, out + start, table, len);
  }
  return good;
}

std::tuple<at::Tensor, bool> grid_lookup(const at::Tensor& x, const at::Tensor& scale,
                                         const at::Tensor& inv, int64_t zp, int64_t qmin,
                                         int64_t qmax, const at::Tensor& table) {
  TORCH_CHECK(x.device().is_cpu() && scale.device().is_cpu() && inv.device().is_cpu() &&
                  table.device().is_cpu(),
              "fxquant::grid_lookup: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && scale.scalar_type() == at::kFloat &&
                  inv.scalar_type() == at::kFloat && table.scalar_type() == at::kFloat,
              "fxquant::grid_lookup: float32 only");
  const int64_t n_codes = qmax - qmin + 1;
  TORCH_CHECK(x.is_contiguous() && scale.numel() == 1 && inv.numel() == 1 &&
                  table.is_contiguous() && table.numel() == n_codes,
              "fxquant::grid_lookup: contiguous x, one scale, a table of qmax - qmin + 1");
  at::Tensor out = at::empty_like(x);
  const int64_t numel = x.numel();
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float* tp = table.const_data_ptr<float>();
  const float s = scale.const_data_ptr<float>()[0], m = inv.const_data_ptr<float>()[0];
  const float z = static_cast<float>(zp), lo = 0.0f, hi = static_cast<float>(n_codes - 1);
  const float base = static_cast<float>(qmin);
  std::atomic<bool> ok{true};
  at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    if (!lookup_row(xp + b, op + b, tp, e - b, m, z, base, lo, hi, z, s))
      ok.store(false, std::memory_order_relaxed);
  });
  return {out, ok.load()};
}

void qlinear_add_row(const float* __restrict a, const float* __restrict b,
                     float* __restrict out, int64_t n, const float* p) {
  const float inv_a = p[0], za = p[1], inv_b = p[2], zb = p[3], ra = p[4], rb = p[5];
  const float fixed = p[6], qmin = p[7], qmax = p[8], zc = p[9], sc = p[10];
  for (int64_t i = 0; i < n; ++i) {
    const float qa = round_scaled(a[i], inv_a) + za;
    const float qb = round_scaled(b[i], inv_b) + zb;
    float v = std::fma(qa, ra, std::fma(qb, rb, fixed));
    v = v + kRounder;
    v = v - kRounder;
    v = clamp_nan(v, qmin, qmax);
    out[i] = (v - zc) * sc;
  }
}

at::Tensor qlinear_add(const at::Tensor& a, const at::Tensor& b, const at::Tensor& params) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && params.device().is_cpu(),
              "fxquant::qlinear_add: CPU tensors only");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  params.scalar_type() == at::kFloat,
              "fxquant::qlinear_add: float32 only");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && a.sizes() == b.sizes() &&
                  params.is_contiguous() && params.numel() == 11,
              "fxquant::qlinear_add: contiguous a and b of one shape, 11 parameters");
  at::Tensor out = at::empty_like(a);
  const float* ap = a.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float* pp = params.const_data_ptr<float>();
  at::parallel_for(0, a.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    qlinear_add_row(ap + lo, bp + lo, op + lo, hi - lo, pp);
  });
  return out;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// grad * mask for any layouts, without converting the mask to grad's dtype first: a
// TensorIterator of the same inputs as ATen's mul, so the output takes the layout mul gives
at::Tensor masked_grad_strided(const at::Tensor& grad, const at::Tensor& mask) {
  at::Tensor out;
  auto iter = at::TensorIteratorConfig()
                  .add_output(out)
                  .add_const_input(grad)
                  .add_const_input(mask)
                  .check_all_same_dtype(false)
                  .declare_static_dtype(grad.scalar_type())
                  .build();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fxquant_masked_grad_strided", [&] {
    iter.for_each([](char** data, const int64_t* strides, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t g = *reinterpret_cast<const scalar_t*>(data[1] + i * strides[1]);
        const bool m = *reinterpret_cast<const bool*>(data[2] + i * strides[2]);
        *reinterpret_cast<scalar_t*>(data[0] + i * strides[0]) = g * static_cast<scalar_t>(m);
      }
    });
  });
  return iter.output();
}

at::Tensor grad_times_mask(const at::Tensor& grad, const at::Tensor& mask) {
  // a gradient that requires grad (create_graph=True) takes differentiable ATen operations
  const bool plain = !grad.requires_grad() && grad.sizes() == mask.sizes() &&
                     grad.device().is_cpu() && mask.scalar_type() == at::kBool &&
                     (grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble);
  if (plain && grad.is_contiguous() && mask.is_contiguous()) return masked_grad(grad, mask);
  if (plain) return masked_grad_strided(grad, mask);
  return grad * mask;  // same bits: the bool promotes to 0.0 / 1.0
}

class FakeQuantSTE : public torch::autograd::Function<FakeQuantSTE> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t qmin, int64_t qmax,
                            int64_t inner, bool reciprocal) {
    auto result = fake_quant(x, scale, zero_point, qmin, qmax, inner, reciprocal, true);
    ctx->saved_data["mask"] = std::get<1>(result);
    return std::get<0>(result);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor mask = ctx->saved_data["mask"].toTensor();
    at::Tensor gx = grads[0].defined() ? grad_times_mask(grads[0], mask) : at::Tensor();
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor fake_quant_ste_autograd(const at::Tensor& x, const at::Tensor& scale,
                                   const at::Tensor& zero_point, int64_t qmin, int64_t qmax,
                                   int64_t inner, bool reciprocal) {
  return FakeQuantSTE::apply(x, scale, zero_point, qmin, qmax, inner, reciprocal);
}

// -- an activation and the fake quantization of its output in one pass ------------------------
// act(x) = clamp(x, lo, hi): hardtanh (relu6: lo 0, hi 6) or, with hi = +inf, relu.  The
// gradient of fq(act(x)) is the activation's backward of the quantizer's: grad * mask where the
// activation passes its gradient -- x neither <= lo nor (gate_hi) >= hi, NaN included, as
// hardtanh_backward / threshold_backward decide --, +0.0 where it does not.  One byte per element
// says which: 0 (+0.0), 1 (grad * 0.0: the quantizer clips) or 2 (grad * 1.0).
// A NaN in x: hardtanh_backward passes the gradient in its scalar loop and zeroes it in its
// vector loop (torch 2.13), so which one a NaN meets decides; act_fq_row reports NaNs and the
// autograd operator hands such an x to the ATen operations themselves.
template <bool kRecip, bool kCode>
bool act_fq_row(const float* __restrict x, float* __restrict out, uint8_t* __restrict code,
                int64_t n, float s, float inv, float qlo, float qhi, float alo, float ahi,
                float gate) {
  uint32_t nan = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float a = clamp_nan(v, alo, ahi);  // torch.clamp's value for all but -0.0, whose
    const float t = kRecip ? a * inv : a / s;  // zero sign no quantized value keeps
    const float r = round_half_even(t);
    const float c = clamp_nan(r, qlo, qhi);
    out[i] = c * s + 0.0f;
    if (kCode) {
      const uint8_t pass = !(v <= alo) & !(v >= gate);
      code[i] = static_cast<uint8_t>(pass * (1 + (r == c)));
    }
    nan |= static_cast<uint32_t>(v != v);
  }
  return nan != 0;
}

thread_local bool t_act_saw_nan = false;  // set by act_fake_quant, read by its autograd form

std::tuple<at::Tensor, at::Tensor> act_fake_quant(const at::Tensor& x, const at::Tensor& scale,
                                                  const at::Tensor& zero_point, int64_t qmin,
                                                  int64_t qmax, double lo, double hi,
                                                  bool gate_hi, bool reciprocal, bool with_code) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                  scale.numel() == 1 && zero_point.numel() == 1 && scale.device().is_cpu() &&
                  zero_point.device().is_cpu(),
              "fxquant::act_fake_quant: a contiguous float32 CPU tensor, per tensor");
  TORCH_CHECK(gate_hi || (lo == 0.0 && std::isinf(hi) && hi > 0),
              "fxquant::act_fake_quant: without gate_hi, the activation is relu: (0, inf)");
  const float s = scale.item<float>();
  const float zp = static_cast<float>(zero_point.item<double>());  // an integer: exact
  const float qlo = static_cast<float>(qmin) - zp, qhi = static_cast<float>(qmax) - zp;
  const float alo = static_cast<float>(lo), ahi = static_cast<float>(hi);
  const float gate = gate_hi ? ahi : std::numeric_limits<float>::quiet_NaN();  // NaN: never
  const float inv = 1.0f / s;
  at::Tensor out = at::empty_like(x);
  at::Tensor code = with_code ? at::empty_like(x, x.options().dtype(at::kByte))
                              : at::empty({0}, x.options().dtype(at::kByte));
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* cp = with_code ? code.mutable_data_ptr<uint8_t>() : nullptr;
  std::atomic<bool> nan{false};
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
    uint8_t* c = cp ? cp + b : nullptr;
    const int64_t m = e - b;
    bool seen;
    if (c)
      seen = reciprocal ? act_fq_row<true, true>(xp + b, op + b, c, m, s, inv, qlo, qhi, alo, ahi,
                                                 gate)
                        : act_fq_row<false, true>(xp + b, op + b, c, m, s, inv, qlo, qhi, alo,
                                                  ahi, gate);
    else
      seen = reciprocal ? act_fq_row<true, false>(xp + b, op + b, c, m, s, inv, qlo, qhi, alo,
                                                  ahi, gate)
                        : act_fq_row<false, false>(xp + b, op + b, c, m, s, inv, qlo, qhi, alo,
                                                   ahi, gate);
    if (seen) nan.store(true, std::memory_order_relaxed);
  });
  t_act_saw_nan = nan.load();
  return {out, code};
}

void act_code_grad_row(const float* __restrict g, const uint8_t* __restrict code,
                       float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t c = code[i];
    const float prod = g[i] * static_cast<float>(c >> 1);
    out[i] = c != 0 ? prod : 0.0f;
  }
}

at::Tensor act_code_grad(const at::Tensor& grad, const at::Tensor& code) {
  if (grad.requires_grad() || !grad.is_contiguous() || grad.scalar_type() != at::kFloat ||
      !grad.device().is_cpu() || grad.sizes() != code.sizes()) {  // differentiable ATen ops
    return at::where(code > 0, grad * (code == 2), at::zeros({}, grad.options()));
  }
  at::Tensor out = at::empty_like(grad);
  const float* gp = grad.const_data_ptr<float>();
  const uint8_t* cp = code.const_data_ptr<uint8_t>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, grad.numel(), kGrain, [&](int64_t b, int64_t e) {
    act_code_grad_row(gp + b, cp + b, op + b, e - b);
  });
  return out;
}

class ActFakeQuantSTE : public torch::autograd::Function<ActFakeQuantSTE> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t qmin, int64_t qmax, double lo,
                            double hi, bool gate_hi, bool reciprocal) {
    auto result = act_fake_quant(x, scale, zero_point, qmin, qmax, lo, hi, gate_hi, reciprocal,
                                 true);
    ctx->saved_data["code"] = std::get<1>(result);
    return std::get<0>(result);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor code = ctx->saved_data["code"].toTensor();
    at::Tensor gx = grads[0].defined() ? act_code_grad(grads[0], code) : at::Tensor();
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor act_fake_quant_ste_autograd(const at::Tensor& x, const at::Tensor& scale,
                                       const at::Tensor& zero_point, int64_t qmin, int64_t qmax,
                                       double lo, double hi, bool gate_hi, bool reciprocal) {
  at::Tensor out =
      ActFakeQuantSTE::apply(x, scale, zero_point, qmin, qmax, lo, hi, gate_hi, reciprocal);
  if (!t_act_saw_nan) return out;
  // a NaN: the activation and the quantizer as the ATen / fake_quant_ste operators they are
  const at::Tensor y = gate_hi ? at::hardtanh(x, at::Scalar(lo), at::Scalar(hi)) : at::relu(x);
  return FakeQuantSTE::apply(y, scale, zero_point, qmin, qmax, 1, reciprocal);
}

at::Tensor act_fake_quant_ste_cpu(const at::Tensor& x, const at::Tensor& scale,
                                  const at::Tensor& zero_point, int64_t qmin, int64_t qmax,
                                  double lo, double hi, bool gate_hi, bool reciprocal) {
  return std::get<0>(act_fake_quant(x, scale, zero_point, qmin, qmax, lo, hi, gate_hi,
                                    reciprocal, false));
}

at::Tensor fake_quant_ste_cpu(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t qmin, int64_t qmax,
                              int64_t inner, bool reciprocal) {
  return std::get<0>(fake_quant(x, scale, zero_point, qmin, qmax, inner, reciprocal, false));
}

class ChannelDivide : public torch::autograd::Function<ChannelDivide> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& d) {
    at::Tensor out = at::div(y, d);
    ctx->save_for_backward({out, d});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& out = saved[0];
    const at::Tensor& d = saved[1];
    const at::Tensor& g = grads[0];
    const bool need_y = ctx->needs_input_grad(0), need_d = ctx->needs_input_grad(1);
    if (!g.defined()) return {at::Tensor(), at::Tensor()};
    if (!need_d) return {need_y ? at::div(g, d) : at::Tensor(), at::Tensor()};
    // as autograd's sum_to: the dimensions where d is 1 and the output is not
    std::vector<int64_t> dims;
    for (int64_t i = 0; i < out.dim(); ++i)
      if (d.size(i) == 1 && out.size(i) != 1) dims.push_back(i);
    at::Tensor gy, t;
    const int64_t lanes = g_sum_lanes.load();
    if (lanes && !g.requires_grad() && g.is_contiguous() && out.is_contiguous() &&
        g.sizes() == out.sizes() && g.dim() >= 3 && g.scalar_type() == at::kFloat &&
        out.scalar_type() == at::kFloat && d.scalar_type() == at::kFloat &&
        d.numel() == g.size(1) && g.numel() > 0 &&
        static_cast<int64_t>(dims.size()) == g.dim() - 1 && g.size(1) > 1) {
      // every dimension but C is summed: the sum in at::sum's order, without a product tensor
      at::Tensor gd;
      std::tie(gy, gd) = div_channel_backward_sum(g, out, d.reshape({-1}).contiguous(),
                                                  g.numel() / (g.size(0) * g.size(1)), lanes);
      return {need_y ? gy : at::Tensor(), gd.reshape(d.sizes()).neg_()};
    }
    const bool fused = !g.requires_grad() && g.is_contiguous() && out.is_contiguous() &&
                       g.sizes() == out.sizes() &&
                       g.dim() >= 2 && g.scalar_type() == out.scalar_type() &&
                       d.scalar_type() == out.scalar_type() && d.numel() == g.size(1) &&
                       (g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble) &&
                       g.numel() > 0;
    if (fused) {
      std::tie(gy, t) = div_channel_backward(g, out, d.reshape({-1}).contiguous(),
                                             g.numel() / (g.size(0) * g.size(1)));
    } else {
      gy = at::div(g, d);
      t = at::mul(at::div(out, d), g);
    }
    at::Tensor gd = dims.empty() ? t : at::sum(t, dims, /*keepdim=*/true);
    return {need_y ? gy : at::Tensor(), gd.neg_()};
  }
};

at::Tensor channel_divide_autograd(const at::Tensor& y, const at::Tensor& d) {
  return ChannelDivide::apply(y, d);
}

// the same division written over y (a conv output nothing else reads: no second buffer of the
// conv output's size); y / d with out in y's memory has the same bits as at::div
// y.div_(d) for a contiguous float32 [N, C, ...] y with rows shorter than kShortRow and d of C
// elements: the same divisions over runs of rows, each element's divisor spelled out, where
// at::div_'s broadcast splits such rows into short inner loops (64 x 384 x 2 x 2: 88 us against
// 65; longer rows: the same time)
void channel_div_(at::Tensor& y, const at::Tensor& d) {
  constexpr int64_t kShortRow = 16;
  if (!(y.device().is_cpu() && y.scalar_type() == at::kFloat && d.scalar_type() == at::kFloat &&
        d.device().is_cpu() && y.is_contiguous() && y.dim() >= 2 && d.dim() == y.dim() &&
        y.numel() > 0 && d.numel() == y.size(1) && d.size(1) == y.size(1) &&
        y.numel() / (y.size(0) * y.size(1)) < kShortRow)) {
    y.div_(d);
    return;
  }
  const at::Tensor dc = d.contiguous();
  const float* dp = dc.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const int64_t n_channels = y.size(1);
  const int64_t inner = y.numel() / (y.size(0) * n_channels);
  at::parallel_for(0, y.numel() / inner, kGrain / inner, [&](int64_t b, int64_t e) {
    std::vector<float> dexp(static_cast<size_t>(n_channels * inner));
    for (int64_t ch = 0; ch < n_channels; ++ch)
      std::fill_n(dexp.data() + ch * inner, inner, dp[ch]);
    for (int64_t r = b, c = b % n_channels; r < e; c = 0) {
      const int64_t run = std::min(e - r, n_channels - c);
      float* block = yp + r * inner;
      const float* dx = dexp.data() + c * inner;
      for (int64_t k = 0; k < run * inner; ++k) block[k] = block[k] / dx[k];
      r += run;
    }
  });
}

class ChannelDivideInPlace : public torch::autograd::Function<ChannelDivideInPlace> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::Tensor y, const at::Tensor& d) {
    channel_div_(y, d);
    ctx->mark_dirty({y});
    ctx->save_for_backward({y, d});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return ChannelDivide::backward(ctx, std::move(grads));
  }
};

at::Tensor& channel_divide_inplace_autograd(at::Tensor& y, const at::Tensor& d) {
  ChannelDivideInPlace::apply(y, d);
  return y;
}

at::Tensor& channel_divide_inplace_cpu(at::Tensor& y, const at::Tensor& d) {
  channel_div_(y, d);
  return y;
}

at::Tensor channel_divide_cpu(const at::Tensor& y, const at::Tensor& d) { return at::div(y, d); }

// bn_fold_scale: the weight side of a fold-aware conv + BN in training, as the Python module
// writes it -- std = sqrt(var + eps); sf = gamma / std (1 / std without gamma);
// w_scaled = w * sf.reshape(C, 1, ...) -- and the smallest |sf| (NaN if one is NaN), as ATen
// operations called from one C++ operator: one autograd node instead of four (mul, two views,
// div) and no Python in between.  Backward as autograd computes it: w gets grad * sf; sf gets
// its own incoming gradient (from the output division) plus sum_to(grad * w) (the engine's
// reduction of a broadcast operand), and gamma gets that total / std.
std::vector<int64_t> channel_view(const at::Tensor& w) {
  std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
  shape[0] = -1;
  return shape;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fold_scale_values(const at::Tensor& weight,
                                                                const at::Tensor& var,
                                                                const at::Tensor& gamma,
                                                                double eps) {
  const at::Tensor std_ = at::sqrt(at::add(var, eps));
  const at::Tensor sf = gamma.defined() ? at::div(gamma, std_) : at::reciprocal(std_);
  return {at::mul(weight, sf.reshape(channel_view(weight))), sf, std_};
}

class BnFoldScale : public torch::autograd::Function<BnFoldScale> {
 public:
  // gamma: the BN's weight, or (has_gamma false, affine=False) any tensor without a gradient
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight,
                               const at::Tensor& var, const at::Tensor& gamma, bool has_gamma,
                               double eps) {
    at::Tensor w_scaled, sf, std_;
    std::tie(w_scaled, sf, std_) =
        fold_scale_values(weight, var, has_gamma ? gamma : at::Tensor(), eps);
    ctx->save_for_backward({weight, sf});
    ctx->saved_data["std"] = std_;
    if (!has_gamma || !gamma.requires_grad()) ctx->mark_non_differentiable({sf});
    return {w_scaled, sf};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[0];
    const at::Tensor& sf = saved[1];
    const at::Tensor std_ = ctx->saved_data["std"].toTensor();
    const at::Tensor& g_ws = grads[0];
    const at::Tensor& g_sf = grads[1];
    const at::Tensor sf_view = sf.reshape(channel_view(weight));
    at::Tensor grad_w, grad_gamma;
    if (ctx->needs_input_grad(0) && g_ws.defined()) grad_w = at::mul(g_ws, sf_view);
    if (ctx->needs_input_grad(2)) {
      at::Tensor total = g_sf;
      if (g_ws.defined()) {
        const at::Tensor from_mul = at::sum_to(at::mul(g_ws, weight), sf_view.sizes())
                                        .reshape(sf.sizes());
        total = total.defined() ? at::add(total, from_mul) : from_mul;
      }
      if (total.defined()) grad_gamma = at::div(total, std_);
    }
    return {grad_w, at::Tensor(), grad_gamma, at::Tensor(), at::Tensor()};
  }
};

// amin(abs(sf)) as a double, NaN where one is NaN (amin propagates it)
double min_abs(const at::Tensor& sf) {
  if (sf.numel() == 0) return 0.0;
  if (!sf.is_contiguous() || sf.scalar_type() != at::kFloat)
    return at::amin(at::abs(sf.detach())).item<double>();
  const float* p = sf.const_data_ptr<float>();
  float low = std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < sf.numel(); ++i) {
    if (std::isnan(p[i])) return std::numeric_limits<double>::quiet_NaN();
    low = std::min(low, std::fabs(p[i]));
  }
  return low;
}

std::tuple<at::Tensor, at::Tensor, double> bn_fold_scale_autograd(const at::Tensor& weight,
                                                                  const at::Tensor& var,
                                                                  const c10::optional<at::Tensor>& gamma,
                                                                  double eps) {
  const bool has_gamma = gamma.has_value() && gamma->defined();
  variable_list out = BnFoldScale::apply(weight, var, has_gamma ? *gamma : var, has_gamma, eps);
  return {out[0], out[1], min_abs(out[1])};
}

std::tuple<at::Tensor, at::Tensor, double> bn_fold_scale_cpu(const at::Tensor& weight,
                                                             const at::Tensor& var,
                                                             const c10::optional<at::Tensor>& gamma,
                                                             double eps) {
  at::Tensor w_scaled, sf, std_;
  std::tie(w_scaled, sf, std_) =
      fold_scale_values(weight, var, gamma.has_value() ? *gamma : at::Tensor(), eps);  // maybe undefined
  return {w_scaled, sf, min_abs(sf)};
}

// mlas_logistic: MLAS's logistic (Eigen's rational approximation, FMA3 kernel) of every element,
// times the element with times_x (SiLU exported as Mul(x, Sigmoid(x))).
template <bool kTimesX>
void mlas_logistic_row(const float* __restrict x, float* __restrict out, int64_t n,
                       const float* c) {
  const float a0 = c[0], a1 = c[1], a2 = c[2], a3 = c[3], a4 = c[4];
  const float b0 = c[5], b1 = c[6], b2 = c[7], b3 = c[8], b4 = c[9], b5 = c[10];
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = clamp_nan(v, -18.0f, 18.0f);
    const float t2 = t * t;
    float p = std::fma(t2, a0, a1);
    p = std::fma(p, t2, a2);
    p = std::fma(p, t2, a3);
    p = std::fma(p, t2, a4);
    p = p * t;
    float q = std::fma(t2, b0, b1);
    q = std::fma(q, t2, b2);
    q = std::fma(q, t2, b3);
    q = std::fma(q, t2, b4);
    q = std::fma(q, t2, b5);
    const float s = clamp_nan(p / q + 0.5f, 0.0f, 1.0f);
    out[i] = kTimesX ? v * s : s;
  }
}

at::Tensor mlas_logistic(const at::Tensor& x, const at::Tensor& coeffs, bool times_x) {
  TORCH_CHECK(x.device().is_cpu() && coeffs.device().is_cpu() &&
                  x.scalar_type() == at::kFloat && coeffs.scalar_type() == at::kFloat &&
                  x.is_contiguous() && coeffs.is_contiguous() && coeffs.numel() == 11,
              "fxquant::mlas_logistic: contiguous float32 CPU x, 11 coefficients");
  at::Tensor out = at::empty_like(x);
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float* cp = coeffs.const_data_ptr<float>();
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    if (times_x)
      mlas_logistic_row<true>(xp + lo, op + lo, hi - lo, cp);
    else
      mlas_logistic_row<false>(xp + lo, op + lo, hi - lo, cp);
  });
  return out;
}

// ort_layer_norm: ONNX Runtime's float LayerNormalization (x86-64) of each row of a contiguous
// (rows, n) x, n a multiple of 8 (fxquant.runtime_math.ort.layer_norm has the steps): float64
// mean; fma(d, d, acc) in 8 float32 lanes; pairwise lane reduction; 1 / sqrt(v / n + eps); the
// output fma(d * inv, w, b).
at::Tensor ort_layer_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                          double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                  x.dim() == 2 && x.size(1) % 8 == 0 && x.size(1) > 0 && w.is_contiguous() &&
                  b.is_contiguous() && w.scalar_type() == at::kFloat &&
                  b.scalar_type() == at::kFloat && w.numel() == x.size(1) &&
                  b.numel() == x.size(1),
              "fxquant::ort_layer_norm: contiguous float32 (rows, 8k) x, weight and bias of 8k");
  at::Tensor out = at::empty_like(x);
  const int64_t rows = x.size(0), n = x.size(1);
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float nf = static_cast<float>(n), ef = static_cast<float>(eps);
  at::parallel_for(0, rows, std::max<int64_t>(1, 8192 / n), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* row = xp + r * n;
      double t[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: not one add's latency per element
      for (int64_t h = 0; h < n; h += 4)
        for (int l = 0; l < 4; ++l) t[l] += static_cast<double>(row[h + l]);
      const double total = (t[0] + t[1]) + (t[2] + t[3]);
      const float mean = static_cast<float>(total / static_cast<double>(n));
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int64_t h = 0; h < n; h += 8)
        for (int l = 0; l < 8; ++l) {
          const float d = row[h + l] - mean;
          acc[l] = std::fma(d, d, acc[l]);
        }
      const float a0 = acc[0] + acc[4], a1 = acc[1] + acc[5], a2 = acc[2] + acc[6],
                  a3 = acc[3] + acc[7];
      const float v = (a0 + a2) + (a1 + a3);
      const float var = v / nf + ef;
      const float inv = 1.0f / std::sqrt(var);
      float* o = op + r * n;
      for (int64_t h = 0; h < n; ++h) o[h] = std::fma((row[h] - mean) * inv, wp[h], bp[h]);
    }
  });
  return out;
}

// same_bytes: 1 when every pair holds the same bytes (dtype and shape included; two undefined
// tensors match), 0 when one differs, -1 when a tensor is not a contiguous CPU tensor.
// memcmp, split across threads above 1 MiB (the check reads both copies: memory bound)
bool equal_bytes(const void* x, const void* y, size_t n) {
  constexpr size_t kChunk = size_t(1) << 18;
  if (n <= (size_t(1) << 20)) return std::memcmp(x, y, n) == 0;
  const auto* px = static_cast<const char*>(x);
  const auto* py = static_cast<const char*>(y);
  const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
  std::atomic<bool> differ{false};
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e && !differ.load(std::memory_order_relaxed); ++c) {
      const size_t lo = static_cast<size_t>(c) * kChunk;
      const size_t len = std::min(kChunk, n - lo);
      if (std::memcmp(px + lo, py + lo, len) != 0) differ.store(true, std::memory_order_relaxed);
    }
  });
  return !differ.load();
}

int64_t same_bytes(const c10::List<std::optional<at::Tensor>>& a,
                   const c10::List<std::optional<at::Tensor>>& b) {
  if (a.size() != b.size()) return 0;
  int64_t result = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::optional<at::Tensor> ox = a[i];
    const std::optional<at::Tensor> oy = b[i];
    const bool dx = ox.has_value() && ox->defined(), dy = oy.has_value() && oy->defined();
    if (dx != dy) return 0;
    if (!dx) continue;
    const at::Tensor& x = *ox;
    const at::Tensor& y = *oy;
    if (!x.device().is_cpu() || !y.device().is_cpu() || !x.is_contiguous() ||
        !y.is_contiguous())
      return -1;
    if (x.scalar_type() != y.scalar_type() || x.sizes() != y.sizes()) {
      result = 0;
      continue;  // a later pair may still be one this kernel cannot read: -1 wins
    }
    const size_t n = static_cast<size_t>(x.numel()) * x.element_size();
    if (result == 1 && n && !equal_bytes(x.const_data_ptr(), y.const_data_ptr(), n)) result = 0;
  }
  return result;
}

}  // namespace

TORCH_LIBRARY(fxquant_native, m) {
  m.def("fake_quant(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, int inner, "
        "bool reciprocal, bool with_mask) -> (Tensor, Tensor)");
  m.def("masked_grad(Tensor grad, Tensor mask) -> Tensor");
  m.def("histogram(Tensor x, int shift, int bins) -> Tensor");
  m.def("div_channel_backward(Tensor grad, Tensor out, Tensor d, int inner) -> (Tensor, Tensor)");
  m.def("fake_quant_ste(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, int inner, "
        "bool reciprocal) -> Tensor");
  m.def("div_channel_backward_sum(Tensor grad, Tensor out, Tensor d, int inner, int lanes) -> "
        "(Tensor, Tensor)");
  m.def("set_sum_lanes(int lanes) -> int", &set_sum_lanes);  // no tensor: a catch-all kernel
  m.def("channel_divide(Tensor y, Tensor d) -> Tensor");
  m.def("channel_divide_(Tensor(a!) y, Tensor d) -> Tensor(a!)");
  m.def("observe_qparams(Tensor x, Tensor(a!) min_val, Tensor(b!) max_val, float averaging, "
        "int axis, int qmin, int qmax, bool symmetric, bool is_signed, bool power_of_two, "
        "float eps, int bits, bool compute) -> (Tensor, Tensor, int)");
  m.def("scale_round(Tensor x, Tensor(a!) out, Tensor mult, int inner, float add, bool with_add, "
        "float post, bool with_post, float lo, float hi, bool with_clamp) -> ()");
  m.def("grid_lookup(Tensor x, Tensor scale, Tensor inv, int zp, int qmin, int qmax, "
        "Tensor table) -> (Tensor, bool)");
  m.def("qlinear_add(Tensor a, Tensor b, Tensor params) -> Tensor");
  m.def("same_bytes(Tensor?[] a, Tensor?[] b) -> int");
  m.def("mlas_logistic(Tensor x, Tensor coeffs, bool times_x) -> Tensor");
  m.def("histogram_observe(Tensor x, Tensor(a!) hist, Tensor range_exp, Tensor(b!) min_val, "
        "Tensor(c!) max_val) -> int");
  m.def("ort_layer_norm(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("observe_clamped(Tensor x, Tensor(a!) min_val, Tensor(b!) max_val, float lo, float hi, "
        "float averaging, int qmin, int qmax, bool symmetric, bool is_signed, bool power_of_two, "
        "float eps, bool compute) -> (Tensor, Tensor, int)");
  m.def("act_fake_quant_ste(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, "
        "float lo, float hi, bool gate_hi, bool reciprocal) -> Tensor");
  m.def("bn_fold_scale(Tensor weight, Tensor var, Tensor? gamma, float eps) -> "
        "(Tensor, Tensor, float)");
  m.def("act_observe(Tensor x, Tensor(a!) min_val, Tensor(b!) max_val, float lo, float hi, "
        "float averaging, int qmin, int qmax, bool symmetric, bool is_signed, bool power_of_two, "
        "float eps) -> (Tensor, int)");
}

TORCH_LIBRARY_IMPL(fxquant_native, CPU, m) {
  m.impl("fake_quant", &fake_quant);
  m.impl("masked_grad", &masked_grad);
  m.impl("histogram", &histogram);
  m.impl("div_channel_backward", &div_channel_backward);
  m.impl("div_channel_backward_sum", &div_channel_backward_sum);
  m.impl("fake_quant_ste", &fake_quant_ste_cpu);
  m.impl("channel_divide", &channel_divide_cpu);
  m.impl("channel_divide_", &channel_divide_inplace_cpu);
  m.impl("observe_qparams", &observe_qparams);
  m.impl("scale_round", &scale_round);
  m.impl("grid_lookup", &grid_lookup);
  m.impl("qlinear_add", &qlinear_add);
  m.impl("mlas_logistic", &mlas_logistic);
  m.impl("histogram_observe", &histogram_observe);
  m.impl("ort_layer_norm", &ort_layer_norm);
  m.impl("observe_clamped", &observe_clamped);
  m.impl("act_fake_quant_ste", &act_fake_quant_ste_cpu);
  m.impl("bn_fold_scale", &bn_fold_scale_cpu);
  m.impl("act_observe", &act_observe);
}

TORCH_LIBRARY_IMPL(fxquant_native, CompositeImplicitAutograd, m) {
  m.impl("same_bytes", &same_bytes);  // reads bytes only: no autograd, any requires_grad
}

TORCH_LIBRARY_IMPL(fxquant_native, Autograd, m) {
  m.impl("fake_quant_ste", &fake_quant_ste_autograd);
  m.impl("channel_divide", &channel_divide_autograd);
  m.impl("channel_divide_", &channel_divide_inplace_autograd);
  m.impl("act_fake_quant_ste", &act_fake_quant_ste_autograd);
  m.impl("bn_fold_scale", &bn_fold_scale_autograd);
}
