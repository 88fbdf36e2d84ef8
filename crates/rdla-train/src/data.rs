//! The synthetic training text: numbered lists ("1. Get some apples.\n2. Buy the pears.") and
//! repeated phrases (so induction-style heads form), plus the held-out evaluation prompts whose
//! items never occur in training text.

use crate::rng::Rng;

/// Imperative verbs that start list items.
pub const VERBS: &[&str] = &[
    "Get", "Buy", "Find", "Pack", "Wash", "Bring", "Pick", "Take", "Grab", "Sort", "Count",
    "Check", "Cut", "Peel", "Cook", "Store", "Clean", "Order", "Fetch", "Carry", "Hide", "Share",
    "Move", "Fold", "Chop", "Slice", "Dry", "Label", "Collect", "Return",
];

/// Determiners between the verb and the item; "some" is drawn most often.
pub const DETERMINERS: &[&str] = &[
    "some", "some", "some", "some", "the", "the", "two", "three", "four", "a few", "more", "ten",
    "many", "all the", "fresh", "new",
];

/// Items (plural nouns) used in training lists.
pub const TRAIN_ITEMS: &[&str] = &[
    // fruit
    "apples",
    "oranges",
    "bananas",
    "pears",
    "grapes",
    "lemons",
    "limes",
    "plums",
    "peaches",
    "cherries",
    "melons",
    "mangoes",
    "kiwis",
    "figs",
    "dates",
    "berries",
    "coconuts",
    "pineapples",
    "strawberries",
    "raspberries",
    "blueberries",
    "papayas",
    "nectarines",
    "tangerines", // vegetables
    "carrots",
    "onions",
    "potatoes",
    "tomatoes",
    "beans",
    "peas",
    "peppers",
    "cucumbers",
    "radishes",
    "beets",
    "leeks",
    "mushrooms",
    "turnips", // other food
    "eggs",
    "nuts",
    "cookies",
    "muffins",
    "rolls",
    "noodles",
    "crackers",
    "pies",
    "cakes",
    "biscuits", // objects
    "candles",
    "pencils",
    "books",
    "cups",
    "plates",
    "spoons",
    "forks",
    "knives",
    "towels",
    "socks",
    "shirts",
    "shoes",
    "hats",
    "keys",
    "coins",
    "batteries",
    "bottles",
    "boxes",
    "bags",
    "jars",
    "nails",
    "screws",
    "ropes",
    "blankets",
    "pillows",
    "tickets",
    "stamps",
    "envelopes",
    "gloves",
    "coats",
    "boots",
    "bowls",
    "pans",
    "pots",
    "mugs",
    "glasses",
    "lamps",
    "chairs",
    "tables",
    "brushes",
    "combs",
    "maps",
    "letters",
    "cards",
    "toys",
    "balls",
    "kites",
    "bells",
    "tools",
    "hammers",
    "buckets",
    "baskets",
    "sheets",
    "rugs",
    "mats",
    "cables",
    "plugs",
    "bulbs",
    "magnets",
];

/// Items that never occur anywhere in the training text (nor in the tokenizer's corpus);
/// the quality test builds its prompts from these.
pub const HELD_OUT_ITEMS: &[&str] = &[
    "apricots",
    "lychees",
    "walnuts",
    "almonds",
    "olives",
    "pumpkins",
    "avocados",
    "raisins",
    "marbles",
    "buttons",
    "crayons",
    "umbrellas",
    "scarves",
    "feathers",
    "ribbons",
    "sandals",
    "whistles",
    "candies",
    "pebbles",
    "shells",
    "helmets",
    "jackets",
    "napkins",
    "saucers",
    "kettles",
    "ladders",
    "wallets",
    "zippers",
    "violins",
    "puzzles",
];

/// Optional first lines of a list.
pub const TITLES: &[&str] = &[
    "Shopping list:",
    "To do:",
    "Today:",
    "Steps:",
    "Plan:",
    "Things to do:",
    "List:",
    "Chores:",
];

