//! `rdla census`: one attribution per prompt of a file, written as Parquet tables (docs/
//! DESIGN.md §3.3): `prompts.parquet` (one row per prompt), `nodes.parquet` (one row per
//! prompt and node: the root's children, every head and attention bias, and with depth 2
//! every head's children summed over source positions) and `summary.parquet` (per node:
//! mean, sample standard deviation, 95 % interval, mean |value|, and how often the node is
//! among its siblings' ten largest). Rows are written a row group at a time, so memory does
//! not grow with the number of prompts; `merge` joins shards into what one run would write.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdla_attrib::{Comp, HeadTotals, MlpMode, Path as NodePath, Step};

use crate::Heatmap;
use crate::error::{Result, SessionError};
use crate::session::{Request, Session, Totals};
use crate::view::{LayerCell, layer_grid};

/// Prompts per row group (and per flush).
const ROW_GROUP: usize = 256;

/// One record of the prompts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number in the file (0-based; what `--shard` and `prompt_index` use).
    pub index: usize,
    /// Where it is, for messages: `line 12` (JSONL) or `row 12` (CSV, the header is row 0).
    pub place: String,
    pub prompt: String,
    pub answer: String,
    pub foil: Option<String>,
}

fn bad(path: &Path, place: &str, why: impl std::fmt::Display) -> SessionError {
    SessionError::Census(format!("{}: {place}: {why}", path.display()))
}

/// The records of a JSONL (`{"prompt", "answer", "foil"?}` per line), CSV (a header naming
/// `prompt`, `answer` and optionally `foil`) or Parquet (utf8 columns of those names) file, by
/// its extension. A malformed record is an error naming its line or row.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "json" | "ndjson" => read_jsonl(path),
        "csv" => read_csv(path),
        "parquet" => read_parquet(path),
        other => Err(SessionError::Census(format!(
            "{}: unknown prompts format `.{other}` (use .jsonl, .csv or .parquet)",
            path.display()
        ))),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SessionError + '_ {
    move |error| SessionError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let place = format!("line {}", i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(path, &place, e))?;
        let field = |k: &str, required: bool| -> Result<Option<String>> {
            match v.get(k) {
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                None | Some(serde_json::Value::Null) if !required => Ok(None),
                None => Err(bad(path, &place, format!("no `{k}`"))),
                Some(other) => Err(bad(path, &place, format!("`{k}` is not a string: {other}"))),
            }
        };
        if !v.is_object() {
            return Err(bad(path, &place, "not a JSON object"));
        }
        out.push(Record {
            index: out.len(),
            prompt: field("prompt", true)?.unwrap_or_default(),
            answer: field("answer", true)?.unwrap_or_default(),
            foil: field("foil", false)?.filter(|f| !f.is_empty()),
            place,
        });
    }
    Ok(out)
}

fn read_csv(path: &Path) -> Result<Vec<Record>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| bad(path, "header", e))?;
    let headers = r.headers().map_err(|e| bad(path, "header", e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(p), Some(a)) = (col("prompt"), col("answer")) else {
        return Err(bad(path, "header", "needs `prompt` and `answer` columns"));
    };
    let f = col("foil");
    let mut out = Vec::new();
    for (i, row) in r.records().enumerate() {
        let place = format!("row {}", i + 1);
        let row = row.map_err(|e| bad(path, &place, e))?;
        let get = |c: usize| row.get(c).map(str::to_string);
        out.push(Record {
            index: out.len(),
            prompt: get(p).ok_or_else(|| bad(path, &place, "no prompt"))?,
            answer: get(a).ok_or_else(|| bad(path, &place, "no answer"))?,
            foil: f.and_then(get).filter(|s| !s.is_empty()),
            place,
        });
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for b in read_table(path)? {
        let text = |name: &str, required: bool| -> Result<Option<&StringArray>> {
            match b.column_by_name(name) {
                None if !required => Ok(None),
                None => Err(bad(path, "schema", format!("no `{name}` column"))),
                Some(c) => c
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .map(Some)
                    .ok_or_else(|| bad(path, "schema", format!("`{name}` is not a utf8 column"))),
            }
        };
        let (p, a, f) = (
            text("prompt", true)?,
            text("answer", true)?,
            text("foil", false)?,
        );
        let (Some(p), Some(a)) = (p, a) else {
            continue;
        };
        for r in 0..b.num_rows() {
            use arrow_array::Array as _;
            let place = format!("row {}", out.len() + 1);
            if p.is_null(r) || a.is_null(r) {
                return Err(bad(path, &place, "a null prompt or answer"));
            }
            out.push(Record {
                index: out.len(),
                prompt: p.value(r).to_string(),
                answer: a.value(r).to_string(),
                foil: f
                    .filter(|f| !f.is_null(r))
                    .map(|f| f.value(r).to_string())
                    .filter(|s| !s.is_empty()),
                place,
            });
        }
    }
    Ok(out)
}

/// What a census computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CensusOptions {
    /// 1: the root's children, heads and attention biases; 2: also every head's children
    /// summed over source positions.
    pub depth: u8,
    /// `(i, n)`: the records whose index is `i` modulo `n`.
    pub shard: (usize, usize),
    /// Skip records whose answer or foil is not one token (listed at the end) instead of
    /// refusing the file.
    pub skip_bad: bool,
    pub bos: bool,
    pub mlp_mode: MlpMode,
}

