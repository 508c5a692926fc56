//! How a scalar config section (`[queue]`, `[limits]`, `[proxy]`) is described once.
//!
//! `settings_section!` turns one list of fields (name, type, kind, default, range, one-line doc)
//! into the runtime struct, its `DEFAULT` and its [`SectionSpec`]. The codegen crate reads the
//! specs: which keys exist, how each is written, its range, its default and how to emit it. So a
//! new setting is one line in `table.rs` plus its use; nothing else mirrors it.

/// How a setting is written in the config and emitted in the generated table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bytes: `16384` or `"16KiB"`; a `usize` field. Spec numbers are bytes.
    Size,
    /// `"250ms"`, `"10s"`, `"2m"`, `"1h"`; a `Duration` field. Spec numbers are milliseconds.
    Duration,
    /// A whole number; a `usize` or `u32` field.
    Count,
    /// `true` or `false`; a `bool` field. Spec numbers are 0 and 1.
    Bool,
}

/// One key of a scalar section. Numbers are in the kind's unit (bytes, milliseconds, 0/1).
#[derive(Debug)]
pub struct SettingSpec {
    /// The key in the TOML section, which is also the field name in the struct.
    pub key: &'static str,
    pub kind: Kind,
    pub default: u64,
    /// Smallest accepted value; for a duration, `1` means "not zero".
    pub min: u64,
    pub max: u64,
    /// What the setting does, one line.
    pub doc: &'static str,
}

/// One scalar section: a TOML table and the struct it becomes.
#[derive(Debug)]
pub struct SectionSpec {
    /// The TOML table name, which is also the field name in [`crate::table::Settings`].
    pub name: &'static str,
    /// The struct's name in [`crate::table`].
    pub rust_type: &'static str,
    pub settings: &'static [SettingSpec],
}

impl SectionSpec {
    /// The keys of this section, in declaration order (for "did you mean").
    pub fn keys(&self) -> Vec<&'static str> {
        self.settings.iter().map(|setting| setting.key).collect()
    }
}

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

/// Declares a scalar section: the struct (every field documented), `DEFAULT` and `SPEC`.
///
/// Each field is `name: Type = kind(arguments)`, the kind one of
/// - `size(default, min, max)`: bytes as `u64` expressions (`16 * KIB`); the field is `usize`;
/// - `count(default, min, max)`: a whole number; the field is any integer type;
/// - `timeout(default)`: a `Duration` that must not be zero;
/// - `duration(default)`: a `Duration` that may be zero;
/// - `flag(default)`: a `bool`.
macro_rules! settings_section {
    (
        $(#[doc = $section_doc:expr])*
        pub struct $name:ident in $section:literal {
            $(
                #[doc = $doc:expr]
                $field:ident: $ty:ty = $kind:ident($($arg:expr),+),
            )+
        }
    ) => {
        $(#[doc = $section_doc])*
        #[derive(Debug)]
        pub struct $name {
            $(
                #[doc = $doc]
                pub $field: $ty,
            )+
        }

        impl $name {
            /// The documented defaults.
            pub const DEFAULT: $name = $name {
                $($field: $crate::schema::settings_section!(@default $kind($($arg),+)),)+
            };

            /// What the codegen crate needs to parse, check, default and emit this section.
            pub const SPEC: $crate::schema::SectionSpec = $crate::schema::SectionSpec {
                name: $section,
                rust_type: stringify!($name),
                settings: &[$($crate::schema::settings_section!(@spec $field, $doc, $kind($($arg),+)),)+],
            };
        }
    };

    (@default size($default:expr, $min:expr, $max:expr)) => { ($default) as usize };
    (@default count($default:expr, $min:expr, $max:expr)) => { $default };
    (@default timeout($default:expr)) => { $default };
    (@default duration($default:expr)) => { $default };
    (@default flag($default:expr)) => { $default };

    (@spec $field:ident, $doc:expr, size($default:expr, $min:expr, $max:expr)) => {
        $crate::schema::settings_section!(@make $field, $doc, Size, ($default) as u64, $min, $max)
    };
    (@spec $field:ident, $doc:expr, count($default:expr, $min:expr, $max:expr)) => {
        $crate::schema::settings_section!(@make $field, $doc, Count, ($default) as u64, $min, $max)
    };
    (@spec $field:ident, $doc:expr, timeout($default:expr)) => {
        $crate::schema::settings_section!(@make $field, $doc, Duration, ($default).as_millis() as u64, 1, u64::MAX)
    };
    (@spec $field:ident, $doc:expr, duration($default:expr)) => {
        $crate::schema::settings_section!(@make $field, $doc, Duration, ($default).as_millis() as u64, 0, u64::MAX)
    };
    (@spec $field:ident, $doc:expr, flag($default:expr)) => {
        $crate::schema::settings_section!(@make $field, $doc, Bool, ($default) as u64, 0, 1)
    };
    (@make $field:ident, $doc:expr, $kind:ident, $default:expr, $min:expr, $max:expr) => {
        $crate::schema::SettingSpec {
            key: stringify!($field),
            kind: $crate::schema::Kind::$kind,
            default: $default,
            min: $min,
            max: $max,
            doc: $doc.trim_ascii_start(),
        }
    };
}

pub(crate) use settings_section;
