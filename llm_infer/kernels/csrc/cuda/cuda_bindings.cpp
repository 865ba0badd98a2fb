// Torch bindings of the CUDA kernels: checks, current stream, raw pointers. The only CUDA
// source file that includes torch headers (it is built on the GPU machine, on first use).
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "cuda_kernels.h"

namespace {

using llm_infer_cuda::DType;

DType dtype_of(const torch::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat16 || t.scalar_type() == torch::kBFloat16,
              "CUDA kernels take float16 or bfloat16 activations, got ", t.scalar_type());
  return t.scalar_type() == torch::kFloat16 ? DType::kFloat16 : DType::kBFloat16;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

void check_int32(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == torch::kInt32 && t.is_contiguous(), name,
              " must be a contiguous int32 CUDA tensor");
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

void write_kv(torch::Tensor k, torch::Tensor v, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots) {
  check_int32(slots, "slot_mapping");
  TORCH_CHECK(k.dim() == 2 && v.sizes() == k.sizes() && k.stride(1) == 1 && v.stride(1) == 1 &&
                  k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
                  v_cache.sizes() == k_cache.sizes() && k.size(1) == k_cache.size(2) * k_cache.size(3) &&
                  slots.size(0) == k.size(0),
              "write_kv: bad shapes");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k.scalar_type() &&
                  v_cache.scalar_type() == k.scalar_type(),
              "write_kv: k, v and the caches must share one dtype");
  check_cuda(llm_infer_cuda::write_kv_cache(k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                            slots.data_ptr<int32_t>(), k.size(0), k_cache.size(2), k_cache.size(3),
                                            k.stride(0), v.stride(0), dtype_of(k), stream()),
             "write_kv_cache");
}

llm_infer_cuda::PagedAttention paged(torch::Tensor out, torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor q_start, torch::Tensor q_lens,
                                     torch::Tensor seq_lens, double scale) {
  for (const auto* t : {&block_tables, &q_start, &q_lens, &seq_lens}) check_int32(*t, "attention metadata");
  TORCH_CHECK(q.dim() == 2 && q.stride(1) == 1 && out.is_contiguous() && out.dim() == 2 && k_cache.is_contiguous() &&
                  v_cache.is_contiguous() && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() &&
                  q.scalar_type() == k_cache.scalar_type() && v_cache.scalar_type() == k_cache.scalar_type() &&
                  out.scalar_type() == q.scalar_type() && out.size(0) == q.size(0) && q.size(1) == out.size(1) &&
                  out.size(1) % k_cache.size(3) == 0,
              "attention: bad shapes");
  const int head_dim = k_cache.size(3);
  return {out.data_ptr(), q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr<int32_t>(),
          q_start.data_ptr<int32_t>(), q_lens.data_ptr<int32_t>(), seq_lens.data_ptr<int32_t>(),
          static_cast<int>(seq_lens.size(0)), static_cast<int>(block_tables.size(1)),
          static_cast<int>(out.size(1) / head_dim), static_cast<int>(k_cache.size(2)), head_dim,
          static_cast<int>(k_cache.size(1)), q.stride(0), static_cast<float>(scale), dtype_of(q)};
}

int64_t decode_workspace_bytes(int64_t num_seqs, int64_t max_q_len, int64_t heads, int64_t head_dim, int64_t splits) {
  return static_cast<int64_t>(llm_infer_cuda::decode_attention_workspace_bytes(num_seqs, max_q_len, heads, head_dim, splits));
}

void decode_attention(torch::Tensor out, torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor q_start, torch::Tensor q_lens, torch::Tensor seq_lens,
                      double scale, int64_t max_q_len, int64_t splits, torch::Tensor workspace) {
  const auto p = paged(out, q, k_cache, v_cache, block_tables, q_start, q_lens, seq_lens, scale);
  TORCH_CHECK(workspace.is_cuda() && workspace.is_contiguous() &&
                  static_cast<size_t>(workspace.numel() * workspace.element_size()) >=
                      llm_infer_cuda::decode_attention_workspace_bytes(p.num_seqs, max_q_len, p.heads, p.head_dim,
                                                                       splits),
              "decode_attention: workspace too small");
  check_cuda(llm_infer_cuda::decode_attention(p, max_q_len, splits, workspace.data_ptr(), stream()),
             "decode_attention");
}

void prefill_attention(torch::Tensor out, torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                       torch::Tensor block_tables, torch::Tensor q_start, torch::Tensor q_lens, torch::Tensor seq_lens,
                       double scale, int64_t max_q_len) {
  const auto p = paged(out, q, k_cache, v_cache, block_tables, q_start, q_lens, seq_lens, scale);
  check_cuda(llm_infer_cuda::prefill_attention(p, max_q_len, stream()), "prefill_attention");
}

constexpr int64_t kMaxGemvRows = 8;

torch::Tensor awq_linear(torch::Tensor x, torch::Tensor qweight, torch::Tensor qzeros, torch::Tensor scales,
                         int64_t group, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && qweight.scalar_type() == torch::kInt32 &&
                  qzeros.scalar_type() == torch::kInt32 && scales.scalar_type() == torch::kFloat16 &&
                  qweight.is_contiguous() && qzeros.is_contiguous() && scales.is_contiguous() &&
                  x.size(1) == qweight.size(0),
              "awq_linear: bad inputs");
  auto xc = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(1) * 8;
  auto y = torch::empty({M, N}, x.options());
  c10::optional<torch::Tensor> b;
  if (bias) b = bias->to(x.scalar_type()).contiguous();
  const llm_infer_cuda::AwqProblem p{xc.data_ptr(), qweight.data_ptr<int32_t>(), qzeros.data_ptr<int32_t>(),
                                     scales.data_ptr(), b ? b->data_ptr() : nullptr, y.data_ptr(),
                                     static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
                                     static_cast<int>(group), dtype_of(x)};
  if (M <= kMaxGemvRows) {
    auto ws = torch::empty({static_cast<int64_t>(llm_infer_cuda::awq_gemv_workspace_bytes(M, N, K))},
                           x.options().dtype(torch::kUInt8));
    check_cuda(llm_infer_cuda::awq_gemv(p, ws.data_ptr(), stream()), "awq_gemv");
  } else {
    check_cuda(llm_infer_cuda::awq_gemm(p, stream()), "awq_gemm");
  }
  return y;
}

// residual += x; returns rmsnorm(residual) * weight (or rmsnorm(x) * weight without residual).
torch::Tensor rms_norm(torch::Tensor x, c10::optional<torch::Tensor> residual, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous() && weight.scalar_type() == x.scalar_type() &&
                  weight.is_contiguous() && weight.numel() == x.size(1) &&
                  (!residual || (residual->is_contiguous() && residual->sizes() == x.sizes() &&
                                 residual->scalar_type() == x.scalar_type())),
              "rms_norm: bad inputs");
  auto out = torch::empty_like(x);
  check_cuda(llm_infer_cuda::fused_add_rms_norm(out.data_ptr(), x.data_ptr(), residual ? residual->data_ptr() : nullptr,
                                                weight.data_ptr(), static_cast<float>(eps), x.size(0), x.size(1),
                                                dtype_of(x), stream()),
             "fused_add_rms_norm");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("write_kv", &write_kv);
  m.def("decode_workspace_bytes", &decode_workspace_bytes);
  m.def("decode_attention", &decode_attention);
  m.def("prefill_attention", &prefill_attention);
  m.def("awq_linear", &awq_linear);
  m.def("rms_norm", &rms_norm);
}