/// Everyday words for the repeated-phrase text (every letter a–z occurs).
pub const WORDS: &[&str] = &[
    "the", "a", "red", "blue", "green", "small", "big", "old", "new", "cat", "dog", "bird", "fish",
    "tree", "house", "sun", "moon", "star", "river", "hill", "road", "door", "window", "happy",
    "quiet", "fast", "slow", "runs", "jumps", "sings", "sees", "likes", "finds", "makes", "takes",
    "goes", "comes", "sleeps", "eats", "reads", "writes", "plays", "walks", "talks", "is", "was",
    "and", "with", "on", "in", "under", "over", "near", "by", "to", "from", "my", "your", "his",
    "her", "our", "their", "little", "bright", "dark", "warm", "cold", "soft", "loud", "sweet",
    "morning", "night", "day", "rain", "snow", "wind", "cloud", "garden", "park", "school", "town",
    "ship", "boat", "train", "car", "king", "queen", "boy", "girl", "man", "woman", "friend",
    "mother", "father", "baby", "song", "story", "game", "light", "fire", "water", "stone", "leaf",
    "flower", "grass", "sky", "sea", "bread", "milk", "tea", "cheese", "honey", "jam", "soup",
    "rice", "zebra", "yak", "quilt", "vase", "jazz", "fox", "wax", "quiz", "yellow", "purple",
    "silver", "gold", "every", "very", "just", "then", "now", "here", "there", "up", "down",
    "back", "again", "away", "home",
];

const CONSONANTS: &[u8] = b"bcdfghjklmnpqrstvwxyz";
const VOWELS: &[u8] = b"aeiou";
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// Lists have 1..=`MAX_ITEMS` items.
pub const MAX_ITEMS: usize = 9;

/// The generator's mixture weights.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Probability that a document is a numbered list (else repeated phrases).
    pub list: f64,
    /// Probability that a list item is a made-up word (e.g. "zobkets") instead of a known item,
    /// so the model cannot lean on item identity or length (held-out items stay unseen).
    pub made_up_item: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            list: 0.6,
            made_up_item: 0.2,
        }
    }
}

/// Seeded generator of training documents.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    mix: Mix,
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `{i}. {verb} {det} {item}.` lines joined by `\n`; the last line has no newline, so inside a
/// list every `\n` is followed by the next number.
fn list_text(rng: &mut Rng, items: &[&str], title: Option<&str>, trailing_newline: bool) -> String {
    let fixed_verb = rng.chance(0.5).then(|| *rng.pick(VERBS));
    let fixed_det = rng.chance(0.5).then(|| *rng.pick(DETERMINERS));
    let mut out = String::new();
    if let Some(t) = title {
        out.push_str(t);
        out.push('\n');
    }
    for (i, item) in items.iter().enumerate() {
        let verb = fixed_verb.unwrap_or_else(|| *rng.pick(VERBS));
        let det = fixed_det.unwrap_or_else(|| *rng.pick(DETERMINERS));
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}. {verb} {det} {item}.", i + 1));
    }
    if trailing_newline {
        out.push('\n');
    }
    out
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self::with_mix(seed, Mix::default())
    }

    pub fn with_mix(seed: u64, mix: Mix) -> Self {
        Self {
            rng: Rng::derive(seed, "data"),
            mix,
        }
    }

    /// One document (no BOS; the packer adds it).
    pub fn document(&mut self) -> String {
        if self.rng.chance(self.mix.list) {
            self.list_doc()
        } else {
            self.repeat_doc()
        }
    }

    /// A numbered list of 1..=9 distinct training items, sometimes under a title.
    pub fn list_doc(&mut self) -> String {
        let n = self.rng.range(1, MAX_ITEMS);
        let items: Vec<String> = self
            .rng
            .distinct(TRAIN_ITEMS.len(), n)
            .into_iter()
            .map(|i| {
                if self.rng.chance(self.mix.made_up_item) {
                    self.made_up_item()
                } else {
                    TRAIN_ITEMS[i].to_string()
                }
            })
            .collect();
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        let title = self.rng.chance(0.3).then(|| *self.rng.pick(TITLES));
        list_text(&mut self.rng, &items, title, false)
    }

    /// A made-up plural noun ("zobkets", "qwimes"), never a held-out item.
    fn made_up_item(&mut self) -> String {
        loop {
            let w = self.pseudo_word() + "s";
            if !mentions_held_out(&w) {
                return w;
            }
        }
    }

    /// A made-up word: pronounceable consonant–vowel syllables, or (less often) random
    /// letters, so that every single-letter token gets trained. Never a held-out item.
    fn pseudo_word(&mut self) -> String {
        loop {
            let mut w = String::new();
            if self.rng.chance(0.7) {
                for _ in 0..self.rng.range(1, 3) {
                    w.push(char::from(*self.rng.pick(CONSONANTS)));
                    w.push(char::from(*self.rng.pick(VOWELS)));
                }
                if self.rng.chance(0.4) {
                    w.push(char::from(*self.rng.pick(CONSONANTS)));
                }
            } else {
                for _ in 0..self.rng.range(2, 7) {
                    w.push(char::from(*self.rng.pick(LETTERS)));
                }
            }
            if !mentions_held_out(&w) {
                return w;
            }
        }
    }

    /// A phrase of everyday words or made-up words, repeated 2–4 times.
    pub fn repeat_doc(&mut self) -> String {
        let len = self.rng.range(2, 7);
        let kind = self.rng.below(3);
        let words: Vec<String> = (0..len)
            .map(|_| match kind {
                0 => (*self.rng.pick(WORDS)).to_string(),
                1 => self.pseudo_word(),
                _ => {
                    if self.rng.chance(0.5) {
                        (*self.rng.pick(WORDS)).to_string()
                    } else {
                        self.pseudo_word()
                    }
                }
            })
            .collect();
        let mut phrase = words.join(" ");
        if self.rng.chance(0.5) {
            phrase = capitalize(&phrase);
        }
        let sep = *self.rng.pick(&[" ", ". ", ", ", "\n", " | "]);
        let reps = self.rng.range(2, 4);
        let mut out = vec![phrase.clone(); reps].join(sep);
        if sep == ". " {
            out.push('.');
        }
        out
    }
}

