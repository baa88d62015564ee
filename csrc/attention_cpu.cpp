// Fused softmax attention on the CPU: the tiled online-softmax ("flash") algorithm of Dao et al. 2022.
//
// Forward, per (batch, head, tile of query rows): stream over key tiles, keep for every row the running
// max m, the running sum l of exp(s - m) and the unnormalised output o; when a new tile raises the max,
// rescale l and o by exp(m_old - m_new). No [S, S] score matrix exists: only one [64, 64] tile. The
// log-sum-exp m + log l is saved, so backward recomputes each probability exactly as
// P = exp(s - lse) and never stores P either. Backward also uses D_i = rowsum(dO_i * O_i), which equals
// sum_j P_ij dP_ij (with or without dropout) and turns the softmax backward into dS = P * (dP - D).
//
// The matrix products inside a tile go through gemm_tile, a 4 x 16 register-blocked loop nest that the
// compiler turns into broadcast + FMA vector code; tiles are copied into zero-padded buffers first so
// every block is full (no remainder loops), and padding keys get probability 0.
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

constexpr int64_t kMR = 4;    // rows of the register block
constexpr int kVectorBytes = 64;  // columns of the register block: one AVX-512 / two AVX2 registers
template <typename T>
constexpr int64_t kNR = kVectorBytes / sizeof(T);
constexpr int64_t kBQ = kCpuQueryTile;
constexpr int64_t kBK = 64;   // keys per tile

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[m, n] (+)= A[m, kdim] @ B[kdim, n]; m % kMR == 0, n % kNR<T> == 0; row strides lda, ldb, ldc.
// The register block is kMR rows x one 64-byte vector (GCC vector extension): each step broadcasts one
// element of A and does a multiply-add with a row of B, i.e. an outer-product update, which the AVX-512
// clone runs as 1 zmm FMA per row and the AVX2 clone as 2 ymm FMAs.
template <typename T>
MB_INLINE void gemm_tile(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t m,
                         int64_t n, int64_t kdim, bool accumulate) {
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  for (int64_t i = 0; i < m; i += kMR) {
    for (int64_t j = 0; j < n; j += kNR<T>) {
      Vec acc[kMR];
#pragma GCC unroll 4
      for (int64_t r = 0; r < kMR; ++r) {
        if (accumulate)
          std::memcpy(&acc[r], c + (i + r) * ldc + j, sizeof(Vec));
        else
          acc[r] = Vec{} ;
      }
      for (int64_t p = 0; p < kdim; ++p) {
        Vec bp;
        std::memcpy(&bp, b + p * ldb + j, sizeof(Vec));
#pragma GCC unroll 4
        for (int64_t r = 0; r < kMR; ++r) acc[r] += a[(i + r) * lda + p] * bp;
      }
#pragma GCC unroll 4
      for (int64_t r = 0; r < kMR; ++r) std::memcpy(c + (i + r) * ldc + j, &acc[r], sizeof(Vec));
    }
  }
}