/// What a census did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CensusDone {
    pub prompts: usize,
    /// The records of this shard that passed the checks (what `prompts` counts towards).
    pub todo: usize,
    /// Records skipped (with `skip_bad`) and why.
    pub skipped: Vec<(Record, String)>,
    /// Nodes per prompt.
    pub nodes: usize,
    pub times: CensusTimes,
}

/// The census tables' files in `out`.
pub const FILES: [&str; 3] = ["prompts.parquet", "nodes.parquet", "summary.parquet"];

fn prompts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::UInt32, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("foil", DataType::Utf8, true),
        Field::new("n_tokens", DataType::UInt32, false),
        Field::new("answer_id", DataType::UInt32, false),
        Field::new("foil_id", DataType::UInt32, true),
        Field::new("target_value", DataType::Float32, false),
        Field::new("prob", DataType::Float32, false),
    ]))
}

fn nodes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("value", DataType::Float32, false),
    ]))
}

fn summary_schema() -> SchemaRef {
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("n", DataType::UInt32, false),
        f("mean"),
        f("std"),
        f("ci95_low"),
        f("ci95_high"),
        f("mean_abs"),
        f("top10_frac"),
    ]))
}

fn pq(e: impl std::fmt::Display) -> SessionError {
    SessionError::Census(format!("writing Parquet: {e}"))
}

/// The nodes a census keeps of a prompt, in their natural order (root children, then per
/// layer its attention bias and heads, each head followed by its summed sources and bias):
/// `visit(path, value)` for each, the path only with `paths` (built once per census).
fn visit_nodes(t: &HeadTotals, paths: bool, visit: &mut dyn FnMut(Option<String>, f32)) {
    let lay = t.layout;
    let labels = lay.labels();
    let name = |f: &dyn Fn() -> String| paths.then(f);
    for (label, &v) in labels.iter().zip(&t.components.data) {
        visit(name(&|| label.clone()), v);
    }
    let (l_n, h_n) = (t.head_dla.shape[0], t.head_dla.shape[1]);
    for l in 0..l_n {
        let attn = NodePath::root().child(Step::Comp(Comp::Attn(l)));
        visit(
            name(&|| attn.child(Step::Bias).to_string()),
            t.attn_bias.data[l],
        );
        for h in 0..h_n {
            let head = attn.child(Step::Head(h));
            visit(name(&|| head.to_string()), t.head_dla.at(&[l, h]));
            if let Some(src) = &t.head_sources {
                // the head's children summed over source positions: the components upstream
                // of layer l, and the head's own bias
                let c_n = src.shape[2];
                for (c, label) in labels.iter().enumerate().take(lay.pre(l).min(c_n)) {
                    visit(name(&|| format!("{head}/*:{label}")), src.at(&[l, h, c]));
                }
                visit(name(&|| format!("{head}/bias")), t.head_bias.at(&[l, h]));
            }
        }
    }
}

/// The nodes of a prompt: paths sorted (the order of the rows), shared by every prompt of
/// the same shape, and the prompt's values in that order.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub paths: Arc<[String]>,
    pub values: Vec<f32>,
}

/// The sorted paths of one shape of [`HeadTotals`] and where each comes from in the natural
/// order: built once per census, not per prompt.
#[derive(Debug, Default)]
struct NodeOrder {
    /// `(components, layers, heads, sources)` of the shape it was built for.
    shape: Option<(usize, usize, usize, bool)>,
    paths: Option<Arc<[String]>>,
    from: Vec<usize>,
}

impl NodeOrder {
    fn nodes(&mut self, t: &HeadTotals) -> Nodes {
        let shape = (
            t.components.data.len(),
            t.head_dla.shape[0],
            t.head_dla.shape.get(1).copied().unwrap_or(0),
            t.head_sources.is_some(),
        );
        let known = self.paths.clone().filter(|_| self.shape == Some(shape));
        let (mut names, mut natural) = (Vec::new(), Vec::new());
        visit_nodes(t, known.is_none(), &mut |path, v| {
            names.extend(path);
            natural.push(v);
        });
        let paths = match known {
            Some(p) => p,
            None => {
                let mut from: Vec<usize> = (0..names.len()).collect();
                from.sort_by(|&a, &b| names[a].cmp(&names[b]));
                let sorted: Arc<[String]> = from.iter().map(|&i| names[i].clone()).collect();
                (self.shape, self.from) = (Some(shape), from);
                self.paths = Some(sorted.clone());
                sorted
            }
        };
        let values = self.from.iter().map(|&i| natural[i]).collect();
        Nodes { paths, values }
    }
}

