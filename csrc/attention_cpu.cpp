// Fused softmax attention on the CPU: the tiled online-softmax ("flash") algorithm of Dao et al. 2022.
//
// Forward, per (batch, head, tile of query rows): stream over key tiles, keep for every row the running
// max m, the running sum l of exp(s - m) and the unnormalised output o; when a new tile raises the max,
// rescale l and o by exp(m_old - m_new). No [S, S] score matrix exists: only one [64, 64] tile. The
// log-sum-exp m + log l is saved (in float64), so backward recomputes each probability exactly as
// P = exp(s - lse) and never stores P either. Backward also uses D_i = rowsum(dO_i * O_i), which equals
// sum_j P_ij dP_ij (with or without dropout) and turns the softmax backward into dS = P * (dP - D).
//
// The forward keeps its scores key-major (st[key, query]): q is transposed once per work item, so
// s^T = scale * k q^T reads k rows in place, the online-softmax statistics of all queries of the tile
// update together as vector operations, and o = diag(alpha) o + p v reads the key-major p in place.
// All products go through `gemm`, a register-blocked loop nest (8 x 2 vectors on AVX-512) that the
// compiler turns into broadcast + FMA vector code, built once per vector width (run_widest_vectors in
// math_cpu.h); operands are zero-padded to whole register blocks only where a tile is partial, and
// padding keys get probability 0.
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

#include "dropout_hash.h"
#include "kernels_cpu.h"
#include "math_cpu.h"

namespace minibert {
namespace {

// The register block of `gemm` for vectors of VB bytes (64: AVX-512, 32: AVX2, 16: SSE2): kMR rows x
// kNV vectors. AVX-512 has 32 vector registers, so 8 x 2 = 16 accumulators fit beside the operands;
// AVX2 and SSE2 have 16, so 4 x 2 = 8 (the fewest that still hide the FMA latency).
template <int VB>
constexpr int64_t kMR = VB == 64 ? 8 : 4;
constexpr int64_t kNV = 2;
template <typename T, int VB>
constexpr int64_t kNC = kNV * (VB / sizeof(T));  // columns of the register block
constexpr int64_t kBQ = kCpuQueryTile;
constexpr int64_t kBK = 64;  // keys per tile

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[m, n] = A[m, kdim] @ B[kdim, n], or C = diag(row_scale) C + A @ B when accumulate (row_scale null
// means 1). m % kMR<VB> == 0, n % kNC<T, VB> == 0; B and C are row-major (row strides ldb, ldc). A is
// read through two strides, A[i, p] = a[i * a_rs + p * a_cs], so a transposed operand (a_rs = 1) needs
// no copy. The accumulators of a kMR x kNV block of C stay in vector registers (GCC vector extension)
// for the whole kdim loop; each step loads kNV vectors of a row of B, broadcasts one element of A per
// row and does an outer-product update: on AVX-512, 16 zmm FMAs per 2 loads and 8 broadcasts.
template <int VB, typename T>
MB_INLINE void gemm(const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb, T* c, int64_t ldc,
                    int64_t m, int64_t n, int64_t kdim, bool accumulate, const T* row_scale = nullptr) {
  typedef T Vec __attribute__((vector_size(VB)));
  constexpr int64_t kRows = kMR<VB>, kNR = VB / sizeof(T);
  for (int64_t i = 0; i < m; i += kRows) {
    for (int64_t j = 0; j < n; j += kNC<T, VB>) {
      Vec acc[kRows][kNV];
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) {
        const T s = row_scale ? row_scale[i + r] : T(1);
#pragma GCC unroll 2
        for (int64_t u = 0; u < kNV; ++u) {
          if (accumulate) {
            std::memcpy(&acc[r][u], c + (i + r) * ldc + j + u * kNR, sizeof(Vec));
            acc[r][u] *= s;
          } else {
            acc[r][u] = Vec{};
          }
        }
      }
      const T* ap = a + i * a_rs;
      const T* bp = b + j;
      for (int64_t p = 0; p < kdim; ++p, ap += a_cs, bp += ldb) {
        Vec bv[kNV];
#pragma GCC unroll 2
        for (int64_t u = 0; u < kNV; ++u) std::memcpy(&bv[u], bp + u * kNR, sizeof(Vec));
#pragma GCC unroll 8
        for (int64_t r = 0; r < kRows; ++r) {
          const T ar = ap[r * a_rs];
#pragma GCC unroll 2
          for (int64_t u = 0; u < kNV; ++u) acc[r][u] += ar * bv[u];
        }
      }
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r)
#pragma GCC unroll 2
        for (int64_t u = 0; u < kNV; ++u) std::memcpy(c + (i + r) * ldc + j + u * kNR, &acc[r][u], sizeof(Vec));
    }
  }
}

// result[i] = sum_c a[i, c] * b[i, c] for rows [0, rows) of two [rows, d] matrices; result has room for
// rows rounded up to whole vectors. One row per vector lane, summed over c in order with the same vector
// multiply-add as `gemm` (fused into an FMA wherever gemm's is), so the dot product of two rows comes
// out bit for bit as gemm computes it. backward_pairs needs that: see row_d there.
template <int VB, typename T>
MB_INLINE void row_dots(const T* a, const T* b, int64_t rows, int64_t d, T* result) {
  typedef T Vec __attribute__((vector_size(VB)));
  constexpr int64_t kNR = VB / sizeof(T);
  for (int64_t i0 = 0; i0 < rows; i0 += kNR) {
    Vec acc{};
    for (int64_t c = 0; c < d; ++c) {
      Vec x{}, y{};
      for (int64_t r = 0; r < kNR && i0 + r < rows; ++r) {
        x[r] = a[(i0 + r) * d + c];
        y[r] = b[(i0 + r) * d + c];
      }
      acc += x * y;
    }
    std::memcpy(result + i0, &acc, sizeof(Vec));
  }
}

// dst[c, r] = alpha * src[r, c] for a rows x cols block (row strides ld_src, ld_dst).
template <typename T>
MB_INLINE void transpose(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows, int64_t cols,
                         T alpha = T(1)) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = alpha * src[r * ld_src + c];
}

