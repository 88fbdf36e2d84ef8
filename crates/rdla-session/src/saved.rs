//! Result files (`.rdla`): what a user explored, with where it came from, in a file anyone can
//! reopen without the model and re-check with it. A zip archive (stored, not compressed) of
//! `manifest.json` — the format, rdla's version, the model's files (name, bytes, sha256) and
//! config, the prompt, its token ids, the target, the modes and the device — and Parquet
//! tables any Arrow reader opens:
//!
//! - `nodes.parquet`: `path`, `value`, `parent` (null for the root), `expanded` (its children
//!   are in the file too), `bias` and `residual` (expanded nodes), `units`, and `contrast`, the
//!   node's value in the contrast prompt's run when the session was comparing two prompts
//!   (the manifest's `contrast_prompt`; null otherwise);
//! - `tables.parquet`: opened QK tables, `path`, `row`, `col`, `value`;
//! - `readouts.parquet`: vocabulary readouts, `path`, `direction` (`up`/`down`), `rank`,
//!   `token_id`, `token`, `value`;
//! - `sites.parquet` and `edges.parquet`: the trace's graph (`id`, `label`, `layer`,
//!   `position`, `value`; `from`, `to`, `value`);
//! - `verification.parquet`: the trace's verification (`site`, `label`, `attributed`,
//!   `effect`), its summary in the manifest;
//! - the explorer's heatmap of every expanded node, as the live session drew it: its cells in
//!   `heatmaps.parquet` (`path`, `row`, `col`, `value`, `target`) and its labels, titles and
//!   strip in `views.json`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array as _, ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdla_attrib::trace::{GraphEdge, GraphNode, Trace};
use rdla_attrib::{Expansion, Path, Units};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::{Result, SessionError};
use crate::verify::{Verification, VerifiedSite};

/// The version of the file layout this build writes and reads.
pub const FORMAT: u32 = 1;

/// One file of the model, as it was when the result was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl ModelFile {
    /// The first 12 hex digits of its sha256 (for messages).
    pub fn short_hash(&self) -> &str {
        self.sha256.get(..12).unwrap_or(&self.sha256)
    }
}

/// The model a result was computed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub files: Vec<ModelFile>,
    pub config: serde_json::Value,
}

/// A saved trace's numbers (its graph is in `sites` and `edges`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub from: Path,
    pub value: f32,
    pub expanded: usize,
    pub frontier_total: f64,
    pub residual_total: f64,
    pub timed_out: bool,
    pub trace_ms: f64,
}

/// A saved verification's summary (its sites are in `verification.parquet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationSummary {
    pub ablation: String,
    pub spearman: Option<f64>,
    pub explained: Option<f64>,
    pub target: f32,
    pub together: f32,
    pub stamp: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub rdla_version: String,
    pub model: ModelRef,
    pub prompt: String,
    pub token_ids: Vec<u32>,
    pub token_strs: Vec<String>,
    pub bos: bool,
    pub answer: String,
    pub answer_id: u32,
    pub foil: Option<String>,
    pub foil_id: Option<u32>,
    pub target_label: String,
    pub target_value: f32,
    pub mlp_mode: String,
    /// The prompt the session compared with when it saved: each saved node then carries its
    /// value in that prompt's run too (`contrast`), the saved heatmaps are the differences the
    /// explorer drew (this prompt minus that one), and a verification by patching took its
    /// values from that prompt's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_prompt: Option<String>,
    pub device: String,
    pub trace: Option<TraceSummary>,
    pub verification: Option<VerificationSummary>,
}

/// One saved node.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedNode {
    pub path: Path,
    pub value: f32,
    pub parent: Option<Path>,
    /// Its children are saved too.
    pub expanded: bool,
    pub bias: Option<f32>,
    pub residual: Option<f32>,
    pub units: String,
    /// Its value in the contrast prompt's run, when saved while comparing.
    pub contrast: Option<f32>,
}

/// One cell of a saved QK table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableCell {
    pub path: Path,
    pub row: String,
    pub col: String,
    pub value: f32,
}

