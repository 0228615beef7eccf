//! TensorFlow Serving and MLflow answers: a `predictions` array (MLflow 1.x: a bare array), one
//! element per input row.
//!
//! A row is read the way these servers emit it:
//! - an array of numbers: scores or a regression vector; compared element by element with
//!   tolerance, and with two or more elements its argmax is the row's label (agreements and flips
//!   counted, a flip is a difference);
//! - a float: a regression value, compared with tolerance;
//! - an integer (written without fraction or exponent, of any length), string or boolean: a class
//!   label, compared exactly;
//! - anything else (objects of named outputs, nested tensors): generic JSON.
use serde_json::json;

use super::{
    PredictionMetrics,
    json::{Json, Object},
    json_diff::{Collector, diff_fields, diff_values, exact_eq},
    oip::argmax,
};

/// Compares two answers whose production side has a `predictions` array or is a bare array.
pub(crate) fn compare(c: &mut Collector<'_>, a: &Json<'_>, b: &Json<'_>, m: &mut PredictionMetrics) {
    match (a, b) {
        (Json::Array(x), Json::Array(y)) => rows(c, x, y, m),
        (Json::Object(x), Json::Object(y)) => object(c, x, y, m),
        _ => diff_values(c, a, b),
    }
}

fn object(c: &mut Collector<'_>, x: &Object<'_>, y: &Object<'_>, m: &mut PredictionMetrics) {
    diff_fields(c, x, y, &["predictions"]);
    let (a, b) = (x.get("predictions").unwrap_or(&Json::Null), y.get("predictions").unwrap_or(&Json::Null));
    c.at("predictions", |c| {
        if c.ignored() {
            return;
        }
        match (a, b) {
            (Json::Array(xs), Json::Array(ys)) => rows(c, xs, ys, m),
            _ => diff_values(c, a, b),
        }
    });
}

fn rows(c: &mut Collector<'_>, xs: &[Json<'_>], ys: &[Json<'_>], m: &mut PredictionMetrics) {
    m.rows += xs.len().min(ys.len()) as u64;
    for i in 0..xs.len().max(ys.len()) {
        c.at(i.to_string(), |c| {
            if c.ignored() {
                return;
            }
            match (xs.get(i), ys.get(i)) {
                (Some(a), Some(b)) => row(c, a, b, m),
                (Some(a), None) => c.record(a, &Json::Null),
                (None, Some(b)) => c.record(&Json::Null, b),
                (None, None) => {}
            }
        });
    }
}

fn row(c: &mut Collector<'_>, a: &Json<'_>, b: &Json<'_>, m: &mut PredictionMetrics) {
    let label = |c: &mut Collector<'_>, m: &mut PredictionMetrics| {
        if exact_eq(a, b) {
            m.label_agreements += 1;
        } else {
            m.label_flips += 1;
            c.record(a, b);
        }
    };
    match (a, b) {
        (Json::Array(x), Json::Array(y))
            if x.iter().chain(y).all(Json::is_number) && !x.is_empty() && x.len() == y.len() =>
        {
            for (k, (p, q)) in x.iter().zip(y).enumerate() {
                if let (Json::Number(p), Json::Number(q)) = (p, q) {
                    c.at(k.to_string(), |c| c.numbers(p, q, true));
                }
            }
            if x.len() >= 2 {
                let (xl, yl) = (argmax(&x.iter().collect::<Vec<_>>()), argmax(&y.iter().collect::<Vec<_>>()));
                if xl == yl {
                    m.label_agreements += 1;
                } else {
                    m.label_flips += 1;
                    c.record(&Json::from(json!({"label": xl})), &Json::from(json!({"label": yl})));
                }
            }
        }
        (Json::Number(x), Json::Number(y)) => {
            if a.is_integer() && b.is_integer() {
                label(c, m);
            } else {
                c.numbers(x, y, true);
            }
        }
        (Json::String(_), Json::String(_)) | (Json::Bool(_), Json::Bool(_)) => label(c, m),
        _ => diff_values(c, a, b),
    }
}
