// Fused CPU kernels for one step of lopt's normed_fc rule (see normed_fc_cpu.py for the why).
//
// XLA:CPU writes each output of the rule in its own loop and re-evaluates the
// per-parameter network in every loop that needs it, so the rule reads each
// parameter's data many times. These kernels do the same arithmetic in as few
// passes as the rule allows, each reading a tensor once. With this step's tensor
// statistics (tensor_stats "current") that is three passes:
//   stats:  sum a^2, sum p^2, max |g|, <g, moved>, ||s_new||_1     (before the network)
//   dnorm:  sum d^2                                                 (d needs rms(a), rms(p))
//   apply:  the update and every new accumulator, or the old ones when the step is skipped
// With the previous step's statistics (tensor_stats "previous") it is one:
//   step:   apply, which also sums a^2, p^2, d^2, <g, moved>, ||s_new||_1 for the next step
// The scalars between the passes (RMSs, the step scale, the guard) are computed in JAX.
//
// Reductions are summed per block of kBlock elements in float and the block sums
// added in block order in double, so a result does not depend on how blocks were
// spread over threads. Compile without -ffast-math: NaN must propagate (the guard).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Elementwise loops: element i of an output depends on element i of the inputs only, and an output
// may be its own input (the accumulators are updated in place). Tell the vectorizer so; without it,
// it versions the loops on an aliasing check that in-place updates fail. (OpenMP's `simd` pragma is
// not used on loops that hold small per-element arrays: GCC emulates those arrays in memory.)
#if defined(__clang__)
#define LOPT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define LOPT_IVDEP _Pragma("GCC ivdep")
#else
#define LOPT_IVDEP
#endif

