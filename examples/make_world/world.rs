//! The sample world's fact base: fictional countries (capital, river, national animal), people
//! (home country, profession), a small English–French dictionary and small-number arithmetic.
//! Everything is drawn from one seeded generator, so a seed names a world.

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

/// A fictional country.
pub struct Country {
    pub name: String,
    pub capital: String,
    pub river: String,
    /// (English, French) name of the national animal.
    pub animal: (&'static str, &'static str),
}

/// A fictional person.
pub struct Person {
    pub name: String,
    /// Index into the world's countries.
    pub country: usize,
    /// (English, French) profession.
    pub job: (&'static str, &'static str),
}

/// The whole fact base.
pub struct World {
    pub countries: Vec<Country>,
    pub people: Vec<Person>,
    /// (English, French) word pairs.
    pub words: Vec<(&'static str, &'static str)>,
}

const ONSETS: &[&str] = &["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "gl"];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou", "ea"];
const CODAS: &[&str] = &["", "", "", "n", "r", "l", "s", "th"];
const ANIMALS: &[(&str, &str)] = &[
    ("fox", "renard"),
    ("owl", "hibou"),
    ("bear", "ours"),
    ("wolf", "loup"),
    ("horse", "cheval"),
    ("eagle", "aigle"),
    ("deer", "cerf"),
    ("swan", "cygne"),
    ("lion", "lion"),
    ("goat", "chèvre"),
];
const JOBS: &[(&str, &str)] = &[
    ("painter", "peintre"),
    ("baker", "boulanger"),
    ("doctor", "médecin"),
    ("sailor", "marin"),
    ("poet", "poète"),
    ("farmer", "fermier"),
    ("teacher", "professeur"),
    ("singer", "chanteur"),
];
/// Everyday words with their French translation (single words on both sides).
pub const DICTIONARY: &[(&str, &str)] = &[
    ("cat", "chat"),
    ("dog", "chien"),
    ("water", "eau"),
    ("bread", "pain"),
    ("house", "maison"),
    ("tree", "arbre"),
    ("sun", "soleil"),
    ("moon", "lune"),
    ("book", "livre"),
    ("apple", "pomme"),
    ("sea", "mer"),
    ("road", "route"),
    ("flower", "fleur"),
    ("bird", "oiseau"),
    ("fire", "feu"),
    ("milk", "lait"),
    ("door", "porte"),
    ("king", "roi"),
    ("queen", "reine"),
    ("night", "nuit"),
    ("star", "étoile"),
    ("snow", "neige"),
    ("hand", "main"),
    ("boat", "bateau"),
    ("cheese", "fromage"),
    ("garden", "jardin"),
    ("friend", "ami"),
    ("window", "fenêtre"),
    ("mountain", "montagne"),
    ("river", "rivière"),
];

fn syllable(rng: &mut StdRng) -> String {
    format!(
        "{}{}{}",
        ONSETS.choose(rng).expect("non-empty"),
        VOWELS.choose(rng).expect("non-empty"),
        CODAS.choose(rng).expect("non-empty")
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// A new name of `parts` syllables plus an optional ending, never one of `taken`.
fn fresh_name(rng: &mut StdRng, parts: usize, endings: &[&str], taken: &mut Vec<String>) -> String {
    loop {
        let mut s: String = (0..parts).map(|_| syllable(rng)).collect();
        s.push_str(endings.choose(rng).expect("non-empty"));
        let name = capitalised(&s);
        if name.len() >= 4 && name.len() <= 11 && !taken.contains(&name) {
            taken.push(name.clone());
            return name;
        }
    }
}

impl World {
    /// A world of `countries` countries and `people` people from `rng`.
    pub fn new(rng: &mut StdRng, countries: usize, people: usize) -> Self {
        let mut taken = Vec::new();
        let countries: Vec<Country> = (0..countries)
            .map(|_| Country {
                name: fresh_name(rng, 2, &["ia", "and", "ora", "istan", "esh"], &mut taken),
                capital: fresh_name(rng, 2, &["", "", "burg", "ville", "port"], &mut taken),
                river: fresh_name(rng, 1, &["a", "o", "ine", "el"], &mut taken),
                animal: *ANIMALS.choose(rng).expect("non-empty"),
            })
            .collect();
        let people = (0..people)
            .map(|_| {
                let first = fresh_name(rng, 1, &["a", "o", "el", "in"], &mut taken);
                let last = fresh_name(rng, 2, &[""], &mut taken);
                Person {
                    name: format!("{first} {last}"),
                    country: rng.random_range(0..countries.len()),
                    job: *JOBS.choose(rng).expect("non-empty"),
                }
            })
            .collect();
        let mut words = DICTIONARY.to_vec();
        words.shuffle(rng);
        World { countries, people, words }
    }
}