/// One token of a saved vocabulary readout.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadoutToken {
    pub path: Path,
    pub up: bool,
    pub rank: u32,
    pub token_id: u32,
    pub token: String,
    pub value: f32,
}

/// A result file's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub manifest: Manifest,
    pub nodes: Vec<SavedNode>,
    pub tables: Vec<TableCell>,
    pub readouts: Vec<ReadoutToken>,
    pub sites: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
    pub verification: Vec<VerifiedSite>,
    /// The heatmap of each expanded node, as the session drew it.
    pub views: Vec<(Path, crate::Heatmap)>,
}

/// One entry of `views.json`: a heatmap without its cells.
#[derive(Debug, Serialize, Deserialize)]
struct ViewEntry {
    path: Path,
    heatmap: crate::Heatmap,
}

fn bad(file: &FsPath, why: impl std::fmt::Display) -> SessionError {
    SessionError::ResultFile {
        path: file.to_path_buf(),
        why: why.to_string(),
    }
}

/// The parent of a node, `None` for the root.
fn parent_of(p: &Path) -> Option<Path> {
    (!p.is_root()).then(|| p.parent())
}

fn units(u: Units) -> &'static str {
    match u {
        Units::Logit => "logit",
        Units::Score => "score",
    }
}

impl Saved {
    /// The nodes of `expansions` (each expanded node and its children, once each by path),
    /// and of a trace (its top paths, graph and verification).
    pub fn collect(
        manifest: Manifest,
        views: &[(Expansion, crate::Heatmap)],
        trace: Option<&Trace>,
        verification: Option<&Verification>,
    ) -> Self {
        let mut nodes: BTreeMap<String, SavedNode> = BTreeMap::new();
        let mut tables = Vec::new();
        let mut readouts = Vec::new();
        let mut add = |n: SavedNode| {
            let key = n.path.to_string();
            match nodes.get_mut(&key) {
                // an expanded node's row wins over its row as someone's child
                Some(old) if old.expanded => {}
                Some(old) => *old = n,
                None => {
                    nodes.insert(key, n);
                }
            }
        };
        for ex in views.iter().map(|(e, _)| e) {
            let u = units(ex.units).to_string();
            add(SavedNode {
                path: ex.path.clone(),
                value: ex.value,
                parent: parent_of(&ex.path),
                expanded: true,
                bias: Some(ex.bias),
                residual: Some(ex.residual),
                units: u.clone(),
                contrast: None,
            });
            for c in ex.children.iter().chain(ex.neurons.iter().flatten()) {
                add(SavedNode {
                    path: ex.path.child(c.step),
                    value: c.value,
                    parent: Some(ex.path.clone()),
                    expanded: false,
                    bias: None,
                    residual: None,
                    units: u.clone(),
                    contrast: None,
                });
            }
            if let Some(t) = &ex.table {
                for (r, row) in t.rows.iter().zip(&t.values) {
                    for (c, v) in t.cols.iter().zip(row) {
                        tables.push(TableCell {
                            path: ex.path.clone(),
                            row: r.to_string(),
                            col: c.to_string(),
                            value: *v,
                        });
                    }
                }
            }
            if let Some(tok) = &ex.tokens {
                for (up, list) in [(true, &tok.up), (false, &tok.down)] {
                    for (rank, t) in list.iter().enumerate() {
                        readouts.push(ReadoutToken {
                            path: ex.path.clone(),
                            up,
                            rank: rank as u32,
                            token_id: t.id,
                            token: t.token.clone(),
                            value: t.value,
                        });
                    }
                }
            }
        }
        if let Some(t) = trace {
            for p in &t.paths {
                add(SavedNode {
                    path: p.path.clone(),
                    value: p.value,
                    parent: parent_of(&p.path),
                    expanded: false,
                    bias: None,
                    residual: None,
                    units: "logit".into(),
                    contrast: None,
                });
            }
        }
        Self {
            manifest,
            nodes: nodes.into_values().collect(),
            tables,
            readouts,
            sites: trace.map(|t| t.nodes.clone()).unwrap_or_default(),
            edges: trace.map(|t| t.edges.clone()).unwrap_or_default(),
            verification: verification.map(|v| v.sites.clone()).unwrap_or_default(),
            views: views
                .iter()
                .map(|(e, h)| (e.path.clone(), h.clone()))
                .collect(),
        }
    }

