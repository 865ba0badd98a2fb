// Torch bindings of the CPU kernels: checks shapes and dtypes, hands raw pointers over.
#include <torch/extension.h>

#include <map>
#include <string>

#include "cpu_kernels.h"
#include "decode_stack.h"

namespace {

using namespace llm_infer_cpu;

// Up to this many rows our tiles (gemv_* up to 8 rows, gemm_* above) beat torch's matmul; above
// it, torch's. Per ISA, on the macros of gemv.cpp's paths (benchmarks/invariant_matmul_cpu.py).
#if defined(__AVX512F__)
// AVX-512, the default model's shapes, 2 threads (results/invariant_matmul_cpu.json): bf16
// 0.52-0.97x oneDNN's time up to 48 rows, up to 1.11x at 64; fp32 0.27-0.92x up to 128; above,
// the product is compute-bound and oneDNN's blocking wins.
constexpr int64_t kMaxTiledRowsBf16 = 48;
constexpr int64_t kMaxTiledRowsF32 = 128;
#else
// AVX2 (--isa avx2, results/invariant_matmul_cpu_avx2.json: torch held to AVX2 as on an AVX2-only
// CPU, where its bf16 matmul is ATen's own, not oneDNN's; the default model's and a 0.5B model's
// shapes, 1 thread): bf16 0.20-0.57x torch's time at every count measured, 1 to 2048 rows (the
// default max_num_batched_tokens); fp32 0.17-0.91x up to 24 rows, then MKL's AVX2 sgemm is as
// fast on some shapes (0.66-1.02x at 32 and 48) and faster from 64 (up to 1.26x).
constexpr int64_t kMaxTiledRowsBf16 = 2048;
constexpr int64_t kMaxTiledRowsF32 = 24;
#endif
// The quantized weights: our streamed tiles up to these many rows, dequantise + torch's matmul
// above. Per ISA, on the macros of the kernel paths (int8_gemv.cpp, awq_gemv.cpp); one limit per
// op serves both activation dtypes.
#if defined(__AVX512F__)
// int8 head, AVX-512: dequantising a 49152 x 576 head alone takes ~120 ms (benchmarks/int8_head_cpu.py).
constexpr int64_t kMaxInt8GemvRows = 256;
#else
// int8 head, AVX2 (benchmarks/quant_row_limits_cpu.py, results/quant_row_limits_cpu-avx2-*.json:
// torch held to AVX2 as on an AVX2-only CPU, where it has no oneDNN bf16 matmul; 1 thread): bf16
// tiles take 0.04-0.35x torch's time at every count measured, 1 to 2048 rows (the default
// max_num_batched_tokens); fp32 tiles lose to torch's sgemm from 256 rows (1.15-1.4x its time).
// bf16, the default dtype, decides.
constexpr int64_t kMaxInt8GemvRows = 2048;
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// int4, AVX-512 VNNI: int4 weights must be dequantised before oneDNN can use them, which costs a
// pass over all of them; streaming them through the GEMV stays cheaper up to a few tiles of rows.
constexpr int64_t kMaxAwqGemvRows = 32;
#else
// int4, AVX2 (same benchmark and conditions): the bf16 W4A8 tiles take 0.18-0.28x the time of
// dequantise + torch at every count measured, 1 to 2048 rows; the fp32 exact tiles lose from 8
// rows (1.45-3.8x torch's time). bf16, the default dtype, decides.
constexpr int64_t kMaxAwqGemvRows = 2048;
#endif

bool is_bf16(const torch::Tensor& t) { return t.scalar_type() == torch::kBFloat16; }

void check_float(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kFloat32, name,
              " must be bfloat16 or float32");
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
}

uint16_t* bits(const torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }

