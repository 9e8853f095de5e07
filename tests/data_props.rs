#![allow(clippy::unwrap_used)]
//! Property tests: rendering and encoding arbitrary conversations never panics (only `Ok`
//! or `Err`), and the fixture's assistant mask always covers the assistant content.

use std::path::PathBuf;

use hone::data::{encode_sft, ChatTemplate, Message, SftRecord, Text, TextTokenizer};
use proptest::prelude::*;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama")).join(rel)
}

fn template_dir(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates")).join(rel)
}

fn content() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z {}%#\\-\u{E000}\u{E001}<|>é😀\n]{0,40}",
        Just("{{ raise_exception('x') }}".to_string()),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let role = prop_oneof![
        Just("user".to_string()),
        Just("assistant".to_string()),
        Just("system".to_string()),
        Just("tool".to_string()),
        "[a-z]{0,8}",
    ];
    (role, content()).prop_map(|(r, c)| Message::new(r, c))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn rendering_never_panics(msgs in prop::collection::vec(message(), 0..6), agp in any::<bool>()) {
        let tok = TextTokenizer::from_dir(&fixture("model")).unwrap();
        let fixture_t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let qwen = ChatTemplate::new(&std::fs::read_to_string(template_dir("qwen2.5.jinja")).unwrap(), None, None).unwrap();
        for t in [&fixture_t, &qwen] {
            let _ = t.render(&msgs, agp);
            let _ = t.assistant_spans(&msgs);
        }
    }

    #[test]
    fn encode_sft_never_panics(user in content(), reply in content(), plain in any::<bool>()) {
        let tok = TextTokenizer::from_dir(&fixture("model")).unwrap();
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let rec = if plain {
            SftRecord::PromptCompletion { prompt: Text::Plain(user.clone()), completion: Text::Plain(reply.clone()) }
        } else {
            SftRecord::Messages(vec![Message::new("user", user.clone()), Message::new("assistant", reply.clone())])
        };
        match encode_sft(&tok, Some(&t), &rec) {
            Ok(ex) => {
                prop_assert_eq!(ex.input_ids.len(), ex.loss_mask.len());
                prop_assert!(ex.loss_mask.iter().any(|m| *m));
                if !plain {
                    // The masked tokens decode to "\n" + reply + "<|im_end|>\n".
                    let ids: Vec<u32> = ex.input_ids.iter().zip(&ex.loss_mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
                    prop_assert_eq!(tok.decode(&ids, false).unwrap(), format!("\n{reply}<|im_end|>\n"));
                }
            }
            Err(e) => {
                let sentinel = |s: &str| s.contains('\u{E000}') || s.contains('\u{E001}');
                prop_assert!(!plain && (sentinel(&user) || sentinel(&reply)), "unexpected error {}", e);
            }
        }
    }
}
