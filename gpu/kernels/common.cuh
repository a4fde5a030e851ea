// Flotilla GPU kernels: what every kernel shares.
//
// Plain CUDA C++. The executor compiles it with NVRTC for the device it found;
// the tests compile the very same text for the host with the system C++
// compiler through gpu/emulation/cuda_emulation.h, which runs a grid as loops.
// So that both mean the same:
// - every kernel walks its rows with a grid-stride loop and never waits for
//   another thread of its block (no __syncthreads, no shared memory);
// - threads meet only through atomics on global memory;
// - a slot being written by another thread is waited for with a volatile
//   read, which the sequential host run never sees.
//
// The row program. An expression of the plan (a filter, an aggregate's
// argument) is compiled by the host (gpu/src/program.rs) into a postfix
// program of (opcode, argument) pairs run over one row by a small stack
// machine. Integers, dates and decimals are 128-bit integers on the stack
// (decimals scaled), floating point numbers doubles; every value carries its
// validity, as in Arrow, and the operators treat nulls as SQL does.

typedef long long fl_i64;
typedef unsigned long long fl_u64;
typedef unsigned int fl_u32;
typedef __int128 fl_i128;

// Column kinds: how a column's value buffer is laid out.
#define FL_COL_I32 0   // Int32, Date32 and dictionary codes: 4 bytes
#define FL_COL_I64 1   // Int64: 8 bytes
#define FL_COL_F64 2   // Float64: 8 bytes
#define FL_COL_D128 3  // Decimal128: 16 bytes, little endian
#define FL_COL_VALIDITY 4  // no values, only the validity bitmap (counts)

// Where a column's row comes from: the row itself, or, over a join's
// output, the probe or the build row that the join paired.
#define FL_ROW_DIRECT 0
#define FL_ROW_PROBE 1
#define FL_ROW_BUILD 2

// Opcodes of the row program.
#define FL_OP_LOAD 1         // arg: column
#define FL_OP_CONST_INT 2    // arg: index of a constant in the int constants (lo, hi)
#define FL_OP_CONST_FLOAT 3  // arg: index in the float constants
#define FL_OP_CONST_NULL 4
#define FL_OP_ADD_INT 5
#define FL_OP_SUB_INT 6
#define FL_OP_MUL_INT 7
#define FL_OP_NEG_INT 8
#define FL_OP_ADD_FLOAT 9
#define FL_OP_SUB_FLOAT 10
#define FL_OP_MUL_FLOAT 11
#define FL_OP_DIV_FLOAT 12
#define FL_OP_NEG_FLOAT 13
#define FL_OP_SCALE_UP 14      // arg: k; the integer times 10^k (decimal rescale)
#define FL_OP_INT_TO_FLOAT 15  // arg: scale s; the integer over 10^s
#define FL_OP_LT_INT 16
#define FL_OP_LE_INT 17
#define FL_OP_GT_INT 18
#define FL_OP_GE_INT 19
#define FL_OP_EQ_INT 20
#define FL_OP_NE_INT 21
#define FL_OP_LT_FLOAT 22
#define FL_OP_LE_FLOAT 23
#define FL_OP_GT_FLOAT 24
#define FL_OP_GE_FLOAT 25
#define FL_OP_EQ_FLOAT 26
#define FL_OP_NE_FLOAT 27
#define FL_OP_AND 28
#define FL_OP_OR 29
#define FL_OP_NOT 30
#define FL_OP_IS_NULL 31
#define FL_OP_IS_NOT_NULL 32
#define FL_OP_CHECK_I64 33  // an Int64 result out of range sets the error flag
#define FL_OP_CHECK_I32 34  // an Int32 result out of range sets the error flag
#define FL_OP_WRAP_I64 35   // an Int64 result wraps around, as two's complement does
#define FL_OP_WRAP_I32 36   // an Int32 result wraps around
// ADD_INT, SUB_INT and MUL_INT take an argument: 1 flags a 128-bit overflow
// (DataFusion's checked arithmetic), 0 wraps (its default).

#define FL_STACK_MAX 16

// Error flags a kernel reports; the host then answers on the CPU instead.
#define FL_ERROR_OVERFLOW 1     // an integer result left its type's range
#define FL_ERROR_PROGRAM 2      // a malformed program (stack under- or overflow)
#define FL_ERROR_TABLE_FULL 4   // a hash table had no free slot
#define FL_ERROR_OUTPUT_FULL 8  // a join's output did not fit

struct FlValue {
  fl_i128 i;
  double f;
  int valid;
};

// The columns a kernel reads: device pointers, one per column.
struct FlColumns {
  const fl_u64* values;    // value buffer of each column
  const fl_u64* validity;  // Arrow validity bitmap of each column, 0 when all valid
  const int* kind;         // FL_COL_*
  const int* side;         // FL_ROW_*
  const int* probe_rows;   // over a join's output: the probe row of each row
  const int* build_rows;   // ... and the build row
};

