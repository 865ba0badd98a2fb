// Host driver for the __host__ __device__ helpers of the CUDA kernels (host_device.cuh), so
// tests/test_cuda_host_helpers.py can hold them to the Python references without a GPU.
//
//   host_helpers COMMAND [ARGS] < numbers > numbers
//
// Whitespace-separated unsigned decimals in and out; floats travel as their 32-bit patterns,
// halves and bfloat16s as their 16-bit patterns, so nothing is lost in printing.
//   to_f32 half|bf16                      16-bit patterns -> fp32 patterns
//   from_f32 half|bf16                    fp32 patterns -> 16-bit patterns
//   awq_columns                           int32 words -> per word, the 8 columns by awq_column,
//                                         then the 8 columns placed by awq_nibble_column
//   awq_dequant K N GROUP                 qweight [K, N/8], qzeros [K/GROUP, N/8], scales fp16
//                                         [K/GROUP, N] -> W [K, N] four times: fp32 as awq_gemm
//                                         forms it, fp32 as awq_gemv does, then awq_gemm's
//                                         rounding to fp16 and to bf16
//   merge D SPLITS CASES                  per case: max [SPLITS], sum [SPLITS], out [SPLITS, D]
//                                         -> merged output [D]
//   paged BLOCK_SIZE SEQS WIDTH KV_HEADS HEAD_DIM
//                                         block tables [SEQS, WIDTH], then a count and that many
//                                         (seq, position, kv head, dim) -> per query: slot,
//                                         element offset in the cache
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "host_device.cuh"

using namespace llm_infer_cuda;

