// The kernels' CUDA source built for the host (see cuda_emulation.h), with
// one entry point per kernel taking the launch's grid and block sizes.
#include "cuda_emulation.h"

#include "../kernels/common.cuh"
#include "../kernels/aggregate.cu"
#include "../kernels/join.cu"

extern "C" void flotilla_emulate_aggregate(
    unsigned grid, unsigned block, int rows, const fl_u64* col_values,
    const fl_u64* col_validity, const int* col_kind, const int* col_side,
    const int* probe_rows, const int* build_rows, const int* meta, const int* programs,
    const fl_i64* int_consts, const double* float_consts, int capacity, fl_u32* slot_state,
    fl_i64* slot_keys, fl_u32* slot_key_valid, fl_u64* acc, int acc_width, fl_u32* groups,
    int* overflow_rows, fl_u32* overflow_count, fl_u32* error) {
  fl_launch(grid, block, flotilla_aggregate, rows, col_values, col_validity, col_kind, col_side,
            probe_rows, build_rows, meta, programs, int_consts, float_consts, capacity,
            slot_state, slot_keys, slot_key_valid, acc, acc_width, groups, overflow_rows,
            overflow_count, error);
}

extern "C" void flotilla_emulate_join_build(unsigned grid, unsigned block, int rows,
                                            const void* key_values,
                                            const unsigned char* key_validity, int key_kind,
                                            int capacity, int* heads, int* next) {
  fl_launch(grid, block, flotilla_join_build, rows, key_values, key_validity, key_kind, capacity,
            heads, next);
}

extern "C" void flotilla_emulate_join_probe(
    unsigned grid, unsigned block, int rows, const void* probe_values,
    const unsigned char* probe_validity, int probe_kind, const void* build_values,
    const unsigned char* build_validity, int build_kind, int capacity, const int* heads,
    const int* next, int* out_probe, int* out_build, int out_capacity, fl_u32* out_count,
    fl_u32* error) {
  fl_launch(grid, block, flotilla_join_probe, rows, probe_values, probe_validity, probe_kind,
            build_values, build_validity, build_kind, capacity, heads, next, out_probe,
            out_build, out_capacity, out_count, error);
}
