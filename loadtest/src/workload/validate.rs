//! `Workload::validate`: every error names the field, the value and why.

use super::WorkloadError;
use super::types::{
    ArrivalProcess, ConversationMode, Dist, DistKind, PromptFormat, Skew, Workload,
};

/// Most requests one schedule may hold (keeps memory and run time bounded).
pub const MAX_REQUESTS: f64 = 2_000_000.0;
/// Most document tokens held in memory at once.
const MAX_DOCUMENT_TOKENS: u64 = 50_000_000;
/// Longest run the tool will schedule, in seconds (one day).
const MAX_DURATION_S: f64 = 86_400.0;
/// Most requests in flight a workload may ask for.
const MAX_IN_FLIGHT: usize = 1_000_000;
/// Longest single length a distribution may produce.
const MAX_LENGTH: u32 = 10_000_000;

pub(super) fn invalid(field: &str, value: impl ToString, reason: impl ToString) -> WorkloadError {
    WorkloadError::Invalid {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

pub(super) fn positive(field: &str, v: f64) -> Result<(), WorkloadError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, v, "must be a finite number > 0"))
    }
}

pub(super) fn non_negative(field: &str, v: f64) -> Result<(), WorkloadError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(invalid(field, v, "must be a finite number >= 0"))
    }
}

pub(super) fn at_least_one(field: &str, v: u64) -> Result<(), WorkloadError> {
    if v >= 1 {
        Ok(())
    } else {
        Err(invalid(field, v, "must be at least 1"))
    }
}

pub(super) fn dist(field: &str, d: &Dist) -> Result<(), WorkloadError> {
    match d.dist {
        DistKind::Fixed => {
            at_least_one(&format!("{field}.value"), u64::from(d.value))?;
            if d.value > MAX_LENGTH {
                return Err(invalid(
                    &format!("{field}.value"),
                    d.value,
                    format!("must be at most {MAX_LENGTH}"),
                ));
            }
            return Ok(());
        }
        DistKind::Uniform => {}
        DistKind::Normal | DistKind::Lognormal => {
            positive(&format!("{field}.mean"), d.mean)?;
            non_negative(&format!("{field}.sd"), d.sd)?;
        }
    }
    at_least_one(&format!("{field}.min"), u64::from(d.min))?;
    if d.max < d.min {
        return Err(invalid(
            &format!("{field}.max"),
            d.max,
            format!("must be >= min ({})", d.min),
        ));
    }
    if d.max > MAX_LENGTH {
        return Err(invalid(
            &format!("{field}.max"),
            d.max,
            format!("must be at most {MAX_LENGTH}"),
        ));
    }
    Ok(())
}

