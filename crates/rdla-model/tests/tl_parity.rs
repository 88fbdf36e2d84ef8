//! The forward pass and its cache against TransformerLens 2.18 on the same weights.
#![allow(clippy::unwrap_used)]

use rdla_testutil as common;

use common::{Reference, TL_FIXTURES, fixture, load_model, max_abs_diff};
use rdla_model::{Device, Model, Processing, to_vec};

const TOL: f32 = 1e-4;

fn slice<const D: usize>(t: rdla_model::Tensor<D>) -> Vec<f32> {
    to_vec(t).unwrap()
}

/// Compare every cached quantity; returns the max abs error.
/// (Long: one comparison per cached quantity, each a few lines, in the cache's order.)
fn check_fixture(name: &str, device: &Device) -> f32 {
    let r = Reference::load(name);
    let model = load_model(name, device);
    let ids = model
        .tokenizer
        .encode_prompt(&r.str("prompt"), true)
        .unwrap();
    assert_eq!(
        ids,
        r.token_ids(),
        "{name}: token ids differ from the Python tokenizer's"
    );
    let cache = model.run(&ids).unwrap();
    let cfg = &model.config;
    let (p, d) = (ids.len(), cfg.d_model);
    let mut worst = 0.0f32;
    let mut check = |what: &str, ours: Vec<f32>, theirs: Vec<f32>| {
        let e = max_abs_diff(&ours, &theirs);
        assert!(
            e <= TOL,
            "{name}: {what} differs from TransformerLens by {e}"
        );
        worst = common::worse(worst, e);
    };

    // the attributed logits are the pre-cap ones; the model's output caps them (Gemma 2)
    let precap = r.has("tl_logits_precap");
    assert_eq!(
        precap,
        cfg.final_softcap.is_some(),
        "{name}: final soft-cap"
    );
    let logits = slice(model.all_logits(&cache).unwrap());
    if precap {
        check(
            "logits (pre-cap)",
            logits.clone(),
            r.tensor("tl_logits_precap"),
        );
    }
    check(
        "logits",
        logits.iter().map(|&l| cfg.output_logit(l)).collect(),
        r.tensor("tl_logits"),
    );
    let comps = slice(cache.components.clone());
    let comp = |c: usize| comps[c * p * d..(c + 1) * p * d].to_vec();
    check("embed", comp(0), r.tensor("embed"));
    assert_eq!(cfg.has_pos(), r.has("pos"), "{name}: pos component");
    if cfg.has_pos() {
        check("pos", comp(1), r.tensor("pos"));
    }
    let layout = cfg.layout();
    let s1 = slice(cache.ln1_scale.clone());
    let s2 = slice(cache.ln2_scale.clone());
    for l in 0..cfg.n_layers {
        let pats = slice(model.patterns(&cache, l).unwrap());
        let (pre, lin) = model.mlp_pre(&cache, l).unwrap();
        check(
            &format!("attn_out.{l}"),
            comp(layout.attn(l)),
            r.tensor(&format!("attn_out.{l}")),
        );
        check(
            &format!("mlp_out.{l}"),
            comp(layout.mlp(l)),
            r.tensor(&format!("mlp_out.{l}")),
        );
        check(
            &format!("ln1_scale.{l}"),
            s1[l * p..(l + 1) * p].to_vec(),
            r.tensor(&format!("ln1_scale.{l}")),
        );
        check(
            &format!("ln2_scale.{l}"),
            s2[l * p..(l + 1) * p].to_vec(),
            r.tensor(&format!("ln2_scale.{l}")),
        );
        check(
            &format!("pattern.{l}"),
            pats,
            r.tensor(&format!("pattern.{l}")),
        );
        check(
            &format!("mlp_pre.{l}"),
            slice(pre),
            r.tensor(&format!("mlp_pre.{l}")),
        );
        assert_eq!(lin.is_some(), r.has(&format!("mlp_pre_linear.{l}")));
        if let Some(lin) = lin {
            check(
                &format!("mlp_pre_linear.{l}"),
                slice(lin),
                r.tensor(&format!("mlp_pre_linear.{l}")),
            );
        }
    }
    // the post-norms' frozen scales (Gemma)
    assert_eq!(
        cache.post_scale.is_some(),
        r.has("post_attn_scale.0"),
        "{name}: post-norms"
    );
    if let Some((sa, sm)) = &cache.post_scale {
        let (sa, sm) = (slice(sa.clone()), slice(sm.clone()));
        for l in 0..cfg.n_layers {
            check(
                &format!("post_attn_scale.{l}"),
                sa[l * p..(l + 1) * p].to_vec(),
                r.tensor(&format!("post_attn_scale.{l}")),
            );
            check(
                &format!("post_mlp_scale.{l}"),
                sm[l * p..(l + 1) * p].to_vec(),
                r.tensor(&format!("post_mlp_scale.{l}")),
            );
        }
    }
    check(
        "ln_final_scale",
        slice(cache.final_scale.clone()),
        r.tensor("ln_final_scale"),
    );
    // last-position logits from the forward pass itself
    let v = cfg.d_vocab;
    let tl = r.tensor(if precap {
        "tl_logits_precap"
    } else {
        "tl_logits"
    });
    check(
        "last_logits",
        slice(cache.last_logits.clone()),
        tl[(p - 1) * v..].to_vec(),
    );

    // processed weights against TransformerLens' state dict
    let w = &model.weights;
    // the token matrices as the model serves them (read where they lie on the CPU)
    let all_ids: Vec<u32> = (0..v as u32).collect();
    check(
        "W_E",
        slice(model.embed(&all_ids).unwrap()),
        r.tensor("tl.embed.W_E"),
    );
    if let Some(w_pos) = &w.w_pos {
        check(
            "W_pos",
            slice(w_pos.clone()),
            r.tensor("tl.pos_embed.W_pos"),
        );
    }
    check(
        "W_U",
        slice(model.unembed_columns(&all_ids).unwrap()),
        r.tensor("tl.unembed.W_U"),
    );
    check("b_U", slice(w.b_u.clone()), r.tensor("tl.unembed.b_U"));
    // TransformerLens stores grouped key/value weights as `_W_K` (`n_kv` heads)
    let tl_key = |l: usize, key: &str| {
        let plain = format!("tl.blocks.{l}.{key}");
        if r.has(&plain) {
            plain
        } else {
            format!(
                "tl.blocks.{l}.{}",
                key.replace(".W_", "._W_").replace(".b_", "._b_")
            )
        }
    };
    for l in 0..cfg.n_layers {
        // one layer's blocks as the model serves them (read again when the layers stream):
        // first its attention alone (a streamed layer not held is read without its MLP),
        // then the whole layer
        let attn = model.attention_blocks(&(l..l + 1)).unwrap();
        let whole = model.blocks(&(l..l + 1)).unwrap();
        if l > 0
            && model
                .weights
                .layers
                .stream()
                .is_some_and(|s| s.capacity() == 1)
        {
            // holding one layer (the one before), this one was read without its MLP
            assert!(
                attn.mlp.is_none(),
                "{name}: layer {l} read whole for its attention"
            );
        }
        for w in [&attn, &whole] {
            for (ours, key) in [
                (&w.w_q, "attn.W_Q"),
                (&w.w_k, "attn.W_K"),
                (&w.w_v, "attn.W_V"),
                (&w.w_o, "attn.W_O"),
            ] {
                check(key, slice(ours.clone()), r.tensor(&tl_key(l, key)));
            }
            for (ours, key) in [
                (&w.b_q, "attn.b_Q"),
                (&w.b_k, "attn.b_K"),
                (&w.b_v, "attn.b_V"),
            ] {
                check(key, slice(ours.clone()), r.tensor(&tl_key(l, key)));
            }
            check(
                "attn.b_O",
                slice(w.b_o.clone()),
                r.tensor(&tl_key(l, "attn.b_O")),
            );
        }
        let w = whole.mlp().expect("a whole layer has its MLP");
        for (ours, key) in [(&w.w_in, "mlp.W_in"), (&w.w_out, "mlp.W_out")] {
            check(key, slice(ours.clone()), r.tensor(&tl_key(l, key)));
        }
        for (ours, key) in [(&w.b_in, "mlp.b_in"), (&w.b_out, "mlp.b_out")] {
            check(key, slice(ours.clone()), r.tensor(&tl_key(l, key)));
        }
        assert_eq!(
            w.w_gate.is_some(),
            r.has(&format!("tl.blocks.{l}.mlp.W_gate"))
        );
        if let Some(g) = &w.w_gate {
            check(
                "mlp.W_gate",
                slice(g.clone()),
                r.tensor(&format!("tl.blocks.{l}.mlp.W_gate")),
            );
        }
    }
    eprintln!("{name}: max abs error vs TransformerLens {worst:.3e}");
    worst
}