__device__ __forceinline__ int fl_physical_row(const FlColumns& cols, int column, int row) {
  int side = cols.side[column];
  if (side == FL_ROW_PROBE) return cols.probe_rows[row];
  if (side == FL_ROW_BUILD) return cols.build_rows[row];
  return row;
}

// One value of a column buffer laid out as `kind` (FL_COL_*), with its
// validity bit (`bits` 0: all valid).
__device__ __forceinline__ FlValue fl_load_raw(const void* base, const unsigned char* bits,
                                               int kind, int r) {
  FlValue v;
  v.i = 0;
  v.f = 0.0;
  v.valid = bits == 0 ? 1 : ((bits[r >> 3] >> (r & 7)) & 1);
  switch (kind) {
    case FL_COL_I32:
      v.i = ((const int*)base)[r];
      break;
    case FL_COL_I64:
      v.i = ((const fl_i64*)base)[r];
      break;
    case FL_COL_F64:
      v.f = ((const double*)base)[r];
      break;
    case FL_COL_VALIDITY:
      break;
    default: {
      const fl_u64* words = (const fl_u64*)base;
      fl_u64 lo = words[2 * r];
      fl_u64 hi = words[2 * r + 1];
      v.i = (fl_i128)(((unsigned __int128)hi << 64) | lo);
      break;
    }
  }
  return v;
}

__device__ __forceinline__ FlValue fl_load(const FlColumns& cols, int column, int row) {
  return fl_load_raw((const void*)cols.values[column],
                     (const unsigned char*)cols.validity[column], cols.kind[column],
                     fl_physical_row(cols, column, row));
}

__device__ __forceinline__ fl_i128 fl_pow10(int k) {
  fl_i128 p = 1;
  for (int j = 0; j < k; j++) p *= 10;
  return p;
}

// 128-bit arithmetic that flags an overflow, as DataFusion's checked
// arithmetic errors: the flag sends the stage back to the CPU, which then
// reports DataFusion's own error.
__device__ __forceinline__ fl_i128 fl_add(fl_i128 a, fl_i128 b, int checked, fl_u32* error) {
  fl_i128 r = (fl_i128)((unsigned __int128)a + (unsigned __int128)b);
  if (checked && ((a >= 0) == (b >= 0)) && ((r >= 0) != (a >= 0))) atomicOr(error, FL_ERROR_OVERFLOW);
  return r;
}

__device__ __forceinline__ fl_i128 fl_sub(fl_i128 a, fl_i128 b, int checked, fl_u32* error) {
  fl_i128 r = (fl_i128)((unsigned __int128)a - (unsigned __int128)b);
  if (checked && ((a >= 0) != (b >= 0)) && ((r >= 0) != (a >= 0))) atomicOr(error, FL_ERROR_OVERFLOW);
  return r;
}

__device__ __forceinline__ fl_i128 fl_mul(fl_i128 a, fl_i128 b, int checked, fl_u32* error) {
  fl_i128 r = (fl_i128)((unsigned __int128)a * (unsigned __int128)b);
  // Factors below 2^62 in magnitude cannot overflow; others are checked by
  // dividing back.
  const fl_i128 small = ((fl_i128)1) << 62;
  if (checked && !(a < small && a > -small && b < small && b > -small)) {
    const fl_i128 min = (fl_i128)(((unsigned __int128)1) << 127);
    if ((a == -1 && b == min) || (b == -1 && a == min) || (a != 0 && r / a != b))
      atomicOr(error, FL_ERROR_OVERFLOW);
  }
  return r;
}