impl Workload {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "\"\"", "must not be empty"));
        }
        positive("duration_s", self.duration_s)?;
        if self.duration_s > MAX_DURATION_S {
            return Err(invalid(
                "duration_s",
                self.duration_s,
                format!("must be at most {MAX_DURATION_S}"),
            ));
        }
        if self.prompt_format == PromptFormat::Tokens && self.vocab_size <= self.first_token_id {
            return Err(invalid(
                "vocab_size",
                self.vocab_size,
                format!("must be > first_token_id ({})", self.first_token_id),
            ));
        }
        at_least_one("max_in_flight", self.max_in_flight as u64)?;
        if self.max_in_flight > MAX_IN_FLIGHT {
            return Err(invalid(
                "max_in_flight",
                self.max_in_flight,
                format!("must be at most {MAX_IN_FLIGHT}"),
            ));
        }
        positive("request_timeout_s", self.request_timeout_s)?;
        if let Some(t) = self.temperature {
            non_negative("temperature", t)?;
        }
        self.validate_arrival()?;
        self.validate_tenants()?;
        self.validate_prompts()?;
        dist("output.max_tokens", &self.output.max_tokens)
    }

    fn validate_arrival(&self) -> Result<(), WorkloadError> {
        let a = &self.arrival;
        let expected = match a.process {
            ArrivalProcess::Poisson | ArrivalProcess::Constant => {
                positive("arrival.rate", a.rate)?;
                a.rate * self.duration_s
            }
            ArrivalProcess::Bursts => {
                non_negative("arrival.rate", a.rate)?;
                at_least_one("arrival.burst_size", u64::from(a.burst_size))?;
                positive("arrival.burst_every_s", a.burst_every_s)?;
                let bursts = (self.duration_s / a.burst_every_s).ceil();
                a.rate * self.duration_s + bursts * f64::from(a.burst_size)
            }
            ArrivalProcess::Ramp => {
                positive("arrival.start_rate", a.start_rate)?;
                positive("arrival.end_rate", a.end_rate)?;
                at_least_one("arrival.steps", u64::from(a.steps))?;
                (a.start_rate + a.end_rate) / 2.0 * self.duration_s
            }
        };
        if expected > MAX_REQUESTS {
            return Err(invalid(
                "arrival.rate",
                format!("{expected:.0} expected requests"),
                format!(
                    "a schedule holds at most {MAX_REQUESTS} requests; lower the rate or duration_s"
                ),
            ));
        }
        Ok(())
    }

    fn validate_tenants(&self) -> Result<(), WorkloadError> {
        for (i, t) in self.tenants.iter().enumerate() {
            let f = |name: &str| format!("tenants[{i}].{name}");
            if t.name.trim().is_empty() {
                return Err(invalid(&f("name"), "\"\"", "must not be empty"));
            }
            if self.tenants[..i].iter().any(|o| o.name == t.name) {
                return Err(invalid(&f("name"), &t.name, "is used by an earlier tenant"));
            }
            positive(&f("share"), t.share)?;
            if let Some(slo) = t.ttft_slo_ms {
                positive(&f("ttft_slo_ms"), slo)?;
            }
            if t.api_key.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    &f("api_key"),
                    "(hidden)",
                    "must not hold control characters",
                ));
            }
        }
        Ok(())
    }

    fn validate_prompts(&self) -> Result<(), WorkloadError> {
        let m = &self.mix;
        non_negative("mix.shared_prefix", m.shared_prefix)?;
        non_negative("mix.fresh", m.fresh)?;
        non_negative("mix.conversation", m.conversation)?;
        let total = m.shared_prefix + m.fresh + m.conversation;
        if total <= 0.0 && self.fanout.is_none() {
            return Err(invalid(
                "mix",
                total,
                "the weights must not all be 0 (unless [fanout] sends waves)",
            ));
        }
        if let Some(f) = &self.fanout {
            f.validate(self.duration_s, MAX_REQUESTS)?;
        }

        let s = &self.shared_prefix;
        at_least_one("shared_prefix.documents", u64::from(s.documents))?;
        at_least_one(
            "shared_prefix.document_tokens",
            u64::from(s.document_tokens),
        )?;
        let held = u64::from(s.documents) * u64::from(s.document_tokens);
        if held > MAX_DOCUMENT_TOKENS {
            return Err(invalid(
                "shared_prefix.document_tokens",
                s.document_tokens,
                format!(
                    "documents × document_tokens = {held}, over the limit of {MAX_DOCUMENT_TOKENS}"
                ),
            ));
        }
        dist("shared_prefix.question_tokens", &s.question_tokens)?;
        if s.skew == Skew::Zipf {
            positive("shared_prefix.zipf_s", s.zipf_s)?;
        }

        dist("fresh.prompt_tokens", &self.fresh.prompt_tokens)?;

        let c = &self.conversation;
        at_least_one("conversation.conversations", u64::from(c.conversations))?;
        at_least_one("conversation.turns", u64::from(c.turns))?;
        dist("conversation.user_tokens", &c.user_tokens)?;
        dist("conversation.reply_tokens", &c.reply_tokens)?;
        non_negative("conversation.think_time_s", c.think_time_s)?;
        if c.mode == ConversationMode::Closed && self.prompt_format == PromptFormat::Tokens {
            // The server's reply comes back as text; it cannot be appended
            // to an array of token ids.
            return Err(invalid(
                "conversation.mode",
                "\"closed\"",
                "needs prompt_format = \"text\" (replies are appended as text)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::*;

    fn err_of(w: &Workload) -> String {
        w.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        Workload::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut w = Workload::default();
        w.arrival.rate = 0.0;
        assert!(err_of(&w).contains("arrival.rate"), "{}", err_of(&w));

        let mut w = Workload::default();
        w.fresh.prompt_tokens = Dist::uniform(10, 5);
        assert!(err_of(&w).contains("fresh.prompt_tokens.max"));

        let w = Workload {
            tenants: vec![Tenant::default(), Tenant::default()],
            ..Workload::default()
        };
        assert!(err_of(&w).contains("tenants[1].name"));

        let mut w = Workload::default();
        w.arrival.rate = 1e9;
        assert!(err_of(&w).contains("at most"));

        let mut w = Workload::default();
        w.mix.fresh = 0.0;
        assert!(err_of(&w).starts_with("mix"), "{}", err_of(&w));

        let mut w = Workload::default();
        w.output.max_tokens = Dist::fixed(0);
        assert!(err_of(&w).contains("output.max_tokens.value"));

        let mut w = Workload::default();
        w.conversation.think_time_s = -1.0;
        assert!(err_of(&w).contains("conversation.think_time_s"));
    }

    #[test]
    fn closed_conversations_need_text_prompts() {
        let w = Workload::from_toml(
            "[conversation]\nmode = \"closed\"\nthink_time_s = 0.5\n",
            "t",
        )
        .unwrap();
        assert_eq!(w.conversation.mode, ConversationMode::Closed);
        let mut w = w;
        w.prompt_format = PromptFormat::Tokens;
        assert!(err_of(&w).contains("conversation.mode"), "{}", err_of(&w));
        let e = Workload::from_toml("[conversation]\nmode = \"half\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("half"), "{e}");
    }

    #[test]
    fn fanout_alone_needs_no_mix() {
        let mut w = Workload::default();
        w.mix.fresh = 0.0;
        w.fanout = Some(Fanout::default());
        w.validate().unwrap();
    }
}