#[test]
fn cpu_matches_transformer_lens() {
    for name in TL_FIXTURES {
        check_fixture(name, &Device::flex());
    }
}

#[test]
fn wgpu_matches_transformer_lens() {
    if let Some(dev) = common::wgpu_device(module_path!()) {
        for name in TL_FIXTURES {
            check_fixture(name, &dev);
        }
    }
}

/// Without processing the model computes exactly what Hugging Face computes.
#[test]
fn unprocessed_matches_hugging_face() {
    for name in TL_FIXTURES {
        let r = Reference::load(name);
        let model = Model::load(
            &fixture(name),
            &Device::flex(),
            Processing::none(),
            &mut |_| true,
        )
        .unwrap();
        let cache = model.run(&r.token_ids()).unwrap();
        let out: Vec<f32> = slice(model.all_logits(&cache).unwrap())
            .into_iter()
            .map(|l| model.config.output_logit(l))
            .collect();
        let e = max_abs_diff(&out, &r.tensor("hf_logits"));
        eprintln!("{name}: max abs error vs HF (unprocessed) {e:.3e}");
        assert!(e <= TOL, "{name}: unprocessed logits differ from HF by {e}");
    }
}

#[test]
fn processing_is_reported() {
    let model = load_model("gpt2_tied", &Device::flex());
    assert_eq!(
        model.processing.applied(),
        [
            "fold_ln",
            "center_writing_weights",
            "center_unembed",
            "fold_value_biases"
        ]
    );
    assert!(model.blocks(&(0..1)).unwrap().ln1.is_none() && model.weights.ln_f.is_none());
}

