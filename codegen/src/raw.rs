//! The two input files as written, with the byte span of every value, before any checking.
//!
//! Each file is parsed into toml's spanned tree first and every key is deserialized on its own, so
//! one bad value does not hide the next: the operator sees all mistakes of a file in one build.
//! The key lists used for unknown-key errors come from the serde structs themselves
//! ([`fields_of`]), so a key added to a struct is known everywhere at once.

use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use juggler_config::schema::{Kind, SectionSpec, SettingSpec};
use juggler_config::table::{scalar_section, LOG_BUFFERING, SCALAR_SECTIONS};

use crate::diagnostics::{closest, did_you_mean, Diagnostic, Diagnostics, SourceFile};

/// `juggler_config/load_balancer.toml`.
#[derive(Debug, Default)]
pub struct RawLoadBalancer {
    pub listen: RawListen,
    /// The keys of the scalar sections and `[log]`'s buffering keys, in file order.
    pub settings: Vec<RawSetting>,
    pub admin: RawAdmin,
    pub log: RawLog,
    /// `None`: no `[fleet]` table.
    pub fleet: Option<Spanned<RawFleet>>,
    /// In file order (toml's `preserve_order`), which becomes backend id order.
    pub upstreams: Vec<RawUpstream>,
}

/// The top-level tables of `load_balancer.toml`, in the order the shipped file has them.
fn load_balancer_sections() -> Vec<&'static str> {
    let scalars = SCALAR_SECTIONS.iter().map(|section| section.name);
    std::iter::once("listen")
        .chain(scalars)
        .chain(["admin", "log", "fleet", "upstreams"])
        .collect()
}
/// The top-level keys of `routes.toml`.
pub const ROUTES_SECTIONS: [&str; 1] = ["route"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    pub http: Option<Spanned<String>>,
    pub https: Option<Spanned<String>>,
    pub tls: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub redirect_http_to_https: Option<Spanned<bool>>,
    /// CIDR networks allowed (and required) to open connections with a PROXY protocol header.
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[admin]`: the operators' listener and the file holding its bearer token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// `"host:port"` or `"off"`.
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

/// `[fleet]`: the etcd cluster through which instances share each backend's `n`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFleet {
    pub etcd: Option<Spanned<Vec<Spanned<String>>>>,
    /// A duration, still as text.
    pub lease: Option<Spanned<String>>,
    pub fallback_lease: Option<Spanned<String>>,
    pub fallback_share: Option<Spanned<i64>>,
    pub prefix: Option<Spanned<String>>,
}

/// `[log]`: how the log is written (its buffering keys are read as [`RawSetting`]s).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// The format's name: `"text"` or `"json"`.
    pub format: Option<Spanned<String>>,
}

/// One key of a scalar section (`[queue]`, `[limits]`, `[proxy]`) as written, already of the
/// type its [`Kind`] asks for.
#[derive(Debug)]
pub struct RawSetting {
    pub section: &'static SectionSpec,
    pub spec: &'static SettingSpec,
    pub value: Spanned<RawValue>,
}

#[derive(Debug)]
pub enum RawValue {
    Size(RawSize),
    /// A duration, still as text.
    Text(String),
    Integer(i64),
    Bool(bool),
}

/// One `[upstreams.<name>]` table.
#[derive(Debug)]
pub struct RawUpstream {
    /// The name, spanning the key in the table header.
    pub name: Spanned<String>,
    pub section: Section<RawUpstreamBody>,
}

/// A table read key by key.
#[derive(Debug, Default)]
pub struct Section<T> {
    pub value: T,
    /// Keys already reported as mistakes (a bad value, or the likely intent of an unknown key),
    /// so that validation does not also call them missing.
    pub reported: Vec<String>,
}

impl<T> Section<T> {
    pub fn reported(&self, key: &str) -> bool {
        self.reported.iter().any(|reported| reported == key)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamBody {
    pub connections_per_server: Option<Spanned<RawPoolSize>>,
    /// The policy's name: `"round_robin"` or `"least_queued"`.
    pub balance: Option<Spanned<String>>,
    pub servers: Option<Spanned<Vec<Spanned<RawServer>>>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// A duration: `"30s"`.
    pub slow_start: Option<Spanned<String>>,
    pub eject_after_5xx: Option<Spanned<i64>>,
    /// Slots of each server kept for `priority = "high"` routes.
    pub reserved: Option<Spanned<i64>>,
    /// Whether a waiting request may be sent behind the one a busy connection carries.
    pub pipeline: Option<Spanned<bool>>,
}

/// `health_check = { path = "/healthz", interval = "2s", timeout = "1s", expect = "2xx", fails = 2,
/// passes = 2 }`; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    /// `"2xx"` or one status, `"204"`.
    pub expect: Option<Spanned<String>>,
    pub fails: Option<Spanned<i64>>,
    pub passes: Option<Spanned<i64>>,
}

/// One entry of `servers`: `"host:port"` or
/// `{ address = "host:port", connections = 8, weight = 3 }`.
#[derive(Debug)]
pub enum RawServer {
    Address(String),
    Table {
        address: Option<Spanned<String>>,
        connections: Option<Spanned<i64>>,
        weight: Option<Spanned<i64>>,
    },
}

const SERVER_KEYS: [&str; 3] = ["address", "connections", "weight"];

/// `connections_per_server`: `5` (fixed) or `{ min = 2, max = 16 }` (adaptive).
#[derive(Debug)]
pub enum RawPoolSize {
    Fixed(i64),
    Adaptive {
        min: Option<Spanned<i64>>,
        max: Option<Spanned<i64>>,
    },
}

const ADAPTIVE_KEYS: [&str; 2] = ["min", "max"];

impl<'de> Deserialize<'de> for RawPoolSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PoolVisitor;
        impl<'de> Visitor<'de> for PoolVisitor {
            type Value = RawPoolSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pool size (5) or an adaptive range ({ min = 2, max = 16 })")
            }
            fn visit_i64<E: serde::de::Error>(self, size: i64) -> Result<RawPoolSize, E> {
                Ok(RawPoolSize::Fixed(size))
            }
            fn visit_u64<E: serde::de::Error>(self, size: u64) -> Result<RawPoolSize, E> {
                Ok(RawPoolSize::Fixed(i64::try_from(size).unwrap_or(i64::MAX)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPoolSize, A::Error> {
                let (mut min, mut max) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "min" => min = Some(map.next_value()?),
                        "max" => max = Some(map.next_value()?),
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "unknown key `{other}` in an adaptive pool size{HELP_SEPARATOR}{}",
                                did_you_mean(other, &ADAPTIVE_KEYS)
                            )))
                        }
                    }
                }
                Ok(RawPoolSize::Adaptive { min, max })
            }
        }
        deserializer.deserialize_any(PoolVisitor)
    }
}