    /// The heatmap saved for `path`.
    pub fn view(&self, path: &Path) -> Option<&crate::Heatmap> {
        self.views.iter().find(|(p, _)| p == path).map(|(_, h)| h)
    }

    /// The saved trace: its numbers and graph (its top paths are nodes of the file).
    pub fn trace(&self) -> Option<Trace> {
        let t = self.manifest.trace.as_ref()?;
        Some(Trace {
            from: t.from.clone(),
            value: t.value,
            expanded: t.expanded,
            frontier_total: t.frontier_total,
            residual_total: t.residual_total,
            paths: Vec::new(),
            nodes: self.sites.clone(),
            edges: self.edges.clone(),
            timed_out: t.timed_out,
        })
    }

    /// The saved verification.
    pub fn verification(&self) -> Option<Verification> {
        let v = self.manifest.verification.as_ref()?;
        Some(Verification {
            ablation: v.ablation.parse().ok()?,
            sites: self.verification.clone(),
            spearman: v.spearman,
            explained: v.explained,
            target: v.target,
            together: v.together,
            passed_over: Vec::new(),
            verify_ms: 0.0,
        })
    }

    /// The node saved at `path`.
    pub fn node(&self, path: &Path) -> Option<&SavedNode> {
        self.nodes.iter().find(|n| &n.path == path)
    }