namespace {

constexpr int64_t kBlock = 16384;  // elements per task (and per partial sum)
constexpr int64_t kChunk = 1024;   // elements of d^2 held on the stack before they are summed

// Offsets into the float32 `consts` vector; normed_fc_cpu.py builds the same layout.
template <int K, int H>
struct Layout {
  static constexpr int F = 1 + K;
  static constexpr int betas = 0;
  static constexpr int beta_v = K;
  static constexpr int corr = K + 1;
  static constexpr int corr_v = 2 * K + 1;
  static constexpr int eps = 2 * K + 2;
  static constexpr int tiny = 2 * K + 3;
  static constexpr int dist_decay = 2 * K + 4;
  static constexpr int weight = 2 * K + 5;
  static constexpr int w1 = 2 * K + 6;
  static constexpr int bias1 = w1 + F * H;
  static constexpr int w2 = bias1 + H;
  static constexpr int b2 = w2 + H * H;
  static constexpr int out = b2 + H;
  static constexpr int c0 = out + H;
  static constexpr int scale = c0 + 1;
  static constexpr int decay = c0 + 2;
  static constexpr int ok = c0 + 3;
  static constexpr int size = c0 + 4;
};

// Runs fn(b) for b in [0, n): blocks are claimed from a shared counter by the
// caller and by helpers on XLA's intra-op pool. The caller waits only for
// claimed blocks, so a helper that starts late (or never) cannot stall it.
template <typename Fn>
void ParallelBlocks(ffi::ThreadPool& pool, int64_t n, const Fn& fn) {
  int64_t threads = pool.num_threads();
  if (n <= 1 || threads <= 1) {
    for (int64_t b = 0; b < n; ++b) fn(b);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  const Fn* f = &fn;
  auto work = [shared, f, n]() {
    for (int64_t b; (b = shared->next.fetch_add(1)) < n;) {
      (*f)(b);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < std::min(threads, n); ++t) {
    auto task = work;  // Schedule takes ownership of a copy
    pool.Schedule(std::move(task));
  }
  work();
  while (shared->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

inline float Ema(float beta, float old, float x) { return beta * old + (1.0f - beta) * x; }

// The constants of one tensor's step, copied out of the `consts` buffer into locals so the
// compiler knows no output aliases them (it then keeps them in registers across the loop).
template <int K, int H>
struct Consts {
  using L = Layout<K, H>;
  float betas[K], beta_v, corr[K], corr_v, eps, tiny, dist_decay, weight;
  float w1[L::F * H], bias1[H], w2[H * H], b2[H], out[H], c0, scale, decay, ok;

  explicit Consts(const float* c) {
    for (int i = 0; i < K; ++i) betas[i] = c[L::betas + i], corr[i] = c[L::corr + i];
    beta_v = c[L::beta_v], corr_v = c[L::corr_v], eps = c[L::eps], tiny = c[L::tiny];
    dist_decay = c[L::dist_decay], weight = c[L::weight];
    for (int i = 0; i < L::F * H; ++i) w1[i] = c[L::w1 + i];
    for (int i = 0; i < H * H; ++i) w2[i] = c[L::w2 + i];
    for (int i = 0; i < H; ++i) bias1[i] = c[L::bias1 + i], b2[i] = c[L::b2 + i], out[i] = c[L::out + i];
    c0 = c[L::c0], scale = c[L::scale], decay = c[L::decay], ok = c[L::ok];
  }
};

// Adam's direction for one element, from its new first momentum and second moment.
inline float AdamDirection(float m0, float v, float corr0, float corr_v, float eps) {
  return m0 * corr0 / (std::sqrt(v * corr_v) + eps);
}

// The new momenta of element i (written to m).
template <int K, int H>
inline void NewMomenta(const Consts<K, H>& c, const float* const* ms, int64_t i, float g, float* m) {
  for (int k = 0; k < K; ++k) m[k] = Ema(c.betas[k], ms[k][i], g);
}

// The corrected direction d for one element, from Adam's direction a, its new momenta m and second moment v.
template <int K, int H>
inline float Direction(const Consts<K, H>& c, float g, float a, const float* m, float v) {
  constexpr int F = 1 + K;
  float v_hat = v * c.corr_v;
  float rs = 1.0f / std::sqrt(v_hat + c.tiny);
  float feats[F];
  feats[0] = g * rs;
  for (int i = 0; i < K; ++i) feats[1 + i] = m[i] * c.corr[i] * rs;
  float h1[H];
  for (int h = 0; h < H; ++h) {
    float acc = c.bias1[h];
    for (int f = 0; f < F; ++f) acc = acc + c.w1[f * H + h] * feats[f];
    h1[h] = acc > 0.0f ? acc : 0.0f;
  }
  float net = 0.0f;
  for (int h = 0; h < H; ++h) {
    float acc = c.b2[h];
    for (int j = 0; j < H; ++j) acc = acc + c.w2[j * H + h] * h1[j];
    net = net + c.out[h] * (acc > 0.0f ? acc : 0.0f);
  }
  return a + (net - c.c0);
}

template <int K, int H, bool Adapts>
ffi::Error Stats(ffi::ThreadPool pool, const float* g, const float* p, const float* m0, const float* v,
                 const float* moved, const float* s, const float* consts, int64_t n, float* out) {
  const Consts<K, H> c(consts);
  int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<float> part(static_cast<size_t>(nb) * 6);
  ParallelBlocks(pool, nb, [&](int64_t b) {
    int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    float sa = 0, sp = 0, dot = 0, l1 = 0, mx = 0, bad = 0;
    const float beta0 = c.betas[0], beta_v = c.beta_v, corr0 = c.corr[0], corr_v = c.corr_v;
    const float eps = c.eps, dd = c.dist_decay, w = c.weight;
#pragma omp simd reduction(+ : sa, sp, bad, dot, l1) reduction(max : mx)
    for (int64_t i = lo; i < hi; ++i) {
      float gi = g[i];
      float m = Ema(beta0, m0[i], gi);
      float vv = Ema(beta_v, v[i], gi * gi);
      float a = AdamDirection(m, vv, corr0, corr_v, eps);
      sa += a * a;
      sp += p[i] * p[i];
      float ag = std::fabs(gi);
      mx = std::max(mx, ag);
      bad += (ag != ag) ? 1.0f : 0.0f;
      if (Adapts) {
        dot += gi * moved[i];
        l1 += std::fabs(dd * s[i] + w * gi);
      }
    }
    float* q = &part[static_cast<size_t>(b) * 6];
    q[0] = sa, q[1] = sp, q[2] = mx, q[3] = bad, q[4] = dot, q[5] = l1;
  });
  double sa = 0, sp = 0, dot = 0, l1 = 0, bad = 0;
  float mx = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const float* q = &part[static_cast<size_t>(b) * 6];
    sa += q[0], sp += q[1], mx = std::max(mx, q[2]), bad += q[3], dot += q[4], l1 += q[5];
  }
  out[0] = static_cast<float>(sa);
  out[1] = static_cast<float>(sp);
  out[2] = bad > 0 ? NAN : mx;
  out[3] = static_cast<float>(-dot);
  out[4] = static_cast<float>(l1);
  return ffi::Error::Success();
}

template <int K, int H>
ffi::Error DNorm(ffi::ThreadPool pool, const float* g, const float* v, const float* const* ms,
                 const float* consts, int64_t n, float* out) {
  const Consts<K, H> c(consts);
  int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<float> part(static_cast<size_t>(nb));
  ParallelBlocks(pool, nb, [&](int64_t b) {
    int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    float sd = 0, sq[kChunk];
    for (int64_t lo2 = lo; lo2 < hi; lo2 += kChunk) {
      int64_t m_n = std::min(kChunk, hi - lo2);
      LOPT_IVDEP
      for (int64_t j = 0; j < m_n; ++j) {
        int64_t i = lo2 + j;
        float gi = g[i], m[K];
        NewMomenta(c, ms, i, gi, m);
        float vv = Ema(c.beta_v, v[i], gi * gi);
        float d = Direction<K, H>(c, gi, AdamDirection(m[0], vv, c.corr[0], c.corr_v, c.eps), m, vv);
        sq[j] = d * d;
      }
#pragma omp simd reduction(+ : sd)
      for (int64_t j = 0; j < m_n; ++j) sd += sq[j];
    }
    part[b] = sd;
  });
  double sd = 0;
  for (int64_t b = 0; b < nb; ++b) sd += part[b];
  out[0] = static_cast<float>(sd);
  return ffi::Error::Success();
}

// The step's outputs; with Sums, also the five sums the next step's statistics need
// (out[0..4]: sum a^2, sum p^2, sum d^2, -<g, moved>, ||s_new||_1), summed per chunk
// of kChunk elements held on the stack, so the elementwise loop keeps no reduction.
template <int K, int H, bool Adapts, bool Sums>
ffi::Error Apply(ffi::ThreadPool pool, const float* g, const float* p, const float* v, const float* moved,
                 const float* s, const float* const* ms, const float* consts, int64_t n, float* u,
                 float* v_out, float* moved_out, float* s_out, float* const* ms_out, float* sums) {
  const Consts<K, H> c(consts);
  int64_t nb = (n + kBlock - 1) / kBlock;
  if (Sums) std::fill(sums, sums + 5, 0.0f);
  if (c.ok == 0.0f) {  // skipped step: zero update, accumulators unchanged
    ParallelBlocks(pool, nb, [&](int64_t b) {
      int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
      // Outputs are usually their inputs' buffers (in place): then there is nothing to copy.
      auto keep = [lo, hi](const float* from, float* to) {
        if (from != to) std::copy(from + lo, from + hi, to + lo);
      };
      std::fill(u + lo, u + hi, 0.0f);
      keep(v, v_out);
      for (int k = 0; k < K; ++k) keep(ms[k], ms_out[k]);
      if (Adapts) keep(moved, moved_out), keep(s, s_out);
    });
    return ffi::Error::Success();
  }
  const float scale = c.scale, decay = c.decay, dd = c.dist_decay, w = c.weight;
  constexpr int kSums = Sums ? 5 : 0;
  std::vector<float> part(static_cast<size_t>(nb) * kSums);
  ParallelBlocks(pool, nb, [&](int64_t b) {
    int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    float sa = 0, sp = 0, sd = 0, dot = 0, l1 = 0;
    for (int64_t lo2 = lo; lo2 < hi; lo2 += kChunk) {
      int64_t n2 = std::min(kChunk, hi - lo2);
      float qa[Sums ? kChunk : 1], qp[Sums ? kChunk : 1], qd[Sums ? kChunk : 1];
      float qg[Sums ? kChunk : 1], ql[Sums ? kChunk : 1];
      LOPT_IVDEP
      for (int64_t j = 0; j < n2; ++j) {
        int64_t i = lo2 + j;
        float gi = g[i], m[K];
        NewMomenta(c, ms, i, gi, m);
        float vv = Ema(c.beta_v, v[i], gi * gi);
        float a = AdamDirection(m[0], vv, c.corr[0], c.corr_v, c.eps);
        float d = Direction<K, H>(c, gi, a, m, vv);
        float pi = p[i];
        float up = -(scale * d) - decay * pi;
        u[i] = up;
        v_out[i] = vv;
        for (int k = 0; k < K; ++k) ms_out[k][i] = m[k];
        float s_new = 0.0f, g_moved = 0.0f;
        if (Adapts) {
          g_moved = gi * moved[i];
          moved_out[i] = moved[i] + up;
          s_new = dd * s[i] + w * gi;
          s_out[i] = s_new;
        }
        if (Sums) {
          qa[j] = a * a, qp[j] = pi * pi, qd[j] = d * d;
          qg[j] = g_moved, ql[j] = std::fabs(s_new);
        }
      }
      if (Sums) {
#pragma omp simd reduction(+ : sa, sp, sd, dot, l1)
        for (int64_t j = 0; j < n2; ++j) sa += qa[j], sp += qp[j], sd += qd[j], dot += qg[j], l1 += ql[j];
      }
    }
    if (Sums) {
      float* q = &part[static_cast<size_t>(b) * kSums];
      q[0] = sa, q[1] = sp, q[2] = sd, q[3] = dot, q[4] = l1;
    }
  });
  if (Sums) {
    double t[5] = {0, 0, 0, 0, 0};
    for (int64_t b = 0; b < nb; ++b)
      for (int j = 0; j < 5; ++j) t[j] += part[static_cast<size_t>(b) * kSums + j];
    for (int j = 0; j < 5; ++j) sums[j] = static_cast<float>(j == 3 ? -t[j] : t[j]);
  }
  return ffi::Error::Success();
}

// ----------------------------------------------------------------- FFI entry points

#define LOPT_DISPATCH(K_, H_, CALL)                                                       \
  switch (K_ * 16 + H_) {                                                                 \
    case 1 * 16 + 2: { constexpr int K = 1, H = 2; return CALL; }                         \
    case 1 * 16 + 4: { constexpr int K = 1, H = 4; return CALL; }                         \
    case 1 * 16 + 8: { constexpr int K = 1, H = 8; return CALL; }                         \
    case 2 * 16 + 2: { constexpr int K = 2, H = 2; return CALL; }                         \
    case 2 * 16 + 4: { constexpr int K = 2, H = 4; return CALL; }                         \
    case 2 * 16 + 8: { constexpr int K = 2, H = 8; return CALL; }                         \
    case 3 * 16 + 2: { constexpr int K = 3, H = 2; return CALL; }                         \
    case 3 * 16 + 4: { constexpr int K = 3, H = 4; return CALL; }                         \
    case 3 * 16 + 8: { constexpr int K = 3, H = 8; return CALL; }                         \
    default: return ffi::Error(ffi::ErrorCode::kInvalidArgument, "lopt normed_fc kernel: unsupported momenta/hidden"); \
  }

template <int K, int H>
bool ConstsOk(ffi::Buffer<ffi::F32>& c) { return static_cast<int64_t>(c.element_count()) == Layout<K, H>::size; }

ffi::Error BadConsts() { return ffi::Error(ffi::ErrorCode::kInvalidArgument, "lopt normed_fc kernel: consts size"); }

// The K momentum buffers passed after the fixed arguments.
template <int K>
ffi::Error Momenta(ffi::RemainingArgs& rest, const float** ms) {
  if (static_cast<int>(rest.size()) != K)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "lopt normed_fc kernel: wrong number of momenta");
  for (int i = 0; i < K; ++i) {
    auto m = rest.get<ffi::Buffer<ffi::F32>>(i);
    if (m.has_error()) return m.error();
    ms[i] = m->typed_data();
  }
  return ffi::Error::Success();
}

template <int K, int H>
ffi::Error StatsChecked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                        ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> m0, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::F32> moved, ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> c, bool adapts,
                        float* out) {
  if (!ConstsOk<K, H>(c)) return BadConsts();
  auto run = adapts ? Stats<K, H, true> : Stats<K, H, false>;
  return run(pool, g.typed_data(), p.typed_data(), m0.typed_data(), v.typed_data(), moved.typed_data(),
             s.typed_data(), c.typed_data(), static_cast<int64_t>(g.element_count()), out);
}

ffi::Error StatsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> p,
                     ffi::Buffer<ffi::F32> m0, ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> moved,
                     ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> c, ffi::ResultBuffer<ffi::F32> out, int64_t k,
                     int64_t h, int64_t adapts) {
  LOPT_DISPATCH(k, h, (StatsChecked<K, H>(pool, g, p, m0, v, moved, s, c, adapts != 0, out->typed_data())))
}

template <int K, int H>
ffi::Error DNormChecked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::F32> c, ffi::RemainingArgs& rest, float* out) {
  if (!ConstsOk<K, H>(c)) return BadConsts();
  const float* ms[K];
  if (ffi::Error e = Momenta<K>(rest, ms); e.failure()) return e;
  return DNorm<K, H>(pool, g.typed_data(), v.typed_data(), ms, c.typed_data(),
                     static_cast<int64_t>(g.element_count()), out);
}

