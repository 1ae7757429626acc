//! The chat template: the model's own (Jinja, from
//! `tokenizer_config.json`, rendered with minijinja and Python-style
//! string methods), else a plain default — one `role: content` line per
//! message and `assistant:` to prompt the answer.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, Value, context};

use super::body::ChatMessage;
use crate::error::GatewayError;

/// A compiled chat template. Cheap to share.
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("jinja", &self.env.is_some())
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    // Templates use it for "today's date"; a fixed clock-free answer keeps
    // prompts (and so their cached prefixes) stable across days.
    let _ = format;
    "26 Jul 2024".to_string()
}

impl ChatTemplate {
    /// `source`: the Jinja template, if the model has one. A template that
    /// does not compile falls back to the default (with a warning).
    pub fn new(source: Option<&str>, bos: &str, eos: &str) -> ChatTemplate {
        let env = source.and_then(|src| {
            let mut env = Environment::new();
            minijinja_contrib::add_to_environment(&mut env);
            env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
            env.add_function("raise_exception", raise_exception);
            env.add_function("strftime_now", strftime_now);
            // As Hugging Face renders chat templates.
            if let Ok(syntax) = SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
            {
                env.set_syntax(syntax);
            }
            match env.add_template_owned("chat", src.to_string()) {
                Ok(()) => Some(env),
                Err(e) => {
                    tracing::warn!(error = %e, "the model's chat template does not compile; using the default");
                    None
                }
            }
        });
        ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        }
    }

    /// Whether the model's own template is used.
    pub fn is_model_template(&self) -> bool {
        self.env.is_some()
    }

    /// The prompt text for `messages`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, GatewayError> {
        let Some(env) = &self.env else {
            let mut s = String::new();
            for m in messages {
                s.push_str(&m.role);
                s.push_str(": ");
                s.push_str(&m.content);
                s.push('\n');
            }
            if add_generation_prompt {
                s.push_str("assistant:");
            }
            return Ok(s);
        };
        let tmpl = env
            .get_template("chat")
            .map_err(|e| GatewayError::Internal(format!("chat template: {e}")))?;
        tmpl.render(context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| {
            // `raise_exception` is how templates reject a conversation
            // (e.g. roles out of order): the client's to fix.
            if e.kind() == ErrorKind::InvalidOperation {
                GatewayError::field("messages", format!("rejected by the chat template: {e}"))
            } else {
                GatewayError::Internal(format!("chat template: {e}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage {
                role: "system".into(),
                content: " Be brief. ".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]
    }

    #[test]
    fn default_template() {
        let t = ChatTemplate::new(None, "<s>", "</s>");
        assert_eq!(
            t.render(&msgs(), true).unwrap(),
            "system:  Be brief. \nuser: Hi\nassistant:"
        );
    }

    #[test]
    #[cfg(feature = "tools")]
    fn synthetic_models_template() {
        let t = ChatTemplate::new(
            Some(cake_engine::init::CHAT_TEMPLATE),
            "<|begin_of_text|>",
            "<|end_of_text|>",
        );
        assert!(t.is_model_template());
        let s = t.render(&msgs(), true).unwrap();
        assert!(
            s.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>"),
            "{s}"
        );
        assert!(
            s.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"),
            "{s}"
        );
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let src = "{% for m in messages %}{% if m.role == 'user' and loop.index0 == 0 %}{{ raise_exception('system first') }}{% endif %}[{{ m['content'].strip() }}]{% endfor %}";
        let t = ChatTemplate::new(Some(src), "", "");
        assert_eq!(t.render(&msgs(), false).unwrap(), "[Be brief.][Hi]");
        let e = t.render(&msgs()[1..], false).unwrap_err();
        assert_eq!(e.param(), Some("messages"), "{e}");
    }
}
