//! Planning rules Flotilla adds to DataFusion's.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::logical_expr::expr::{AggregateFunction, Cast};
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, LogicalPlan};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::optimizer::AnalyzerRule;

/// Scale that decimal averages are computed at (before DataFusion's own +4).
const AVG_INPUT_SCALE: i8 = 12;

/// `avg` of a decimal keeps 16 decimal places, as Postgres' numeric `avg` keeps
/// many, instead of DataFusion's input scale + 4, which truncates: `avg` of a
/// `DECIMAL(15,2)` would otherwise lose everything after the 6th place.
///
/// The argument is cast to a wider scale where the integer digits allow it; the
/// aggregate keeps its output name, and every plan node above it is given its
/// new schema.
#[derive(Debug, Default)]
pub struct WidenDecimalAvgRule;

impl AnalyzerRule for WidenDecimalAvgRule {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let rewritten = plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::Aggregate(agg) = &node else {
                return Ok(Transformed::no(node));
            };
            let input_schema = agg.input.schema();
            let mut changed = false;
            let mut aggr_expr = Vec::with_capacity(agg.aggr_expr.len());
            for expr in &agg.aggr_expr {
                match widen(expr, input_schema)? {
                    Some(new) => {
                        changed = true;
                        aggr_expr.push(new);
                    }
                    None => aggr_expr.push(expr.clone()),
                }
            }
            if !changed {
                return Ok(Transformed::no(node));
            }
            let new =
                Aggregate::try_new(Arc::clone(&agg.input), agg.group_expr.clone(), aggr_expr)?;
            Ok(Transformed::yes(LogicalPlan::Aggregate(new)))
        })?;
        if !rewritten.transformed {
            return Ok(rewritten.data);
        }
        // Types above the rewritten aggregates changed: recompute every schema, then
        // coerce again, since comparisons with the old type were coerced to it.
        let plan = rewritten
            .data
            .transform_up_with_subqueries(|node| Ok(Transformed::yes(node.recompute_schema()?)))?
            .data;
        TypeCoercion::new().analyze(plan, config)
    }

    fn name(&self) -> &str {
        "widen_decimal_avg"
    }
}

fn widen(expr: &Expr, schema: &datafusion::common::DFSchemaRef) -> Result<Option<Expr>> {
    let (inner, name) = match expr {
        Expr::Alias(alias) => (alias.expr.as_ref(), alias.name.clone()),
        other => (other, other.schema_name().to_string()),
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
        return Ok(None);
    };
    if func.name() != "avg" || params.args.len() != 1 {
        return Ok(None);
    }
    let arg = &params.args[0];
    let DataType::Decimal128(precision, scale) = arg.get_type(schema)? else {
        return Ok(None);
    };
    let integer_digits = precision as i16 - scale as i16;
    // Keep one digit of headroom for the running sum.
    let room = 38 - integer_digits - 1;
    let new_scale = (AVG_INPUT_SCALE as i16).min(room) as i8;
    if new_scale <= scale {
        return Ok(None);
    }
    let widened = Expr::Cast(Cast::new(
        Box::new(arg.clone()),
        DataType::Decimal128(38, new_scale),
    ));
    let mut params = params.clone();
    params.args = vec![widened];
    let new = Expr::AggregateFunction(AggregateFunction {
        func: Arc::clone(func),
        params,
    });
    Ok(Some(new.alias(name)))
}
