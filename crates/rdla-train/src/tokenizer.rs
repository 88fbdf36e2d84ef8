//! A GPT-2-style byte-level BPE tokenizer trained on the synthetic corpus.

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder, TokenizerImpl};

use crate::error::{Result, TrainError};

/// GPT-2's end-of-text token, id 0, used as BOS (as TransformerLens prepends it).
pub const BOS: &str = "<|endoftext|>";
pub const BOS_ID: u32 = 0;

fn tok_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Tokenizer(e.to_string())
}

/// Train byte-level BPE (GPT-2 regex pre-tokenizer, `add_prefix_space = false`, ByteLevel
/// decoder) with `<|endoftext|>` as special token 0 and all 256 byte symbols in the alphabet,
/// so any text stays encodable.
pub fn train_tokenizer<S: AsRef<str> + Sync>(docs: &[S], vocab_size: usize) -> Result<Tokenizer> {
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(vec![AddedToken::from(BOS, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> =
        TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(tok_err)?;
    tok.train(&mut trainer, docs.iter().map(AsRef::as_ref))
        .map_err(tok_err)?;
    let tok = Tokenizer::from(tok);
    match tok.token_to_id(BOS) {
        Some(BOS_ID) => Ok(tok),
        other => Err(TrainError::Tokenizer(format!(
            "{BOS} got id {other:?}, expected {BOS_ID}"
        ))),
    }
}

/// Token ids of `text` (no special tokens added).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
}

/// Serialise to `tokenizer.json` text.
pub fn to_json(tok: &Tokenizer) -> Result<String> {
    tok.to_string(false).map_err(tok_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Generator;

    #[test]
    fn trains_gpt2_style_bpe() {
        let mut g = Generator::new(0);
        let docs: Vec<String> = (0..3000).map(|_| g.document()).collect();
        let tok = train_tokenizer(&docs, 400).expect("train");
        assert_eq!(tok.get_vocab_size(true), 400);
        assert_eq!(tok.token_to_id(BOS), Some(0));
        let text = "1. Get some apples.\n2. Get some oranges.\n";
        let ids = encode(&tok, text).expect("encode");
        // digits, "." and "\n" are single tokens of their own
        let three = encode(&tok, "3").expect("encode");
        assert_eq!(three.len(), 1);
        let nl = encode(&tok, "\n").expect("encode");
        assert_eq!(ids.last(), nl.last());
        assert_eq!(tok.decode(&ids, false).expect("decode"), text);
        // unseen words still encode losslessly
        let unseen = "7. Wash the apricots.\n";
        let ids = encode(&tok, unseen).expect("encode");
        assert_eq!(tok.decode(&ids, false).expect("decode"), unseen);
        // BOS in text is the special token
        assert_eq!(encode(&tok, BOS).expect("encode"), vec![0]);
    }
}