/// A held-out evaluation prompt: a list of held-out items ending in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOutPrompt {
    pub text: String,
    pub n_items: usize,
    /// The expected next token: the next item number.
    pub answer: String,
}

/// `count` prompts of 2–8 distinct held-out items each (verbs and determiners as in
/// training, no title), each ending with `"\n"`, so the answer is the next number.
pub fn held_out_prompts(seed: u64, count: usize) -> Vec<HeldOutPrompt> {
    let mut rng = Rng::derive(seed, "held-out");
    (0..count)
        .map(|_| {
            let n = rng.range(2, MAX_ITEMS - 1);
            let items: Vec<&str> = rng
                .distinct(HELD_OUT_ITEMS.len(), n)
                .into_iter()
                .map(|i| HELD_OUT_ITEMS[i])
                .collect();
            HeldOutPrompt {
                text: list_text(&mut rng, &items, None, true),
                n_items: n,
                answer: (n + 1).to_string(),
            }
        })
        .collect()
}

/// Whether `text` contains any held-out item as a whole word.
pub fn mentions_held_out(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| HELD_OUT_ITEMS.contains(&w.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_items_never_appear_in_training_text() {
        for item in HELD_OUT_ITEMS {
            assert!(!TRAIN_ITEMS.contains(item), "{item}");
            assert!(!WORDS.contains(item), "{item}");
        }
        let mut g = Generator::new(1);
        for _ in 0..20_000 {
            let d = g.document();
            assert!(!mentions_held_out(&d), "{d:?}");
        }
    }

    #[test]
    fn lists_are_numbered_and_reproducible() {
        let mut a = Generator::new(3);
        let mut b = Generator::new(3);
        for _ in 0..200 {
            let d = a.list_doc();
            assert_eq!(d, b.list_doc());
            let lines: Vec<&str> = d.lines().filter(|l| !l.ends_with(':')).collect();
            assert!((1..=MAX_ITEMS).contains(&lines.len()), "{d:?}");
            for (i, l) in lines.iter().enumerate() {
                assert!(l.starts_with(&format!("{}. ", i + 1)), "{d:?}");
                assert!(l.ends_with('.'));
            }
            assert!(!d.ends_with('\n'));
        }
    }

    #[test]
    fn held_out_prompts_shape() {
        let p = held_out_prompts(0, 200);
        assert_eq!(p.len(), 200);
        assert_eq!(p, held_out_prompts(0, 200));
        for q in &p {
            assert!((2..=8).contains(&q.n_items));
            assert!(q.text.starts_with("1. "));
            assert!(q.text.ends_with(".\n"));
            assert_eq!(q.text.lines().count(), q.n_items);
            assert_eq!(q.answer, (q.n_items + 1).to_string());
            assert!(mentions_held_out(&q.text));
        }
    }
}