// dst[c, r] = src[r, c] for a rows x cols block (row strides ld_src, ld_dst).
template <typename T>
MB_INLINE void transpose(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
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

// Multiply row `p` of probabilities by keep / (1 - p) for attention element indices row_index + j.
template <typename T>
MB_INLINE void apply_dropout_row(T* p, const DropoutArgs& dropout, uint64_t row_index, int64_t kb) {
  const T inv_keep = static_cast<T>(dropout.inv_keep);
  for (int64_t j = 0; j < kb; ++j)
    p[j] *= dropout_keep(dropout.base, row_index + j, dropout.threshold) ? inv_keep : T(0);
}

template <typename T>
MB_INLINE void forward_items(const T* q, const T* k, const T* v, const uint8_t* key_mask, T* out, T* lse,
                             const AttentionShape& sh, T scale, const DropoutArgs& dropout,
                             int64_t item_begin, int64_t item_end) {
  const int64_t D = sh.head_dim, Sq = sh.seq_q, Sk = sh.seq_k;
  const int64_t Dp = round_up(D, kNR<T>);
  const int64_t n_qt = (Sq + kBQ - 1) / kBQ;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  std::vector<T> qs(kBQ * Dp), kt(Dp * kBK), vs(kBK * Dp), s(kBQ * kBK), o(kBQ * Dp), valid(kBK);
  std::vector<T> m(kBQ), l(kBQ);

  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t bh = item / n_qt, i0 = (item % n_qt) * kBQ, b = bh / sh.heads;
    const int64_t rows = std::min(kBQ, Sq - i0), rows_p = round_up(rows, kMR);
    const uint8_t* mask_row = key_mask ? key_mask + b * Sk : nullptr;
    load_padded(q + (bh * Sq + i0) * D, rows, D, qs.data(), rows_p, Dp, scale);  // fold the scale into q
    std::fill(o.begin(), o.end(), T(0));
    std::fill(m.begin(), m.end(), neg_inf);
    std::fill(l.begin(), l.end(), T(0));

    for (int64_t j0 = 0; j0 < Sk; j0 += kBK) {
      const int64_t kb = std::min(kBK, Sk - j0), kb_p = round_up(kb, kNR<T>);
      if (key_validity(mask_row, j0, kb, valid.data()) == 0) continue;  // a tile of padding: skip
      const T* k_tile = k + (bh * Sk + j0) * D;
      std::fill(kt.begin(), kt.end(), T(0));
      transpose(k_tile, D, kt.data(), kBK, kb, D);  // kt: [Dp, kBK]
      load_padded(v + (bh * Sk + j0) * D, kb, D, vs.data(), kb_p, Dp, T(1));
      gemm_tile(qs.data(), Dp, kt.data(), kBK, s.data(), kBK, rows_p, kb_p, Dp, false);  // s = q k^T

      for (int64_t r = 0; r < rows; ++r) {
        T* sr = s.data() + r * kBK;
        // `omp simd` lets the compiler vectorise these reductions (it may not reorder float sums alone).
        T tile_max = neg_inf;
#pragma omp simd reduction(max : tile_max)
        for (int64_t j = 0; j < kb_p; ++j) tile_max = std::max(tile_max, valid[j] != T(0) ? sr[j] : neg_inf);
        const T m_new = std::max(m[r], tile_max);
        // m[r] = -inf on the first useful tile: exp(-inf) may come out as a denormal-sized number from
        // exp_approx, but it only multiplies l = 0 and o = 0, so nothing leaks.
        const T alpha = exp_approx(m[r] - m_new);
        T row_sum = 0;
#pragma omp simd reduction(+ : row_sum)
        for (int64_t j = 0; j < kb_p; ++j) {
          const T p = valid[j] * exp_approx(sr[j] - m_new);
          sr[j] = p;
          row_sum += p;
        }
        m[r] = m_new;
        l[r] = l[r] * alpha + row_sum;  // l sums the probabilities before dropout: softmax normaliser
        if (dropout.threshold != 0)
          apply_dropout_row(sr, dropout, static_cast<uint64_t>((bh * Sq + i0 + r) * Sk + j0), kb);
        T* orow = o.data() + r * Dp;
        for (int64_t c = 0; c < Dp; ++c) orow[c] *= alpha;
      }
      gemm_tile(s.data(), kBK, vs.data(), Dp, o.data(), Dp, rows_p, Dp, kb_p, true);  // o += p v
    }

    for (int64_t r = 0; r < rows; ++r) {
      T* dst = out + (bh * Sq + i0 + r) * D;
      const bool any_key = l[r] > T(0);
      const T inv_l = any_key ? T(1) / l[r] : T(0);  // all-padding row: zeros, never 0/0
      for (int64_t c = 0; c < D; ++c) dst[c] = o[r * Dp + c] * inv_l;
      lse[bh * Sq + i0 + r] = any_key ? m[r] + std::log(l[r]) : neg_inf;
    }
  }
}