namespace {

std::vector<uint32_t> read_all() {
  std::vector<uint32_t> v;
  unsigned long x;
  while (std::scanf("%lu", &x) == 1) v.push_back(static_cast<uint32_t>(x));
  return v;
}

std::vector<uint32_t> read_n(size_t n) {
  std::vector<uint32_t> v(n);
  for (auto& x : v) {
    unsigned long y;
    if (std::scanf("%lu", &y) != 1) {
      std::fprintf(stderr, "host_helpers: input ended early\n");
      std::exit(2);
    }
    x = static_cast<uint32_t>(y);
  }
  return v;
}

std::vector<float> read_floats(size_t n) {
  std::vector<float> v;
  for (uint32_t b : read_n(n)) v.push_back(bits_to_f32(b));
  return v;
}

void put(uint32_t x) { std::printf("%u\n", x); }

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

template <typename T, typename Raw>
T from_bits(uint32_t bits) {
  Raw r;
  r.x = static_cast<unsigned short>(bits);
  return T(r);
}

template <typename Raw, typename T>
uint32_t to_bits(T x) {
  return static_cast<Raw>(x).x;
}

template <typename T, typename Raw>
void to_f32_all() {
  for (uint32_t b : read_all()) put(f32_bits(to_f32(from_bits<T, Raw>(b))));
}

template <typename T, typename Raw>
void from_f32_all() {
  for (uint32_t b : read_all()) put(to_bits<Raw>(from_f32<T>(bits_to_f32(b))));
}

void awq_columns() {
  for (uint32_t word : read_all()) {
    for (int c = 0; c < 8; ++c) put(awq_column(word, c));
    uint32_t by_nibble[8];
    for (int i = 0; i < 8; ++i) by_nibble[awq_nibble_column(i)] = awq_nibble(word, i);
    for (int c = 0; c < 8; ++c) put(by_nibble[c]);
  }
}

// The per-element steps of awq_gemm's dequantize_tile and awq_gemv's load_group / fma_row.
void awq_dequant(int K, int N, int group) {
  const int n8 = N / 8, groups = K / group;
  const auto qweight = read_n(static_cast<size_t>(K) * n8);
  const auto qzeros = read_n(static_cast<size_t>(groups) * n8);
  const auto scales = read_n(static_cast<size_t>(groups) * N);
  std::vector<float> gemm(static_cast<size_t>(K) * N), gemv(gemm.size());
  for (int k = 0; k < K; ++k) {
    const int g = k / group;
    for (int j = 0; j < n8; ++j) {
      const uint32_t q = qweight[static_cast<size_t>(k) * n8 + j];
      const uint32_t z = qzeros[static_cast<size_t>(g) * n8 + j];
      const uint32_t* s = &scales[static_cast<size_t>(g) * N + 8 * j];
      float* gemm_row = &gemm[static_cast<size_t>(k) * N + 8 * j];
      float* gemv_row = &gemv[static_cast<size_t>(k) * N + 8 * j];
      for (int c = 0; c < 8; ++c) {
        gemm_row[c] = awq_dequantize(static_cast<float>(awq_column(q, c)), static_cast<float>(awq_column(z, c)),
                                     to_f32(from_bits<__half, __half_raw>(s[c])));
      }
      for (int i = 0; i < 8; ++i) {
        const int c = awq_nibble_column(i);
        gemv_row[c] = awq_dequantize(awq_biased_nibble(q, i), awq_biased_nibble(z, i),
                                     to_f32(from_bits<__half, __half_raw>(s[c])));
      }
    }
  }
  for (float w : gemm) put(f32_bits(w));
  for (float w : gemv) put(f32_bits(w));
  for (float w : gemm) put(to_bits<__half_raw>(from_f32<__half>(w)));
  for (float w : gemm) put(to_bits<__nv_bfloat16_raw>(from_f32<__nv_bfloat16>(w)));
}

void merge(int D, int splits, int cases) {
  for (int t = 0; t < cases; ++t) {
    const auto max = read_floats(splits), sum = read_floats(splits), out = read_floats(static_cast<size_t>(splits) * D);
    for (int d = 0; d < D; ++d) put(f32_bits(merge_split_partials(max.data(), sum.data(), out.data() + d, D, splits)));
  }
}

void paged(int block_size, int seqs, int width, int kv_heads, int head_dim) {
  const auto raw = read_n(static_cast<size_t>(seqs) * width);
  const std::vector<int32_t> tables(raw.begin(), raw.end());
  const uint32_t n = read_n(1)[0];
  for (uint32_t t = 0; t < n; ++t) {
    const auto q = read_n(4);  // seq, position, kv head, dim
    const int64_t slot = kv_slot(block_table_row(tables.data(), width, q[0]), q[1], block_size);
    const int64_t offset = kv_offset(slot, kv_heads, q[2], head_dim, q[3]);
    std::printf("%lld %lld\n", static_cast<long long>(slot), static_cast<long long>(offset));
  }
}

int arg(char** argv, int i) { return std::atoi(argv[i]); }

}  // namespace

int main(int argc, char** argv) {
  const char* cmd = argc > 1 ? argv[1] : "";
  const bool bf16 = argc > 2 && std::strcmp(argv[2], "bf16") == 0;
  if (std::strcmp(cmd, "to_f32") == 0 && argc == 3) {
    bf16 ? to_f32_all<__nv_bfloat16, __nv_bfloat16_raw>() : to_f32_all<__half, __half_raw>();
  } else if (std::strcmp(cmd, "from_f32") == 0 && argc == 3) {
    bf16 ? from_f32_all<__nv_bfloat16, __nv_bfloat16_raw>() : from_f32_all<__half, __half_raw>();
  } else if (std::strcmp(cmd, "awq_columns") == 0) {
    awq_columns();
  } else if (std::strcmp(cmd, "awq_dequant") == 0 && argc == 5) {
    awq_dequant(arg(argv, 2), arg(argv, 3), arg(argv, 4));
  } else if (std::strcmp(cmd, "merge") == 0 && argc == 5) {
    merge(arg(argv, 2), arg(argv, 3), arg(argv, 4));
  } else if (std::strcmp(cmd, "paged") == 0 && argc == 7) {
    paged(arg(argv, 2), arg(argv, 3), arg(argv, 4), arg(argv, 5), arg(argv, 6));
  } else {
    std::fprintf(stderr, "host_helpers: unknown command or wrong arguments (see the header of host_helpers.cu)\n");
    return 2;
  }
  return 0;
}
