//! Row programs: DataFusion physical expressions compiled into the postfix
//! code the kernels' stack machine runs (`kernels/common.cuh`), with the same
//! results as DataFusion's own evaluation, nulls included.
//!
//! What compiles: columns and literals of Int32, Int64, Date32, Float64 and
//! Decimal128; `+ - *` (and `/` on Float64), comparisons, `AND`, `OR`, `NOT`,
//! `IS [NOT] NULL`, and the casts that widen exactly (an integer to a wider
//! integer or a decimal that holds it, a decimal to a larger scale, a number
//! to Float64). Integer results are range-checked on the device: a result
//! DataFusion would refuse with an overflow error sets a flag, and the stage
//! answers on the CPU instead, which gives DataFusion's error. Anything else
//! is [`GpuError::Unsupported`] with what it was, which the planner rule
//! shows in `EXPLAIN`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, IsNotNullExpr, IsNullExpr, Literal, NotExpr, TryCastExpr,
};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{GpuError, Result};

// Opcodes: the FL_OP_* of kernels/common.cuh (a test checks they agree).
// Some are reached only as offsets from another (ADD_INT + 1 is SUB_INT).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod op {
    pub const LOAD: i32 = 1;
    pub const CONST_INT: i32 = 2;
    pub const CONST_FLOAT: i32 = 3;
    pub const CONST_NULL: i32 = 4;
    pub const ADD_INT: i32 = 5;
    pub const SUB_INT: i32 = 6;
    pub const MUL_INT: i32 = 7;
    pub const NEG_INT: i32 = 8;
    pub const ADD_FLOAT: i32 = 9;
    pub const SUB_FLOAT: i32 = 10;
    pub const MUL_FLOAT: i32 = 11;
    pub const DIV_FLOAT: i32 = 12;
    pub const NEG_FLOAT: i32 = 13;
    pub const SCALE_UP: i32 = 14;
    pub const INT_TO_FLOAT: i32 = 15;
    pub const LT_INT: i32 = 16;
    pub const LT_FLOAT: i32 = 22;
    pub const AND: i32 = 28;
    pub const OR: i32 = 29;
    pub const NOT: i32 = 30;
    pub const IS_NULL: i32 = 31;
    pub const IS_NOT_NULL: i32 = 32;
    pub const CHECK_I64: i32 = 33;
    pub const CHECK_I32: i32 = 34;
    pub const WRAP_I64: i32 = 35;
    pub const WRAP_I32: i32 = 36;
}

/// Column buffer layouts: the FL_COL_* of kernels/common.cuh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ColumnKind {
    I32 = 0,
    I64 = 1,
    F64 = 2,
    D128 = 3,
    /// No values: only the validity bitmap is read (a value is 0).
    Validity = 4,
}

impl ColumnKind {
    /// The layout of a column of `data_type`, if the kernels read it.
    pub fn of(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Int32 | DataType::Date32 => Some(ColumnKind::I32),
            DataType::Int64 => Some(ColumnKind::I64),
            DataType::Float64 => Some(ColumnKind::F64),
            DataType::Decimal128(_, _) => Some(ColumnKind::D128),
            _ => None,
        }
    }

    /// Bytes per value.
    pub fn width(self) -> usize {
        match self {
            ColumnKind::I32 => 4,
            ColumnKind::I64 | ColumnKind::F64 => 8,
            ColumnKind::D128 => 16,
            ColumnKind::Validity => 0,
        }
    }
}

/// The SQL type of a value on the stack machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// Int32 or Date32 (an i32 range), or Int64.
    Int {
        wide: bool,
    },
    Decimal {
        precision: u8,
        scale: i8,
    },
    Float,
    Bool,
}

impl ValueType {
    fn of(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Int32 | DataType::Date32 => Some(ValueType::Int { wide: false }),
            DataType::Int64 => Some(ValueType::Int { wide: true }),
            DataType::Float64 => Some(ValueType::Float),
            DataType::Boolean => Some(ValueType::Bool),
            DataType::Decimal128(p, s) if *s >= 0 => Some(ValueType::Decimal {
                precision: *p,
                scale: *s,
            }),
            _ => None,
        }
    }

    /// Integers and decimals are integers on the stack.
    fn is_integer(self) -> bool {
        matches!(self, ValueType::Int { .. } | ValueType::Decimal { .. })
    }

    fn scale(self) -> i8 {
        match self {
            ValueType::Decimal { scale, .. } => scale,
            _ => 0,
        }
    }

    /// Digits before the decimal point a value of the type can have.
    fn integer_digits(self) -> i32 {
        match self {
            ValueType::Int { wide: false } => 10,
            ValueType::Int { wide: true } => 19,
            ValueType::Decimal { precision, scale } => precision as i32 - scale as i32,
            _ => 0,
        }
    }
}