// Copy rows [0, rows) of a [*, d] matrix into a zeroed [rows_p, dp] buffer, multiplied by alpha.
template <typename T>
MB_INLINE void load_padded(const T* src, int64_t rows, int64_t d, T* dst, int64_t rows_p, int64_t dp, T alpha) {
  std::fill(dst, dst + rows_p * dp, T(0));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) dst[r * dp + c] = alpha * src[r * d + c];
}

// valid[j] = 1 for real, unmasked keys j0 + j of this tile, 0 for padding; returns how many are valid.
template <typename T>
MB_INLINE int64_t key_validity(const uint8_t* key_mask_row, int64_t j0, int64_t kb, T* valid) {
  int64_t count = 0;
  for (int64_t j = 0; j < kBK; ++j) {
    const bool keep = j < kb && (key_mask_row == nullptr || key_mask_row[j0 + j] != 0);
    valid[j] = keep ? T(1) : T(0);
    count += keep;
  }
  return count;
}

// One key tile of the online softmax, on dot products stored key-major: st[j * kBQ + i] = q_i . k_j,
// which it first turns into scores s = scale * (q_i . k_j).
// Key-major makes every step a vector operation across kBQ queries (a row of st), so the running max m,
// running sum l and the rescale factor alpha = exp(m_old - m_new) of all queries are updated together
// with no horizontal reductions. Overwrites st with the unnormalised probabilities exp(s - m_new)
// (0 for padding keys) and sets l = alpha * l + rowsum; the caller rescales o by alpha.
//
// A row whose scores so far are all -inf (from an inf in q or k) has no usable key yet, like a row of
// padding: exp subtracts 0 instead of m_new = -inf (exp(-inf - -inf) would be NaN), so its
// probabilities exp(-inf - 0) are 0 (float's exp_approx: below 1e-37) and l and o stay (about) 0. If
// the row ends that way (m = -inf) its output is zeros, like a padding row's. The other rows of the
// tile, which share every vector operation here, are not affected.
template <typename T>
MB_INLINE void online_softmax_tile(T* st, const T* valid, int64_t kb, T scale, T* m, T* l, T* alpha) {
  T tile_max[kBQ];
  std::fill(tile_max, tile_max + kBQ, -std::numeric_limits<T>::infinity());
  for (int64_t j = 0; j < kb; ++j) {
    if (valid[j] == T(0)) continue;
    T* row = st + j * kBQ;
#pragma omp simd
    for (int64_t i = 0; i < kBQ; ++i) {
      row[i] *= scale;
      tile_max[i] = std::max(tile_max[i], row[i]);
    }
  }
  T shift[kBQ];  // what exp subtracts: the running max, or 0 while it is -inf
#pragma omp simd
  for (int64_t i = 0; i < kBQ; ++i) {
    const T m_new = std::max(m[i], tile_max[i]);
    shift[i] = m_new == -std::numeric_limits<T>::infinity() ? T(0) : m_new;
    alpha[i] = exp_approx(m[i] - shift[i]);  // (about) 0 on a row's first useful tile (m = -inf)
    m[i] = m_new;
    l[i] *= alpha[i];
  }
  for (int64_t j = 0; j < kb; ++j) {
    T* row = st + j * kBQ;
    if (valid[j] == T(0)) {
      std::fill(row, row + kBQ, T(0));
      continue;
    }
#pragma omp simd
    for (int64_t i = 0; i < kBQ; ++i) {
      const T p = exp_approx(row[i] - shift[i]);
      row[i] = p;
      l[i] += p;  // l sums the probabilities before dropout: the softmax normaliser
    }
  }
}

