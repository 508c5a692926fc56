//! The scalar sections `[queue]`, `[limits]` and `[proxy]`, and `[log]`'s buffering keys: every key
//! is checked against its [`SettingSpec`] (kind and range), so this file does not name a single
//! setting.

use juggler_config::schema::{Kind, SettingSpec};

use super::Checker;
use crate::model::{Setting, Settings, Written};
use crate::raw::{RawSetting, RawSize, RawValue};
use crate::units::{
    format_duration, format_size, parse_duration, parse_size, DURATION_HELP, SIZE_HELP,
};

impl Checker<'_> {
    pub(super) fn settings(&mut self, raw: &[RawSetting], settings: &mut Settings) {
        for raw in raw {
            let Some(value) = self.setting_value(raw) else {
                continue;
            };
            let span = raw.value.span();
            let written = Written {
                text: self
                    .file
                    .text
                    .get(span.clone())
                    .unwrap_or_default()
                    .to_string(),
                source: self.location(&span),
            };
            let slot = settings
                .scalars
                .iter_mut()
                .find(|setting: &&mut Setting| std::ptr::eq(setting.spec, raw.spec));
            if let Some(slot) = slot {
                slot.value = value;
                slot.written = Some(written);
            }
        }
    }

    /// The value in the kind's unit, if it is well-formed and in range (reported otherwise).
    fn setting_value(&mut self, raw: &RawSetting) -> Option<u64> {
        let (spec, span) = (raw.spec, raw.value.span());
        let key = spec.key;
        match (spec.kind, raw.value.get_ref()) {
            (Kind::Bool, RawValue::Bool(value)) => Some(u64::from(*value)),
            (Kind::Count, RawValue::Integer(value)) => {
                let in_range = u64::try_from(*value)
                    .ok()
                    .filter(|value| (spec.min..=spec.max).contains(value));
                if in_range.is_none() {
                    self.error(
                        span,
                        format!("`{key} = {value}` is out of range"),
                        format!("write a whole number from {} to {}", spec.min, spec.max),
                    );
                }
                in_range
            }
            (Kind::Duration, RawValue::Text(text)) => {
                let Some(duration) = parse_duration(text) else {
                    self.error(
                        span,
                        format!("`{key} = \"{text}\"` is not a duration"),
                        DURATION_HELP,
                    );
                    return None;
                };
                let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                if millis < spec.min {
                    self.error(
                        span,
                        format!("`{key}` is zero"),
                        format!(
                            "write a duration above zero, such as the default \"{}\"",
                            format_duration(std::time::Duration::from_millis(spec.default))
                        ),
                    );
                    return None;
                }
                Some(millis)
            }
            (Kind::Size, RawValue::Size(size)) => self.size(spec, span, size),
            // raw.rs reads each value as its kind asks.
            _ => None,
        }
    }

    fn size(
        &mut self,
        spec: &SettingSpec,
        span: std::ops::Range<usize>,
        size: &RawSize,
    ) -> Option<u64> {
        let key = spec.key;
        let bytes = match size {
            RawSize::Bytes(bytes) => u64::try_from(*bytes).ok(),
            RawSize::Text(text) => parse_size(text),
        };
        let Some(bytes) = bytes else {
            let written = match size {
                RawSize::Bytes(bytes) => bytes.to_string(),
                RawSize::Text(text) => format!("\"{text}\""),
            };
            self.error(
                span,
                format!("`{key} = {written}` is not a size"),
                SIZE_HELP,
            );
            return None;
        };
        if !(spec.min..=spec.max).contains(&bytes) || usize::try_from(bytes).is_err() {
            self.error(
                span,
                format!("`{key}` of {} is out of range", format_size(bytes)),
                format!(
                    "write a size from {} to {}",
                    format_size(spec.min),
                    format_size(spec.max)
                ),
            );
            return None;
        }
        Some(bytes)
    }
}
