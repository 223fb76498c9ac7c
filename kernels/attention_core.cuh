// The warp-level attention engine shared by the decode and the causal kernels.
// Internal to kernels/.
//
// A CTA of kWarps warps attends the query heads of one GQA group (kGroup heads that
// share a KV head) over a token range. Inside a warp, kLanes consecutive lanes hold
// one K/V row (16 bytes each: VecLen<DT>() elements), so 32 / kLanes rows are in
// flight side by side, kUnroll deep (one "step" of kStep rows per warp). Two load
// schedules feed the same step arithmetic: Attend loads each step's rows straight
// into registers (optionally the next step's while computing this one), and
// AttendStaged copies them into shared memory with cp.async several steps ahead, so
// many bytes are in flight without holding registers. Logits live in the log2 domain
// (q is pre-scaled by scale * log2(e)) with a running max per head; row groups, then
// warps, are merged at the end exactly like split-K parts.
#ifndef FREEKV_KERNELS_ATTENTION_CORE_CUH_
#define FREEKV_KERNELS_ATTENTION_CORE_CUH_

#include <cstdint>
#include <type_traits>

#include "absl/status/status.h"
#include "kernels/device_util.cuh"

namespace freekv {
namespace kernels {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <typename DT, int kGroup, int kLanes, int kWarps, bool kPipelined = true>
struct AttnCore {
  static constexpr int kVec = VecLen<DT>();
  static constexpr int kRows = 32 / kLanes;
  static constexpr int kUnroll = 4;
  static constexpr int kStep = kRows * kUnroll;
  static constexpr int kMaxDim = kLanes * kVec;
  // AttendStaged: 16-byte chunks of K (and as many of V) in one warp's step, and the
  // shared memory one stage of the whole CTA takes (4 KiB per warp for every type).
  static constexpr int kSlotChunks = kStep * kLanes;
  static constexpr size_t kStageBytes = size_t{kWarps} * 2 * kSlotChunks * sizeof(uint4);

  struct State {
    float m[kGroup];
    float l[kGroup];
    float acc[kGroup][kVec];
  };

  // Shared memory for Finish: per warp and head, the max, the sum and the row.
  struct Smem {
    float m[kWarps][kGroup];
    float l[kWarps][kGroup];
    float acc[kWarps][kGroup][kMaxDim];
  };

  __device__ static void Init(State& s) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      s.m[g] = -INFINITY;
      s.l[g] = 0.0f;
#pragma unroll
      for (int i = 0; i < kVec; ++i) s.acc[g][i] = 0.0f;
    }
  }

  // q rows of the group's heads (row g at q_group + g * head_dim), pre-scaled.
  __device__ static void LoadQ(const DT* q_group, int head_dim, float scale_log2,
                               float (&q)[kGroup][kVec]) {
    const int dim0 = (threadIdx.x % kLanes) * kVec;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (dim0 < head_dim) {
        LoadVec(q_group + g * head_dim + dim0, q[g]);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) q[g][i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) q[g][i] *= scale_log2;
    }
  }

  // Rescales the state to a new running max; returns false while nothing is valid.
  __device__ static bool Rescale(State& s, int g, float step_max) {
    const float m_new = fmaxf(s.m[g], step_max);
    if (m_new == -INFINITY) return false;
    const float a = s.m[g] == -INFINITY ? 0.0f : exp2f(s.m[g] - m_new);
    s.l[g] *= a;
#pragma unroll
    for (int i = 0; i < kVec; ++i) s.acc[g][i] *= a;
    s.m[g] = m_new;
    return true;
  }

  // Issues the K and V loads of the step starting at token `base` (zeros past end).
  template <typename Addr>
  __device__ static void LoadStep(const DT* k, const DT* v, Addr addr, int base, int end,
                                  int dim0, bool active, uint4 (&kraw)[kUnroll],
                                  uint4 (&vraw)[kUnroll]) {
    const int row = (threadIdx.x % 32) / kLanes;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int tok = base + u * kRows + row;
      kraw[u] = vraw[u] = make_uint4(0, 0, 0, 0);
      if (tok < end && active) {
        const int64_t off = addr(tok) + dim0;
        kraw[u] = LoadRaw(k + off);
        vraw[u] = LoadRaw(v + off);
      }
    }
  }

  // One step: the online-softmax update with the kUnroll x kRows rows from `base`.
  // kraw(u) / vraw(u) return this lane's 16-byte K / V chunk of row
  // base + u * kRows + lane / kLanes (zeros on lanes past head_dim); rows at or past
  // `end` are masked, but their V must still be finite (0 * NaN is NaN).
  template <typename KRaw, typename VRaw>
  __device__ static void Step(const float (&q)[kGroup][kVec], KRaw kraw, VRaw vraw,
                              int base, int end, State& s) {
    const int lane = threadIdx.x % 32;
    float logit[kUnroll][kGroup];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[kVec];
      Widen<DT>(kraw(u), kf);
      const bool valid = base + u * kRows + lane / kLanes < end;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < kVec; ++i) dot = fmaf(q[g][i], kf[i], dot);
        dot = GroupSum<kLanes>(dot);
        logit[u][g] = valid ? dot : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float step_max = logit[0][g];