template <int VB, typename T>
MB_INLINE void forward_items(const T* q, const T* k, const T* v, const uint8_t* key_mask, T* out, double* lse,
                             const AttentionShape& sh, T scale, const DropoutArgs& dropout,
                             int64_t item_begin, int64_t item_end) {
  const int64_t D = sh.head_dim, Sq = sh.seq_q, Sk = sh.seq_k;
  const int64_t Dp = round_up(D, kNC<T, VB>);
  const int64_t n_qt = (Sq + kBQ - 1) / kBQ;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  // Scratch: qt = q^T [D, kBQ] (query-major columns), st = scores / probabilities [kBK, kBQ], o =
  // unnormalised output [kBQ, Dp]; k_pad only for a last partial key tile, v_pad for D % kNC != 0 or
  // dropout.
  std::vector<T> qt(D * kBQ), st(kBK * kBQ), o(kBQ * Dp), k_pad(kBK * D), v_pad(kBK * Dp), valid(kBK);
  std::vector<T> m(kBQ), l(kBQ), alpha(kBQ);

  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t bh = item / n_qt, i0 = (item % n_qt) * kBQ, b = bh / sh.heads;
    const int64_t rows = std::min(kBQ, Sq - i0);
    const uint8_t* mask_row = key_mask ? key_mask + b * Sk : nullptr;
    // q is transposed once per item, not k once per key tile: the score product then reads k in place.
    // The scale multiplies the finished products (online_softmax_tile), as in (q k^T) * scale, not q
    // beforehand: equal products then give equal scores (with q, k = +-1000 the products are exact
    // integers, and a scale folded into q rounded two tied scores apart), and backward recomputes
    // exactly these scores.
    std::fill(qt.begin(), qt.end(), T(0));
    transpose(q + (bh * Sq + i0) * D, D, qt.data(), kBQ, rows, D);
    std::fill(o.begin(), o.end(), T(0));
    std::fill(m.begin(), m.end(), neg_inf);
    std::fill(l.begin(), l.end(), T(0));

    for (int64_t j0 = 0; j0 < Sk; j0 += kBK) {
      const int64_t kb = std::min(kBK, Sk - j0), kb_p = round_up(kb, kMR<VB>);
      if (key_validity(mask_row, j0, kb, valid.data()) == 0) continue;  // a tile of padding: skip
      const T* k_tile = k + (bh * Sk + j0) * D;
      if (kb_p != kb) {  // last tile: zero rows up to the register block
        load_padded(k_tile, kb, D, k_pad.data(), kb_p, D, T(1));
        k_tile = k_pad.data();
      }
      gemm<VB>(k_tile, D, int64_t(1), qt.data(), kBQ, st.data(), kBQ, kb_p, kBQ, D, false);  // st = k q^T
      online_softmax_tile(st.data(), valid.data(), kb, scale, m.data(), l.data(), alpha.data());
      // Dropout multiplies p by Z = keep / (1 - p): the 0/1 keep here, 1 / (1 - p) into v below. Then a
      // row whose softmax is one-hot outputs exactly the numbers v / (1 - p) that backward computes dP
      // from (see row_d in backward_pairs).
      if (dropout.active) {
        for (int64_t j = 0; j < kb; ++j)
          for (int64_t i = 0; i < rows; ++i) {
            const uint64_t index = static_cast<uint64_t>((bh * Sq + i0 + i) * Sk + j0 + j);
            st[j * kBQ + i] *= dropout_keep(dropout.base, index, dropout.threshold) ? T(1) : T(0);
          }
      }
      const T* v_tile = v + (bh * Sk + j0) * D;
      int64_t ldv = D;
      if (Dp != D || dropout.active) {  // zero columns up to the register block; v / (1 - p)
        const T v_scale = dropout.active ? static_cast<T>(dropout.inv_keep) : T(1);
        load_padded(v_tile, kb, D, v_pad.data(), kb, Dp, v_scale);
        v_tile = v_pad.data();
        ldv = Dp;
      }
      // o = diag(alpha) o + p v, reading p = st^T in place (a_rs = 1) and only the kb real keys
      gemm<VB>(st.data(), int64_t(1), kBQ, v_tile, ldv, o.data(), Dp, kBQ, Dp, kb, true, alpha.data());
    }

    for (int64_t r = 0; r < rows; ++r) {
      T* dst = out + (bh * Sq + i0 + r) * D;
      // No usable key (all padding, or only -inf scores): zeros, never 0/0.
      const bool any_key = l[r] > T(0) && m[r] > neg_inf;
      const T inv_l = any_key ? T(1) / l[r] : T(0);
      for (int64_t c = 0; c < D; ++c) dst[c] = o[r * Dp + c] * inv_l;
      // In float64 (kernels_cpu.h): a float32 m + log(l) would round away log(l) where |m| is large.
      lse[bh * Sq + i0 + r] = any_key ? double(m[r]) + std::log(double(l[r])) : double(neg_inf);
    }
  }
}