/// `16384` or `"16KiB"`.
#[derive(Debug)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

/// One `[[route]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub methods: Option<Spanned<RawMethods>>,
    pub paths: Option<Spanned<Vec<Spanned<String>>>>,
    pub upstream: Option<Spanned<String>>,
    pub retry_non_idempotent: Option<Spanned<bool>>,
    /// `"high"`, `"normal"` or `"low"`.
    pub priority: Option<Spanned<String>>,
}

/// `"*"` (or, mistakenly, any other single string) or a list of method names.
#[derive(Debug)]
pub enum RawMethods {
    One(String),
    List(Vec<Spanned<String>>),
}

/// Reads one file's spanned tree into raw structs, recording every mistake it meets.
pub struct Reader<'a> {
    pub source: &'a SourceFile,
    pub diagnostics: &'a mut Diagnostics,
}

impl Reader<'_> {
    /// Parses the file; `None` (with diagnostics) if it is not valid TOML.
    fn document<'i>(
        &mut self,
        text: &'i str,
    ) -> Option<Vec<(Spanned<String>, Spanned<DeValue<'i>>)>> {
        let (root, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            for error in errors {
                let span = error.span().unwrap_or(0..0);
                self.error(
                    span,
                    format!("invalid TOML: {}", error.message().trim_end()),
                    "fix the TOML syntax (https://toml.io)",
                );
            }
            return None;
        }
        Some(entries(root.into_inner()))
    }

    /// `None` if the file is not valid TOML.
    pub fn load_balancer(&mut self) -> Option<RawLoadBalancer> {
        let mut raw = RawLoadBalancer::default();
        let source = self.source;
        let entries = self.document(&source.text)?;
        for (key, value) in entries {
            match key.get_ref().as_str() {
                "listen" => raw.listen = self.section("[listen]", &value).value,
                "admin" => raw.admin = self.section("[admin]", &value).value,
                "log" => raw.log = self.log(&value, &mut raw.settings),
                "fleet" => {
                    let fleet = self.section("[fleet]", &value).value;
                    raw.fleet = Some(Spanned::new(key.span(), fleet));
                }
                "upstreams" => raw.upstreams = self.upstreams(&value),
                name => match scalar_section(name) {
                    Some(section) => self.settings(section, &value, &mut raw.settings),
                    None => self.unknown_key(&key, "at the top level", &load_balancer_sections()),
                },
            }
        }
        Some(raw)
    }

    /// The `[[route]]` tables, each with its span (which starts at its `[[route]]` header);
    /// `None` if the file is not valid TOML.
    pub fn routes(&mut self) -> Option<Vec<Spanned<Section<RawRoute>>>> {
        let source = self.source;
        let entries = self.document(&source.text)?;
        let mut routes = Vec::new();
        for (key, value) in entries {
            if key.get_ref() != "route" {
                self.unknown_key(&key, "at the top level", &ROUTES_SECTIONS);
                continue;
            }
            let DeValue::Array(array) = value.get_ref() else {
                self.error(
                    value.span(),
                    "`route` must be an array of tables".to_string(),
                    "write each route as a `[[route]]` table",
                );
                continue;
            };
            for item in array.iter() {
                routes.push(Spanned::new(item.span(), self.section("[[route]]", item)));
            }
        }
        Some(routes)
    }

    fn upstreams(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<RawUpstream> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                "`upstreams` must be a table of named upstreams".to_string(),
                "write `[upstreams.default]` followed by its `servers = [...]`",
            );
            return Vec::new();
        };
        table
            .iter()
            .map(|(name, body)| RawUpstream {
                name: Spanned::new(name.span(), name.get_ref().to_string()),
                section: self.section(&format!("[upstreams.{}]", name.get_ref()), body),
            })
            .collect()
    }

    /// Deserializes one table key by key: unknown keys and bad values are reported one by one
    /// and left out, so the rest of the table still yields a value.
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        what: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Section<T> {
        let Some(table) = self.table(what, value) else {
            return Section {
                value: T::default(),
                reported: Vec::new(),
            };
        };
        let known = fields_of::<T>();
        let mut good = DeTable::new();
        let mut reported = Vec::new();
        for (key, item) in table.iter() {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                let key = Spanned::new(key.span(), name.to_string());
                self.unknown_key(&key, &format!("in {what}"), known);
                reported.extend(closest(name, known).map(str::to_string));
                continue;
            }
            let mut single = DeTable::new();
            single.insert(key.clone(), item.clone());
            match deserialize::<T>(value.span(), single) {
                Ok(_) => {
                    good.insert(key.clone(), item.clone());
                }
                Err(error) => {
                    self.toml_error(error, item.span());
                    reported.push(name.to_string());
                }
            }
        }
        // Every key left deserialized alone; together they can only fail on a missing key, and
        // all keys are optional (`serde(default)`).
        let value = deserialize::<T>(value.span(), good).unwrap_or_default();
        Section { value, reported }
    }

    /// `[log]`: `format` by hand, the buffering keys as the scalar sections' keys are read.
    fn log(&mut self, value: &Spanned<DeValue<'_>>, settings: &mut Vec<RawSetting>) -> RawLog {
        let Some(table) = self.table("[log]", value) else {
            return RawLog::default();
        };
        let spec = LOG_BUFFERING;
        let named_keys = fields_of::<RawLog>();
        let (mut named, mut scalars) = (DeTable::new(), DeTable::new());
        for (key, item) in table.iter() {
            let name: &str = key.get_ref();
            if named_keys.contains(&name) {
                named.insert(key.clone(), item.clone());
            } else if spec.settings.iter().any(|setting| setting.key == name) {
                scalars.insert(key.clone(), item.clone());
            } else {
                // Reported here, against every key of `[log]`, so "did you mean" sees them all.
                let known: Vec<&str> = named_keys.iter().copied().chain(spec.keys()).collect();
                let key = Spanned::new(key.span(), name.to_string());
                self.unknown_key(&key, "in [log]", &known);
            }
        }
        self.settings(
            spec,
            &Spanned::new(value.span(), DeValue::Table(scalars)),
            settings,
        );
        self.section("[log]", &Spanned::new(value.span(), DeValue::Table(named)))
            .value
    }

    /// Reads a scalar section key by key, each value as its [`Kind`] asks; an unknown key or a
    /// value of the wrong type is reported and left out.
    fn settings(
        &mut self,
        section: &'static SectionSpec,
        value: &Spanned<DeValue<'_>>,
        out: &mut Vec<RawSetting>,
    ) {
        let Some(table) = self.table(&format!("[{}]", section.name), value) else {
            return;
        };
        for (key, item) in table.iter() {
            let name: &str = key.get_ref();
            let Some(spec) = section.settings.iter().find(|spec| spec.key == name) else {
                let key = Spanned::new(key.span(), name.to_string());
                self.unknown_key(&key, &format!("in [{}]", section.name), &section.keys());
                continue;
            };
            let parsed = match spec.kind {
                Kind::Size => deserialize_value(item).map(RawValue::Size),
                Kind::Duration => deserialize_value(item).map(RawValue::Text),
                Kind::Count => deserialize_value(item).map(RawValue::Integer),
                Kind::Bool => deserialize_value(item).map(RawValue::Bool),
            };
            match parsed {
                Ok(parsed) => out.push(RawSetting {
                    section,
                    spec,
                    value: Spanned::new(item.span(), parsed),
                }),
                Err(error) => self.toml_error(error, item.span()),
            }
        }
    }

    /// The table `value` holds; `None` (reported) if it is something else.
    fn table<'v, 'i>(
        &mut self,
        what: &str,
        value: &'v Spanned<DeValue<'i>>,
    ) -> Option<&'v DeTable<'i>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                format!("{what} must be a table"),
                "see the comments in the shipped file for its shape",
            );
            return None;
        };
        Some(table)
    }

    fn unknown_key(&mut self, key: &Spanned<String>, place: &str, known: &[&str]) {
        self.error(
            key.span(),
            format!("unknown key `{}` {place}", key.get_ref()),
            &did_you_mean(key.get_ref(), known),
        );
    }

    fn toml_error(&mut self, error: toml::de::Error, fallback: Range<usize>) {
        let text = error.message().trim_end();
        let (message, help) = match text.split_once(HELP_SEPARATOR) {
            Some((message, help)) => (message.to_string(), help.to_string()),
            None => (text.to_string(), type_help(text).to_string()),
        };
        self.error(error.span().unwrap_or(fallback), message, &help);
    }

    fn error(&mut self, span: Range<usize>, message: String, help: &str) {
        self.diagnostics
            .push(Diagnostic::at(self.source, span, message, help.to_string()));
    }
}

