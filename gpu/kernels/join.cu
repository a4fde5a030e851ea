// Hash join on one integer key (after common.cuh), inner join.
//
// The build side's rows are chained per hash bucket: heads[bucket] holds
// 1 + the last row inserted there (0: empty, so the table starts zeroed),
// next[row] 1 + the row inserted before it. The probe writes the pairs of
// matching rows, which the aggregate kernel then reads through FlColumns'
// probe_rows/build_rows without the joined rows ever being materialized.
// Null keys never match.

__device__ __forceinline__ unsigned fl_join_bucket(fl_i64 key, int capacity) {
  return (unsigned)fl_mix(0x2545F4914F6CDD1DULL, (fl_u64)key) & ((unsigned)capacity - 1u);
}

extern "C" __global__ void flotilla_join_build(int rows, const void* key_values,
                                               const unsigned char* key_validity, int key_kind,
                                               int capacity, int* heads, int* next) {
  const int stride = blockDim.x * gridDim.x;
  for (int row = blockIdx.x * blockDim.x + threadIdx.x; row < rows; row += stride) {
    FlValue v = fl_load_raw(key_values, key_validity, key_kind, row);
    if (!v.valid) {
      next[row] = 0;
      continue;
    }
    unsigned bucket = fl_join_bucket((fl_i64)v.i, capacity);
    next[row] = atomicExch(&heads[bucket], row + 1);
  }
}

// Writes up to out_capacity pairs; *out_count ends as the number of pairs
// there are, so that a host whose buffers were too small can size them and
// probe again.
extern "C" __global__ void flotilla_join_probe(
    int rows, const void* probe_values, const unsigned char* probe_validity, int probe_kind,
    const void* build_values, const unsigned char* build_validity, int build_kind,
    int capacity, const int* heads, const int* next, int* out_probe, int* out_build,
    int out_capacity, fl_u32* out_count, fl_u32* error) {
  const int stride = blockDim.x * gridDim.x;
  for (int row = blockIdx.x * blockDim.x + threadIdx.x; row < rows; row += stride) {
    FlValue p = fl_load_raw(probe_values, probe_validity, probe_kind, row);
    if (!p.valid) continue;
    fl_i64 key = (fl_i64)p.i;
    for (int j = heads[fl_join_bucket(key, capacity)]; j != 0; j = next[j - 1]) {
      FlValue b = fl_load_raw(build_values, build_validity, build_kind, j - 1);
      if ((fl_i64)b.i != key) continue;
      fl_u32 at = atomicAdd(out_count, 1u);
      if ((int)at < out_capacity) {
        out_probe[at] = row;
        out_build[at] = j - 1;
      } else {
        atomicOr(error, FL_ERROR_OUTPUT_FULL);
      }
    }
  }
}
