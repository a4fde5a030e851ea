//! Arrow to Postgres: column types, and rows in text or binary format.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, BooleanArray, Date32Array,
    Decimal128Array, FixedSizeBinaryArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, LargeBinaryArray, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    Time64MicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyEncoder, DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use postgres_types::ToSql;
use rust_decimal::Decimal;

/// The Postgres type a column of `data_type` is sent as: the one `pg_attribute`
/// and `pg_type` describe (`sql::pg_catalog::types` is the one mapping).
pub fn pg_type(data_type: &DataType) -> Type {
    let column = sql::pg_catalog::types::arrow_to_pg(data_type);
    u32::try_from(column.oid)
        .ok()
        .and_then(Type::from_oid)
        .unwrap_or(Type::TEXT)
}

/// The Arrow type a client-declared parameter type maps to.
pub fn arrow_type(pg: &Type) -> Option<DataType> {
    Some(match *pg {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => DataType::Decimal128(38, 10),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => return None,
    })
}

/// The format of column `idx`; a short or malformed format list falls back to text.
pub fn format_for(format: &Format, idx: usize) -> FieldFormat {
    match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) => codes
            .get(idx)
            .map(|c| FieldFormat::from(*c))
            .unwrap_or(FieldFormat::Text),
    }
}

/// RowDescription fields for a schema.
pub fn field_infos(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format_for(format, i),
            )
        })
        .collect()
}

fn encode_error(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "XX000".into(),
        message,
    )))
}

/// Casts a column to the representation [`encode_value`] handles.
fn normalize(array: &ArrayRef) -> PgWireResult<ArrayRef> {
    let target = match array.data_type() {
        DataType::Dictionary(_, value) => Some(value.as_ref().clone()),
        DataType::Int8 | DataType::UInt8 => Some(DataType::Int16),
        DataType::UInt16 => Some(DataType::Int32),
        DataType::UInt32 => Some(DataType::Int64),
        DataType::UInt64 => Some(DataType::Decimal128(20, 0)),
        DataType::Float16 => Some(DataType::Float32),
        DataType::Date64 => Some(DataType::Date32),
        DataType::Time32(_) | DataType::Time64(TimeUnit::Nanosecond) => {
            Some(DataType::Time64(TimeUnit::Microsecond))
        }
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => Some(DataType::Decimal128(*p, *s)),
        _ => None,
    };
    match target {
        Some(t) => {
            let cast = cast(array, &t).map_err(|e| encode_error(e.to_string()))?;
            normalize(&cast)
        }
        None => Ok(Arc::clone(array)),
    }
}

/// Where encoded values go: a DataRow or a COPY row.
trait FieldSink {
    fn encode_field<T: ToSql + ToSqlText + Sized>(&mut self, value: &T) -> PgWireResult<()>;
}

impl FieldSink for DataRowEncoder {
    fn encode_field<T: ToSql + ToSqlText + Sized>(&mut self, value: &T) -> PgWireResult<()> {
        DataRowEncoder::encode_field(self, value)
    }
}

impl FieldSink for CopyEncoder {
    fn encode_field<T: ToSql + ToSqlText + Sized>(&mut self, value: &T) -> PgWireResult<()> {
        CopyEncoder::encode_field(self, value)
    }
}

/// A batch's columns in the types the encoders take.
fn normalized_columns(batch: &RecordBatch) -> PgWireResult<Vec<ArrayRef>> {
    batch.columns().iter().map(normalize).collect()
}

/// Encodes every row of a batch.
pub fn encode_batch(
    batch: &RecordBatch,
    fields: &Arc<Vec<FieldInfo>>,
) -> PgWireResult<Vec<DataRow>> {
    let columns = normalized_columns(batch)?;
    let formatters = formatters(&columns);
    let mut encoder = DataRowEncoder::new(Arc::clone(fields));
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for (column, formatter) in columns.iter().zip(&formatters) {
            encode_value(&mut encoder, column, formatter.as_ref(), row)?;
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

/// Encodes every row of a batch for `COPY ... TO STDOUT`, one message per row.
pub fn encode_copy(batch: &RecordBatch, encoder: &mut CopyEncoder) -> PgWireResult<Vec<CopyData>> {
    let columns = normalized_columns(batch)?;
    let formatters = formatters(&columns);
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for (column, formatter) in columns.iter().zip(&formatters) {
            encode_value(encoder, column, formatter.as_ref(), row)?;
        }
        out.push(encoder.take_copy());
    }
    Ok(out)
}

fn formatters(columns: &[ArrayRef]) -> Vec<Option<ArrayFormatter<'_>>> {
    columns
        .iter()
        .map(|c| {
            if needs_formatter(c.data_type()) {
                ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).ok()
            } else {
                None
            }
        })
        .collect()
}

fn needs_formatter(data_type: &DataType) -> bool {
    !matches!(
        data_type,
        DataType::Boolean
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
            | DataType::Date32
            | DataType::Time64(TimeUnit::Microsecond)
            | DataType::Timestamp(..)
    )
}