template <typename T>
MB_INLINE void backward_pairs(const T* grad_out, const T* q, const T* k, const T* v, const T* out,
                              const T* lse, const T* grad_lse, const uint8_t* key_mask, T* dq, T* dk, T* dv,
                              const AttentionShape& sh, T scale, const DropoutArgs& dropout, int64_t bh_begin,
                              int64_t bh_end) {
  const int64_t D = sh.head_dim, Sq = sh.seq_q, Sk = sh.seq_k;
  const int64_t Dp = round_up(D, kNR<T>), Sq_p = round_up(Sq, kBQ);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  // Whole-sequence buffers are [S, D]-sized (never [S, S]): scaled q, dO and the dq accumulator.
  std::vector<T> qs(Sq_p * Dp), dos(Sq_p * Dp), dq_acc(Sq_p * Dp), row_lse(Sq_p), row_d(Sq_p);
  std::vector<T> kt(Dp * kBK), ks(kBK * Dp), vt(Dp * kBK), valid(kBK);
  std::vector<T> dk_acc(kBK * Dp), dv_acc(kBK * Dp);
  std::vector<T> p(kBQ * kBK), pd(kBQ * kBK), pt(kBK * kBQ), dp(kBQ * kBK), dst(kBK * kBQ);

  for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
    const int64_t b = bh / sh.heads;
    const uint8_t* mask_row = key_mask ? key_mask + b * Sk : nullptr;
    load_padded(q + bh * Sq * D, Sq, D, qs.data(), Sq_p, Dp, scale);
    load_padded(grad_out + bh * Sq * D, Sq, D, dos.data(), Sq_p, Dp, T(1));
    std::fill(dq_acc.begin(), dq_acc.end(), T(0));
    for (int64_t i = 0; i < Sq_p; ++i) {
      if (i >= Sq || lse[bh * Sq + i] == neg_inf) {  // padding row / row with no keys: P = 0 below
        row_lse[i] = neg_inf;
        row_d[i] = 0;
        continue;
      }
      const T* o_row = out + (bh * Sq + i) * D;
      const T* do_row = grad_out + (bh * Sq + i) * D;
      T acc = 0;
      for (int64_t c = 0; c < D; ++c) acc += do_row[c] * o_row[c];
      // A gradient on lse adds P_ij * g_i to dS_ij (d lse_i / d s_ij = P_ij): the same as D_i - g_i.
      row_d[i] = acc - (grad_lse ? grad_lse[bh * Sq + i] : T(0));
      row_lse[i] = lse[bh * Sq + i];
    }

    for (int64_t j0 = 0; j0 < Sk; j0 += kBK) {
      const int64_t kb = std::min(kBK, Sk - j0), kb_p = round_up(kb, kNR<T>);
      const bool any_valid = key_validity(mask_row, j0, kb, valid.data()) > 0;
      std::fill(dk_acc.begin(), dk_acc.end(), T(0));
      std::fill(dv_acc.begin(), dv_acc.end(), T(0));
      if (any_valid) {
        const T* k_tile = k + (bh * Sk + j0) * D;
        const T* v_tile = v + (bh * Sk + j0) * D;
        std::fill(kt.begin(), kt.end(), T(0));
        std::fill(vt.begin(), vt.end(), T(0));
        transpose(k_tile, D, kt.data(), kBK, kb, D);
        transpose(v_tile, D, vt.data(), kBK, kb, D);
        load_padded(k_tile, kb, D, ks.data(), kb_p, Dp, scale);

        for (int64_t i0 = 0; i0 < Sq_p; i0 += kBQ) {
          const T* q_tile = qs.data() + i0 * Dp;
          const T* do_tile = dos.data() + i0 * Dp;
          gemm_tile(q_tile, Dp, kt.data(), kBK, p.data(), kBK, kBQ, kb_p, Dp, false);     // s = q k^T
          gemm_tile(do_tile, Dp, vt.data(), kBK, dp.data(), kBK, kBQ, kb_p, Dp, false);   // dP = dO v^T
          const bool with_dropout = dropout.threshold != 0;
          for (int64_t r = 0; r < kBQ; ++r) {
            T* pr = p.data() + r * kBK;
            T* pdr = pd.data() + r * kBK;
            T* dpr = dp.data() + r * kBK;
            const T lse_r = row_lse[i0 + r], d_r = row_d[i0 + r];
            if (lse_r == neg_inf) {  // no keys: P = 0, dS = 0
              std::fill(pr, pr + kBK, T(0));
              std::fill(pdr, pdr + kBK, T(0));
              std::fill(dpr, dpr + kBK, T(0));
              continue;
            }
            for (int64_t j = 0; j < kb_p; ++j) pr[j] = valid[j] * exp_approx(pr[j] - lse_r);  // P
            if (with_dropout) {
              // With dropout Z (keep / (1 - p)): out = (P * Z) v, so dV uses P * Z and dP picks up Z.
              const uint64_t row_index = static_cast<uint64_t>((bh * Sq + i0 + r) * Sk + j0);
              const T inv_keep = static_cast<T>(dropout.inv_keep);
              for (int64_t j = 0; j < kb_p; ++j) {
                const T z = j < kb && dropout_keep(dropout.base, row_index + j, dropout.threshold) ? inv_keep : T(0);
                pdr[j] = pr[j] * z;
                dpr[j] *= z;
              }
            }
            for (int64_t j = 0; j < kb_p; ++j) dpr[j] = pr[j] * (dpr[j] - d_r);  // dS = P (dP Z - D)
          }
          // dp now holds dS [kBQ, kb_p]; rows with no keys and padding rows are zero.
          transpose(with_dropout ? pd.data() : p.data(), kBK, pt.data(), kBQ, kBQ, kb_p);
          transpose(dp.data(), kBK, dst.data(), kBQ, kBQ, kb_p);
          gemm_tile(pt.data(), kBQ, do_tile, Dp, dv_acc.data(), Dp, kb_p, Dp, kBQ, true);   // dV += (PZ)^T dO
          gemm_tile(dst.data(), kBQ, q_tile, Dp, dk_acc.data(), Dp, kb_p, Dp, kBQ, true);   // dK += dS^T (scale q)
          // dQ += dS (scale k)
          gemm_tile(dp.data(), kBK, ks.data(), Dp, dq_acc.data() + i0 * Dp, Dp, kBQ, Dp, kb_p, true);
        }
      }
      for (int64_t j = 0; j < kb; ++j)
        for (int64_t c = 0; c < D; ++c) {
          dk[(bh * Sk + j0 + j) * D + c] = dk_acc[j * Dp + c];
          dv[(bh * Sk + j0 + j) * D + c] = dv_acc[j * Dp + c];
        }
    }
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t c = 0; c < D; ++c) dq[(bh * Sq + i) * D + c] = dq_acc[i * Dp + c];
  }
}

}  // namespace