torch::Tensor linear_op(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  const bool ours = x.dim() == 2 && x.size(0) <= (is_bf16(x) ? kMaxTiledRowsBf16 : kMaxTiledRowsF32) &&
                    x.is_contiguous() && w.is_contiguous() && x.scalar_type() == w.scalar_type() &&
                    (is_bf16(x) || x.scalar_type() == torch::kFloat32) &&
                    (!bias.has_value() || (bias->is_contiguous() && bias->scalar_type() == x.scalar_type()));
  if (!ours) return at::linear(x, w, bias);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "linear: x has ", K, " features, weight expects ", w.size(1));
  TORCH_CHECK(!bias || bias->numel() == N, "linear: bias has ", bias ? bias->numel() : 0, " values for ", N, " outputs");
  auto y = torch::empty({M, N}, x.options());
  if (is_bf16(x)) {
    gemm_bf16(bits(x), bits(w), bias ? bits(*bias) : nullptr, bits(y), M, N, K);
  } else {
    gemm_f32(x.data_ptr<float>(), w.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr,
             y.data_ptr<float>(), M, N, K);
  }
  return y;
}

// Deterministic mode: the same tiles for every row count (gemm_*), so a row's result never
// depends on the rows beside it. x is made contiguous; dtypes must match.
torch::Tensor linear_invariant_op(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && w.is_contiguous() && w.scalar_type() == x.scalar_type() &&
                  (!bias.has_value() || (bias->is_contiguous() && bias->scalar_type() == x.scalar_type())),
              "linear_invariant: bad input");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "linear_invariant: x has ", K, " features, weight expects ", w.size(1));
  TORCH_CHECK(!bias || bias->numel() == N, "linear_invariant: bias has ", bias ? bias->numel() : 0, " values for ",
              N, " outputs");
  auto xc = x.contiguous();
  auto y = torch::empty({M, N}, x.options());
  if (is_bf16(x)) {
    gemm_bf16(bits(xc), bits(w), bias ? bits(*bias) : nullptr, bits(y), M, N, K);
  } else {
    gemm_f32(xc.data_ptr<float>(), w.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr,
             y.data_ptr<float>(), M, N, K);
  }
  return y;
}

template <typename F>
void by_dtype(const torch::Tensor& t, F&& f) {
  if (is_bf16(t)) f(static_cast<uint16_t*>(nullptr));
  else f(static_cast<float*>(nullptr));
}

template <typename T>
T* ptr(const torch::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// Rows of x (last dim contiguous, any row stride) -> new contiguous tensor.
torch::Tensor rms_norm_op(torch::Tensor x, torch::Tensor weight, double eps) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && weight.scalar_type() == x.scalar_type(), "rms_norm: bad input");
  auto out = torch::empty(x.sizes(), x.options());
  by_dtype(x, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rms_norm<T>(ptr<T>(out), ptr<T>(x), nullptr, ptr<T>(weight), static_cast<float>(eps), x.size(0), x.size(1),
                x.stride(0), out.stride(0));
  });
  return out;
}

// residual += x; x = rms_norm(residual) (both in place); returns x.
torch::Tensor add_rms_norm_op(torch::Tensor x, torch::Tensor residual, torch::Tensor weight, double eps) {
  check_float(x, "x");
  TORCH_CHECK(x.is_contiguous() && residual.is_contiguous() && x.sizes() == residual.sizes() &&
                  residual.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type(),
              "add_rms_norm_: bad input");
  by_dtype(x, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rms_norm<T>(ptr<T>(x), ptr<T>(x), ptr<T>(residual), ptr<T>(weight), static_cast<float>(eps), x.size(0),
                x.size(1), x.stride(0), x.stride(0));
  });
  return x;
}

// In place on the first rot_heads heads of each row of x [tokens, row].
void rotary_op(torch::Tensor x, torch::Tensor positions, torch::Tensor cos_cache, torch::Tensor sin_cache,
             int64_t rot_heads, int64_t head_dim) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && positions.scalar_type() == torch::kInt64 &&
                  cos_cache.scalar_type() == torch::kFloat32 && cos_cache.is_contiguous() &&
                  sin_cache.is_contiguous() && cos_cache.size(1) == head_dim && rot_heads * head_dim <= x.size(1),
              "rotary_: bad input");
  auto pos = positions.contiguous();
  by_dtype(x, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rotary<T>(ptr<T>(x), pos.data_ptr<int64_t>(), cos_cache.data_ptr<float>(), sin_cache.data_ptr<float>(),
              x.size(0), rot_heads, head_dim, x.stride(0));
  });
}

