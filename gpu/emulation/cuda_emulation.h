// The few CUDA names Flotilla's kernels use, for the host C++ compiler: a
// grid runs as loops over blocks and threads, one thread at a time, and an
// atomic is a plain read-modify-write (nothing runs beside it). The kernels
// are written so that this order is one of those a device may choose (see
// gpu/kernels/common.cuh), so the host run checks the code that ships.
#pragma once

#include <cstdint>

#define __global__
#define __device__
#define __forceinline__ inline

struct fl_dim3 {
  unsigned x, y, z;
};

// The launch's coordinates, set by fl_launch for each emulated thread.
static thread_local fl_dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline void __threadfence() {}

static inline unsigned atomicCAS(unsigned* address, unsigned compare, unsigned value) {
  unsigned old = *address;
  if (old == compare) *address = value;
  return old;
}
static inline unsigned atomicExch(unsigned* address, unsigned value) {
  unsigned old = *address;
  *address = value;
  return old;
}
static inline int atomicExch(int* address, int value) {
  int old = *address;
  *address = value;
  return old;
}
static inline unsigned atomicAdd(unsigned* address, unsigned value) {
  unsigned old = *address;
  *address = old + value;
  return old;
}
static inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  unsigned long long old = *address;
  *address = old + value;
  return old;
}
static inline double atomicAdd(double* address, double value) {
  double old = *address;
  *address = old + value;
  return old;
}
static inline unsigned atomicOr(unsigned* address, unsigned value) {
  unsigned old = *address;
  *address = old | value;
  return old;
}

// Runs `kernel(args...)` over a grid of `grid` blocks of `block` threads.
template <typename Kernel, typename... Args>
static void fl_launch(unsigned grid, unsigned block, Kernel kernel, Args... args) {
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  for (unsigned b = 0; b < grid; b++) {
    for (unsigned t = 0; t < block; t++) {
      blockIdx = {b, 0, 0};
      threadIdx = {t, 0, 0};
      kernel(args...);
    }
  }
}