/// Rotary embeddings pinned against Hugging Face's own logits at positions past 64 (the
/// llama3-scaled fixture runs to position 86; all positions are compared).
#[test]
fn rotary_matches_hugging_face_past_position_64() {
    let r = Reference::load("llama_gqa");
    assert!(r.token_ids().len() > 80);
    let model = Model::load(
        &fixture("llama_gqa"),
        &Device::flex(),
        Processing::none(),
        &mut |_| true,
    )
    .unwrap();
    let cache = model.run(&r.token_ids()).unwrap();
    let ours = slice(model.all_logits(&cache).unwrap());
    let hf = r.tensor("hf_logits");
    let v = model.config.d_vocab;
    let late = max_abs_diff(&ours[64 * v..], &hf[64 * v..]);
    assert!(late <= TOL, "positions 64.. differ from HF by {late}");
}

/// Grouped-query attention: query heads sharing a key/value head are still distinct heads
/// (their own patterns and W_O); each matches TransformerLens per query head.
#[test]
fn grouped_query_heads_are_counted_per_query_head() {
    for name in ["llama_gqa", "qwen2", "mistral"] {
        let model = load_model(name, &Device::flex());
        let cfg = &model.config;
        assert!(cfg.n_kv_heads < cfg.n_heads, "{name}: not a GQA fixture");
        let r = Reference::load(name);
        let cache = model.run(&r.token_ids()).unwrap();
        assert_eq!(model.patterns(&cache, 0).unwrap().dims()[0], cfg.n_heads);
        let dla = r.tensor("head_dla");
        // heads 0 and 1 read the same key/value head but contribute differently
        assert!(cfg.kv_group() >= 2);
        assert!((dla[0] - dla[1]).abs() > 1e-4, "{name}: {dla:?}");
    }
}

