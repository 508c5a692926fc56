//! `[log]`: the format of every log line, the access log's included.

use super::Checker;
use crate::model::Log;
use crate::raw::RawLog;

impl Checker<'_> {
    pub(super) fn log(&mut self, raw: &RawLog, log: &mut Log) {
        let Some(format) = &raw.format else {
            return;
        };
        if let Some(known) = self.named(
            format,
            "format",
            "a log format",
            "\"text\" (one readable line per event, the default) or \"json\" (one JSON object per line)",
        ) {
            log.format = known;
            log.format_source = Some(self.location(&format.span()));
        }
    }
}