    /// The archive's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let here = FsPath::new("result");
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
            zip.start_file(name, opts).map_err(|e| bad(here, e))?;
            zip.write_all(bytes).map_err(|e| bad(here, e))
        };
        put("manifest.json", &serde_json::to_vec_pretty(&self.manifest)?)?;
        for (name, batch) in self.tables()? {
            put(name, &parquet_bytes(&batch)?)?;
        }
        let entries: Vec<ViewEntry> = self
            .views
            .iter()
            .map(|(p, h)| ViewEntry {
                path: p.clone(),
                heatmap: h.clone(),
            })
            .collect();
        put("views.json", &serde_json::to_vec(&entries)?)?;
        put("heatmaps.parquet", &parquet_bytes(&self.heatmap_cells()?)?)?;
        let cursor = zip.finish().map_err(|e| bad(here, e))?;
        Ok(cursor.into_inner())
    }

    /// Every cell of every saved heatmap, row-major: `path`, `row`, `col`, `value` (null: an
    /// absent cell), `target` (null: nowhere).
    fn heatmap_cells(&self) -> Result<RecordBatch> {
        let (mut path, mut row, mut col, mut value, mut target) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (p, h) in &self.views {
            let n = h.cols.len().max(1);
            for (i, v) in h.values.iter().enumerate() {
                path.push(p.to_string());
                row.push((i / n) as u32);
                col.push((i % n) as u32);
                value.push(*v);
                target.push(h.targets.get(i).cloned().flatten().map(|t| t.to_string()));
            }
        }
        let schema = Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("row", DataType::UInt32, false),
            Field::new("col", DataType::UInt32, false),
            Field::new("value", DataType::Float32, true),
            Field::new("target", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(path)),
                Arc::new(UInt32Array::from(row)),
                Arc::new(UInt32Array::from(col)),
                Arc::new(Float32Array::from(value)),
                Arc::new(StringArray::from(target)),
            ],
        )
        .map_err(pq)
    }

    /// The Parquet tables, by file name (`verification.parquet` only when there is one; the
    /// graph's only with a trace).
    fn tables(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let s = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        let os = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let f = |v: Vec<f32>| Arc::new(Float32Array::from(v)) as ArrayRef;
        let of = |v: Vec<Option<f32>>| Arc::new(Float32Array::from(v)) as ArrayRef;
        let u = |v: Vec<u32>| Arc::new(UInt32Array::from(v)) as ArrayRef;
        let field = |name: &str, t: DataType, null: bool| Field::new(name, t, null);
        let batch = |fields: Vec<Field>, cols: Vec<ArrayRef>| {
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(pq)
        };
        let n = &self.nodes;
        let mut out = vec![(
            "nodes.parquet",
            batch(
                vec![
                    field("path", DataType::Utf8, false),
                    field("value", DataType::Float32, false),
                    field("parent", DataType::Utf8, true),
                    field("expanded", DataType::Boolean, false),
                    field("bias", DataType::Float32, true),
                    field("residual", DataType::Float32, true),
                    field("units", DataType::Utf8, false),
                    field("contrast", DataType::Float32, true),
                ],
                vec![
                    s(n.iter().map(|x| x.path.to_string()).collect()),
                    f(n.iter().map(|x| x.value).collect()),
                    os(n.iter()
                        .map(|x| x.parent.as_ref().map(ToString::to_string))
                        .collect()),
                    Arc::new(BooleanArray::from(
                        n.iter().map(|x| x.expanded).collect::<Vec<_>>(),
                    )),
                    of(n.iter().map(|x| x.bias).collect()),
                    of(n.iter().map(|x| x.residual).collect()),
                    s(n.iter().map(|x| x.units.clone()).collect()),
                    of(n.iter().map(|x| x.contrast).collect()),
                ],
            )?,
        )];
        let t = &self.tables;
        out.push((
            "tables.parquet",
            batch(
                vec![
                    field("path", DataType::Utf8, false),
                    field("row", DataType::Utf8, false),
                    field("col", DataType::Utf8, false),
                    field("value", DataType::Float32, false),
                ],
                vec![
                    s(t.iter().map(|x| x.path.to_string()).collect()),
                    s(t.iter().map(|x| x.row.clone()).collect()),
                    s(t.iter().map(|x| x.col.clone()).collect()),
                    f(t.iter().map(|x| x.value).collect()),
                ],
            )?,
        ));
        let r = &self.readouts;
        out.push((
            "readouts.parquet",
            batch(
                vec![
                    field("path", DataType::Utf8, false),
                    field("direction", DataType::Utf8, false),
                    field("rank", DataType::UInt32, false),
                    field("token_id", DataType::UInt32, false),
                    field("token", DataType::Utf8, false),
                    field("value", DataType::Float32, false),
                ],
                vec![
                    s(r.iter().map(|x| x.path.to_string()).collect()),
                    s(r.iter()
                        .map(|x| if x.up { "up" } else { "down" }.to_string())
                        .collect()),
                    u(r.iter().map(|x| x.rank).collect()),
                    u(r.iter().map(|x| x.token_id).collect()),
                    s(r.iter().map(|x| x.token.clone()).collect()),
                    f(r.iter().map(|x| x.value).collect()),
                ],
            )?,
        ));
        if self.manifest.trace.is_some() {
            let g = &self.sites;
            out.push((
                "sites.parquet",
                batch(
                    vec![
                        field("id", DataType::Utf8, false),
                        field("label", DataType::Utf8, false),
                        field("layer", DataType::Float32, false),
                        field("position", DataType::UInt32, false),
                        field("value", DataType::Float32, false),
                    ],
                    vec![
                        s(g.iter().map(|x| x.id.to_string()).collect()),
                        s(g.iter().map(|x| x.site.to_string()).collect()),
                        f(g.iter().map(|x| x.layer).collect()),
                        u(g.iter().map(|x| x.position as u32).collect()),
                        f(g.iter().map(|x| x.value).collect()),
                    ],
                )?,
            ));
            let e = &self.edges;
            out.push((
                "edges.parquet",
                batch(
                    vec![
                        field("from", DataType::Utf8, false),
                        field("to", DataType::Utf8, false),
                        field("value", DataType::Float32, false),
                    ],
                    vec![
                        s(e.iter().map(|x| x.from.to_string()).collect()),
                        s(e.iter().map(|x| x.to.to_string()).collect()),
                        f(e.iter().map(|x| x.value).collect()),
                    ],
                )?,
            ));
        }
        if self.manifest.verification.is_some() {
            let v = &self.verification;
            out.push((
                "verification.parquet",
                batch(
                    vec![
                        field("site", DataType::Utf8, false),
                        field("label", DataType::Utf8, false),
                        field("attributed", DataType::Float32, false),
                        field("effect", DataType::Float32, false),
                    ],
                    vec![
                        s(v.iter().map(|x| x.site.to_string()).collect()),
                        s(v.iter().map(|x| x.label.clone()).collect()),
                        f(v.iter().map(|x| x.attributed).collect()),
                        f(v.iter().map(|x| x.effect).collect()),
                    ],
                )?,
            ));
        }
        Ok(out)
    }

    /// Read a result file. Anything malformed is an error naming the file and what is wrong.
    pub fn open(file: &FsPath) -> Result<Self> {
        let f = std::fs::File::open(file).map_err(|error| SessionError::Io {
            path: file.to_path_buf(),
            error,
        })?;
        let mut zip = zip::ZipArchive::new(f).map_err(|e| {
            bad(
                file,
                format!("not an rdla result file (a zip archive): {e}"),
            )
        })?;
        let mut entry = |name: &str| -> Result<Option<Vec<u8>>> {
            let mut e = match zip.by_name(name) {
                Ok(e) => e,
                Err(zip::result::ZipError::FileNotFound) => return Ok(None),
                Err(e) => return Err(bad(file, format!("{name}: {e}"))),
            };
            if e.size() > MAX_ENTRY {
                return Err(bad(
                    file,
                    format!("{name} is larger than {MAX_ENTRY} bytes"),
                ));
            }
            let mut bytes = Vec::with_capacity(e.size() as usize);
            e.read_to_end(&mut bytes)
                .map_err(|err| bad(file, format!("{name}: {err}")))?;
            Ok(Some(bytes))
        };
        let manifest: Manifest = match entry("manifest.json")? {
            Some(b) => {
                serde_json::from_slice(&b).map_err(|e| bad(file, format!("manifest.json: {e}")))?
            }
            None => return Err(bad(file, "no manifest.json: not an rdla result file")),
        };
        if manifest.format != FORMAT {
            return Err(bad(
                file,
                format!(
                    "format {} (this rdla reads format {FORMAT}); open it with the rdla that wrote it ({})",
                    manifest.format, manifest.rdla_version
                ),
            ));
        }
        let entries: Vec<ViewEntry> = match entry("views.json")? {
            Some(b) => {
                serde_json::from_slice(&b).map_err(|e| bad(file, format!("views.json: {e}")))?
            }
            None => Vec::new(),
        };
        let mut table = |name: &str, required: bool| -> Result<Vec<RecordBatch>> {
            match entry(name)? {
                Some(b) => read_parquet(b).map_err(|e| bad(file, format!("{name}: {e}"))),
                None if required => Err(bad(file, format!("no {name}"))),
                None => Ok(Vec::new()),
            }
        };
        let t = Tables::new(file);
        let nodes = t.nodes(&table("nodes.parquet", true)?)?;
        let tables = t.cells(&table("tables.parquet", false)?)?;
        let readouts = t.readouts(&table("readouts.parquet", false)?)?;
        let sites = t.sites(&table("sites.parquet", false)?)?;
        let edges = t.edges(&table("edges.parquet", false)?)?;
        let verification = t.verification(&table("verification.parquet", false)?)?;
        let mut views: Vec<(Path, crate::Heatmap)> = entries
            .into_iter()
            .map(|e| {
                let mut h = e.heatmap;
                let n = h.rows.len() * h.cols.len();
                h.values = vec![None; n];
                h.targets = vec![None; n];
                (e.path, h)
            })
            .collect();
        t.fill_views(&table("heatmaps.parquet", false)?, &mut views)?;
        Ok(Self {
            manifest,
            nodes,
            tables,
            readouts,
            sites,
            edges,
            verification,
            views,
        })
    }
}

