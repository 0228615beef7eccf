//! Open Inference Protocol (KServe v2, Triton) answers: `outputs[]` tensors.
//!
//! Outputs are matched by name (by position when the rules ignore `/outputs/*/name`, i.e. the
//! candidate renamed its outputs). Each tensor's `data` is flat and row-major (nested arrays are
//! flattened too) and must have as many elements as its `shape` says; when it does not, the output
//! is compared as generic JSON and the mismatch is noted, since reshaping would be guesswork.
//!
//! How a tensor compares depends on what it holds:
//! - `FP*`/`BF16` with shape `[rows, classes]`, classes >= 2: classification scores. Each row's
//!   argmax is a label; agreeing rows and flips are counted and a flip is a difference whatever
//!   the tolerance. Every element also compares numerically.
//! - Other floating-point tensors: numeric, element by element, with tolerance.
//! - `INT*`, `UINT*`, `BOOL`, `BYTES` (and unknown datatypes with non-numeric data): labels,
//!   compared exactly; each differing element is a flip.
//!
//! Absolute error statistics cover floating-point tensors only: the distance between two class ids
//! means nothing. Ignore patterns apply down to an output's fields (`/outputs/*/data`), not to
//! single tensor elements.
use serde_json::json;

use super::{
    PredictionMetrics,
    json::{Json, Object},
    json_diff::{Collector, NumberOutcome, diff_fields, diff_values, exact_eq},
};

/// Compares two OIP answers (both known to have an `outputs` array).
pub(crate) fn compare(c: &mut Collector<'_>, a: &Object<'_>, b: &Object<'_>, m: &mut PredictionMetrics) {
    diff_fields(c, a, b, &["outputs"]);
    let empty = Vec::new();
    let xs = a.get("outputs").and_then(Json::as_array).unwrap_or(&empty);
    let Some(ys) = b.get("outputs").and_then(Json::as_array) else {
        c.at("outputs", |c| {
            diff_values(c, a.get("outputs").unwrap_or(&Json::Null), b.get("outputs").unwrap_or(&Json::Null))
        });
        return;
    };
    c.at("outputs", |c| {
        if c.ignored() {
            return;
        }
        let by_position = c.at("0", |c| c.at("name", |c| c.ignored()));
        let pairs = pair(xs, ys, by_position);
        for (i, j) in pairs {
            match (i, j) {
                (Some(i), Some(j)) => {
                    let label = name(&xs[i]).unwrap_or("?");
                    c.at(i.to_string(), |c| output(c, label, &xs[i], &ys[j], m))
                }
                (Some(i), None) => c.at(i.to_string(), |c| {
                    if !c.ignored() {
                        c.record(&xs[i], &Json::Null)
                    }
                }),
                (None, Some(j)) => c.at(j.to_string(), |c| {
                    if !c.ignored() {
                        c.record(&Json::Null, &ys[j])
                    }
                }),
                (None, None) => {}
            }
        }
    });
}

fn name<'v>(output: &'v Json<'_>) -> Option<&'v str> {
    output.get("name").and_then(Json::as_str)
}

/// Pairs production outputs with shadow outputs: by name, or by position.
fn pair(xs: &[Json<'_>], ys: &[Json<'_>], by_position: bool) -> Vec<(Option<usize>, Option<usize>)> {
    let mut used = vec![false; ys.len()];
    let mut pairs = Vec::with_capacity(xs.len().max(ys.len()));
    for (i, x) in xs.iter().enumerate() {
        let j = if by_position {
            (i < ys.len()).then_some(i)
        } else {
            match name(x) {
                Some(n) => (0..ys.len()).find(|&j| !used[j] && name(&ys[j]) == Some(n)),
                None => (i < ys.len() && !used[i] && name(&ys[i]).is_none()).then_some(i),
            }
        };
        if let Some(j) = j {
            used[j] = true;
        }
        pairs.push((Some(i), j));
    }
    pairs.extend(used.iter().enumerate().filter(|(_, u)| !**u).map(|(j, _)| (None, Some(j))));
    pairs
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Scores { classes: usize },
    Numeric,
    Labels,
}