fn entries(table: DeTable<'_>) -> Vec<(Spanned<String>, Spanned<DeValue<'_>>)> {
    table
        .into_iter()
        .map(|(key, value)| {
            (
                Spanned::new(key.span(), key.into_inner().into_owned()),
                value,
            )
        })
        .collect()
}

fn deserialize<T: DeserializeOwned>(
    span: Range<usize>,
    table: DeTable<'_>,
) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(Spanned::new(
        span,
        DeValue::Table(table),
    )))
}

fn deserialize_value<T: DeserializeOwned>(
    value: &Spanned<DeValue<'_>>,
) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value.clone()))
}

/// Separates what is wrong from how to fix it inside one serde error message.
const HELP_SEPARATOR: &str = "\nhelp: ";

/// A fix for serde's type errors ("invalid type: string \"5\", expected i64").
fn type_help(message: &str) -> &'static str {
    if message.contains("expected i64") {
        "write a whole number without quotes, e.g. `5`"
    } else if message.contains("expected a boolean") {
        "write `true` or `false` without quotes"
    } else if message.contains("expected a string") {
        "put the value in double quotes"
    } else if message.contains("expected a sequence") {
        "write a list in square brackets, e.g. `[\"a\", \"b\"]`"
    } else {
        "see the comments in the shipped config files for this key's format"
    }
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServerVisitor;
        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = RawServer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"host:port\" or { address = \"host:port\", connections = n, weight = w }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawServer, E> {
                Ok(RawServer::Address(text.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawServer, A::Error> {
                let (mut address, mut connections, mut weight) = (None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" => address = Some(map.next_value()?),
                        "connections" => connections = Some(map.next_value()?),
                        "weight" => weight = Some(map.next_value()?),
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "unknown key `{other}` in a server{HELP_SEPARATOR}{}",
                                did_you_mean(other, &SERVER_KEYS)
                            )))
                        }
                    }
                }
                Ok(RawServer::Table {
                    address,
                    connections,
                    weight,
                })
            }
        }
        deserializer.deserialize_any(ServerVisitor)
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a string such as \"16KiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, bytes: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(bytes))
            }
            fn visit_u64<E: serde::de::Error>(self, bytes: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(i64::try_from(bytes).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(text.to_string()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl<'de> Deserialize<'de> for RawMethods {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MethodsVisitor;
        impl<'de> Visitor<'de> for MethodsVisitor {
            type Value = RawMethods;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"*\" or a list of methods such as [\"GET\", \"HEAD\"]")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawMethods, E> {
                Ok(RawMethods::One(text.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawMethods, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element()? {
                    names.push(name);
                }
                Ok(RawMethods::List(names))
            }
        }
        deserializer.deserialize_any(MethodsVisitor)
    }
}

/// The field names of a derived `Deserialize` struct, as serde itself knows them.
///
/// serde's derive hands its field list to `Deserializer::deserialize_struct`; this deserializer
/// records it and stops, so the lists are never written twice.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldsProbe) {
        Err(Probed(Some(fields))) => fields,
        _ => &[],
    }
}

struct FieldsProbe;

#[derive(Debug)]
struct Probed(Option<&'static [&'static str]>);

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Probed {}

impl serde::de::Error for Probed {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Probed(None)
    }
}

impl<'de> Deserializer<'de> for FieldsProbe {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        Err(Probed(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Probed> {
        Err(Probed(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}
