//! `[log]`: the format of every log line, the access log's included.

use juggler_config::table::LogFormat;

use super::Checker;
use crate::diagnostics::closest;
use crate::model::Log;
use crate::raw::RawLog;

impl Checker<'_> {
    pub(super) fn log(&mut self, raw: &RawLog, log: &mut Log) {
        let Some(format) = &raw.format else {
            return;
        };
        let name = format.get_ref();
        if let Some(known) = LogFormat::from_name(name) {
            log.format = known;
            log.format_source = Some(self.location(&format.span()));
            return;
        }
        let names: Vec<&str> = LogFormat::NAMES.iter().map(|(name, _)| *name).collect();
        let guess = closest(name, &names)
            .map_or_else(String::new, |known| format!("did you mean \"{known}\"? "));
        self.error(
            format.span(),
            format!("`format = \"{name}\"` is not a log format"),
            format!(
                "{guess}write \"text\" (one readable line per event, the default) or \"json\" \
                 (one JSON object per line)"
            ),
        );
    }
}