template <int VB, typename T>
MB_INLINE void backward_pairs(const T* grad_out, const T* q, const T* k, const T* v, const T* out,
                              const double* lse, const double* grad_lse, const uint8_t* key_mask, T* dq,
                              T* dk, T* dv, const AttentionShape& sh, T scale, const DropoutArgs& dropout,
                              int64_t bh_begin, int64_t bh_end) {
  const int64_t D = sh.head_dim, Sq = sh.seq_q, Sk = sh.seq_k;
  const int64_t Dp = round_up(D, kNC<T, VB>), Sq_p = round_up(Sq, kBQ);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  // Whole-sequence buffers are [S, D]-sized (never [S, S]): q, dO and the dq accumulator.
  std::vector<T> qs(Sq_p * Dp), dos(Sq_p * Dp), dq_acc(Sq_p * Dp), lse_hi(Sq_p), lse_lo(Sq_p), row_d(Sq_p);
  std::vector<T> kt(Dp * kBK), ks(kBK * Dp), vt(Dp * kBK), valid(kBK);
  std::vector<T> dk_acc(kBK * Dp), dv_acc(kBK * Dp);
  std::vector<T> p(kBQ * kBK), pd(kBQ * kBK), dp(kBQ * kBK);

  for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
    const int64_t b = bh / sh.heads;
    const uint8_t* mask_row = key_mask ? key_mask + b * Sk : nullptr;
    load_padded(q + bh * Sq * D, Sq, D, qs.data(), Sq_p, Dp, T(1));
    load_padded(grad_out + bh * Sq * D, Sq, D, dos.data(), Sq_p, Dp, T(1));
    std::fill(dq_acc.begin(), dq_acc.end(), T(0));
    // D_i = rowsum(dO_i * O_i). Where a row's softmax is one-hot (one key j, or one key far above the
    // others), O_i is exactly v_j (v_j / (1 - p) with dropout, as vt below), and dS_ij = P_ij (dP_ij -
    // D_i) is exactly 0 in an exact softmax backward. row_dots makes D_i = dP_ij bit for bit there: a
    // rounding difference of one ulp of |dO| |v| would otherwise be multiplied by |k| into dq, where the
    // answer is 0.
    row_dots<VB>(grad_out + bh * Sq * D, out + bh * Sq * D, Sq, D, row_d.data());
    for (int64_t i = 0; i < Sq_p; ++i) {
      if (i >= Sq || lse[bh * Sq + i] == neg_inf) {  // padding row / row with no keys: P = 0 below
        lse_hi[i] = neg_inf;
        row_d[i] = 0;
        continue;
      }
      // A gradient on lse adds P_ij * g_i to dS_ij (d lse_i / d s_ij = P_ij): the same as D_i - g_i.
      if (grad_lse) row_d[i] -= static_cast<T>(grad_lse[bh * Sq + i]);
      // The float64 lse as a sum of two T, hi + lo: P = exp((s - hi) - lo) keeps its precision (s - hi is
      // exact for the keys that matter, those with s near lse) while the loop over keys stays in T.
      lse_hi[i] = static_cast<T>(lse[bh * Sq + i]);
      lse_lo[i] = static_cast<T>(lse[bh * Sq + i] - static_cast<double>(lse_hi[i]));
    }

    for (int64_t j0 = 0; j0 < Sk; j0 += kBK) {
      const int64_t kb = std::min(kBK, Sk - j0), kb_p = round_up(kb, kNC<T, VB>);
      const bool any_valid = key_validity(mask_row, j0, kb, valid.data()) > 0;
      std::fill(dk_acc.begin(), dk_acc.end(), T(0));
      std::fill(dv_acc.begin(), dv_acc.end(), T(0));
      if (any_valid) {
        const T* k_tile = k + (bh * Sk + j0) * D;
        const T* v_tile = v + (bh * Sk + j0) * D;
        std::fill(kt.begin(), kt.end(), T(0));
        std::fill(vt.begin(), vt.end(), T(0));
        transpose(k_tile, D, kt.data(), kBK, kb, D);
        // With dropout, v / (1 - p) as in the forward: dP' = dO (v / (1 - p))^T, and Z dP = keep dP'.
        transpose(v_tile, D, vt.data(), kBK, kb, D, dropout.active ? static_cast<T>(dropout.inv_keep) : T(1));
        load_padded(k_tile, kb, D, ks.data(), kb_p, Dp, scale);

        for (int64_t i0 = 0; i0 < Sq_p; i0 += kBQ) {
          const T* q_tile = qs.data() + i0 * Dp;
          const T* do_tile = dos.data() + i0 * Dp;
          gemm<VB>(q_tile, Dp, int64_t(1), kt.data(), kBK, p.data(), kBK, kBQ, kb_p, Dp, false);     // q k^T
          gemm<VB>(do_tile, Dp, int64_t(1), vt.data(), kBK, dp.data(), kBK, kBQ, kb_p, Dp, false);   // dP = dO v^T
          const bool with_dropout = dropout.active;
          for (int64_t r = 0; r < kBQ; ++r) {
            T* pr = p.data() + r * kBK;
            T* pdr = pd.data() + r * kBK;
            T* dpr = dp.data() + r * kBK;
            const T hi = lse_hi[i0 + r], lo = lse_lo[i0 + r], d_r = row_d[i0 + r];
            if (hi == neg_inf) {  // no keys: P = 0, dS = 0
              std::fill(pr, pr + kBK, T(0));
              std::fill(pdr, pdr + kBK, T(0));
              std::fill(dpr, dpr + kBK, T(0));
              continue;
            }
            // P. A select, not valid[j] * exp(...): the score of a padding key (or of a zero row past the
            // last key) can exceed lse by so much that exp overflows to inf, and 0 * inf is NaN. float's
            // exp_approx clamps its argument, but float64's exp does not. (exp is computed for every
            // key, then selected: a conditional call would keep the compiler from vectorising the loop.)
            // s = scale * (q k^T), rounded to T in a loop of its own exactly as the forward stored it: in
            // one expression with the subtraction the compiler may fuse the two into an FMA, which skips
            // that rounding, and where |s| ~ 1e6 the probabilities then drift from the forward's by %.
            for (int64_t j = 0; j < kb_p; ++j) pr[j] *= scale;
            for (int64_t j = 0; j < kb_p; ++j) {
              const T e = exp_approx((pr[j] - hi) - lo);
              pr[j] = valid[j] != T(0) ? e : T(0);
            }
            if (with_dropout) {
              // With dropout Z = keep / (1 - p): out = (P * Z) v, so dV uses P * Z, and Z dP = keep dP'
              // (dP' already holds the 1 / (1 - p), through vt).
              const uint64_t row_index = static_cast<uint64_t>((bh * Sq + i0 + r) * Sk + j0);
              const T inv_keep = static_cast<T>(dropout.inv_keep);
              for (int64_t j = 0; j < kb_p; ++j) {
                const T keep = j < kb && dropout_keep(dropout.base, row_index + j, dropout.threshold) ? T(1) : T(0);
                pdr[j] = pr[j] * (keep * inv_keep);
                dpr[j] *= keep;
              }
            }
            // dS = P (dP Z - D), and exactly 0 for a padding key: its P = 0 must not meet a NaN D (from
            // a NaN or inf in v) as 0 * NaN. (The query rows' own NaNs stay theirs.)
            for (int64_t j = 0; j < kb_p; ++j) {
              const T ds = pr[j] * (dpr[j] - d_r);
              dpr[j] = valid[j] != T(0) ? ds : T(0);
            }
          }
          // dp now holds dS [kBQ, kb_p]; rows with no keys and padding rows are zero. The two products
          // with a transposed tile read it in place through the gemm's strides (a_rs = 1).
          const T* pz = with_dropout ? pd.data() : p.data();
          gemm<VB>(pz, int64_t(1), kBK, do_tile, Dp, dv_acc.data(), Dp, kb_p, Dp, kBQ, true);        // dV += (PZ)^T dO
          gemm<VB>(dp.data(), int64_t(1), kBK, q_tile, Dp, dk_acc.data(), Dp, kb_p, Dp, kBQ, true);  // dK += dS^T q
          gemm<VB>(dp.data(), kBK, int64_t(1), ks.data(), Dp, dq_acc.data() + i0 * Dp, Dp, kBQ, Dp, kb_p, true);  // dQ += dS (scale k)
        }
      }
      for (int64_t j = 0; j < kb; ++j)
        for (int64_t c = 0; c < D; ++c) {
          dk[(bh * Sk + j0 + j) * D + c] = scale * dk_acc[j * Dp + c];  // dK = scale dS^T q
          dv[(bh * Sk + j0 + j) * D + c] = dv_acc[j * Dp + c];
        }
    }
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t c = 0; c < D; ++c) dq[(bh * Sq + i) * D + c] = dq_acc[i * Dp + c];
  }
}