ffi::Error DNormImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> v,
                     ffi::Buffer<ffi::F32> c, ffi::RemainingArgs rest, ffi::ResultBuffer<ffi::F32> out, int64_t k,
                     int64_t h) {
  LOPT_DISPATCH(k, h, (DNormChecked<K, H>(pool, g, v, c, rest, out->typed_data())))
}

template <int K, int H, bool Sums>
ffi::Error ApplyChecked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> p,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> moved, ffi::Buffer<ffi::F32> s,
                        ffi::Buffer<ffi::F32> c, ffi::RemainingArgs& args, ffi::RemainingRets& rets, bool adapts) {
  if (!ConstsOk<K, H>(c)) return BadConsts();
  // args: K momenta; rets: u, v, moved, s, then K momenta, then (with Sums) the five sums.
  constexpr int kRets = 4 + K + (Sums ? 1 : 0);
  if (static_cast<int>(rets.size()) != kRets) return BadConsts();
  const float* ms[K];
  if (ffi::Error e = Momenta<K>(args, ms); e.failure()) return e;
  float* outs[kRets];
  for (int i = 0; i < kRets; ++i) {
    auto r = rets.get<ffi::Buffer<ffi::F32>>(i);
    if (r.has_error()) return r.error();
    if (Sums && i == kRets - 1 && (*r)->element_count() != 5) return BadConsts();
    outs[i] = (*r)->typed_data();
  }
  auto run = adapts ? Apply<K, H, true, Sums> : Apply<K, H, false, Sums>;
  return run(pool, g.typed_data(), p.typed_data(), v.typed_data(), moved.typed_data(), s.typed_data(), ms,
             c.typed_data(), static_cast<int64_t>(g.element_count()), outs[0], outs[1], outs[2], outs[3], outs + 4,
             Sums ? outs[kRets - 1] : nullptr);
}

// apply (Sums false) and step (Sums true, the one pass of tensor_stats "previous").
template <bool Sums>
ffi::Error ApplyImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> p,
                     ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> moved, ffi::Buffer<ffi::F32> s,
                     ffi::Buffer<ffi::F32> c, ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t k, int64_t h,
                     int64_t adapts) {
  LOPT_DISPATCH(k, h, (ApplyChecked<K, H, Sums>(pool, g, p, v, moved, s, c, args, rets, adapts != 0)))
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptNormedFcStats, StatsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("adapts"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptNormedFcDNorm, DNormImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("h"));

// apply and step take the same arguments, attributes and results (step's last result is its sums).
static auto ApplyBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .RemainingArgs()
      .RemainingRets()
      .Attr<int64_t>("k")
      .Attr<int64_t>("h")
      .Attr<int64_t>("adapts");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptNormedFcApply, ApplyImpl<false>, ApplyBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptNormedFcStep, ApplyImpl<true>, ApplyBinding());