#pragma unroll
      for (int u = 1; u < kUnroll; ++u) step_max = fmaxf(step_max, logit[u][g]);
      if (!Rescale(s, g, step_max)) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) logit[u][g] = 0.0f;  // p = 0 below
        continue;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        logit[u][g] = logit[u][g] == -INFINITY ? 0.0f : exp2f(logit[u][g] - s.m[g]);
        s.l[g] += logit[u][g];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[kVec];
      Widen<DT>(vraw(u), vf);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) s.acc[g][i] = fmaf(logit[u][g], vf[i], s.acc[g][i]);
      }
    }
  }

  // Attends tokens [begin, end) of a row sequence; addr(token) is the element offset
  // of the token's K row (and V row) for this KV head. This warp takes steps
  // warp, warp + kWarps, ...; when kPipelined, the loads of its next step are in
  // flight while it computes the current one (more registers, fewer stalls).
  template <typename Addr>
  __device__ static void Attend(const float (&q)[kGroup][kVec], const DT* k, const DT* v,
                                int head_dim, Addr addr, int begin, int end, State& s) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int dim0 = (lane % kLanes) * kVec;
    const bool active = dim0 < head_dim;
    uint4 knext[kUnroll], vnext[kUnroll];
    int base = begin + warp * kStep;
    if (kPipelined && base < end) LoadStep(k, v, addr, base, end, dim0, active, knext, vnext);
    for (; base < end; base += kWarps * kStep) {
      uint4 kraw[kUnroll], vraw[kUnroll];
      if (kPipelined) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          kraw[u] = knext[u];
          vraw[u] = vnext[u];
        }
        const int next = base + kWarps * kStep;
        if (next < end) LoadStep(k, v, addr, next, end, dim0, active, knext, vnext);
      } else {
        LoadStep(k, v, addr, base, end, dim0, active, kraw, vraw);
      }
      Step(q, [&](int u) { return kraw[u]; }, [&](int u) { return vraw[u]; }, base, end, s);
    }
  }

  // Attend with the rows staged through shared memory: each warp keeps a ring of
  // `stages` (>= 2) step slots and, while it computes one step, has the cp.async
  // copies of its next stages - 1 steps in flight. Every lane copies exactly the
  // chunks it later reads (chunk u * 32 + lane of a slot), so the ring needs no
  // barrier: wait_group makes a lane's own copies visible to it, and a slot is
  // refilled only after the step that read it has consumed the values (in-order
  // issue). ring: this CTA's kWarps * stages * 2 * kSlotChunks chunks of shared
  // memory; it is free again when this returns (no copies pending), once every warp
  // has returned.
  template <typename Addr>
  __device__ static void AttendStaged(const float (&q)[kGroup][kVec], const DT* k,
                                      const DT* v, int head_dim, Addr addr, int begin,
                                      int end, uint4* ring, int stages, State& s) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int dim0 = (lane % kLanes) * kVec;
    const bool active = dim0 < head_dim;
    uint4* mine = ring + warp * stages * 2 * kSlotChunks + lane;
    const int first = begin + warp * kStep, stride = kWarps * kStep;
    const int steps = first < end ? (end - first + stride - 1) / stride : 0;
    auto issue = [&](int j) {
      uint4* slot = mine + (j % stages) * 2 * kSlotChunks;
      const int base = first + j * stride;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int tok = base + u * kRows + lane / kLanes;
        if (!active) continue;
        if (tok < end) {
          const int64_t off = addr(tok) + dim0;
          CpAsync16(slot + u * 32, k + off);
          CpAsync16(slot + kSlotChunks + u * 32, v + off);
        } else {
          slot[u * 32] = slot[kSlotChunks + u * 32] = make_uint4(0, 0, 0, 0);
        }
      }
    };
    for (int j = 0; j < stages - 1; ++j) {
      if (j < steps) issue(j);
      CpAsyncCommit();  // one group per step, empty or not, so the count below holds
    }
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int j = 0; j < steps; ++j) {
      if (j + stages - 1 < steps) issue(j + stages - 1);  // into the slot step j-1 used
      CpAsyncCommit();
      CpAsyncWaitPending(stages - 1);  // step j's group has landed
      const uint4* slot = mine + (j % stages) * 2 * kSlotChunks;
      Step(q, [&](int u) { return active ? slot[u * 32] : zero; },
           [&](int u) { return active ? slot[kSlotChunks + u * 32] : zero; },
           first + j * stride, end, s);
    }
    CpAsyncWait<0>();
  }

  // Merges this lane's state with the lane `offset` away (same dims, other rows).
  __device__ static void MergeLanes(State& s, int offset) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, s.m[g], offset);
      const float lo = __shfl_xor_sync(0xffffffffu, s.l[g], offset);
      const float m_new = fmaxf(s.m[g], mo);
      const float a = s.m[g] == -INFINITY ? 0.0f : exp2f(s.m[g] - m_new);
      const float b = mo == -INFINITY ? 0.0f : exp2f(mo - m_new);
      s.l[g] = s.l[g] * a + lo * b;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float ao = __shfl_xor_sync(0xffffffffu, s.acc[g][i], offset);
        s.acc[g][i] = s.acc[g][i] * a + ao * b;
      }
      s.m[g] = m_new;
    }
  }

  // Combines every lane's and warp's state; calls write(g, d, o) for the normalised
  // output of head g, dim d < head_dim, and write_lse(g, lse) with the natural-log
  // sum (-inf and o = 0 when no token was attended). Must be reached by all threads.
  template <typename Write, typename WriteLse>
  __device__ static void Finish(State& s, int head_dim, Smem& smem, Write write,
                                WriteLse write_lse) {
#pragma unroll
    for (int offset = kLanes; offset < 32; offset *= 2) MergeLanes(s, offset);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane < kLanes) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        if (lane == 0) {
          smem.m[warp][g] = s.m[g];
          smem.l[warp][g] = s.l[g];
        }