/// Several prompts in one forward pass (`run_batch`, what a census runs), of the same and of
/// different lengths (the shorter padded at their end), and prompts that share their opening
/// tokens (run once, and again from the run kept of it): every prompt's cache — components,
/// keys, values, every frozen scale, the last logits — is the one its own forward pass gives,
/// on every family (learned positions, rotary, grouped query heads, q/k norms, post-norms,
/// local attention).
#[test]
fn a_batch_of_prompts_gives_each_prompt_its_own_cache() {
    for name in TL_FIXTURES {
        let m = load_model(name, &Device::flex());
        let ids = Reference::load(name).token_ids();
        let v = m.config.d_vocab as u32;
        // the reference, reversed, shifted ids, and two shorter ones (padded in the batch)
        let rev: Vec<u32> = ids.iter().rev().copied().collect();
        let shifted: Vec<u32> = ids.iter().map(|&t| (t + 7) % v).collect();
        let short = &shifted[..ids.len() / 2];
        let one = &rev[..1];
        // the reference's first half, then each of the others' second halves (and a shorter
        // one): a shared opening
        let k = ids.len() / 2;
        let opened =
            |rest: &[u32]| -> Vec<u32> { ids[..k].iter().chain(&rest[k..]).copied().collect() };
        let (o_rev, o_shifted) = (opened(&rev), opened(&shifted));
        let o_short = &ids[..k + 1];
        let sets: [Vec<&[u32]>; 3] = [
            vec![
                ids.as_slice(),
                rev.as_slice(),
                short,
                shifted.as_slice(),
                one,
            ],
            vec![ids.as_slice(), &o_rev, &o_shifted, o_short],
            vec![&o_shifted, &o_rev, ids.as_slice()],
        ];
        for prompts in &sets {
            check_batch(&m, name, prompts);
        }
    }
    // an empty prompt in a batch is the same error as on its own
    let m = load_model("llama_gqa", &Device::flex());
    let err = m.run_batch(&[&[], &[1, 2, 3]]).unwrap_err();
    assert!(matches!(err, rdla_model::ModelError::EmptyPrompt), "{err}");
}

/// `prompts` run as one batch give each its own cache (see above).
fn check_batch(m: &rdla_model::Model, name: &str, prompts: &[&[u32]]) {
    {
        if m.streams_layers() || rdla_model::spill::forced() {
            // CI's second pass: a streaming model, or caches forced to spill, runs prompts
            // one at a time
            let err = m.run_batch(prompts).unwrap_err();
            assert!(matches!(err, rdla_model::ModelError::BadBatch(_)), "{err}");
            return;
        }
        let batch = m.run_batch(prompts).unwrap();
        assert_eq!(batch.len(), prompts.len());
        for (p, got) in prompts.iter().zip(&batch) {
            let want = m.run(p).unwrap();
            assert_eq!(got.token_ids, want.token_ids);
            let (got, want) = (common::cache_tensors(got), common::cache_tensors(&want));
            // the same tensors (the optional scales present in both or neither)
            assert_eq!(
                got.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
                want.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
                "{name}"
            );
            let mut worst = 0.0f32;
            for ((what, a), (_, b)) in got.iter().zip(&want) {
                let e = max_abs_diff(a, b);
                assert!(e <= TOL, "{name}: {what}: {e}");
                worst = common::worse(worst, e);
            }
            assert!(worst.is_finite(), "{name}");
        }
    }
}

