// A convolution tap's weight gradient through a BLAS sgemm, as an XLA FFI handler (CPU).
//
//   dW[C, N] = sum_b x[b, offset:offset + T]^T @ dy[b]     x: [B, Tx, C], dy: [B, T, N]
//
// The tap's rows are a pointer offset into x (the padded input), so nothing is copied: the
// sgemm reads x transposed in place, where XLA:CPU first copies it. Which sgemm runs is the
// caller's: the attribute `sgemm` is the address of a cblas_sgemm-compatible function, with
// 32-bit integers (LP64, e.g. MKL's cblas_sgemm) or 64-bit ones (`ilp64`, e.g. the
// scipy_cblas_sgemm64_ of the OpenBLAS that numpy bundles). Used by
// benchmarks/blas_weight_grad.py.
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using SgemmLp64 = void (*)(int, int, int, int32_t, int32_t, int32_t, float, const float*,
                           int32_t, const float*, int32_t, float, float*, int32_t);
using SgemmIlp64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*,
                            int64_t, const float*, int64_t, float, float*, int64_t);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using Rows = ffi::Buffer<ffi::F32, 3>;    // [B, T, C]
using Matrix = ffi::Buffer<ffi::F32, 2>;  // [C, N]

ffi::Error WeightGradImpl(Rows x, Rows dy, ffi::Result<Matrix> out, int64_t sgemm, bool ilp64,
                          int64_t offset) {
  auto x_dims = x.dimensions(), dy_dims = dy.dimensions();
  const int64_t batch = x_dims[0], x_length = x_dims[1], c = x_dims[2];
  const int64_t length = dy_dims[1], n = dy_dims[2];
  if (dy_dims[0] != batch || offset < 0 || offset + length > x_length) {
    return ffi::Error::InvalidArgument("blas_weight_grad: x and dy do not match the offset");
  }
  for (int64_t b = 0; b < batch; ++b) {
    const float* x_rows = x.typed_data() + (b * x_length + offset) * c;
    const float* dy_rows = dy.typed_data() + b * length * n;
    const float beta = b == 0 ? 0.f : 1.f;  // The first example writes, the rest add.
    if (ilp64) {
      reinterpret_cast<SgemmIlp64>(sgemm)(kRowMajor, kTrans, kNoTrans, c, n, length, 1.f,
                                          x_rows, c, dy_rows, n, beta, out->typed_data(), n);
    } else {
      reinterpret_cast<SgemmLp64>(sgemm)(kRowMajor, kTrans, kNoTrans, c, n, length, 1.f,
                                         x_rows, c, dy_rows, n, beta, out->typed_data(), n);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BlasWeightGrad, WeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Rows>()
                                  .Arg<Rows>()
                                  .Ret<Matrix>()
                                  .Attr<int64_t>("sgemm")
                                  .Attr<bool>("ilp64")
                                  .Attr<int64_t>("offset"));