#pragma unroll
        for (int i = 0; i < kVec; ++i) smem.acc[warp][g][lane * kVec + i] = s.acc[g][i];
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < kGroup * head_dim; idx += kWarps * 32) {
      const int g = idx / head_dim, d = idx % head_dim;
      float m = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, smem.m[w][g]);
      float l = 0.0f, o = 0.0f;
      if (m != -INFINITY) {
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          const float a = smem.m[w][g] == -INFINITY ? 0.0f : exp2f(smem.m[w][g] - m);
          l += smem.l[w][g] * a;
          o += smem.acc[w][g][d] * a;
        }
      }
      write(g, d, l > 0.0f ? o / l : 0.0f);
      if (d == 0) write_lse(g, l > 0.0f ? (m + log2f(l)) * kLn2 : -INFINITY);
    }
  }
};

// Calls fn(std::integral_constant<int, kGroup>{}, std::integral_constant<int, kLanes>{})
// for the runtime group size (1, 2, 4, 8) and the lanes one row of head_dim needs
// (8, 16 or 32 lanes of 16 bytes); INVALID_ARGUMENT otherwise.
template <typename DT, typename Fn>
absl::Status DispatchGroupLanes(int group, int head_dim, Fn fn) {
  constexpr int kVec = VecLen<DT>();
  if (head_dim % kVec != 0 || head_dim > 32 * kVec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", head_dim, " must be a multiple of ", kVec, " and at most ", 32 * kVec));
  }
  const int lanes_needed = head_dim / kVec;
  auto with_lanes = [&](auto g) -> absl::Status {
    if (lanes_needed <= 8) return fn(g, std::integral_constant<int, 8>{});
    if (lanes_needed <= 16) return fn(g, std::integral_constant<int, 16>{});
    return fn(g, std::integral_constant<int, 32>{});
  };
  switch (group) {
    case 1: return with_lanes(std::integral_constant<int, 1>{});
    case 2: return with_lanes(std::integral_constant<int, 2>{});
    case 4: return with_lanes(std::integral_constant<int, 4>{});
    case 8: return with_lanes(std::integral_constant<int, 8>{});
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("GQA group size ", group, " is not 1, 2, 4 or 8"));
  }
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_ATTENTION_CORE_CUH_