MB_CPU_CLONES void attention_forward_cpu(const float* q, const float* k, const float* v, const uint8_t* key_mask,
                                         float* out, float* lse, const AttentionShape& shape, float scale,
                                         const DropoutArgs& dropout, int64_t item_begin, int64_t item_end) {
  forward_items(q, k, v, key_mask, out, lse, shape, scale, dropout, item_begin, item_end);
}

MB_CPU_CLONES void attention_forward_cpu(const double* q, const double* k, const double* v,
                                         const uint8_t* key_mask, double* out, double* lse,
                                         const AttentionShape& shape, double scale, const DropoutArgs& dropout,
                                         int64_t item_begin, int64_t item_end) {
  forward_items(q, k, v, key_mask, out, lse, shape, scale, dropout, item_begin, item_end);
}

MB_CPU_CLONES void attention_backward_cpu(const float* grad_out, const float* q, const float* k, const float* v,
                                          const float* out, const float* lse, const float* grad_lse,
                                          const uint8_t* key_mask, float* dq, float* dk, float* dv,
                                          const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                                          int64_t bh_begin, int64_t bh_end) {
  backward_pairs(grad_out, q, k, v, out, lse, grad_lse, key_mask, dq, dk, dv, shape, scale, dropout, bh_begin,
                 bh_end);
}

MB_CPU_CLONES void attention_backward_cpu(const double* grad_out, const double* q, const double* k,
                                          const double* v, const double* out, const double* lse,
                                          const double* grad_lse, const uint8_t* key_mask, double* dq, double* dk,
                                          double* dv, const AttentionShape& shape, double scale,
                                          const DropoutArgs& dropout, int64_t bh_begin, int64_t bh_end) {
  backward_pairs(grad_out, q, k, v, out, lse, grad_lse, key_mask, dq, dk, dv, shape, scale, dropout, bh_begin,
                 bh_end);
}

}  // namespace minibert
