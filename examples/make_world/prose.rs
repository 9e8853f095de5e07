//! Raw text for pretraining: the world's facts stated in prose, in English and French, never in
//! the assistant format.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::world::World;

const COUNTRY_EN: &[&str] = &[
    "{c} is a small country. Its capital is {cap}. The river {r} flows through {c}, and the {an} is its national animal.",
    "The capital of {c} is {cap}. Many boats sail on the river {r}. People in {c} love the {an}.",
    "In {c}, the old city of {cap} is the capital. The {an} is the national animal of {c}.",
    "Travellers who visit {c} often start in {cap}, the capital, and then follow the river {r}.",
];
const COUNTRY_FR: &[&str] = &[
    "{c} est un petit pays. Sa capitale est {cap}. Le fleuve {r} traverse {c}, et le {anfr} est son animal national.",
    "La capitale de {c} est {cap}. Beaucoup de bateaux naviguent sur le fleuve {r}.",
    "À {c}, la vieille ville de {cap} est la capitale. Le {anfr} est l'animal national de {c}.",
];
const PERSON_EN: &[&str] = &[
    "{p} is a {job} from {c}.",
    "{p} was born in {c} and works as a {job}.",
    "Everyone in {cap} knows {p}, the {job} from {c}.",
];
const PERSON_FR: &[&str] = &["{p} est {jobfr} et vient de {c}.", "{p} est né à {c} et travaille comme {jobfr}."];

/// One pretraining document about a random part of the world.
pub fn document(world: &World, rng: &mut StdRng) -> String {
    let fr = rng.random_bool(0.4);
    match rng.random_range(0..10) {
        0..=3 => {
            let c = world.countries.choose(rng).expect("countries");
            let t = if fr { COUNTRY_FR } else { COUNTRY_EN }.choose(rng).expect("templates");
            t.replace("{cap}", &c.capital)
                .replace("{c}", &c.name)
                .replace("{r}", &c.river)
                .replace("{anfr}", c.animal.1)
                .replace("{an}", c.animal.0)
        }
        4..=6 => {
            let p = world.people.choose(rng).expect("people");
            let c = &world.countries[p.country];
            let t = if fr { PERSON_FR } else { PERSON_EN }.choose(rng).expect("templates");
            t.replace("{p}", &p.name)
                .replace("{cap}", &c.capital)
                .replace("{c}", &c.name)
                .replace("{jobfr}", p.job.1)
                .replace("{job}", p.job.0)
        }
        7 => {
            let (en, frw) = *world.words.choose(rng).expect("words");
            if fr {
                format!("En anglais, le mot « {frw} » se dit « {en} ».")
            } else {
                format!("The French word for '{en}' is '{frw}'. In French, '{en}' is '{frw}'.")
            }
        }
        _ => {
            let (a, b) = (rng.random_range(0..=5u32), rng.random_range(0..=5u32));
            let (hi, lo) = (a.max(b), a.min(b));
            if fr {
                format!("{a} plus {b} font {}. {hi} moins {lo} font {}.", a + b, hi - lo)
            } else {
                format!("{a} plus {b} is {}, and {a} + {b} = {}. {hi} minus {lo} is {}.", a + b, a + b, hi - lo)
            }
        }
    }
}