/// A node's parent path (its siblings share it).
fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Per-node statistics over prompts, accumulated a prompt at a time (Welford, in f64).
#[derive(Debug, Default)]
struct Summary {
    paths: Arc<[String]>,
    /// Sibling groups: indices into `paths` sharing a parent.
    groups: Vec<Vec<usize>>,
    n: u32,
    mean: Vec<f64>,
    m2: Vec<f64>,
    abs: Vec<f64>,
    top10: Vec<u32>,
}

impl Summary {
    fn add(&mut self, nodes: &Nodes) -> Result<()> {
        if self.n == 0 {
            self.paths = nodes.paths.clone();
            let k = self.paths.len();
            (self.mean, self.m2, self.abs, self.top10) =
                (vec![0.0; k], vec![0.0; k], vec![0.0; k], vec![0; k]);
            let mut by_parent: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
            for (i, p) in self.paths.iter().enumerate() {
                by_parent.entry(parent(p)).or_default().push(i);
            }
            self.groups = by_parent.into_values().collect();
        } else if !Arc::ptr_eq(&nodes.paths, &self.paths) && nodes.paths[..] != self.paths[..] {
            return Err(SessionError::Census(
                "the prompts do not have the same nodes (a different model or depth?)".into(),
            ));
        }
        self.n += 1;
        let n = f64::from(self.n);
        let values = &nodes.values;
        for (i, v) in values.iter().enumerate() {
            let v = f64::from(*v);
            let d = v - self.mean[i];
            self.mean[i] += d / n;
            self.m2[i] += d * (v - self.mean[i]);
            self.abs[i] += v.abs();
        }
        for g in &self.groups {
            let mut idx = g.clone();
            idx.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
            for &i in idx.iter().take(10) {
                self.top10[i] += 1;
            }
        }
        Ok(())
    }

    /// Each node's statistics, in path order.
    fn stats(&self) -> Vec<NodeStats> {
        let n = f64::from(self.n);
        self.paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let std = if self.n > 1 {
                    (self.m2[i] / (n - 1.0)).sqrt()
                } else {
                    f64::NAN
                };
                let half = 1.96 * std / n.sqrt();
                NodeStats {
                    path: path.clone(),
                    n: self.n,
                    mean: self.mean[i],
                    std,
                    ci95_low: self.mean[i] - half,
                    ci95_high: self.mean[i] + half,
                    mean_abs: self.abs[i] / n,
                    top10_frac: f64::from(self.top10[i]) / n,
                }
            })
            .collect()
    }

    fn write(&self, file: &Path) -> Result<()> {
        let st = self.stats();
        let col = |f: fn(&NodeStats) -> f64| {
            Arc::new(Float64Array::from(st.iter().map(f).collect::<Vec<_>>())) as ArrayRef
        };
        let batch = RecordBatch::try_new(
            summary_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(self.paths.iter())) as ArrayRef,
                Arc::new(UInt32Array::from(vec![self.n; self.paths.len()])) as ArrayRef,
                col(|s| s.mean),
                col(|s| s.std),
                col(|s| s.ci95_low),
                col(|s| s.ci95_high),
                col(|s| s.mean_abs),
                col(|s| s.top10_frac),
            ],
        )
        .map_err(pq)?;
        let mut w = ArrowWriter::try_new(create(file)?, summary_schema(), None).map_err(pq)?;
        w.write(&batch).map_err(pq)?;
        w.close().map_err(pq)?;
        Ok(())
    }
}

/// One node's statistics over a census's prompts (a row of `summary.parquet`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStats {
    pub path: String,
    pub n: u32,
    pub mean: f64,
    /// Sample standard deviation (NaN for one prompt).
    pub std: f64,
    /// The 95 % interval of the mean, `mean ± 1.96·std/√n`.
    pub ci95_low: f64,
    pub ci95_high: f64,
    pub mean_abs: f64,
    /// How often the node is among its siblings' ten largest |values|.
    pub top10_frac: f64,
}

fn create(file: &Path) -> Result<File> {
    File::create_new(file).map_err(io(file))
}

/// `out` must be new or empty (a census never writes over files), and outside the model.
fn prepare_out(out: &Path, protected: &[PathBuf]) -> Result<()> {
    crate::output::check_outside(out, protected)?;
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SessionError::Census(format!(
                    "--out {}: the folder is not empty; a census writes {} there and never \
                     writes over files",
                    out.display(),
                    FILES.join(", ")
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(io(out))?;
        }
        Err(e) => return Err(io(out)(e)),
    }
    Ok(())
}