torch::Tensor silu_and_mul_op(torch::Tensor x) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0, "silu_and_mul: bad input");
  const int64_t inter = x.size(1) / 2;
  auto out = torch::empty({x.size(0), inter}, x.options());
  by_dtype(x, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    silu_and_mul<T>(ptr<T>(out), ptr<T>(x), x.size(0), inter);
  });
  return out;
}

// k, v [tokens, kv_heads * head_dim] (row strides allowed) into caches [blocks, block_size, kv_heads, head_dim].
void write_kv_op(torch::Tensor k, torch::Tensor v, torch::Tensor k_cache, torch::Tensor v_cache,
                 torch::Tensor slot_mapping) {
  check_float(k, "k");
  const int64_t row = k_cache.size(2) * k_cache.size(3);
  TORCH_CHECK(k.dim() == 2 && v.dim() == 2 && k.stride(1) == 1 && v.stride(1) == 1 && k.size(1) == row &&
                  v.size(1) == row && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.scalar_type() == k.scalar_type() && v.scalar_type() == k.scalar_type() &&
                  v_cache.scalar_type() == k.scalar_type() && slot_mapping.scalar_type() == torch::kInt64 &&
                  slot_mapping.is_contiguous() && slot_mapping.size(0) == k.size(0),
              "write_kv: bad input");
  by_dtype(k, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    write_kv<T>(ptr<T>(k), ptr<T>(v), ptr<T>(k_cache), ptr<T>(v_cache), slot_mapping.data_ptr<int64_t>(),
                k.size(0), row, k.stride(0), v.stride(0));
  });
}

// Writes the rows of the listed sequences into out [tokens, heads, head_dim].
// q [tokens, >= heads*head_dim] (row stride allowed), caches [blocks, block_size, kv_heads, head_dim].
void paged_attention_op(torch::Tensor out, torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                        torch::Tensor block_tables, torch::Tensor q_start, torch::Tensor q_lens,
                        torch::Tensor seq_lens, double scale, int64_t fixed_chunk) {
  check_float(q, "q");
  TORCH_CHECK(q.dim() == 2 && q.stride(1) == 1 && out.is_contiguous() && out.dim() == 3 &&
                  out.scalar_type() == q.scalar_type() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type() &&
                  block_tables.scalar_type() == torch::kInt64 && block_tables.is_contiguous() &&
                  q_start.scalar_type() == torch::kInt64 && q_start.is_contiguous() &&
                  q_lens.scalar_type() == torch::kInt64 && q_lens.is_contiguous() &&
                  seq_lens.scalar_type() == torch::kInt64 && seq_lens.is_contiguous(),
              "paged_attention: bad input");
  const int64_t num_heads = out.size(1), block_size = k_cache.size(1), kv_heads = k_cache.size(2),
                head_dim = k_cache.size(3);
  TORCH_CHECK(num_heads % kv_heads == 0 && out.size(2) == head_dim && q.size(1) >= num_heads * head_dim,
              "paged_attention: head counts do not match");
  by_dtype(q, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    paged_attention<T>(ptr<T>(out), ptr<T>(q), ptr<T>(k_cache), ptr<T>(v_cache), block_tables.data_ptr<int64_t>(),
                       q_start.data_ptr<int64_t>(), q_lens.data_ptr<int64_t>(), seq_lens.data_ptr<int64_t>(),
                       seq_lens.size(0), block_tables.size(1), num_heads, kv_heads, head_dim, block_size,
                       static_cast<float>(scale), q.stride(0), fixed_chunk);
  });
}

// packed [N, K/2] u8, scales [N, G] fp32, zero_scales [G, N] fp32 (scale * zero point).
void check_awq(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& zeros, int64_t group) {
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous() && packed.dim() == 2 &&
                  scales.scalar_type() == torch::kFloat32 && scales.is_contiguous() &&
                  zeros.scalar_type() == torch::kFloat32 && zeros.is_contiguous() && group % 64 == 0 &&
                  (packed.size(1) * 2) % group == 0 && scales.size(0) == packed.size(0) &&
                  scales.size(1) == packed.size(1) * 2 / group && zeros.size(0) == scales.size(1) &&
                  zeros.size(1) == scales.size(0),
              "awq: bad packed weight");
}