// The per-vector-width entry points for run_widest_vectors (math_cpu.h).
struct Forward {
  template <int VB, typename... Args>
  MB_INLINE static void run(Args... args) { forward_items<VB>(args...); }
};
struct Backward {
  template <int VB, typename... Args>
  MB_INLINE static void run(Args... args) { backward_pairs<VB>(args...); }
};

}  // namespace

void attention_forward_cpu(const float* q, const float* k, const float* v, const uint8_t* key_mask, float* out,
                           double* lse, const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                           int64_t item_begin, int64_t item_end) {
  run_widest_vectors<Forward>(q, k, v, key_mask, out, lse, shape, scale, dropout, item_begin, item_end);
}

void attention_forward_cpu(const double* q, const double* k, const double* v, const uint8_t* key_mask,
                           double* out, double* lse, const AttentionShape& shape, double scale,
                           const DropoutArgs& dropout, int64_t item_begin, int64_t item_end) {
  run_widest_vectors<Forward>(q, k, v, key_mask, out, lse, shape, scale, dropout, item_begin, item_end);
}

void attention_backward_cpu(const float* grad_out, const float* q, const float* k, const float* v,
                            const float* out, const double* lse, const double* grad_lse, const uint8_t* key_mask,
                            float* dq, float* dk, float* dv, const AttentionShape& shape, float scale,
                            const DropoutArgs& dropout, int64_t bh_begin, int64_t bh_end) {
  run_widest_vectors<Backward>(grad_out, q, k, v, out, lse, grad_lse, key_mask, dq, dk, dv, shape, scale,
                               dropout, bh_begin, bh_end);
}

void attention_backward_cpu(const double* grad_out, const double* q, const double* k, const double* v,
                            const double* out, const double* lse, const double* grad_lse,
                            const uint8_t* key_mask, double* dq, double* dk, double* dv,
                            const AttentionShape& shape, double scale, const DropoutArgs& dropout,
                            int64_t bh_begin, int64_t bh_end) {
  run_widest_vectors<Backward>(grad_out, q, k, v, out, lse, grad_lse, key_mask, dq, dk, dv, shape, scale,
                               dropout, bh_begin, bh_end);
}

}  // namespace minibert