/// The constants and the code of every program of one stage.
#[derive(Debug, Default, Clone)]
pub struct ProgramSet {
    /// All programs' code, as (opcode, argument) pairs flattened.
    pub code: Vec<i32>,
    /// 128-bit integer constants as (low, high) words.
    pub int_consts: Vec<i64>,
    pub float_consts: Vec<f64>,
}

/// Where a program sits in [`ProgramSet::code`], in pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramRef {
    pub start: usize,
    pub len: usize,
}

impl ProgramSet {
    /// Compiles `expr` (over `schema`, whose columns the kernels read by
    /// index) and appends it. Returns where it is and its type.
    pub fn compile(
        &mut self,
        expr: &Arc<dyn PhysicalExpr>,
        schema: &Schema,
    ) -> Result<(ProgramRef, ValueType)> {
        let start = self.code.len() / 2;
        let ty = self.emit(expr, schema)?;
        let len = self.code.len() / 2 - start;
        if depth(&self.code[start * 2..]) > STACK_MAX {
            return Err(GpuError::unsupported(format!(
                "{expr}: deeper than the device's {STACK_MAX}-value stack"
            )));
        }
        Ok((ProgramRef { start, len }, ty))
    }

    /// A program that loads `column` for its validity only (its value is 0):
    /// for counts of columns of any type.
    pub fn load_validity(&mut self, column: usize) -> ProgramRef {
        let start = self.code.len() / 2;
        self.push(op::LOAD, column as i32);
        ProgramRef { start, len: 1 }
    }

    fn push(&mut self, op: i32, arg: i32) {
        self.code.push(op);
        self.code.push(arg);
    }

    fn int_const(&mut self, value: i128) -> i32 {
        let at = self.int_consts.len() / 2;
        self.int_consts.push(value as u64 as i64);
        self.int_consts.push((value >> 64) as u64 as i64);
        at as i32
    }