macro_rules! put {
    ($encoder:expr, $array:expr, $ty:ty, $row:expr, |$v:ident| $conv:expr) => {{
        let array = $array
            .as_any()
            .downcast_ref::<$ty>()
            .expect("normalized type");
        if array.is_null($row) {
            $encoder.encode_field(&None::<String>)
        } else {
            let $v = array.value($row);
            $encoder.encode_field(&$conv)
        }
    }};
}

fn encode_value<E: FieldSink>(
    encoder: &mut E,
    column: &ArrayRef,
    formatter: Option<&ArrayFormatter>,
    row: usize,
) -> PgWireResult<()> {
    match column.data_type() {
        DataType::Boolean => put!(encoder, column, BooleanArray, row, |v| v),
        DataType::Int16 => put!(encoder, column, Int16Array, row, |v| v),
        DataType::Int32 => put!(encoder, column, Int32Array, row, |v| v),
        DataType::Int64 => put!(encoder, column, Int64Array, row, |v| v),
        DataType::Float32 => put!(encoder, column, Float32Array, row, |v| v),
        DataType::Float64 => put!(encoder, column, Float64Array, row, |v| v),
        DataType::Utf8 => put!(encoder, column, StringArray, row, |v| v),
        DataType::LargeUtf8 => put!(encoder, column, LargeStringArray, row, |v| v),
        DataType::Utf8View => put!(encoder, column, StringViewArray, row, |v| v),
        DataType::Binary => put!(encoder, column, BinaryArray, row, |v| v),
        DataType::LargeBinary => put!(encoder, column, LargeBinaryArray, row, |v| v),
        DataType::BinaryView => put!(encoder, column, BinaryViewArray, row, |v| v),
        DataType::FixedSizeBinary(_) => put!(encoder, column, FixedSizeBinaryArray, row, |v| v),
        DataType::Date32 => put!(encoder, column, Date32Array, row, |v| {
            NaiveDate::from_num_days_from_ce_opt(v + 719_163).unwrap_or_default()
        }),
        DataType::Time64(TimeUnit::Microsecond) => {
            put!(encoder, column, Time64MicrosecondArray, row, |v| {
                NaiveTime::from_num_seconds_from_midnight_opt(
                    (v / 1_000_000) as u32,
                    ((v % 1_000_000) * 1000) as u32,
                )
                .unwrap_or_default()
            })
        }
        DataType::Decimal128(_, scale) => {
            let array = column.as_primitive::<arrow::datatypes::Decimal128Type>();
            if array.is_null(row) {
                return encoder.encode_field(&None::<String>);
            }
            let value = array.value(row);
            match Decimal::try_from_i128_with_scale(value, (*scale).max(0) as u32) {
                Ok(d) => encoder.encode_field(&d),
                Err(_) => {
                    let text = Decimal128Array::from(vec![value])
                        .with_precision_and_scale(38, *scale)
                        .map_err(|e| encode_error(e.to_string()))?
                        .value_as_string(0);
                    encoder.encode_field(&text)
                }
            }
        }
        DataType::Timestamp(unit, tz) => {
            if column.is_null(row) {
                return encoder.encode_field(&None::<String>);
            }
            let raw = match unit {
                TimeUnit::Second => column
                    .as_primitive::<arrow::datatypes::TimestampSecondType>()
                    .value(row)
                    .saturating_mul(1_000_000_000),
                TimeUnit::Millisecond => column
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                    .value(row)
                    .saturating_mul(1_000_000),
                TimeUnit::Microsecond => column
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .value(row)
                    .saturating_mul(1_000),
                TimeUnit::Nanosecond => column
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                    .value(row),
            };
            let utc: DateTime<Utc> = DateTime::from_timestamp_nanos(raw);
            if tz.is_some() {
                encoder.encode_field(&utc)
            } else {
                let naive: NaiveDateTime = utc.naive_utc();
                encoder.encode_field(&naive)
            }
        }
        _ => {
            if column.is_null(row) {
                return encoder.encode_field(&None::<String>);
            }
            let text = match formatter {
                Some(f) => f.value(row).to_string(),
                None => String::new(),
            };
            encoder.encode_field(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn types_map_to_standard_oids() {
        assert_eq!(pg_type(&DataType::Utf8View), Type::TEXT);
        assert_eq!(pg_type(&DataType::Decimal128(15, 2)), Type::NUMERIC);
        assert_eq!(pg_type(&DataType::Date32), Type::DATE);
        assert_eq!(pg_type(&DataType::Int64), Type::INT8);
    }

    #[test]
    fn encodes_text_rows_with_nulls() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("d", DataType::Decimal128(15, 2), true),
            Field::new("s", DataType::Utf8View, true),
            Field::new("day", DataType::Date32, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(
                    Decimal128Array::from(vec![Some(12345), None])
                        .with_precision_and_scale(15, 2)
                        .unwrap(),
                ),
                Arc::new(StringViewArray::from(vec![Some("x"), None])),
                Arc::new(Date32Array::from(vec![Some(0), None])),
            ],
        )
        .unwrap();
        let fields = Arc::new(field_infos(&schema, &Format::UnifiedText));
        let rows = encode_batch(&batch, &fields).unwrap();
        assert_eq!(rows.len(), 2);
        let first = String::from_utf8_lossy(&rows[0].data).to_string();
        assert!(first.contains("123.45"), "{first:?}");
        assert!(first.contains("1970-01-01"), "{first:?}");
    }
}
