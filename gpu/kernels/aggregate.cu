// Fused filter -> projection -> partial hash aggregate (after common.cuh).
//
// One launch takes a chunk of rows (or a join's output, through FlColumns'
// row indices) and folds every row that passes the filter program into a
// hash table of groups that lives on the device across launches: the
// executor runs one launch per coalesced chunk and reads the table back
// once, at the end of its input (or when the table is half full).
//
// `meta` describes the stage (all ints):
//   [0] filter_len (pairs; 0: every row passes)
//   [1] keys: number of group keys (0: one group)
//   [2] aggs: number of aggregate slots
//   [3 ..]              key_columns[keys]
//   then                agg_kind[aggs], agg_start[aggs], agg_len[aggs], agg_offset[aggs]
// `programs` holds the filter program (from pair 0) and the aggregates'
// argument programs (agg_start: first pair).
//
// The table: `capacity` (a power of two) slots, found by linear probing of at
// most FL_PROBES_MAX slots; slot_state 0 empty, 1 being claimed, 2 ready; a ready slot's keys in slot_keys[slot * keys ..] and their
// validity as a bit mask in slot_key_valid[slot]; its accumulators in
// acc[slot * acc_width + agg_offset[a] ..]. All of it starts zeroed.
//
// A row whose group finds no slot is not folded at all: its index (of this
// launch's rows) goes to overflow_rows, which holds `rows` entries, and the
// host folds those rows again into an emptied, larger table. So every row is
// folded exactly once, however many groups there are.

#define FL_PROBES_MAX 128

#define FL_AGG_COUNT_ROWS 0  // count(*): 1 word
#define FL_AGG_COUNT 1       // count(expr): 1 word
#define FL_AGG_SUM_INT 2     // sum of integers/decimals: 3 words (low, high, non-null count)
#define FL_AGG_SUM_FLOAT 3   // sum of doubles: 2 words (the double's bits, non-null count)

extern "C" __global__ void flotilla_aggregate(
    int rows, const fl_u64* col_values, const fl_u64* col_validity, const int* col_kind,
    const int* col_side, const int* probe_rows, const int* build_rows, const int* meta,
    const int* programs, const fl_i64* int_consts, const double* float_consts, int capacity,
    fl_u32* slot_state, fl_i64* slot_keys, fl_u32* slot_key_valid, fl_u64* acc, int acc_width,
    fl_u32* groups, int* overflow_rows, fl_u32* overflow_count, fl_u32* error) {
  FlColumns cols;
  cols.values = col_values;
  cols.validity = col_validity;
  cols.kind = col_kind;
  cols.side = col_side;
  cols.probe_rows = probe_rows;
  cols.build_rows = build_rows;
  const int filter_len = meta[0];
  const int keys = meta[1];
  const int aggs = meta[2];
  const int* key_columns = meta + 3;
  const int* agg_kind = key_columns + keys;
  const int* agg_start = agg_kind + aggs;
  const int* agg_len = agg_start + aggs;
  const int* agg_offset = agg_len + aggs;
  const unsigned mask = (unsigned)capacity - 1u;

  const int stride = blockDim.x * gridDim.x;
  for (int row = blockIdx.x * blockDim.x + threadIdx.x; row < rows; row += stride) {
    if (filter_len > 0) {
      FlValue keep = fl_eval(programs, filter_len, int_consts, float_consts, cols, row, error);
      if (!keep.valid || !keep.i) continue;
    }
    // The group's keys and their hash.
    fl_i64 key[8];
    fl_u32 valid = 0;
    fl_u64 h = 0x243F6A8885A308D3ULL;
    for (int k = 0; k < keys; k++) {
      FlValue v = fl_load(cols, key_columns[k], row);
      key[k] = v.valid ? (fl_i64)v.i : 0;
      if (v.valid) valid |= 1u << k;
      h = fl_mix(h, v.valid ? (fl_u64)key[k] : 0x5BD1E9955BD1E995ULL);
    }
    h = fl_mix(h, valid);
    // Find the group's slot, or claim an empty one for it.
    unsigned slot = (unsigned)h & mask;
    int found = -1;
    const int probes = capacity < FL_PROBES_MAX ? capacity : FL_PROBES_MAX;
    for (int probe = 0; probe < probes; probe++) {
      fl_u32 state = atomicCAS(&slot_state[slot], 0u, 1u);
      if (state == 0u) {
        for (int k = 0; k < keys; k++) slot_keys[(fl_u64)slot * keys + k] = key[k];
        slot_key_valid[slot] = valid;
        __threadfence();
        atomicExch(&slot_state[slot], 2u);
        atomicAdd(groups, 1u);
        found = (int)slot;
        break;
      }
      while (((volatile fl_u32*)slot_state)[slot] == 1u) {
      }
      __threadfence();
      int same = ((volatile fl_u32*)slot_key_valid)[slot] == valid;
      for (int k = 0; same && k < keys; k++) {
        if ((valid >> k) & 1u) same = ((volatile fl_i64*)slot_keys)[(fl_u64)slot * keys + k] == key[k];
      }
      if (same) {
        found = (int)slot;
        break;
      }
      slot = (slot + 1u) & mask;
    }
    if (found < 0) {
      overflow_rows[atomicAdd(overflow_count, 1u)] = row;
      continue;
    }
    fl_u64* slot_acc = acc + (fl_u64)found * acc_width;
    for (int a = 0; a < aggs; a++) {
      fl_u64* word = slot_acc + agg_offset[a];
      int kind = agg_kind[a];
      if (kind == FL_AGG_COUNT_ROWS) {
        atomicAdd(word, 1ULL);
        continue;
      }
      FlValue v = fl_eval(programs + 2 * agg_start[a], agg_len[a], int_consts, float_consts,
                          cols, row, error);
      if (!v.valid) continue;
      if (kind == FL_AGG_COUNT) {
        atomicAdd(word, 1ULL);
      } else if (kind == FL_AGG_SUM_INT) {
        // A 128-bit sum from two 64-bit atomics: the low word's own carry
        // out of each addition goes to the high word.
        fl_u64 lo = (fl_u64)v.i;
        fl_u64 hi = (fl_u64)(v.i >> 64);
        fl_u64 old = atomicAdd(&word[0], lo);
        fl_u64 carry = (old + lo) < old ? 1ULL : 0ULL;
        atomicAdd(&word[1], hi + carry);
        atomicAdd(&word[2], 1ULL);
      } else {
        atomicAdd((double*)&word[0], v.f);
        atomicAdd(&word[1], 1ULL);
      }
    }
  }
}