/// The largest archive entry read (a result of 500 nodes is well under a megabyte).
const MAX_ENTRY: u64 = 1 << 30;

fn pq(e: impl std::fmt::Display) -> SessionError {
    SessionError::ResultFile {
        path: PathBuf::from("result"),
        why: e.to_string(),
    }
}

fn parquet_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).map_err(pq)?;
    w.write(batch).map_err(pq)?;
    w.close().map_err(pq)?;
    Ok(out)
}

fn read_parquet(bytes: Vec<u8>) -> std::result::Result<Vec<RecordBatch>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Typed columns of a result file's tables, errors naming the file.
struct Tables<'a> {
    file: &'a FsPath,
}

impl<'a> Tables<'a> {
    fn new(file: &'a FsPath) -> Self {
        Self { file }
    }

    fn col<'b, T: 'static>(&self, b: &'b RecordBatch, name: &str) -> Result<&'b T> {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| {
                bad(
                    self.file,
                    format!("no column `{name}` of the expected type"),
                )
            })
    }

    fn path(&self, s: &str) -> Result<Path> {
        Path::parse(s).map_err(|e| bad(self.file, format!("`{s}`: {e}")))
    }

    fn strs(&self, b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
        let c = self.col::<StringArray>(b, name)?;
        Ok((0..c.len())
            .map(|i| (!c.is_null(i)).then(|| c.value(i).to_string()))
            .collect())
    }

