//! CSV export: a node's children, or the overview tables in long format.

use std::fmt::Write as _;

use rdla_attrib::{Expansion, Overview};

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The one CSV export of a computation, for the CLI's `--csv` and the window's *Export CSV…*:
/// a node's children (`node`), or the overview tables.
pub fn export(computed: &crate::Computed, node: Option<&Expansion>) -> String {
    match node {
        Some(ex) => expansion_csv(ex),
        None => overview_csv(&computed.overview),
    }
}

/// `step,value` for every child, then the bias and the residual rows; a score node's table
/// cells as `q:{row}×k:{col}` steps; an MLP's listed neurons; the vocabulary readout as
/// `token+:{text}` / `token-:{text}` rows.
pub fn expansion_csv(ex: &Expansion) -> String {
    let mut out = String::from("path,step,value\n");
    let p = quote(&ex.path.to_string());
    for c in &ex.children {
        let _ = writeln!(out, "{p},{},{}", quote(&c.step.to_string()), c.value);
    }
    let _ = writeln!(out, "{p},bias,{}", ex.bias);
    let _ = writeln!(out, "{p},(residual),{}", ex.residual);
    let _ = writeln!(out, "{p},(value),{}", ex.value);
    if let Some(t) = &ex.table {
        for (row, vals) in t.rows.iter().zip(&t.values) {
            for (col, v) in t.cols.iter().zip(vals) {
                let _ = writeln!(out, "{p},{},{v}", quote(&format!("q:{row}×k:{col}")));
            }
        }
    }
    for n in ex.neurons.iter().flatten() {
        let _ = writeln!(out, "{p},{},{}", n.step, n.value);
    }
    if let Some(t) = &ex.tokens {
        for (sign, list) in [("+", &t.up), ("-", &t.down)] {
            for tv in list {
                let _ = writeln!(
                    out,
                    "{p},{},{}",
                    quote(&format!("token{sign}:{}", tv.token)),
                    tv.value
                );
            }
        }
    }
    out
}

/// All overview tables: `table,layer,head,src_pos,src_comp,value` (empty where n/a).
pub fn overview_csv(ov: &Overview) -> String {
    let labels = ov.layout.labels();
    let mut out = String::from("table,layer,head,src_pos,src_comp,value\n");
    let _ = writeln!(out, "target,,,,,{}", ov.target_value);
    for (c, v) in ov.components.data.iter().enumerate() {
        let _ = writeln!(
            out,
            "components,,,,{},{v}",
            labels.get(c).map_or("", String::as_str)
        );
    }
    let (l_n, h_n) = (ov.head_dla.shape[0], ov.head_dla.shape[1]);
    let (p_n, c_n) = (ov.head_breakdown.shape[2], ov.head_breakdown.shape[3]);
    for l in 0..l_n {
        let _ = writeln!(out, "attn_bias,{l},,,,{}", ov.attn_bias.data[l]);
        for h in 0..h_n {
            let _ = writeln!(out, "head_dla,{l},{h},,,{}", ov.head_dla.at(&[l, h]));
        }
    }
    for l in 0..l_n {
        for h in 0..h_n {
            for p in 0..p_n {
                for c in 0..ov.layout.pre(l).min(c_n) {
                    let _ = writeln!(
                        out,
                        "head_breakdown,{l},{h},{p},{},{}",
                        labels.get(c).map_or("", String::as_str),
                        ov.head_breakdown.at(&[l, h, p, c])
                    );
                }
            }
        }
    }
    for l in 0..l_n {
        for c in 0..ov.layout.mid(l).min(c_n) {
            let _ = writeln!(
                out,
                "mlp_breakdown,{l},,,{},{}",
                labels.get(c).map_or("", String::as_str),
                ov.mlp_breakdown.at(&[l, c])
            );
        }
        let _ = writeln!(out, "mlp_bias,{l},,,,{}", ov.mlp_bias.data[l]);
    }
    out
}
