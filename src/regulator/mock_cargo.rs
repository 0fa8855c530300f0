//! The transportControl mock's shareGoodsRecord (reference §4.1), for profiles with `[cargo]`:
//! every field present, aliases agreeing, the serial of a driving record the mock accepted, a
//! positive amount in the profile's unit. Kept apart from [`super::mock`] so the pass and photo
//! checks there stay as they are.

use super::mock::Inner;
use super::mock_kaifeng::{check_time, in_table};
use serde_json::{Map, Value};

type Refusal = (&'static str, String);

pub(super) fn share_goods_record(
    g: &mut Inner,
    path: &str,
    op: &str,
    value: &Map<String, Value>,
    organ: &str,
) -> Result<Option<(String, Value)>, Refusal> {
    let p = g.profile.clone();
    let Some(c) = p.cargo.as_ref() else {
        return Err(("400", format!("unknown operation `{op}`")));
    };
    if path != c.path {
        return Err(("404", format!("{op} is not served at {path}")));
    }
    let mut vals = std::collections::HashMap::new();
    for (k, names) in &c.fields {
        let mut first: Option<&str> = None;
        for n in names {
            let v = match value.get(n) {
                Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
                Some(_) => {
                    return Err(("400", format!("{op}: field `{n}` is empty or not a string")))
                }
                None => return Err(("400", format!("{op}: missing field `{n}`"))),
            };
            if first.is_some_and(|f| f != v) {
                return Err(("400", format!("{op}: aliases of `{k}` disagree")));
            }
            first = Some(v);
        }
        if let Some(v) = first {
            vals.insert(k.as_str(), v.to_string());
        }
    }
    let serial = vals.get("serial").cloned().unwrap_or_default();
    if !g.serials.contains(&serial) {
        return Err((
            "400",
            format!("{op}: no driving record with serial `{serial}`"),
        ));
    }
    if let Some(e) = vals.get("enterprise") {
        if e != organ {
            return Err((
                "400",
                format!("{op}: enterprise `{e}` is not the organ `{organ}`"),
            ));
        }
    }
    if let Some(col) = vals.get("plate_color") {
        in_table(col, &p.codes.plate_color, "plate_color", op)?;
    }
    if let Some(t) = vals.get("time") {
        check_time(&p, t, op)?;
    }
    if let Some(a) = vals.get("amount") {
        if a.parse::<f64>()
            .map_or(true, |x| x <= 0.0 || !x.is_finite())
        {
            return Err((
                "400",
                format!("{op}: amount `{a}` is not a positive number"),
            ));
        }
    }
    if let Some(u) = vals.get("unit") {
        if *u != c.unit {
            return Err(("400", format!("{op}: unit `{u}` is not `{}`", c.unit)));
        }
    }
    g.stats.cargo.push(Value::Object(value.clone()));
    Ok(None)
}