    fn req(&self, b: &RecordBatch, name: &str) -> Result<Vec<String>> {
        self.strs(b, name)?
            .into_iter()
            .map(|s| s.ok_or_else(|| bad(self.file, format!("a null `{name}`"))))
            .collect()
    }

    fn f32s(&self, b: &RecordBatch, name: &str) -> Result<Vec<Option<f32>>> {
        let c = self.col::<Float32Array>(b, name)?;
        Ok((0..c.len())
            .map(|i| (!c.is_null(i)).then(|| c.value(i)))
            .collect())
    }

    fn req_f32(&self, b: &RecordBatch, name: &str) -> Result<Vec<f32>> {
        self.f32s(b, name)?
            .into_iter()
            .map(|v| v.ok_or_else(|| bad(self.file, format!("a null `{name}`"))))
            .collect()
    }

    fn u32s(&self, b: &RecordBatch, name: &str) -> Result<Vec<u32>> {
        Ok(self.col::<UInt32Array>(b, name)?.values().to_vec())
    }

    fn nodes(&self, batches: &[RecordBatch]) -> Result<Vec<SavedNode>> {
        let mut out = Vec::new();
        for b in batches {
            let exp = self.col::<BooleanArray>(b, "expanded")?;
            let (paths, values, parents) = (
                self.req(b, "path")?,
                self.req_f32(b, "value")?,
                self.strs(b, "parent")?,
            );
            let (bias, residual, units) = (
                self.f32s(b, "bias")?,
                self.f32s(b, "residual")?,
                self.req(b, "units")?,
            );
            // (absent from files written before contrast values were kept)
            let contrast = match b.column_by_name("contrast") {
                Some(_) => self.f32s(b, "contrast")?,
                None => vec![None; paths.len()],
            };
            for i in 0..paths.len() {
                out.push(SavedNode {
                    path: self.path(&paths[i])?,
                    value: values[i],
                    parent: parents[i].as_deref().map(|p| self.path(p)).transpose()?,
                    expanded: exp.value(i),
                    bias: bias[i],
                    residual: residual[i],
                    units: units[i].clone(),
                    contrast: contrast[i],
                });
            }
        }
        Ok(out)
    }

    fn cells(&self, batches: &[RecordBatch]) -> Result<Vec<TableCell>> {
        let mut out = Vec::new();
        for b in batches {
            let (p, r, c, v) = (
                self.req(b, "path")?,
                self.req(b, "row")?,
                self.req(b, "col")?,
                self.req_f32(b, "value")?,
            );
            for i in 0..p.len() {
                out.push(TableCell {
                    path: self.path(&p[i])?,
                    row: r[i].clone(),
                    col: c[i].clone(),
                    value: v[i],
                });
            }
        }
        Ok(out)
    }