torch::Tensor awq_dequantize_op(torch::Tensor packed, torch::Tensor scales, torch::Tensor zeros, int64_t group,
                                torch::ScalarType dtype) {
  check_awq(packed, scales, zeros, group);
  auto w = torch::empty({packed.size(0), packed.size(1) * 2}, packed.options().dtype(dtype));
  TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kFloat32, "awq_dequantize: bf16 or fp32 only");
  by_dtype(w, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    awq_dequantize<T>(packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), zeros.data_ptr<float>(), ptr<T>(w),
                      w.size(0), w.size(1), group);
  });
  return w;
}

// y = x W^T + bias: streamed int4 GEMV for up to kMaxAwqGemvRows rows, dequantise + oneDNN GEMM beyond.
torch::Tensor awq_linear_op(torch::Tensor x, torch::Tensor packed, torch::Tensor scales, torch::Tensor zeros,
                            int64_t group, c10::optional<torch::Tensor> bias) {
  check_float(x, "x");
  check_awq(packed, scales, zeros, group);
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "awq_linear: x has ", x.size(1), " features, weight expects ", K);
  if (x.size(0) > kMaxAwqGemvRows) {
    return at::linear(x, awq_dequantize_op(packed, scales, zeros, group, x.scalar_type()), bias);
  }
  auto xc = x.contiguous();
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == x.scalar_type() && bias->is_contiguous()),
              "awq_linear: bias dtype");
  auto y = torch::empty({x.size(0), N}, x.options());
  by_dtype(x, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    awq_gemv<T>(ptr<T>(xc), packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), zeros.data_ptr<float>(),
                bias ? ptr<T>(*bias) : nullptr, ptr<T>(y), x.size(0), N, K, group);
  });
  return y;
}

// y = x (scales * W)^T for int8 W [N, K] and fp32 per-row scales: streamed tiles for up to
// kMaxInt8GemvRows rows, dequantise + oneDNN GEMM beyond.
torch::Tensor int8_linear_op(torch::Tensor x, torch::Tensor w, torch::Tensor scales) {
  check_float(x, "x");
  TORCH_CHECK(w.scalar_type() == torch::kInt8 && w.is_contiguous() && w.dim() == 2 &&
                  scales.scalar_type() == torch::kFloat32 && scales.is_contiguous() && scales.size(0) == w.size(0) &&
                  x.dim() == 2 && x.size(1) == w.size(1),
              "int8_linear: bad input");
  if (x.size(0) > kMaxInt8GemvRows) {
    return at::linear(x, (w.to(torch::kFloat32) * scales.unsqueeze(1)).to(x.scalar_type()));
  }
  auto xc = x.contiguous();
  auto y = torch::empty({x.size(0), w.size(0)}, x.options());
  by_dtype(x, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    int8_gemv<T>(ptr<T>(xc), w.data_ptr<int8_t>(), scales.data_ptr<float>(), ptr<T>(y), x.size(0), w.size(0),
                 w.size(1));
  });
  return y;
}

