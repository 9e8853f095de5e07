#![allow(clippy::unwrap_used)]
//! Real-world chat templates (Qwen2.5, Llama 3.1/3.2, SmolLM2) rendered exactly as jinja2
//! does in transformers, assistant spans via the difference rule, generation-block
//! whitespace handling, HF globals/filters, and hostile message content.

use std::path::PathBuf;

use hone::data::{ChatTemplate, DataError, Message};
use serde_json::{json, Value};

fn template_dir(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates")).join(rel)
}

fn load(name: &str, bos: Option<&str>) -> ChatTemplate {
    let src = std::fs::read_to_string(template_dir(&format!("{name}.jinja"))).unwrap();
    ChatTemplate::new(&src, bos, None).unwrap().with_fixed_date(2024, 9, 5).unwrap()
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(template_dir("expected_renders.json")).unwrap()).unwrap()
}

fn conversation(g: &Value, name: &str) -> Vec<Message> {
    serde_json::from_value(g["conversations"][name].clone()).unwrap()
}

fn slice(text: &str, (s, e): (usize, usize)) -> String {
    text.chars().skip(s).take(e - s).collect()
}

#[test]
fn real_templates_render_like_jinja2() {
    let g = golden();
    let renders = g["renders"].as_array().unwrap();
    assert_eq!(renders.len(), 24);
    for r in renders {
        let name = r["template"].as_str().unwrap();
        let t = load(name, r["bos_token"].as_str());
        let conv = r["conversation"].as_str().unwrap();
        let agp = r["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&conversation(&g, conv), agp).unwrap();
        assert_eq!(got, r["text"].as_str().unwrap(), "{name} {conv} agp={agp}");
    }
}

#[test]
fn qwen_exact_strings() {
    let t = load("qwen2.5", None);
    let msgs = vec![Message::new("user", "Hi there"), Message::new("assistant", "Hello!")];
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
    assert_eq!(
        t.render(&msgs[..1], true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn llama31_exact_string() {
    let t = load("llama3.1", Some("<|begin_of_text|>"));
    let msgs =
        vec![Message::new("system", " Be brief. "), Message::new("user", "Hi"), Message::new("assistant", " Hello! ")];
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    );
}

#[test]
fn llama32_uses_strftime_now() {
    let t = load("llama3.2", Some("<|begin_of_text|>"));
    let t = t.with_fixed_date(2025, 2, 10).unwrap();
    let text = t.render(&[Message::new("user", "Hi")], true).unwrap();
    assert!(text.contains("Today Date: 10 Feb 2025\n"), "{text}");
}

#[test]
fn smollm2_exact_string() {
    let t = load("smollm2", None);
    let msgs = vec![Message::new("user", "Hi"), Message::new("assistant", "Yo")];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn difference_rule_spans_cover_content_and_end_marker() {
    let g = golden();
    for (name, bos, end) in [
        ("qwen2.5", None, "<|im_end|>\n"),
        ("smollm2", None, "<|im_end|>\n"),
        ("llama3.1", Some("<|begin_of_text|>"), "<|eot_id|>"),
        ("llama3.2", Some("<|begin_of_text|>"), "<|eot_id|>"),
    ] {
        let t = load(name, bos);
        assert!(!t.has_generation_blocks());
        for conv in ["sys", "nosys", "tools"] {
            let msgs = conversation(&g, conv);
            let (text, spans) = t.assistant_spans(&msgs).unwrap();
            assert_eq!(text, t.render(&msgs, false).unwrap());
            let contents: Vec<&Message> = msgs.iter().filter(|m| m.role == "assistant").collect();
            assert_eq!(spans.len(), contents.len(), "{name} {conv}");
            for (span, m) in spans.iter().zip(contents) {
                let got = slice(&text, *span);
                if m.extra.contains_key("tool_calls") && name == "smollm2" {
                    assert_eq!(got, end, "SmolLM2 ignores tool_calls");
                    continue;
                }
                if m.extra.contains_key("tool_calls") {
                    assert!(got.ends_with(end) && got.contains("get_weather"), "{name}: {got:?}");
                    continue;
                }
                let content = if name.starts_with("llama") { m.content.trim() } else { m.content.as_str() };
                assert_eq!(got, format!("{content}{end}"), "{name} {conv}");
            }
        }
    }
}

#[test]
fn difference_rule_failure_is_explained() {
    // Earlier assistant turns render differently once later turns exist (like templates
    // that drop reasoning from history).
    let src = "{%- for m in messages %}{%- if m.role == 'assistant' and not loop.last %}<|a|>{{ m.content | upper }}<|end|>{%- else %}<|{{ m.role }}|>{{ m.content }}<|end|>{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|assistant|>{%- endif %}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let msgs = vec![
        Message::new("user", "q1"),
        Message::new("assistant", "a1"),
        Message::new("user", "q2"),
        Message::new("assistant", "a2"),
    ];
    let err = t.assistant_spans(&msgs).unwrap_err();
    assert!(matches!(err, DataError::AssistantSpan { index: 1, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("cannot locate the assistant turn in message 1: the full conversation does not start with the rendering of messages[..=1]"), "{text}");
    assert!(text.contains("{% generation %}"), "{text}");
    // The last turn alone is fine.
    assert_eq!(t.assistant_spans(&msgs[..2]).unwrap().1, vec![(30, 39)]);
}

#[test]
fn raise_exception_surfaces_its_message() {
    let t = load("llama3.1", Some("<|begin_of_text|>"));
    let call = json!({"function": {"name": "f", "arguments": {}}});
    let mut m = Message::new("assistant", "");
    m.extra.insert("tool_calls".into(), json!([call.clone(), call]));
    let err = t.render(&[Message::new("user", "x"), m], false).unwrap_err();
    assert!(
        matches!(&err, DataError::TemplateException { message } if message == "This model only supports single tool-calls at once!"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "chat template raised an exception: This model only supports single tool-calls at once!"
    );
}

fn render_one(src: &str, extra: Value) -> Result<String, DataError> {
    let mut m = Message::new("user", "hi");
    if let Value::Object(map) = extra {
        m.extra = map;
    }
    ChatTemplate::new(src, Some("<s>"), Some("</s>"))?.with_fixed_date(2024, 2, 29)?.render(&[m], false)
}

#[test]
fn values_print_like_python() {
    assert_eq!(
        render_one("{{ true }} {{ false }} {{ none }} {{ undefined_var }}|{{ 1.0 }} {{ 2 }}", json!({})).unwrap(),
        "True False None |1.0 2"
    );
}

#[test]
fn tojson_matches_python_json_dumps() {
    let data =
        json!({"data": {"b": [1, 2.5, 1.0, 1e16, 0.00001, -3, "é\"\n\t<&>'"], "a": null, "c": true, "d": {}, "e": []}});
    assert_eq!(
        render_one("{{ messages[0].data | tojson }}", data.clone()).unwrap(),
        // Python keeps insertion order (json.dumps without sort_keys); so does hone.
        r#"{"b": [1, 2.5, 1.0, 1e+16, 1e-05, -3, "é\"\n\t<&>'"], "a": null, "c": true, "d": {}, "e": []}"#
    );
    assert_eq!(
        render_one("{{ messages[0].data.b[:2] | tojson(indent=2) }}", data.clone()).unwrap(),
        "[\n  1,\n  2.5\n]"
    );
    assert_eq!(
        render_one(
            "{{ messages[0].data | tojson(indent=1, sort_keys=true) }}",
            json!({"data": {"z": {"y": 1}, "a": "x"}})
        )
        .unwrap(),
        "{\n \"a\": \"x\",\n \"z\": {\n  \"y\": 1\n }\n}"
    );
    assert_eq!(render_one("{{ 'é😀' | tojson(ensure_ascii=true) }}", json!({})).unwrap(), r#""\u00e9\ud83d\ude00""#);
}

#[test]
fn python_methods_loop_controls_and_lenient_undefined() {
    let src = "{%- set ns = namespace(n=0) %}\
{%- for m in messages %}{%- for w in m.content.strip().split(' ') %}\
{%- if w.startswith('skip') %}{% continue %}{% endif %}{%- if w == 'stop' %}{% break %}{% endif %}\
{%- set ns.n = ns.n + 1 %}[{{ w.title() }}]{%- endfor %}{%- endfor %}\
|{{ ns.n }}|{{ messages[0].missing }}|{{ messages[0].tool_calls is defined }}|{{ bos_token }}{{ eos_token }}\
{%- for k, v in messages[0].meta.items() %}|{{ k }}={{ v }}{% endfor %}|{{ ' x '.lstrip() }}{{ ' y '.rstrip() }}|";
    assert_eq!(render_one(src, json!({"meta": {"a": 1}})).map(|_| ()).ok(), Some(()));
    let mut m = Message::new("user", "  hello skipme big world stop never ");
    m.extra.insert("meta".into(), json!({"a": 1, "b": "two"}));
    let t = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
    assert_eq!(t.render(&[m], false).unwrap(), "[Hello][Big][World]|3||False|<s></s>|a=1|b=two|x  y|");
}

#[test]
fn strftime_now_with_fixed_and_system_dates() {
    let fmt = "{{ strftime_now('%Y-%m-%d %a %A %b %B %j %e %H:%M:%S %I%p %y %F %%') }}";
    assert_eq!(
        render_one(fmt, json!({})).unwrap(),
        "2024-02-29 Thu Thursday Feb February 060 29 00:00:00 12AM 24 2024-02-29 %"
    );
    assert!(ChatTemplate::new("x", None, None).unwrap().with_fixed_date(2023, 2, 29).is_err());
    let now = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
    let year: i32 = now.render(&[], false).unwrap().parse().unwrap();
    assert!(year >= 2024);
    assert!(render_one("{{ strftime_now('%Q') }}", json!({}))
        .unwrap_err()
        .to_string()
        .contains("unsupported directive %Q"));
}

#[test]
fn generation_tags_keep_whitespace_semantics() {
    let bodies = [
        "{%- for m in messages %}\n  {%- if m.role == 'assistant' %}\n  A:\n    {% generation %}\n    {{ m.content }}\n    {% endgeneration %}\n  {%- else %}\n U: {{ m.content }}\n  {%- endif %}\n{%- endfor %}\n",
        "{% for m in messages %}{% if m.role == 'assistant' %}A: {%- generation -%}  {{ m.content }}  {%- endgeneration -%} !\n{% else %}U: {{ m.content }}\n{% endif %}{% endfor %}",
        "{% for m in messages %}\n  {%+ if m.role == 'assistant' %}\n    {%+ generation %}\n[{{ m.content }}]\n    {%+ endgeneration %}\n  {% endif %}\n{% endfor %}",
        "{% for m in messages %}{% if m.role == 'assistant' %}<{%generation%}{{ m.content }}{%endgeneration%}>{% endif %}{% endfor %}",
    ];
    let msgs = vec![Message::new("user", "q"), Message::new("assistant", "ANSWER")];
    for body in bodies {
        let with = ChatTemplate::new(body, None, None).unwrap();
        assert!(with.has_generation_blocks());
        let plain_src = body
            .replace("generation %}", "if true %}")
            .replace("generation -%}", "if true -%}")
            .replace("generation +%}", "if true +%}")
            .replace("generation%}", "if true%}")
            .replace("endif true", "endif");
        let plain = ChatTemplate::new(&plain_src, None, None).unwrap();
        let r = with.render_with_spans(&msgs, false).unwrap();
        assert_eq!(r.text, plain.render(&msgs, false).unwrap(), "{body}");
        let spans = r.generation_spans.unwrap();
        assert_eq!(spans.len(), 1);
        assert!(slice(&r.text, spans[0]).contains("ANSWER"), "{body}");
    }
}

#[test]
fn hostile_content_is_inert() {
    let tpl = std::fs::read_to_string(template_dir("qwen2.5.jinja")).unwrap();
    let t = ChatTemplate::new(&tpl, None, None).unwrap();
    let evil = "{{ 7*7 }} {% raise_exception('boom') %} {# c #} }}{{";
    let msgs = vec![Message::new("user", evil), Message::new("assistant", evil)];
    let text = t.render(&msgs, false).unwrap();
    assert!(text.contains(&format!("user\n{evil}<|im_end|>")));
    assert!(!text.contains("49"));

    for (i, c) in ['\u{E000}', '\u{E001}'].into_iter().enumerate() {
        let bad = vec![Message::new("user", "q"), Message::new("assistant", format!("a{c}b"))];
        let err = t.render(&bad, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("messages[1].content contains the reserved character U+E00{i} (used internally to track {{% generation %}} blocks)")
        );
    }
    let mut m = Message::new("assistant", "x");
    m.extra.insert("tool_calls".into(), json!([{"function": {"name": "\u{E000}"}}]));
    assert!(matches!(t.render(&[m], false), Err(DataError::ReservedCharacter { .. })));

    let long = "ab c😀".repeat(200_000);
    let msgs = vec![Message::new("user", long.as_str()), Message::new("assistant", long.as_str())];
    let (text, spans) = t.assistant_spans(&msgs).unwrap();
    assert_eq!(slice(&text, spans[0]), format!("{long}<|im_end|>\n"));
}

#[test]
fn template_errors_are_reported() {
    let err = ChatTemplate::new("{% for %}", None, None).unwrap_err();
    assert!(matches!(err, DataError::Template { .. }), "{err:?}");
    let t = ChatTemplate::new("{{ messages[0].content + undefined_thing.x }}", None, None).unwrap();
    let err = t.render(&[Message::new("user", "a")], false).unwrap_err();
    assert!(err.to_string().starts_with("chat template: "), "{err}");
    let t = ChatTemplate::new("{% generation %}{% generation %}x{% endgeneration %}{% endgeneration %}", None, None)
        .unwrap();
    assert_eq!(t.render(&[], false).unwrap_err().to_string(), "chat template: nested {% generation %} blocks");
}
