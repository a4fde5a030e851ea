//! Bound parameter values: wire bytes to DataFusion scalars.
//!
//! The type a value is decoded as is the one the client declared in Parse, else
//! the one the plan inferred, else text. The decoded value is then cast to the
//! type the plan expects, so a driver may send `int2` where the column is `int8`.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use datafusion::common::ScalarValue;
use pgwire::api::portal::Portal;
use pgwire::api::stmt::StoredStatement;
use pgwire::api::Type;
use rust_decimal::Decimal;

use super::encode::pg_type;
use crate::engine::Prepared;
use crate::error::{QueryError, Result};

/// Decodes every parameter of a portal.
pub fn bind(
    portal: &Portal<Prepared>,
    stored: &StoredStatement<Prepared>,
) -> Result<Vec<ScalarValue>> {
    let expected = &stored.statement.param_types;
    let count = portal.parameter_len();
    if count != expected.len() {
        return Err(QueryError::WrongParameterCount {
            supplied: count,
            required: expected.len(),
        });
    }
    (0..count)
        .map(|i| {
            let declared = stored.parameter_types.get(i).cloned().flatten();
            let inferred = expected.get(i).cloned().flatten();
            let wire_type = declared
                .filter(|t| *t != Type::UNKNOWN)
                .or_else(|| inferred.as_ref().map(pg_type))
                .unwrap_or(Type::TEXT);
            let value =
                decode(portal, i, &wire_type).map_err(|message| QueryError::BadParameter {
                    index: i + 1,
                    message,
                })?;
            match inferred {
                Some(target) if value.data_type() != target && !value.is_null() => value
                    .cast_to(&target)
                    .map_err(|e| QueryError::BadParameter {
                        index: i + 1,
                        message: e.to_string(),
                    }),
                Some(target) if value.is_null() => {
                    ScalarValue::try_from(&target).map_err(QueryError::from)
                }
                _ => Ok(value),
            }
        })
        .collect()
}

fn decode(
    portal: &Portal<Prepared>,
    i: usize,
    ty: &Type,
) -> std::result::Result<ScalarValue, String> {
    let err = |e: pgwire::error::PgWireError| e.to_string();
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, ty).map_err(err)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, ty).map_err(err)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, ty).map_err(err)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, ty).map_err(err)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, ty).map_err(err)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, ty).map_err(err)?),
        Type::NUMERIC => match portal.parameter::<Decimal>(i, ty).map_err(err)? {
            Some(d) => ScalarValue::Decimal128(Some(d.mantissa()), 38, d.scale() as i8),
            None => ScalarValue::Decimal128(None, 38, 10),
        },
        Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(i, ty).map_err(err)?),
        Type::DATE => {
            ScalarValue::Date32(portal.parameter::<NaiveDate>(i, ty).map_err(err)?.map(|d| {
                (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
            }))
        }
        Type::TIME => ScalarValue::Time64Microsecond(
            portal.parameter::<NaiveTime>(i, ty).map_err(err)?.map(|t| {
                t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64
            }),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<NaiveDateTime>(i, ty)
                .map_err(err)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<DateTime<FixedOffset>>(i, ty)
                .map_err(err)?
                .map(|t| t.timestamp_micros()),
            Some("+00:00".into()),
        ),
        _ => ScalarValue::Utf8(portal.parameter::<String>(i, &Type::TEXT).map_err(err)?),
    })
}