    fn emit(&mut self, expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<ValueType> {
        let any = expr;
        if let Some(column) = any.downcast_ref::<Column>() {
            let field = schema.field(column.index());
            let ty = ValueType::of(field.data_type())
                .filter(|_| ColumnKind::of(field.data_type()).is_some())
                .ok_or_else(|| {
                    GpuError::unsupported(format!(
                        "column {} of type {}",
                        column.name(),
                        field.data_type()
                    ))
                })?;
            self.push(op::LOAD, column.index() as i32);
            return Ok(ty);
        }
        if let Some(literal) = any.downcast_ref::<Literal>() {
            return self.literal(literal.value());
        }
        if let Some(binary) = any.downcast_ref::<BinaryExpr>() {
            return self.binary(binary, schema);
        }
        if let Some(cast) = any.downcast_ref::<CastExpr>() {
            return self.cast(cast.expr(), cast.cast_type(), schema);
        }
        if let Some(cast) = any.downcast_ref::<TryCastExpr>() {
            return self.cast(cast.expr(), cast.cast_type(), schema);
        }
        if let Some(not) = any.downcast_ref::<NotExpr>() {
            self.boolean(not.arg(), schema)?;
            self.push(op::NOT, 0);
            return Ok(ValueType::Bool);
        }
        if let Some(is_null) = any.downcast_ref::<IsNullExpr>() {
            self.emit(is_null.arg(), schema)?;
            self.push(op::IS_NULL, 0);
            return Ok(ValueType::Bool);
        }
        if let Some(is_not_null) = any.downcast_ref::<IsNotNullExpr>() {
            self.emit(is_not_null.arg(), schema)?;
            self.push(op::IS_NOT_NULL, 0);
            return Ok(ValueType::Bool);
        }
        Err(GpuError::unsupported(format!("expression {expr}")))
    }

    fn boolean(&mut self, expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<()> {
        match self.emit(expr, schema)? {
            ValueType::Bool => Ok(()),
            other => Err(GpuError::unsupported(format!(
                "{expr} used as a condition ({other:?})"
            ))),
        }
    }

    fn literal(&mut self, value: &ScalarValue) -> Result<ValueType> {
        let (ty, int, float) = match value {
            ScalarValue::Boolean(v) => (ValueType::Bool, v.map(i128::from), None),
            ScalarValue::Int32(v) | ScalarValue::Date32(v) => {
                (ValueType::Int { wide: false }, v.map(i128::from), None)
            }
            ScalarValue::Int64(v) => (ValueType::Int { wide: true }, v.map(i128::from), None),
            ScalarValue::Float64(v) => (ValueType::Float, None, *v),
            ScalarValue::Decimal128(v, p, s) if *s >= 0 => (
                ValueType::Decimal {
                    precision: *p,
                    scale: *s,
                },
                *v,
                None,
            ),
            other => {
                return Err(GpuError::unsupported(format!(
                    "literal {other} of type {}",
                    other.data_type()
                )))
            }
        };
        if value.is_null() {
            self.push(op::CONST_NULL, 0);
        } else if let Some(float) = float {
            let at = self.float_consts.len() as i32;
            self.float_consts.push(float);
            self.push(op::CONST_FLOAT, at);
        } else if let Some(int) = int {
            let at = self.int_const(int);
            self.push(op::CONST_INT, at);
        }
        Ok(ty)
    }

    fn binary(&mut self, expr: &BinaryExpr, schema: &Schema) -> Result<ValueType> {
        let unsupported = || GpuError::unsupported(format!("expression {expr}"));
        let operator = *expr.op();
        if matches!(operator, Operator::And | Operator::Or) {
            self.boolean(expr.left(), schema)?;
            self.boolean(expr.right(), schema)?;
            self.push(
                if operator == Operator::And {
                    op::AND
                } else {
                    op::OR
                },
                0,
            );
            return Ok(ValueType::Bool);
        }
        let result = ValueType::of(&expr.data_type(schema)?).ok_or_else(unsupported)?;
        let left = ValueType::of(&expr.left().data_type(schema)?).ok_or_else(unsupported)?;
        let right = ValueType::of(&expr.right().data_type(schema)?).ok_or_else(unsupported)?;
        let comparison = match operator {
            Operator::Lt => Some(0),
            Operator::LtEq => Some(1),
            Operator::Gt => Some(2),
            Operator::GtEq => Some(3),
            Operator::Eq => Some(4),
            Operator::NotEq => Some(5),
            _ => None,
        };
        if let Some(offset) = comparison {
            if left.is_integer() && right.is_integer() {
                // Decimals of different scales compare at the larger scale.
                let scale = left.scale().max(right.scale());
                self.emit(expr.left(), schema)?;
                self.rescale(left.scale(), scale);
                self.emit(expr.right(), schema)?;
                self.rescale(right.scale(), scale);
                self.push(op::LT_INT + offset, 0);
            } else if left == ValueType::Float && right == ValueType::Float {
                self.emit(expr.left(), schema)?;
                self.emit(expr.right(), schema)?;
                self.push(op::LT_FLOAT + offset, 0);
            } else if left == ValueType::Bool && right == ValueType::Bool && offset >= 4 {
                self.emit(expr.left(), schema)?;
                self.emit(expr.right(), schema)?;
                self.push(op::LT_INT + offset, 0);
            } else {
                return Err(unsupported());
            }
            return Ok(ValueType::Bool);
        }
        // DataFusion wraps integer arithmetic around unless the expression
        // asks for overflow errors (there is no getter for it: compare).
        let checked = *expr
            == BinaryExpr::new(Arc::clone(expr.left()), operator, Arc::clone(expr.right()))
                .with_fail_on_overflow(true);
        let arithmetic = match operator {
            Operator::Plus => 0,
            Operator::Minus => 1,
            Operator::Multiply => 2,
            Operator::Divide => 3,
            _ => return Err(unsupported()),
        };
        match (left, right, result) {
            (ValueType::Float, ValueType::Float, ValueType::Float) => {
                self.emit(expr.left(), schema)?;
                self.emit(expr.right(), schema)?;
                self.push(op::ADD_FLOAT + arithmetic, 0);
                Ok(result)
            }
            (ValueType::Int { .. }, ValueType::Int { .. }, ValueType::Int { wide })
                if arithmetic < 3 =>
            {
                self.emit(expr.left(), schema)?;
                self.emit(expr.right(), schema)?;
                self.push(op::ADD_INT + arithmetic, 1);
                self.push(
                    match (wide, checked) {
                        (true, true) => op::CHECK_I64,
                        (true, false) => op::WRAP_I64,
                        (false, true) => op::CHECK_I32,
                        (false, false) => op::WRAP_I32,
                    },
                    0,
                );
                Ok(result)
            }
            (l, r, ValueType::Decimal { scale, .. })
                if arithmetic < 3 && l.is_integer() && r.is_integer() =>
            {
                // 128-bit results wrap, or are checked for overflow on the
                // device, as DataFusion does; precision is enforced by
                // neither.
                if arithmetic == 2 {
                    // The product of the scaled integers is at the sum of the
                    // scales; DataFusion's type says the same unless it had
                    // to cap the scale, which this does not follow.
                    if scale != l.scale() + r.scale() {
                        return Err(unsupported());
                    }
                    self.emit(expr.left(), schema)?;
                    self.emit(expr.right(), schema)?;
                } else {
                    if scale != l.scale().max(r.scale()) {
                        return Err(unsupported());
                    }
                    self.emit(expr.left(), schema)?;
                    self.rescale(l.scale(), scale);
                    self.emit(expr.right(), schema)?;
                    self.rescale(r.scale(), scale);
                }
                self.push(op::ADD_INT + arithmetic, i32::from(checked));
                Ok(result)
            }
            _ => Err(unsupported()),
        }
    }

    fn rescale(&mut self, from: i8, to: i8) {
        if to > from {
            self.push(op::SCALE_UP, (to - from) as i32);
        }
    }

    fn cast(
        &mut self,
        input: &Arc<dyn PhysicalExpr>,
        to: &DataType,
        schema: &Schema,
    ) -> Result<ValueType> {
        let unsupported = || GpuError::unsupported(format!("CAST({input} AS {to})"));
        let from = ValueType::of(&input.data_type(schema)?).ok_or_else(unsupported)?;
        let target = ValueType::of(to).ok_or_else(unsupported)?;
        // Date32 to Int32 and back change nothing but the type's name.
        let same_ints = matches!(
            (from, target),
            (ValueType::Int { wide: false }, ValueType::Int { .. })
                | (ValueType::Int { wide: true }, ValueType::Int { wide: true })
        );
        self.emit(input, schema)?;
        match (from, target) {
            _ if same_ints => {}
            (ValueType::Int { wide: true }, ValueType::Int { wide: false }) => {
                self.push(op::CHECK_I32, 0)
            }
            (f, ValueType::Decimal { scale, .. }) if f.is_integer() => {
                if scale < f.scale() || target.integer_digits() < f.integer_digits() {
                    return Err(unsupported());
                }
                self.rescale(f.scale(), scale);
            }
            (f, ValueType::Float) if f.is_integer() => {
                self.push(op::INT_TO_FLOAT, f.scale() as i32)
            }
            (ValueType::Float, ValueType::Float) | (ValueType::Bool, ValueType::Bool) => {}
            _ => return Err(unsupported()),
        }
        Ok(target)
    }
}

/// At most how many decimal digits the scaled integer value of `expr` has
/// (`None`: no bound known), from its inputs' types, whatever casts widened
/// them to.
pub fn digits_bound(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<u32> {
    if let Some(column) = expr.downcast_ref::<Column>() {
        return match schema.field(column.index()).data_type() {
            DataType::Int32 | DataType::Date32 => Some(10),
            DataType::Int64 => Some(19),
            DataType::Decimal128(p, _) => Some(*p as u32),
            _ => None,
        };
    }
    if let Some(literal) = expr.downcast_ref::<Literal>() {
        let magnitude = match literal.value() {
            ScalarValue::Int32(v) | ScalarValue::Date32(v) => v.map(|v| v.unsigned_abs() as u128),
            ScalarValue::Int64(v) => v.map(|v| v.unsigned_abs() as u128),
            ScalarValue::Decimal128(v, _, _) => v.map(|v| v.unsigned_abs()),
            _ => return None,
        };
        return Some(magnitude.map_or(1, |m| m.checked_ilog10().map_or(1, |d| d + 1)));
    }
    let scale = |e: &Arc<dyn PhysicalExpr>| match e.data_type(schema).ok()? {
        DataType::Decimal128(_, s) if s >= 0 => Some(s as u32),
        DataType::Int32 | DataType::Int64 | DataType::Date32 => Some(0),
        _ => None,
    };
    let cast = expr
        .downcast_ref::<CastExpr>()
        .map(|c| c.expr())
        .or_else(|| expr.downcast_ref::<TryCastExpr>().map(|c| c.expr()));
    if let Some(input) = cast {
        let grown = scale(expr)?.checked_sub(scale(input)?)?;
        return Some(digits_bound(input, schema)? + grown);
    }
    if let Some(binary) = expr.downcast_ref::<BinaryExpr>() {
        let (l, r) = (
            digits_bound(binary.left(), schema)?,
            digits_bound(binary.right(), schema)?,
        );
        let (sl, sr, s) = (scale(binary.left())?, scale(binary.right())?, scale(expr)?);
        return match binary.op() {
            Operator::Plus | Operator::Minus => {
                Some((l + s.checked_sub(sl)?).max(r + s.checked_sub(sr)?) + 1)
            }
            Operator::Multiply => Some(l + r),
            _ => None,
        };
    }
    None
}

/// The device's stack size (FL_STACK_MAX).
const STACK_MAX: usize = 16;

/// The most values a program holds on the stack at once.
fn depth(code: &[i32]) -> usize {
    let (mut now, mut most) = (0usize, 0usize);
    for pair in code.chunks(2) {
        match pair[0] {
            op::LOAD | op::CONST_INT | op::CONST_FLOAT | op::CONST_NULL => now += 1,
            op::NEG_INT
            | op::NEG_FLOAT
            | op::SCALE_UP
            | op::INT_TO_FLOAT
            | op::NOT
            | op::IS_NULL
            | op::IS_NOT_NULL
            | op::CHECK_I64
            | op::CHECK_I32
            | op::WRAP_I64
            | op::WRAP_I32 => {}
            _ => now = now.saturating_sub(1),
        }
        most = most.max(now);
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("q", DataType::Decimal128(15, 2), true),
            Field::new("d", DataType::Date32, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
        ])
    }

    #[test]
    fn a_q6_filter_compiles() {
        let schema = schema();
        let predicate: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(BinaryExpr::new(
                col("d", &schema).unwrap(),
                Operator::GtEq,
                lit(ScalarValue::Date32(Some(8766))),
            )),
            Operator::And,
            Arc::new(BinaryExpr::new(
                col("q", &schema).unwrap(),
                Operator::Lt,
                lit(ScalarValue::Decimal128(Some(2400), 15, 2)),
            )),
        ));
        let mut set = ProgramSet::default();
        let (at, ty) = set.compile(&predicate, &schema).unwrap();
        assert_eq!(ty, ValueType::Bool);
        assert_eq!(at, ProgramRef { start: 0, len: 7 });
        assert_eq!(depth(&set.code), 3);
        assert_eq!(set.int_consts, vec![8766, 0, 2400, 0]);
    }