fn kind(datatype: &str, shape: &[usize], data: &[&Json<'_>]) -> Kind {
    let mut upper = datatype.to_ascii_uppercase();
    // TensorFlow names (`DT_FLOAT`), from TF Serving answers, read as their OIP counterparts.
    if let Some(oip) = super::tensor::oip_datatype(&upper) {
        upper = oip.to_string();
    }
    let float = upper.starts_with("FP") || upper == "BF16";
    if float {
        match shape {
            [_, classes] if *classes >= 2 => Kind::Scores { classes: *classes },
            _ => Kind::Numeric,
        }
    } else if upper.starts_with("INT") || upper.starts_with("UINT") || upper == "BOOL" || upper == "BYTES" {
        Kind::Labels
    } else if data.iter().all(|v| v.is_number()) {
        Kind::Numeric
    } else {
        Kind::Labels
    }
}

fn shape_of(output: &Json<'_>) -> Option<Vec<usize>> {
    output
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect()
}

fn flatten<'v>(value: &'v Json<'v>, out: &mut Vec<&'v Json<'v>>) {
    match value {
        Json::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// Compares two answers whose outputs are an object of tensors keyed by name (TF Serving's
/// `PredictResponse` in the shape of [`super::tensor::predict_response`]), each pair of tensors as
/// an OIP output.
pub(crate) fn compare_tensor_map(
    c: &mut Collector<'_>,
    a: &Object<'_>,
    b: &Object<'_>,
    m: &mut PredictionMetrics,
) {
    diff_fields(c, a, b, &["outputs"]);
    let (Some(xs), Some(ys)) =
        (a.get("outputs").and_then(Json::as_object), b.get("outputs").and_then(Json::as_object))
    else {
        let (x, y) = (a.get("outputs").unwrap_or(&Json::Null), b.get("outputs").unwrap_or(&Json::Null));
        return c.at("outputs", |c| diff_values(c, x, y));
    };
    c.at("outputs", |c| {
        if c.ignored() {
            return;
        }
        for (key, x) in xs.iter() {
            c.at(key, |c| match ys.get(key) {
                Some(y) => output(c, key, x, y, m),
                None if !c.ignored() => c.record(x, &Json::Null),
                None => {}
            });
        }
        for (key, y) in ys.iter() {
            if !xs.contains_key(key) {
                c.at(key, |c| {
                    if !c.ignored() {
                        c.record(&Json::Null, y)
                    }
                });
            }
        }
    });
}

/// Compares one pair of outputs at the current location (`/outputs/{i}`); `label` names the output
/// in notes.
fn output(c: &mut Collector<'_>, label: &str, x: &Json<'_>, y: &Json<'_>, m: &mut PredictionMetrics) {
    if c.ignored() {
        return;
    }
    let (Some(xo), Some(yo)) = (x.as_object(), y.as_object()) else {
        return diff_values(c, x, y);
    };
    diff_fields(c, xo, yo, &["shape", "datatype", "data"]);
    // Shape and datatype compare exactly: a tolerance on a dimension makes no sense.
    for field in ["shape", "datatype"] {
        let (a, b) = (xo.get(field).unwrap_or(&Json::Null), yo.get(field).unwrap_or(&Json::Null));
        c.at(field, |c| {
            if !c.ignored() && !exact_eq(a, b) {
                c.record(a, b);
            }
        });
    }
    let (xd, yd) = (xo.get("data").unwrap_or(&Json::Null), yo.get("data").unwrap_or(&Json::Null));
    c.at("data", |c| {
        if c.ignored() {
            return;
        }
        let (Some(xs), Some(ys)) = (shape_of(x), shape_of(y)) else {
            c.note(format!("output {label}: shape is not a list of dimensions"));
            return diff_values(c, xd, yd);
        };
        if xs != ys || !xd.is_array() || !yd.is_array() {
            // The shape difference is already recorded; element-wise errors would be noise.
            return diff_values(c, xd, yd);
        }
        let (mut xf, mut yf) = (Vec::new(), Vec::new());
        flatten(xd, &mut xf);
        flatten(yd, &mut yf);
        let expected = xs.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        for (side, len) in [("production", xf.len()), ("shadow", yf.len())] {
            if expected != Some(len) {
                c.note(format!("output {label}: shape {xs:?} does not match {len} data elements on {side}"));
                return diff_values(c, xd, yd);
            }
        }
        let datatype = xo.get("datatype").and_then(Json::as_str).unwrap_or("");
        let kind = kind(datatype, &xs, &xf);
        m.rows = m.rows.max(xs.first().map_or(1, |&d| d as u64));
        tensor(c, kind, &xf, &yf, m);
    });
}

/// Compares two flattened tensors of the same shape at the current location (`.../data`).
fn tensor(c: &mut Collector<'_>, kind: Kind, xs: &[&Json<'_>], ys: &[&Json<'_>], m: &mut PredictionMetrics) {
    // Elements are not matched against ignore patterns (those stop at `.../data`), so a location
    // is only built for an element that differs.
    let classes = match kind {
        Kind::Scores { classes } => classes,
        _ => 1,
    };
    let mut differing_rows = if matches!(kind, Kind::Scores { .. }) {
        vec![false; xs.len().div_ceil(classes.max(1))]
    } else {
        Vec::new()
    };
    for (k, (a, b)) in xs.iter().zip(ys).enumerate() {
        let equal = match (kind, a, b) {
            (Kind::Labels, a, b) => {
                let equal = exact_eq(a, b);
                if equal {
                    m.label_agreements += 1;
                } else {
                    m.label_flips += 1;
                    c.at(k.to_string(), |c| c.record(a, b));
                }
                equal
            }
            (_, Json::Number(x), Json::Number(y)) => match c.number_outcome(x, y, true) {
                NumberOutcome::Equal => true,
                NumberOutcome::WithinTolerance => false,
                NumberOutcome::Beyond => {
                    c.at(k.to_string(), |c| c.record(a, b));
                    false
                }
            },
            (_, a, b) => {
                let equal = exact_eq(a, b);
                if !equal {
                    c.at(k.to_string(), |c| c.record(a, b));
                }
                equal
            }
        };
        if !equal && let Some(row) = differing_rows.get_mut(k / classes.max(1)) {
            *row = true;
        }
    }
    if let Kind::Scores { classes } = kind {
        for (row, (xr, yr)) in xs.chunks(classes).zip(ys.chunks(classes)).enumerate() {
            // Equal rows have equal argmaxes: only rows that differ need their scores as f64.
            if !differing_rows.get(row).copied().unwrap_or(true) {
                if xr.iter().all(|v| v.is_number()) {
                    m.label_agreements += 1;
                }
                continue;
            }
            let (Some(xl), Some(yl)) = (argmax(xr), argmax(yr)) else { continue };
            if xl == yl {
                m.label_agreements += 1;
            } else {
                m.label_flips += 1;
                c.record(
                    &Json::from(json!({"row": row, "label": xl})),
                    &Json::from(json!({"row": row, "label": yl})),
                );
            }
        }
    }
}

/// Index of the largest score (first on ties); `None` when a score is not a number.
pub(crate) fn argmax(row: &[&Json<'_>]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in row.iter().enumerate() {
        let x = v.as_f64()?;
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        let row = [json!(0.1), json!(0.7), json!(0.7)].map(Json::from);
        assert_eq!(argmax(&row.iter().collect::<Vec<_>>()), Some(1));
        assert_eq!(argmax(&[]), None);
        let bad = [json!(0.1), json!("x")].map(Json::from);
        assert_eq!(argmax(&bad.iter().collect::<Vec<_>>()), None);
    }

    #[test]
    fn kinds_follow_datatype_and_shape() {
        assert_eq!(kind("FP32", &[2, 3], &[]), Kind::Scores { classes: 3 });
        assert_eq!(kind("FP32", &[2, 1], &[]), Kind::Numeric);
        assert_eq!(kind("fp16", &[4], &[]), Kind::Numeric);
        assert_eq!(kind("INT64", &[4], &[]), Kind::Labels);
        assert_eq!(kind("BYTES", &[1], &[]), Kind::Labels);
        let nums = [json!(1)].map(Json::from);
        assert_eq!(kind("", &[1], &nums.iter().collect::<Vec<_>>()), Kind::Numeric);
    }

    #[test]
    fn outputs_pair_by_name_then_leftovers() {
        let xs = [json!({"name": "a"}), json!({"name": "b"})].map(Json::from);
        let ys = [json!({"name": "b"}), json!({"name": "c"})].map(Json::from);
        assert_eq!(pair(&xs, &ys, false), vec![(Some(0), None), (Some(1), Some(0)), (None, Some(1))]);
        assert_eq!(pair(&xs, &ys, true), vec![(Some(0), Some(0)), (Some(1), Some(1))]);
    }
}