/// An ablated pass resumed at the earliest ablated layer (the layers below it the clean
/// run's) gives the logits of the whole ablated pass, on every family, for ablations of a
/// late attention layer, a head, an MLP and a neuron (zero and mean) and several together;
/// an embedding ablation runs the whole pass.
#[test]
fn an_ablated_pass_resumed_at_its_first_layer_equals_the_whole_pass() {
    use rdla_model::model::ablate::{Ablation, AblationMode, Interventions, Site};
    for name in TL_FIXTURES {
        let m = load_model(name, &Device::flex());
        let ids = Reference::load(name).token_ids();
        let clean = m.run(&ids).unwrap();
        let last = m.config.n_layers - 1;
        let p = ids.len() - 1;
        let ab = |site, pos, mode| Ablation {
            site,
            pos,
            mode,
            patch: None,
        };
        let cases = [
            vec![ab(Site::Attn(last), p, AblationMode::Zero)],
            vec![ab(
                Site::Head {
                    layer: last,
                    head: 1,
                },
                p,
                AblationMode::Mean,
            )],
            vec![ab(Site::Mlp(last), p, AblationMode::Zero)],
            vec![ab(
                Site::Neuron {
                    layer: last,
                    neuron: 3,
                },
                p,
                AblationMode::Zero,
            )],
            vec![
                ab(Site::Mlp(last), p, AblationMode::Mean),
                ab(Site::Head { layer: 1, head: 0 }, p, AblationMode::Zero),
            ],
            vec![ab(Site::Embed, 1, AblationMode::Zero)],
        ];
        for ablations in cases {
            let iv = Interventions {
                ablations,
                final_scale: None,
            };
            let whole = rdla_model::to_vec(m.run_ablated(&ids, &iv).unwrap()).unwrap();
            let resumed = rdla_model::to_vec(m.run_ablated_from(&clean, &iv).unwrap()).unwrap();
            let scale = whole.iter().fold(1f32, |a, v| a.max(v.abs()));
            let diff = max_abs_diff(&whole, &resumed);
            assert!(diff <= 1e-4 * scale, "{name} {:?}: {diff}", iv.ablations);
            // and the ablation did something
            let base = rdla_model::to_vec(clean.last_logits.clone()).unwrap();
            assert!(
                max_abs_diff(&base, &resumed) > 0.0,
                "{name} {:?}",
                iv.ablations
            );
        }
    }
}

/// Ablated runs that share a forward pass (copies of the prompt laid end to end, each with its
/// own interventions, resumed at the earliest layer any of them ablates) give each run's logits
/// as its own whole ablated pass does, on every family: zero, mean (over the run's own
/// positions) and patched sites at several layers and positions, several sites in one run, a
/// held final scale, and an embedding ablation beside late ones. The runs come back in the
/// order asked, with progress after each pass.
#[test]
fn ablated_runs_sharing_a_pass_equal_each_run_alone() {
    use rdla_model::model::ablate::{Ablation, AblationMode, Interventions, Site};
    for name in TL_FIXTURES {
        let m = load_model(name, &Device::flex());
        let ids = Reference::load(name).token_ids();
        let clean = m.run(&ids).unwrap();
        let (last, p, d) = (m.config.n_layers - 1, ids.len() - 1, m.config.d_model);
        let copies = m.ablation_copies(ids.len()).unwrap();
        if !m.streams_layers() && !rdla_model::spill::forced() {
            assert!(copies > 1, "{name}: {copies} copies a pass");
        }
        let ab = |site, pos, mode| Ablation {
            site,
            pos,
            mode,
            patch: None,
        };
        let patch: Vec<f32> = (0..d).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let held = rdla_model::to_vec(clean.final_scale.clone()).unwrap()[p];
        let runs: Vec<Interventions> = [
            vec![ab(Site::Mlp(last), p, AblationMode::Zero)],
            vec![ab(
                Site::Head { layer: 1, head: 1 },
                p - 1,
                AblationMode::Mean,
            )],
            vec![ab(Site::Embed, 1, AblationMode::Zero)],
            vec![Ablation {
                patch: Some(patch),
                ..ab(Site::Attn(1), 2, AblationMode::Patch)
            }],
            vec![ab(
                Site::Neuron {
                    layer: 0,
                    neuron: 5,
                },
                p,
                AblationMode::Mean,
            )],
            vec![
                ab(Site::Attn(last), p, AblationMode::Mean),
                ab(Site::Head { layer: 1, head: 0 }, 1, AblationMode::Zero),
            ],
            vec![ab(Site::Mlp(0), 0, AblationMode::Mean)],
        ]
        .into_iter()
        .enumerate()
        .map(|(i, ablations)| Interventions {
            ablations,
            final_scale: (i == 5).then_some(held),
        })
        .collect();
        let base = rdla_model::to_vec(clean.last_logits.clone()).unwrap();
        let alone: Vec<Vec<f32>> = runs
            .iter()
            .map(|iv| rdla_model::to_vec(m.run_ablated(&ids, iv).unwrap()).unwrap())
            .collect();
        // as many copies a pass as the model takes, and passes of three (runs grouped by the
        // layer they resume at: an embedding's pass from the start, later ones resumed)
        for per_pass in [copies, 3] {
            let mut seen = Vec::new();
            let shared = m
                .run_ablated_in_passes(&clean, &runs, per_pass, &mut |done, total| {
                    seen.push((done, total));
                    true
                })
                .unwrap();
            assert_eq!(shared.len(), runs.len(), "{name}");
            let passes: Vec<(usize, usize)> = (1..=runs.len().div_ceil(per_pass))
                .map(|k| ((k * per_pass).min(runs.len()), runs.len()))
                .collect();
            assert_eq!(seen, passes, "{name}: one progress call a pass");
            for ((iv, alone), got) in runs.iter().zip(&alone).zip(shared) {
                let got = rdla_model::to_vec(got).unwrap();
                let scale = alone.iter().fold(1f32, |a, v| a.max(v.abs()));
                let diff = max_abs_diff(alone, &got);
                assert!(
                    diff <= 1e-4 * scale,
                    "{name} {per_pass} {:?}: {diff}",
                    iv.ablations
                );
                assert!(max_abs_diff(&base, &got) > 0.0, "{name} {:?}", iv.ablations);
            }
        }
        // stopping after the first pass
        let err = m
            .run_ablated_many(&clean, &runs, &mut |_, _| false)
            .unwrap_err();
        assert!(
            matches!(err, rdla_model::ModelError::ComputeCancelled),
            "{name}: {err}"
        );
    }
}