    fn readouts(&self, batches: &[RecordBatch]) -> Result<Vec<ReadoutToken>> {
        let mut out = Vec::new();
        for b in batches {
            let (p, d, rank, id, tok, v) = (
                self.req(b, "path")?,
                self.req(b, "direction")?,
                self.u32s(b, "rank")?,
                self.u32s(b, "token_id")?,
                self.req(b, "token")?,
                self.req_f32(b, "value")?,
            );
            for i in 0..p.len() {
                out.push(ReadoutToken {
                    path: self.path(&p[i])?,
                    up: d[i] == "up",
                    rank: rank[i],
                    token_id: id[i],
                    token: tok[i].clone(),
                    value: v[i],
                });
            }
        }
        Ok(out)
    }

    fn sites(&self, batches: &[RecordBatch]) -> Result<Vec<GraphNode>> {
        let mut out = Vec::new();
        for b in batches {
            let (id, label, layer, pos, v) = (
                self.req(b, "id")?,
                self.req(b, "label")?,
                self.req_f32(b, "layer")?,
                self.u32s(b, "position")?,
                self.req_f32(b, "value")?,
            );
            for i in 0..id.len() {
                out.push(GraphNode {
                    id: self.path(&id[i])?,
                    site: label[i]
                        .parse()
                        .map_err(|e| bad(self.file, format!("site `{}`: {e}", label[i])))?,
                    layer: layer[i],
                    position: pos[i] as usize,
                    value: v[i],
                });
            }
        }
        Ok(out)
    }

    fn edges(&self, batches: &[RecordBatch]) -> Result<Vec<GraphEdge>> {
        let mut out = Vec::new();
        for b in batches {
            let (from, to, v) = (
                self.req(b, "from")?,
                self.req(b, "to")?,
                self.req_f32(b, "value")?,
            );
            for i in 0..from.len() {
                out.push(GraphEdge {
                    from: self.path(&from[i])?,
                    to: self.path(&to[i])?,
                    value: v[i],
                });
            }
        }
        Ok(out)
    }

    fn fill_views(
        &self,
        batches: &[RecordBatch],
        views: &mut [(Path, crate::Heatmap)],
    ) -> Result<()> {
        for b in batches {
            let (p, r, c, v, t) = (
                self.req(b, "path")?,
                self.u32s(b, "row")?,
                self.u32s(b, "col")?,
                self.f32s(b, "value")?,
                self.strs(b, "target")?,
            );
            let mut k = 0;
            for i in 0..p.len() {
                let path = self.path(&p[i])?;
                if views.get(k).is_none_or(|(q, _)| *q != path) {
                    k = views.iter().position(|(q, _)| *q == path).ok_or_else(|| {
                        bad(
                            self.file,
                            format!("cells of `{path}`, a view not in views.json"),
                        )
                    })?;
                }
                let h = &mut views[k].1;
                let (row, col) = (r[i] as usize, c[i] as usize);
                if row >= h.rows.len() || col >= h.cols.len() {
                    return Err(bad(
                        self.file,
                        format!("a cell ({row}, {col}) outside `{path}`'s heatmap"),
                    ));
                }
                let at = row * h.cols.len() + col;
                h.values[at] = v[i];
                h.targets[at] = t[i].as_deref().map(|s| self.path(s)).transpose()?;
            }
        }
        Ok(())
    }

    fn verification(&self, batches: &[RecordBatch]) -> Result<Vec<VerifiedSite>> {
        let mut out = Vec::new();
        for b in batches {
            let (site, label, a, e) = (
                self.req(b, "site")?,
                self.req(b, "label")?,
                self.req_f32(b, "attributed")?,
                self.req_f32(b, "effect")?,
            );
            for i in 0..site.len() {
                out.push(VerifiedSite {
                    site: self.path(&site[i])?,
                    label: label[i].clone(),
                    attributed: a[i],
                    effect: e[i],
                });
            }
        }
        Ok(out)
    }
}