// Holds a model's decoder layers (pointers into tensors it keeps alive) for decode_stack.
class DecodeStack {
 public:
  // layers: per layer [input_norm, post_norm, q_norm, k_norm, k_cache, v_cache] then, for each of
  // qkv, o, gate_up, down: [weight, packed, scales, zeros, bias]; groups: 4 per layer.
  DecodeStack(std::vector<std::vector<c10::optional<torch::Tensor>>> layers, std::vector<int64_t> groups,
              std::vector<int64_t> dims, double eps, double scale, torch::Tensor cos_cache, torch::Tensor sin_cache)
      : cos_(cos_cache.contiguous()), sin_(sin_cache.contiguous()) {
    // dims: hidden, heads, kv_heads, head_dim, intermediate, block_size[, attention chunk (deterministic)]
    TORCH_CHECK((dims.size() == 6 || dims.size() == 7) && groups.size() == 4 * layers.size(),
                "DecodeStack: bad arguments");
    shape_ = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], static_cast<float>(eps),
              static_cast<float>(scale), cos_.data_ptr<float>(), sin_.data_ptr<float>(),
              dims.size() == 7 ? dims[6] : 0};
    for (size_t i = 0; i < layers.size(); ++i) {
      const auto& t = layers[i];
      TORCH_CHECK(t.size() == 26, "DecodeStack: layer ", i, " needs 26 entries");
      StackLayer l;
      l.input_norm = keep(t[0]);
      l.post_norm = keep(t[1]);
      l.q_norm = keep(t[2]);
      l.k_norm = keep(t[3]);
      l.k_cache = const_cast<void*>(keep(t[4]));
      l.v_cache = const_cast<void*>(keep(t[5]));
      StackLinear* linears[4] = {&l.qkv, &l.o, &l.gate_up, &l.down};
      for (int j = 0; j < 4; ++j) {
        const auto* e = &t[6 + 5 * j];
        StackLinear& lin = *linears[j];
        lin.weight = keep(e[0]);
        lin.packed = static_cast<const uint8_t*>(keep(e[1]));
        lin.scales = static_cast<const float*>(keep(e[2]));
        lin.zeros = static_cast<const float*>(keep(e[3]));
        lin.bias = keep(e[4]);
        lin.group = groups[4 * i + j];
        if (e[0]) {
          lin.n = e[0]->size(0);
          lin.k = e[0]->size(1);
        } else {
          TORCH_CHECK(e[1] && e[2] && e[3], "DecodeStack: linear ", j, " of layer ", i, " has no weight");
          lin.n = e[1]->size(0);
          lin.k = e[1]->size(1) * 2;
        }
      }
      layers_.push_back(l);
    }
  }

  // hidden, residual: [tokens, hidden] updated in place. Other tensors as for paged_attention.
  void run(torch::Tensor hidden, torch::Tensor residual, bool residual_valid, torch::Tensor positions,
           torch::Tensor slot_mapping, torch::Tensor block_tables, torch::Tensor q_start, torch::Tensor q_lens,
           torch::Tensor seq_lens) {
    check_float(hidden, "hidden");
    TORCH_CHECK(hidden.is_contiguous() && residual.is_contiguous() && hidden.sizes() == residual.sizes() &&
                    hidden.size(1) == shape_.hidden && positions.is_contiguous() && slot_mapping.is_contiguous() &&
                    block_tables.is_contiguous() && q_start.is_contiguous() && q_lens.is_contiguous() &&
                    seq_lens.is_contiguous(),
                "DecodeStack.run: bad input");
    StackStep step{hidden.size(0), seq_lens.size(0), block_tables.size(1), positions.data_ptr<int64_t>(),
                   slot_mapping.data_ptr<int64_t>(), block_tables.data_ptr<int64_t>(), q_start.data_ptr<int64_t>(),
                   q_lens.data_ptr<int64_t>(), seq_lens.data_ptr<int64_t>()};
    by_dtype(hidden, [&](auto tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      decode_stack<T>(layers_.data(), static_cast<int64_t>(layers_.size()), shape_, ptr<T>(hidden), ptr<T>(residual),
                      residual_valid, step);
    });
  }

 private:
  const void* keep(const c10::optional<torch::Tensor>& t) {
    if (!t.has_value()) return nullptr;
    TORCH_CHECK(t->is_contiguous(), "DecodeStack: tensors must be contiguous");
    kept_.push_back(*t);
    return t->data_ptr();
  }

  std::vector<torch::Tensor> kept_;
  std::vector<StackLayer> layers_;
  StackShape shape_;
  torch::Tensor cos_, sin_;
};

}  // namespace