    #[test]
    fn opcodes_agree_with_the_kernels() {
        let defined = |name: &str| -> i32 {
            let line = crate::nvrtc::KERNEL_SOURCE
                .lines()
                .find(|l| l.starts_with(&format!("#define FL_OP_{name} ")))
                .unwrap_or_else(|| panic!("FL_OP_{name} is not defined"));
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        let ours = [
            ("LOAD", op::LOAD),
            ("CONST_INT", op::CONST_INT),
            ("CONST_FLOAT", op::CONST_FLOAT),
            ("CONST_NULL", op::CONST_NULL),
            ("ADD_INT", op::ADD_INT),
            ("SUB_INT", op::SUB_INT),
            ("MUL_INT", op::MUL_INT),
            ("NEG_INT", op::NEG_INT),
            ("ADD_FLOAT", op::ADD_FLOAT),
            ("SUB_FLOAT", op::SUB_FLOAT),
            ("MUL_FLOAT", op::MUL_FLOAT),
            ("DIV_FLOAT", op::DIV_FLOAT),
            ("NEG_FLOAT", op::NEG_FLOAT),
            ("SCALE_UP", op::SCALE_UP),
            ("INT_TO_FLOAT", op::INT_TO_FLOAT),
            ("LT_INT", op::LT_INT),
            ("LT_FLOAT", op::LT_FLOAT),
            ("AND", op::AND),
            ("OR", op::OR),
            ("NOT", op::NOT),
            ("IS_NULL", op::IS_NULL),
            ("IS_NOT_NULL", op::IS_NOT_NULL),
            ("CHECK_I64", op::CHECK_I64),
            ("CHECK_I32", op::CHECK_I32),
            ("WRAP_I64", op::WRAP_I64),
            ("WRAP_I32", op::WRAP_I32),
        ];
        for (name, value) in ours {
            assert_eq!(defined(name), value, "FL_OP_{name}");
        }
        // Comparisons are emitted as LT + offset, in this order.
        for (i, name) in ["LT", "LE", "GT", "GE", "EQ", "NE"].iter().enumerate() {
            assert_eq!(defined(&format!("{name}_INT")), op::LT_INT + i as i32);
            assert_eq!(defined(&format!("{name}_FLOAT")), op::LT_FLOAT + i as i32);
        }
    }

    #[test]
    fn strings_are_refused_with_what_they_are() {
        let schema = schema();
        let mut set = ProgramSet::default();
        let error = set
            .compile(&col("s", &schema).unwrap(), &schema)
            .unwrap_err();
        assert!(
            error.to_string().contains("column s of type Utf8"),
            "{error}"
        );
    }
}