/// One row of `prompts.parquet`: a prompt, its target and the answer's probability.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    /// The record's number in the file.
    pub index: u32,
    pub prompt: String,
    pub answer: String,
    pub foil: Option<String>,
    pub n_tokens: u32,
    pub answer_id: u32,
    pub foil_id: Option<u32>,
    pub target_value: f32,
    pub prob: f32,
}

/// Rows waiting for the next row group.
#[derive(Debug, Default)]
struct Rows {
    prompts: Vec<PromptRow>,
    /// Each prompt's index and nodes.
    nodes: Vec<(u32, Nodes)>,
}

impl Rows {
    fn flush(&mut self, pw: &mut ArrowWriter<File>, nw: &mut ArrowWriter<File>) -> Result<()> {
        if self.prompts.is_empty() {
            return Ok(());
        }
        let p = std::mem::take(&mut self.prompts);
        let batch = RecordBatch::try_new(
            prompts_schema(),
            vec![
                Arc::new(UInt32Array::from(
                    p.iter().map(|r| r.index).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(StringArray::from(
                    p.iter().map(|r| r.prompt.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    p.iter().map(|r| r.answer.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    p.iter().map(|r| r.foil.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(
                    p.iter().map(|r| r.n_tokens).collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(
                    p.iter().map(|r| r.answer_id).collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(
                    p.iter().map(|r| r.foil_id).collect::<Vec<_>>(),
                )),
                Arc::new(Float32Array::from(
                    p.iter().map(|r| r.target_value).collect::<Vec<_>>(),
                )),
                Arc::new(Float32Array::from(
                    p.iter().map(|r| r.prob).collect::<Vec<_>>(),
                )),
            ],
        )
        .map_err(pq)?;
        pw.write(&batch).map_err(pq)?;
        pw.flush().map_err(pq)?;
        let nodes = std::mem::take(&mut self.nodes);
        nw.write(&nodes_batch(&nodes)?).map_err(pq)?;
        nw.flush().map_err(pq)?;
        Ok(())
    }
}

/// The rows of `nodes.parquet` for prompts `(index, nodes)`: a row per prompt and node.
fn nodes_batch(nodes: &[(u32, Nodes)]) -> Result<RecordBatch> {
    let rows = |n: &Nodes| n.values.len();
    let idx: Vec<u32> = nodes
        .iter()
        .flat_map(|(i, n)| std::iter::repeat_n(*i, rows(n)))
        .collect();
    let paths = StringArray::from_iter_values(nodes.iter().flat_map(|(_, n)| n.paths.iter()));
    let values: Vec<f32> = nodes
        .iter()
        .flat_map(|(_, n)| n.values.iter().copied())
        .collect();
    RecordBatch::try_new(
        nodes_schema(),
        vec![
            Arc::new(UInt32Array::from(idx)) as ArrayRef,
            Arc::new(paths),
            Arc::new(Float32Array::from(values)),
        ],
    )
    .map_err(pq)
}

/// Records that could not be attributed, with why.
pub type Skipped = Vec<(Record, String)>;

/// The records of shard `opts.shard` that can be attributed, and (with `skip_bad`) those that
/// cannot, with why. Every record is checked (its prompt tokenizes within the context, its
/// answer and foil are one token each); without `skip_bad` a bad one is an error naming its
/// line.
pub fn check_records(
    session: &Session,
    records: &[Record],
    opts: &CensusOptions,
) -> Result<(Vec<Record>, Skipped)> {
    let (i, n) = opts.shard;
    if n == 0 || i >= n {
        return Err(SessionError::Census(format!(
            "--shard {i}/{n}: needs 0 ≤ I < N"
        )));
    }
    let mut todo = Vec::new();
    let mut skipped = Vec::new();
    for r in records.iter().filter(|r| r.index % n == i) {
        match session.check_request(&request(r, opts)) {
            Ok(()) => todo.push(r.clone()),
            Err(e) if opts.skip_bad => skipped.push((r.clone(), e.to_string())),
            Err(e) => {
                return Err(SessionError::Census(format!(
                    "{}: {e} (nothing was written; --skip-bad skips such records)",
                    r.place
                )));
            }
        }
    }
    Ok((todo, skipped))
}

fn request(r: &Record, opts: &CensusOptions) -> Request {
    Request {
        prompt: r.prompt.clone(),
        answer: r.answer.clone(),
        answer_id: None,
        foil: r.foil.clone(),
        bos: opts.bos,
        mlp_mode: opts.mlp_mode,
    }
}

/// Where a census's time went, in milliseconds: the forward passes and the attributions (the
/// overview of each prompt) as the threads computing them spent it (`at_once` batches at a
/// time, so these add up to about `at_once` times `computing_ms`), the time the prompts were
/// being computed, and everything (with the node tables and the writing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CensusTimes {
    pub forward_ms: f64,
    pub attribution_ms: f64,
    pub computing_ms: f64,
    pub total_ms: f64,
    pub at_once: usize,
}

/// How many batches a census computes at once, each on a thread of its own: as many as
/// there are threads to multiply matrices on a CPU (a forward pass leaves a core idle through
/// each of its many small operations: two batches fill each other's gaps), one on a GPU.
/// Each group of batches must also fit the memory budget together ([`Model::batches_fit`]),
/// else they go one at a time.
fn at_once(model: &rdla_model::Model) -> usize {
    if model.on_cpu() {
        rayon::current_num_threads().max(1)
    } else {
        1
    }
}

/// Records taken together: grouped by token count within a window, in batches of at most
/// [`BATCH`] sharing one forward pass, and handed on in file order.
const WINDOW: usize = 256;
/// Prompts per forward pass.
const BATCH: usize = 32;

/// What one record gave: its row, its nodes and its computation's times, or why it failed.
type Outcome = std::result::Result<(PromptRow, Nodes, f64, f64), SessionError>;

/// A prompt's totals as a census row and its nodes.
fn outcome(r: &Record, t: Totals, order: &mut NodeOrder) -> Outcome {
    let row = PromptRow {
        index: r.index as u32,
        prompt: r.prompt.clone(),
        answer: r.answer.clone(),
        foil: r.foil.clone(),
        n_tokens: t.tokens.ids.len() as u32,
        answer_id: t.target.answer(),
        foil_id: t.target.foil(),
        target_value: t.totals.target_value,
        prob: t.prob,
    };
    Ok((row, order.nodes(&t.totals), t.forward_ms, t.attribution_ms))
}

/// `(length, record)` pairs sorted by length, in batches of at most [`BATCH`]: the records of
/// one length in batches of nearly equal sizes (no padding) when there are at least `BATCH / 4` of
/// them, the rest in batches whose lengths differ by at most a quarter of the shortest (at
/// least 2 tokens; the shorter ones padded at their end).
fn batches_by_length(sorted: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut rest: Vec<(usize, usize)> = Vec::new();
    for same in sorted.chunk_by(|a, b| a.0 == b.0) {
        if same.len() < BATCH / 4 {
            rest.extend_from_slice(same);
            continue;
        }
        let k = same.len().div_ceil(BATCH);
        let size = same.len().div_ceil(k);
        out.extend(
            same.chunks(size)
                .map(|c| c.iter().map(|&(_, j)| j).collect()),
        );
    }
    let mut mixed: Vec<Vec<usize>> = Vec::new();
    let mut shortest = 0;
    for &(n, j) in &rest {
        match mixed.last_mut() {
            Some(b) if b.len() < BATCH && n <= shortest + (shortest / 4).max(2) => b.push(j),
            _ => {
                shortest = n;
                mixed.push(vec![j]);
            }
        }
    }
    out.extend(mixed);
    out
}

/// The outcomes of `window`'s records: prompts of equal or similar token counts share
/// forward passes ([`crate::session::totals_of`]); a batch that cannot (a streaming model, a cache
/// that would spill, any failure) is computed one prompt at a time. The batches go in the
/// order of their first record, so the records done make a prefix of the window early on.
/// `go()` between batches; when it returns `false` the rest is not computed (`None`s), and
/// the second value is `true`.
fn compute_window(
    session: &mut Session,
    window: &[Record],
    opts: &CensusOptions,
    order: &mut NodeOrder,
    times: &mut CensusTimes,
    go: &mut dyn FnMut() -> bool,
) -> (Vec<Option<Outcome>>, bool) {
    let mut out: Vec<Option<Outcome>> = (0..window.len()).map(|_| None).collect();
    // by length, then by tokens (prompts of one template together)
    let mut keyed: Vec<(usize, Vec<u32>, usize)> = window
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let ids = session
                .tokenize(&r.prompt, opts.bos)
                .map_or_else(|_| Vec::new(), |t| t.ids);
            (ids.len(), ids, j)
        })
        .collect();
    keyed.sort_unstable();
    let by_len: Vec<(usize, usize)> = keyed.into_iter().map(|(n, _, j)| (n, j)).collect();
    let mut len_of = vec![0; window.len()];
    for &(n, j) in &by_len {
        len_of[j] = n;
    }
    let sources = opts.depth >= 2;
    let mut batches = batches_by_length(&by_len);
    batches.sort_by_key(|b| b.iter().min().copied());
    for group in batches.chunks(times.at_once.max(1)) {
        let t = std::time::Instant::now();
        if !session.model().streams_layers() {
            use rayon::prelude::*;
            let model = session.model();
            let one = |chunk: &Vec<usize>| {
                let reqs: Vec<Request> = chunk.iter().map(|&j| request(&window[j], opts)).collect();
                crate::session::totals_of(model, &reqs, sources)
            };
            // each batch's rows: its prompts times the longest
            let rows: Vec<usize> = group
                .iter()
                .map(|c| c.len() * c.iter().map(|&j| len_of[j]).max().unwrap_or(0))
                .collect();
            let done: Vec<Result<Vec<Totals>>> = if group.len() > 1 && model.batches_fit(&rows) {
                group.par_iter().map(one).collect()
            } else {
                group.iter().map(one).collect()
            };
            for (chunk, totals) in group.iter().zip(done) {
                if let Ok(totals) = totals {
                    for (&j, t) in chunk.iter().zip(totals) {
                        out[j] = Some(outcome(&window[j], t, order));
                    }
                }
            }
        }
        for &j in group.iter().flatten() {
            if out[j].is_none() {
                let r = &window[j];
                out[j] = Some(match session.compute(&request(r, opts)) {
                    Ok(_) => session.totals(sources).and_then(|t| outcome(r, t, order)),
                    Err(f) => Err(f.error),
                });
            }
        }
        times.computing_ms += t.elapsed().as_secs_f64() * 1e3;
        if !go() {
            return (out, true);
        }
    }
    (out, false)
}

/// Attribute each of `todo` (checked by [`check_records`]), handing `sink` each record's row
/// and nodes in file order. Records of equal (or else similar) token counts share forward
/// passes (a window of [`WINDOW`] records at a time, at most [`BATCH`] prompts per pass, the
/// shorter ones of a mixed batch padded at their end); every number is the one a computation
/// of its own gives. A record that fails is skipped and listed with `skip_bad`, an error
/// naming it otherwise. `progress(done, total)` after each record and between batches;
/// returning `false` stops there: the records of a window are handed on in file order once
/// all of them are computed, and after a stop between batches, those computed before the
/// first that is not. The session may be left without a current computation.
pub fn attribute_each(
    session: &mut Session,
    todo: &[Record],
    opts: &CensusOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
    sink: &mut dyn FnMut(PromptRow, Nodes) -> Result<()>,
) -> Result<(Skipped, CensusTimes)> {
    let start = std::time::Instant::now();
    let mut skipped = Vec::new();
    let mut times = CensusTimes {
        at_once: at_once(session.model()),
        ..CensusTimes::default()
    };
    let mut order = NodeOrder::default();
    let mut k = 0;
    // one record at a time where nothing is batched (layers streamed), so a stop comes
    // after the prompt being computed
    let window_len = if session.model().streams_layers() {
        1
    } else {
        WINDOW
    };
    for window in todo.chunks(window_len) {
        // between batches, the progress so far
        let mut go = || progress(k, todo.len());
        let (outcomes, stopped) =
            compute_window(session, window, opts, &mut order, &mut times, &mut go);
        for (r, o) in window.iter().zip(outcomes) {
            let Some(o) = o else {
                // stopped: the records done before the first that is not
                break;
            };
            match o {
                Ok((row, nodes, fwd, attr)) => {
                    times.forward_ms += fwd;
                    times.attribution_ms += attr;
                    sink(row, nodes)?;
                }
                Err(e) if opts.skip_bad => skipped.push((r.clone(), e.to_string())),
                Err(e) => return Err(SessionError::Census(format!("{}: {e}", r.place))),
            }
            k += 1;
            if !stopped && !progress(k, todo.len()) {
                times.total_ms = start.elapsed().as_secs_f64() * 1e3;
                return Ok((skipped, times));
            }
        }
        if stopped {
            progress(k, todo.len());
            times.total_ms = start.elapsed().as_secs_f64() * 1e3;
            return Ok((skipped, times));
        }
    }
    times.total_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((skipped, times))
}

/// Attribute every record of shard `opts.shard` and write the tables to `out` (new or
/// empty). Every record is checked first: a bad one is an error naming its line and nothing
/// is written, unless `skip_bad` (then it is listed in the result). `progress(done, total)`
/// after each prompt; returning `false` stops there, the tables holding the prompts done.
pub fn run(
    session: &mut Session,
    records: &[Record],
    out: &Path,
    opts: &CensusOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<CensusDone> {
    let (todo, skipped) = check_records(session, records, opts)?;
    let mut done = CensusDone {
        todo: todo.len(),
        skipped,
        ..CensusDone::default()
    };
    prepare_out(out, &session.model().protected)?;
    let mut pw =
        ArrowWriter::try_new(create(&out.join(FILES[0]))?, prompts_schema(), None).map_err(pq)?;
    let mut nw =
        ArrowWriter::try_new(create(&out.join(FILES[1]))?, nodes_schema(), None).map_err(pq)?;
    let mut rows = Rows::default();
    let mut summary = Summary::default();
    let (failed, times) = attribute_each(session, &todo, opts, progress, &mut |row, nodes| {
        summary.add(&nodes)?;
        done.nodes = nodes.values.len();
        rows.nodes.push((row.index, nodes));
        rows.prompts.push(row);
        done.prompts += 1;
        if rows.prompts.len() >= ROW_GROUP {
            rows.flush(&mut pw, &mut nw)?;
        }
        Ok(())
    })?;
    done.skipped.extend(failed);
    done.times = times;
    rows.flush(&mut pw, &mut nw)?;
    pw.close().map_err(pq)?;
    nw.close().map_err(pq)?;
    summary.write(&out.join(FILES[2]))?;
    Ok(done)
}

/// A census held in memory (the explorer's Census view): every prompt's row, every node's
/// value for every prompt, and the per-node statistics `summary.parquet` holds.
#[derive(Debug, Clone, Default)]
pub struct CensusTable {
    pub prompts: Vec<PromptRow>,
    /// Node paths, sorted (the columns of `values`).
    pub paths: Vec<String>,
    /// `prompts × paths`, row-major.
    pub values: Vec<f32>,
    pub stats: Vec<NodeStats>,
    pub skipped: Vec<(Record, String)>,
    /// The records that passed the checks (fewer prompts than this: stopped early).
    pub todo: usize,
    pub n_layers: usize,
    pub n_heads: usize,
}

/// [`run`] into memory: check every record, attribute them, and summarise.
pub fn collect(
    session: &mut Session,
    records: &[Record],
    opts: &CensusOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<CensusTable> {
    let (todo, skipped) = check_records(session, records, opts)?;
    let cfg = &session.model().config;
    let mut t = CensusTable {
        todo: todo.len(),
        skipped,
        n_layers: cfg.n_layers,
        n_heads: cfg.n_heads,
        ..CensusTable::default()
    };
    let mut summary = Summary::default();
    let (failed, _) = attribute_each(session, &todo, opts, progress, &mut |row, nodes| {
        summary.add(&nodes)?;
        if t.paths.is_empty() {
            t.paths = nodes.paths.to_vec();
        }
        t.values.extend(nodes.values);
        t.prompts.push(row);
        Ok(())
    })?;
    t.skipped.extend(failed);
    t.stats = summary.stats();
    Ok(t)
}

impl CensusTable {
    fn column_index(&self, path: &str) -> Option<usize> {
        self.paths.binary_search_by(|p| p.as_str().cmp(path)).ok()
    }

    /// A node's value in every prompt, in prompt order.
    pub fn column(&self, path: &str) -> Option<Vec<f32>> {
        let c = self.column_index(path)?;
        let k = self.paths.len();
        Some(self.values.iter().skip(c).step_by(k).copied().collect())
    }

    /// A node's statistics.
    pub fn stat(&self, path: &str) -> Option<&NodeStats> {
        self.column_index(path).and_then(|c| self.stats.get(c))
    }

    /// The prompts (their rows in [`CensusTable::prompts`]) by a node's value, largest first.
    pub fn sorted_by(&self, path: &str) -> Vec<(usize, f32)> {
        let mut v: Vec<(usize, f32)> = self
            .column(path)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// The mean view: rows = layers; columns = heads, the attention bias, the MLP (the root
    /// view's layout), each cell the node's mean over the prompts with its 95 % interval
    /// (for the tooltip), each cell's target the node's path.
    pub fn mean_heatmap(&self, title: &str) -> Heatmap {
        let stat = |l: usize, c: LayerCell| self.stat(&c.path(l).to_string());
        let mut hm = layer_grid(self.n_layers, self.n_heads, title, |l, c| {
            stat(l, c).map(|s| s.mean as f32)
        });
        // a node the census does not hold leads nowhere
        for (t, v) in hm.targets.iter_mut().zip(&hm.values) {
            if v.is_none() {
                *t = None;
            }
        }
        hm.intervals = hm
            .targets
            .iter()
            .map(|t| {
                let s = self.stat(&t.as_ref()?.to_string())?;
                Some((s.ci95_low as f32, s.ci95_high as f32))
            })
            .collect();
        let outside: Vec<String> = self
            .stats
            .iter()
            .filter(|s| !s.path.starts_with('L'))
            .map(|s| format!("{} {:.4}", s.path, s.mean))
            .collect();
        hm.subtitle = format!(
            "mean over {} prompts (95 % intervals on hover){}",
            self.prompts.len(),
            if outside.is_empty() {
                String::new()
            } else {
                format!("; {}", outside.join(", "))
            }
        );
        hm
    }
}

/// Read every row of a census table.
fn read_table(file: &Path) -> Result<Vec<RecordBatch>> {
    let f = File::open(file).map_err(io(file))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| SessionError::Census(format!("{}: {e}", file.display())))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| SessionError::Census(format!("{}: {e}", file.display())))
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str, file: &Path) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            SessionError::Census(format!(
                "{}: no column `{name}` of the census type",
                file.display()
            ))
        })
}

/// Join census shards into `out` (new or empty): their prompts and nodes in `prompt_index`
/// order, and the summary recomputed over all of them — what one run over every record
/// writes.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<usize> {
    let mut prompts: Vec<(u32, RecordBatch, usize)> = Vec::new();
    let mut nodes: Vec<(u32, String, f32)> = Vec::new();
    for dir in shards {
        let pf = dir.join(FILES[0]);
        for b in read_table(&pf)? {
            let idx = column::<UInt32Array>(&b, "prompt_index", &pf)?;
            for r in 0..b.num_rows() {
                prompts.push((idx.value(r), b.clone(), r));
            }
        }
        let nf = dir.join(FILES[1]);
        for b in read_table(&nf)? {
            let idx = column::<UInt32Array>(&b, "prompt_index", &nf)?;
            let path = column::<StringArray>(&b, "path", &nf)?;
            let value = column::<Float32Array>(&b, "value", &nf)?;
            for r in 0..b.num_rows() {
                nodes.push((idx.value(r), path.value(r).to_string(), value.value(r)));
            }
        }
    }
    prompts.sort_by_key(|p| p.0);
    if let Some(w) = prompts.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(SessionError::Census(format!(
            "prompt {} is in two shards: these are not shards of one census",
            w[0].0
        )));
    }
    nodes.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    prepare_out(out, &[])?;
    let mut pw =
        ArrowWriter::try_new(create(&out.join(FILES[0]))?, prompts_schema(), None).map_err(pq)?;
    for chunk in prompts.chunks(ROW_GROUP) {
        let parts: Vec<RecordBatch> = chunk.iter().map(|(_, b, r)| b.slice(*r, 1)).collect();
        let batch = arrow_select::concat::concat_batches(&prompts_schema(), &parts).map_err(pq)?;
        pw.write(&batch).map_err(pq)?;
        pw.flush().map_err(pq)?;
    }
    pw.close().map_err(pq)?;
    let mut nw =
        ArrowWriter::try_new(create(&out.join(FILES[1]))?, nodes_schema(), None).map_err(pq)?;
    let mut summary = Summary::default();
    for group in nodes.chunk_by(|a, b| a.0 == b.0) {
        summary.add(&Nodes {
            paths: group.iter().map(|(_, p, _)| p.clone()).collect(),
            values: group.iter().map(|(_, _, v)| *v).collect(),
        })?;
    }
    for chunk in nodes.chunks(ROW_GROUP * summary.paths.len().max(1)) {
        let batch = RecordBatch::try_new(
            nodes_schema(),
            vec![
                Arc::new(UInt32Array::from(
                    chunk.iter().map(|r| r.0).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(StringArray::from(
                    chunk.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(Float32Array::from(
                    chunk.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .map_err(pq)?;
        nw.write(&batch).map_err(pq)?;
        nw.flush().map_err(pq)?;
    }
    nw.close().map_err(pq)?;
    summary.write(&out.join(FILES[2]))?;
    Ok(prompts.len())
}

#[cfg(test)]
mod tests {
    use super::{BATCH, batches_by_length};

    /// Records of one length fill batches of nearly equal sizes; lengths with few records share
    /// batches of similar lengths; every record is in exactly one batch, none over `BATCH`.
    #[test]
    fn batches_group_equal_lengths_then_similar_ones() {
        // 70 records of 16 tokens, 3 of 17, 2 of 18, 40 of 30, 1 of 100
        let mut sorted: Vec<(usize, usize)> = Vec::new();
        for (n, count) in [(16, 70), (17, 3), (18, 2), (30, 40), (100, 1)] {
            for _ in 0..count {
                sorted.push((n, sorted.len()));
            }
        }
        let batches = batches_by_length(&sorted);
        let len_of = |j: usize| sorted[j].0;
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..sorted.len()).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= BATCH));
        let sizes = |n: usize| -> Vec<usize> {
            batches
                .iter()
                .filter(|b| b.iter().all(|&j| len_of(j) == n))
                .map(Vec::len)
                .collect()
        };
        assert_eq!(sizes(16), vec![24, 24, 22]);
        assert_eq!(sizes(30), vec![20, 20]);
        // the few of 17 and 18 together, padded; the one of 100 alone
        assert!(batches.iter().any(|b| {
            let mut l: Vec<usize> = b.iter().map(|&j| len_of(j)).collect();
            l.sort_unstable();
            l == vec![17, 17, 17, 18, 18]
        }));
        assert!(batches.iter().any(|b| b.len() == 1 && len_of(b[0]) == 100));
    }
}