// Runs `program` (`len` pairs) over `row`. Returns 0 and sets *error on a
// malformed program.
__device__ FlValue fl_eval(const int* program, int len, const fl_i64* int_consts,
                           const double* float_consts, const FlColumns& cols, int row,
                           fl_u32* error) {
  FlValue stack[FL_STACK_MAX];
  int top = 0;
  for (int pc = 0; pc < len; pc++) {
    int op = program[2 * pc];
    int arg = program[2 * pc + 1];
    if (op <= FL_OP_CONST_NULL) {
      if (top >= FL_STACK_MAX) {
        atomicOr(error, FL_ERROR_PROGRAM);
        break;
      }
      FlValue v;
      v.i = 0;
      v.f = 0.0;
      v.valid = 1;
      if (op == FL_OP_LOAD) {
        v = fl_load(cols, arg, row);
      } else if (op == FL_OP_CONST_INT) {
        fl_u64 lo = (fl_u64)int_consts[2 * arg];
        fl_u64 hi = (fl_u64)int_consts[2 * arg + 1];
        v.i = (fl_i128)(((unsigned __int128)hi << 64) | lo);
      } else if (op == FL_OP_CONST_FLOAT) {
        v.f = float_consts[arg];
      } else {
        v.valid = 0;
      }
      stack[top++] = v;
      continue;
    }
    int unary = op == FL_OP_NEG_INT || op == FL_OP_NEG_FLOAT || op == FL_OP_SCALE_UP ||
                op == FL_OP_INT_TO_FLOAT || op == FL_OP_NOT || op == FL_OP_IS_NULL ||
                op == FL_OP_IS_NOT_NULL || op == FL_OP_CHECK_I64 || op == FL_OP_CHECK_I32 ||
                op == FL_OP_WRAP_I64 || op == FL_OP_WRAP_I32;
    if (top < (unary ? 1 : 2)) {
      atomicOr(error, FL_ERROR_PROGRAM);
      break;
    }
    if (unary) {
      FlValue& a = stack[top - 1];
      switch (op) {
        case FL_OP_NEG_INT: a.i = -a.i; break;
        case FL_OP_NEG_FLOAT: a.f = -a.f; break;
        case FL_OP_SCALE_UP: a.i = fl_mul(a.i, fl_pow10(arg), a.valid, error); break;
        case FL_OP_INT_TO_FLOAT: a.f = (double)a.i / (double)fl_pow10(arg); break;
        case FL_OP_NOT: a.i = !a.i; break;
        case FL_OP_IS_NULL: a.i = !a.valid; a.valid = 1; break;
        case FL_OP_IS_NOT_NULL: a.i = a.valid; a.valid = 1; break;
        case FL_OP_CHECK_I64: {
          fl_i128 lo = -(((fl_i128)1) << 63);
          fl_i128 hi = (((fl_i128)1) << 63) - 1;
          if (a.valid && (a.i < lo || a.i > hi)) atomicOr(error, FL_ERROR_OVERFLOW);
          break;
        }
        case FL_OP_WRAP_I64: a.i = (fl_i64)(fl_u64)(unsigned __int128)a.i; break;
        case FL_OP_WRAP_I32: a.i = (int)(unsigned)(unsigned __int128)a.i; break;
        default: {
          if (a.valid && (a.i < -2147483648LL || a.i > 2147483647LL))
            atomicOr(error, FL_ERROR_OVERFLOW);
          break;
        }
      }
      continue;
    }
    FlValue b = stack[--top];
    FlValue& a = stack[top - 1];
    if (op == FL_OP_AND) {
      int a_false = a.valid && !a.i;
      int b_false = b.valid && !b.i;
      if (a_false || b_false) {
        a.i = 0;
        a.valid = 1;
      } else {
        a.i = 1;
        a.valid = a.valid && b.valid;
      }
      continue;
    }
    if (op == FL_OP_OR) {
      int a_true = a.valid && a.i;
      int b_true = b.valid && b.i;
      if (a_true || b_true) {
        a.i = 1;
        a.valid = 1;
      } else {
        a.i = 0;
        a.valid = a.valid && b.valid;
      }
      continue;
    }
    a.valid = a.valid && b.valid;
    switch (op) {
      case FL_OP_ADD_INT: a.i = fl_add(a.i, b.i, a.valid && arg, error); break;
      case FL_OP_SUB_INT: a.i = fl_sub(a.i, b.i, a.valid && arg, error); break;
      case FL_OP_MUL_INT: a.i = fl_mul(a.i, b.i, a.valid && arg, error); break;
      case FL_OP_ADD_FLOAT: a.f = a.f + b.f; break;
      case FL_OP_SUB_FLOAT: a.f = a.f - b.f; break;
      case FL_OP_MUL_FLOAT: a.f = a.f * b.f; break;
      case FL_OP_DIV_FLOAT: a.f = a.f / b.f; break;
      case FL_OP_LT_INT: a.i = a.i < b.i; break;
      case FL_OP_LE_INT: a.i = a.i <= b.i; break;
      case FL_OP_GT_INT: a.i = a.i > b.i; break;
      case FL_OP_GE_INT: a.i = a.i >= b.i; break;
      case FL_OP_EQ_INT: a.i = a.i == b.i; break;
      case FL_OP_NE_INT: a.i = a.i != b.i; break;
      case FL_OP_LT_FLOAT: a.i = a.f < b.f; break;
      case FL_OP_LE_FLOAT: a.i = a.f <= b.f; break;
      case FL_OP_GT_FLOAT: a.i = a.f > b.f; break;
      case FL_OP_GE_FLOAT: a.i = a.f >= b.f; break;
      case FL_OP_EQ_FLOAT: a.i = a.f == b.f; break;
      case FL_OP_NE_FLOAT: a.i = a.f != b.f; break;
      default: atomicOr(error, FL_ERROR_PROGRAM); break;
    }
  }
  if (top != 1) {
    atomicOr(error, FL_ERROR_PROGRAM);
    FlValue none;
    none.i = 0;
    none.f = 0.0;
    none.valid = 0;
    return none;
  }
  return stack[0];
}

// The hash of a group's or a join's keys (64-bit mix of each key and its
// validity).
__device__ __forceinline__ fl_u64 fl_mix(fl_u64 h, fl_u64 k) {
  k *= 0x9E3779B97F4A7C15ULL;
  k ^= k >> 31;
  h ^= k;
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 29;
  return h;
}