/// The sha256 of a file, read in blocks (a model file can be tens of gigabytes).
pub fn sha256_file(path: &FsPath) -> Result<String> {
    let io = |error| SessionError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The files that make a model's numbers: its weight files, and in a folder its config and
/// tokenizer files, each with its size and sha256.
pub fn model_files(model: &rdla_model::Model) -> Result<Vec<ModelFile>> {
    let mut paths: Vec<PathBuf> = model.files.clone();
    if model.dir.is_dir() {
        for name in [
            "config.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let p = model.dir.join(name);
            if p.is_file() && !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::metadata(p)
                .map_err(|error| SessionError::Io {
                    path: p.clone(),
                    error,
                })?
                .len();
            Ok(ModelFile {
                name: p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                bytes,
                sha256: sha256_file(p)?,
            })
        })
        .collect()
}

/// Why `files` (the model at hand) are not the model a result was saved from, if they are
/// not: the first file that is missing, extra or different.
pub fn model_difference(saved: &[ModelFile], files: &[ModelFile]) -> Option<String> {
    for s in saved {
        match files.iter().find(|f| f.name == s.name) {
            None => return Some(format!("{} is not among the model's files", s.name)),
            Some(f) if f.sha256 != s.sha256 => {
                return Some(format!(
                    "{} differs (sha256 {} here, {} in the file)",
                    s.name,
                    f.short_hash(),
                    s.short_hash()
                ));
            }
            Some(_) => {}
        }
    }
    files
        .iter()
        .find(|f| !saved.iter().any(|s| s.name == f.name))
        .map(|f| format!("{} was not part of the saved model", f.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small result: a root with two children, one table cell, no trace.
    fn small() -> Saved {
        let root = Path::root();
        let child = |s: &str, v: f32| SavedNode {
            path: Path::parse(s).unwrap_or_else(|e| panic!("{e}")),
            value: v,
            parent: Some(root.clone()),
            expanded: false,
            bias: None,
            residual: None,
            units: "logit".into(),
            contrast: None,
        };
        Saved {
            manifest: Manifest {
                format: FORMAT,
                rdla_version: "0".into(),
                model: ModelRef {
                    name: "m".into(),
                    files: vec![ModelFile {
                        name: "w".into(),
                        bytes: 1,
                        sha256: "00".repeat(32),
                    }],
                    config: serde_json::json!({"n_layers": 1}),
                },
                prompt: "p".into(),
                token_ids: vec![1, 2],
                token_strs: vec!["a".into(), "b".into()],
                bos: true,
                answer: "x".into(),
                answer_id: 3,
                foil: None,
                foil_id: None,
                target_label: "logit \"x\"".into(),
                target_value: 1.5,
                mlp_mode: "frozen_gate".into(),
                contrast_prompt: None,
                device: "cpu".into(),
                trace: None,
                verification: None,
            },
            nodes: vec![
                SavedNode {
                    path: root.clone(),
                    value: 1.5,
                    parent: None,
                    expanded: true,
                    bias: Some(0.0),
                    residual: Some(0.0),
                    units: "logit".into(),
                    contrast: None,
                },
                child("embed", 1.0),
                child("L0.attn", 0.5),
            ],
            tables: Vec::new(),
            readouts: Vec::new(),
            sites: Vec::new(),
            edges: Vec::new(),
            verification: Vec::new(),
            views: Vec::new(),
        }
    }

    /// Written and read back, a result is what it was; a truncated file, or one of another
    /// format, is an error naming the file (never a panic).
    #[test]
    fn a_result_round_trips_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let r = small();
        let bytes = r.to_bytes().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("r.rdla");
        std::fs::write(&f, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Saved::open(&f).unwrap_or_else(|e| panic!("{e}")), r);
        for cut in [bytes.len() / 2, bytes.len() - 10, 30] {
            std::fs::write(&f, &bytes[..cut]).unwrap_or_else(|e| panic!("{e}"));
            let e = Saved::open(&f).expect_err("a truncated result");
            assert!(e.to_string().contains("r.rdla"), "{e}");
        }
        let mut later = small();
        later.manifest.format = FORMAT + 1;
        std::fs::write(&f, later.to_bytes().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = Saved::open(&f).expect_err("another format");
        assert!(e.to_string().contains("format 2"), "{e}");
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            super::sha256_file(&p).unwrap_or_else(|e| panic!("{e}")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
