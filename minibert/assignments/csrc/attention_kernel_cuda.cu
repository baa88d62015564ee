// Fused attention forward on a CUDA GPU, for the minibert assignment "kernel" (graded only where a GPU is
// present). The same online softmax as attention_kernel.cpp, in its simplest GPU form: one thread per
// query row, streaming over all keys with a running max m, a running sum l and the unnormalised output o
// (in registers / local memory, D <= 128). No [S, S] buffer exists.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>

constexpr int kMaxHeadDim = 128;
constexpr int kThreads = 128;

// One thread per query row i of one (batch, head) bh:
//   q, out: [BH, S_q, D]; k, v: [BH, S_k, D]; key_mask: [B, S_k] of 1 real / 0 padding, or nullptr.
// A padding key gets probability 0; a row with no real key gets out = 0.
template <typename T>
__global__ void attention_rows_cuda(const T* q, const T* k, const T* v, const uint8_t* key_mask, T* out, int H,
                                    int S_q, int S_k, int D, float scale) {
  const int bh = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= S_q) return;
  const T* q_i = q + (static_cast<int64_t>(bh) * S_q + i) * D;
  const T* k_bh = k + static_cast<int64_t>(bh) * S_k * D;
  const T* v_bh = v + static_cast<int64_t>(bh) * S_k * D;
  const uint8_t* mask_b = key_mask ? key_mask + static_cast<int64_t>(bh / H) * S_k : nullptr;
  T* out_i = out + (static_cast<int64_t>(bh) * S_q + i) * D;
  // BEGIN ASSIGNMENT attention_rows_cuda
  float o[kMaxHeadDim];
  for (int d = 0; d < D; ++d) o[d] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j = 0; j < S_k; ++j) {
    if (mask_b && mask_b[j] == 0) continue;  // padding: probability exactly 0
    float s = 0.0f;
    for (int d = 0; d < D; ++d) s += static_cast<float>(q_i[d]) * static_cast<float>(k_bh[j * D + d]);
    s *= scale;
    const float m_new = fmaxf(m, s);
    const float alpha = __expf(m - m_new);  // rescales what was summed against the old max
    const float p = __expf(s - m_new);
    l = l * alpha + p;
    for (int d = 0; d < D; ++d) o[d] = o[d] * alpha + p * static_cast<float>(v_bh[j * D + d]);
    m = m_new;
  }
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  for (int d = 0; d < D; ++d) out_i[d] = static_cast<T>(o[d] * inv_l);
  // END ASSIGNMENT attention_rows_cuda
}

// ---- the binding (given) ---------------------------------------------------------------------------------
torch::Tensor attention_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                c10::optional<torch::Tensor> attention_mask, double scale) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "q, k, v must be CUDA tensors");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be [B, H, S, D]");
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && k.scalar_type() == torch::kFloat32 &&
              v.scalar_type() == torch::kFloat32, "float32 only");
  const int64_t B = q.size(0), H = q.size(1), S_q = q.size(2), D = q.size(3), S_k = k.size(2);
  TORCH_CHECK(D <= kMaxHeadDim, "head size at most ", kMaxHeadDim);
  TORCH_CHECK(k.sizes() == torch::IntArrayRef({B, H, S_k, D}) && v.sizes() == k.sizes(),
              "k and v must be [B, H, S_k, D] like q");
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  torch::Tensor mask;
  if (attention_mask.has_value()) {
    mask = attention_mask->to(q.device()).ne(0).to(torch::kUInt8).contiguous();
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == S_k, "attention_mask must be [B, S_k]");
  }
  auto out = torch::zeros_like(q);
  const dim3 grid((S_q + kThreads - 1) / kThreads, B * H);
  attention_rows_cuda<float><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
      mask.defined() ? mask.data_ptr<uint8_t>() : nullptr, out.data_ptr<float>(), H, S_q, S_k, D,
      static_cast<float>(scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attention_forward", &attention_forward, "fused attention forward (CUDA)", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("attention_mask") = py::none(), py::arg("scale"));
}