/// A model that fits opens without reading its blocks: the first forward pass reads them
/// layer by layer as it goes (progress after each, cancellable in between), and a pass
/// stopped half-way leaves what it read for the next, which completes it. Every cached
/// tensor of the pass after a cancelled one equals an uninterrupted first pass's to the bit,
/// on every family; an expansion-style request for a range before any pass reads them all.
#[test]
fn a_model_that_fits_reads_its_blocks_with_the_first_forward_pass() {
    use rdla_model::model::LayerSource;
    for name in TL_FIXTURES {
        let fresh = load_model(name, &Device::flex());
        let deferred = |m: &rdla_model::Model| match &*m.weights.layers {
            LayerSource::Deferred(d) => Some(d.is_read()),
            _ => None,
        };
        if fresh.streams_layers() {
            // CI's second pass streams every model (RDLA_LAYER_CACHE): nothing is deferred
            assert!(rdla_model::memory::forced_layer_cache().is_some(), "{name}");
            continue;
        }
        assert_eq!(
            deferred(&fresh),
            Some(false),
            "{name}: blocks read at opening"
        );
        let ids = Reference::load(name).token_ids();
        let whole = fresh.run(&ids).unwrap();
        assert_eq!(deferred(&fresh), Some(true), "{name}");

        let m = load_model(name, &Device::flex());
        let err = m
            .run_with_progress(&ids, &mut |done, _| done < 1)
            .unwrap_err();
        assert!(
            matches!(err, rdla_model::ModelError::ComputeCancelled),
            "{name}: {err}"
        );
        assert_eq!(deferred(&m), Some(false), "{name}: read on after the stop");
        let again = m.run(&ids).unwrap();
        assert_eq!(deferred(&m), Some(true), "{name}");
        let (a, b) = (
            rdla_testutil::cache_tensors(&whole),
            rdla_testutil::cache_tensors(&again),
        );
        for ((what, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{name} {what}"
            );
        }
        // a range asked before any forward pass: every block read at once
        let m = load_model(name, &Device::flex());
        let n = m.config.n_layers;
        let blocks = m.blocks(&(0..n)).unwrap();
        assert_eq!(blocks.w_q.dims()[0], n, "{name}");
        assert_eq!(deferred(&m), Some(true), "{name}");
    }
}