namespace {

// x [T, H]; gate_up [E, 2I, H]; down [E, H, I] (x's dtype, contiguous); weights fp32 [T, k];
// ids int64 [T, k] (global expert ids; this rank holds first .. first + E - 1) -> [T, H].
torch::Tensor fused_moe_op(torch::Tensor x, torch::Tensor gate_up, torch::Tensor down, torch::Tensor weights,
                           torch::Tensor ids, int64_t first) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 2 && gate_up.dim() == 3 && down.dim() == 3 && weights.dim() == 2 &&
                  ids.sizes() == weights.sizes() && weights.size(0) == x.size(0),
              "fused_moe: bad shapes");
  TORCH_CHECK(gate_up.scalar_type() == x.scalar_type() && down.scalar_type() == x.scalar_type() &&
                  weights.scalar_type() == torch::kFloat32 && ids.scalar_type() == torch::kInt64,
              "fused_moe: bad dtypes");
  const int64_t E = gate_up.size(0), H = x.size(1), I = down.size(2);
  TORCH_CHECK(gate_up.size(1) == 2 * I && gate_up.size(2) == H && down.size(0) == E && down.size(1) == H,
              "fused_moe: expert weights do not match");
  x = x.contiguous();
  weights = weights.contiguous();
  ids = ids.contiguous();
  TORCH_CHECK(gate_up.is_contiguous() && down.is_contiguous(), "fused_moe: weights must be contiguous");
  auto y = torch::empty({x.size(0), H}, x.options());
  by_dtype(x, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    fused_moe<T>(ptr<T>(x), ptr<T>(gate_up), ptr<T>(down), weights.data_ptr<float>(), ids.data_ptr<int64_t>(),
                 ptr<T>(y), x.size(0), weights.size(1), E, first, H, I);
  });
  return y;
}

// The row counts up to which the streamed kernels run (torch, oneDNN, beyond), for `llm-infer env`.
std::map<std::string, int64_t> row_limits() {
  return {{"linear_bf16", kMaxTiledRowsBf16}, {"linear_fp32", kMaxTiledRowsF32}, {"int8_linear", kMaxInt8GemvRows},
          {"awq_linear", kMaxAwqGemvRows}};
}

std::map<std::string, std::string> isa_paths() {
  return {{"gemv", gemv_isa()}, {"awq_gemv", awq_gemv_isa()}, {"int8_gemv", int8_gemv_isa()},
          {"attention", attention_isa()}, {"elementwise", elementwise_isa()}, {"moe", moe_isa()}};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("isa_paths", &isa_paths, "kernel file -> the instruction-set path it was compiled with");
  m.def("row_limits", &row_limits, "op -> rows up to which our streamed kernel runs (torch beyond)");
  m.def("linear", &linear_op, "y = x @ w.T + b; our tiles up to 48 (bf16) / 128 (fp32) rows, oneDNN above");
  m.def("linear_invariant", &linear_invariant_op, "y = x @ w.T + b, each row reduced the same for any row count");
  m.def("rms_norm", &rms_norm_op);
  m.def("add_rms_norm_", &add_rms_norm_op);
  m.def("rotary_", &rotary_op);
  m.def("silu_and_mul", &silu_and_mul_op);
  m.def("paged_attention", &paged_attention_op, pybind11::arg("out"), pybind11::arg("q"), pybind11::arg("k_cache"),
        pybind11::arg("v_cache"), pybind11::arg("block_tables"), pybind11::arg("q_start"), pybind11::arg("q_lens"),
        pybind11::arg("seq_lens"), pybind11::arg("scale"), pybind11::arg("fixed_chunk") = 0);
  m.def("write_kv", &write_kv_op);
  m.def("awq_linear", &awq_linear_op);
  m.def("awq_dequantize", &awq_dequantize_op);
  m.def("int8_linear", &int8_linear_op);
  m.def("fused_moe", &fused_moe_op, "mixture-of-experts MLP over the routed tokens, each hit expert once");
  pybind11::class_<DecodeStack>(m, "DecodeStack")
      .def(pybind11::init<std::vector<std::vector<c10::optional<torch::Tensor>>>, std::vector<int64_t>,
                          std::vector<int64_t>, double, double, torch::Tensor, torch::Tensor>())
      .def("run", &DecodeStack::run);
}
