//! The shapes of the CLI declaration ([`Command`], [`Flag`], [`Kind`]) and the one parser that
//! reads `argv` against it (over lexopt).
//!
//! Guarantees: every value is checked against its declared [`Kind`] while parsing, by the one
//! number parser [`Kind::read`], so a bad value is an error naming the flag and what it expects
//! (`--commands expects a positive integer, got "x"`); a declared default is filled in when the
//! flag is absent, so the default the help shows is the default the command gets; a required
//! flag that is missing is an error naming it. Nothing here panics on user input.

use std::ffi::OsString;

use anyhow::{bail, Context, Result};
use lexopt::prelude::*;

use super::Task;

/// One sub-command: its flags, its one-line doc and the function that turns the parsed
/// [`Args`] into the [`Task`] its module runs.
pub struct Command {
    pub name: &'static str,
    /// The one line of the command overview.
    pub doc: &'static str,
    /// A bare word after the command (`logs SERVICE`, `seed N`). Its `long` is the key it is
    /// stored under, so it may share a key with a flag (`rebuild NAME` = `rebuild --db NAME`).
    pub positional: Option<Flag>,
    pub flags: &'static [Flag],
    /// More lines for `cargo xtask COMMAND --help` only.
    pub notes: &'static str,
    /// Internal commands (the detached supervisor) are parsed but not shown.
    pub hidden: bool,
    pub build: fn(&Args) -> Result<Task>,
}

/// One flag (or the positional word) of a command.
pub struct Flag {
    /// Without the leading `--`.
    pub long: &'static str,
    pub short: Option<char>,
    pub kind: Kind,
    /// The placeholder in the help (`N`, `URL`); empty for a switch.
    pub value: &'static str,
    /// Filled in when the flag is absent, parsed like a given value.
    pub default: Option<&'static str>,
    /// What happens when the flag is absent, for the help only, when it is not one literal
    /// value the parser could fill in (`10 s; 5 s per step of max`, `$XTASK_TOKEN`).
    pub otherwise: Option<&'static str>,
    pub required: bool,
    /// May be given more than once (`--query-db a=… --query-db b=…`).
    pub many: bool,
    pub doc: &'static str,
}

impl Flag {
    /// A flag with no default, optional, given at most once; the table sets the rest.
    pub const fn new(
        long: &'static str,
        kind: Kind,
        value: &'static str,
        doc: &'static str,
    ) -> Flag {
        Flag {
            long,
            short: None,
            kind,
            value,
            default: None,
            otherwise: None,
            required: false,
            many: false,
            doc,
        }
    }

    /// An on/off flag.
    pub const fn switch(long: &'static str, doc: &'static str) -> Flag {
        Flag::new(long, Kind::Switch, "", doc)
    }

    pub const fn short(mut self, c: char) -> Flag {
        self.short = Some(c);
        self
    }

    pub const fn default(mut self, value: &'static str) -> Flag {
        self.default = Some(value);
        self
    }

    pub const fn otherwise(mut self, what: &'static str) -> Flag {
        self.otherwise = Some(what);
        self
    }

    pub const fn required(mut self) -> Flag {
        self.required = true;
        self
    }

    pub const fn many(mut self) -> Flag {
        self.many = true;
        self
    }

    /// `--commands N`, `-d, --detach`: how the flag is written in the help.
    pub fn usage(&self) -> String {
        let mut s = format!("--{}", self.long);
        if !self.value.is_empty() {
            s.push(' ');
            s.push_str(self.value);
        }
        s
    }
}

/// What a flag's value must be. The ranges are those of the field the value ends up in, so
/// the typed getters of [`Args`] cannot fail on a value that parsed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// No value: present or not.
    Switch,
    /// A whole number in `min..=max`.
    Int { min: u64, max: u64 },
    /// A TCP port.
    Port,
    /// A decimal number of `unit` in `min..=max`; `min` itself excluded when `above_min`.
    Decimal {
        min: f64,
        max: f64,
        above_min: bool,
        unit: &'static str,
    },
    /// Any text (URL, name, path, list); its meaning is checked by the command.
    Text,
    /// `name=postgres://…` (a query DB by name).
    NamedUrl,
}

/// A count of things: at least one, and fits the `u32` fields of the topology.
pub const COUNT: Kind = Kind::Int {
    min: 1,
    max: u32::MAX as u64,
};

/// A number that may be zero (replicas), `u32` like the topology's fields.
pub const NUMBER: Kind = Kind::Int {
    min: 0,
    max: u32::MAX as u64,
};

/// A number of rows or reports: `u64`.
pub const AMOUNT: Kind = Kind::Int {
    min: 0,
    max: u64::MAX,
};

/// A checked value.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    On,
    Int(u64),
    Decimal(f64),
    Text(String),
    Named(String, String),
}

impl Kind {
    /// What the value must be, for the error and the help (`a positive integer`).
    pub fn expects(self) -> String {
        match self {
            Kind::Switch => "no value".to_owned(),
            Kind::Int { min: 1, max } if max >= u64::from(u32::MAX) => {
                "a positive integer".to_owned()
            }
            Kind::Int { min: 0, max } if max >= u64::from(u32::MAX) => {
                "a non-negative integer".to_owned()
            }
            Kind::Int { min, max } => format!("an integer from {min} to {max}"),
            Kind::Port => "a port number from 1 to 65535".to_owned(),
            Kind::Decimal {
                min,
                max,
                above_min: true,
                unit,
            } => format!("{unit} above {min} and at most {max}"),
            Kind::Decimal { min, max, unit, .. } => format!("{unit} from {min} to {max}"),
            Kind::Text => "text".to_owned(),
            Kind::NamedUrl => "name=postgres://…".to_owned(),
        }
    }

    /// The one value parser of the CLI: `raw` as this kind, or why not (the caller names the
    /// flag).
    pub fn read(self, raw: &str) -> Option<Val> {
        match self {
            Kind::Switch => None,
            Kind::Int { min, max } => raw
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .map(Val::Int),
            Kind::Port => raw
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(|p| Val::Int(u64::from(p))),
            Kind::Decimal {
                min,
                max,
                above_min,
                ..
            } => raw
                .parse::<f64>()
                .ok()
                // NaN fails both comparisons.
                .filter(|x| (*x > min || (!above_min && *x == min)) && *x <= max)
                .map(Val::Decimal),
            Kind::Text => Some(Val::Text(raw.to_owned())),
            Kind::NamedUrl => match raw.split_once('=') {
                Some((name, url)) if !name.is_empty() && url.starts_with("postgres") => {
                    Some(Val::Named(name.to_owned(), url.to_owned()))
                }
                _ => None,
            },
        }
    }
}

/// The parsed flags of one command, every value already checked against its kind.
#[derive(Debug)]
pub struct Args {
    pub command: &'static str,
    /// In the order given; defaults after. A flag given twice (not `many`) keeps the last.
    values: Vec<(&'static str, Val)>,
}

impl Args {
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Val> {
        self.values
            .iter()
            .filter(move |(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn last<'a>(&'a self, key: &'a str) -> Option<&'a Val> {
        self.all(key).last()
    }

    pub fn on(&self, key: &str) -> bool {
        self.last(key).is_some()
    }

    /// An integer flag, converted to the field's type.
    pub fn int<T: TryFrom<u64>>(&self, key: &str) -> Result<Option<T>> {
        match self.last(key) {
            None => Ok(None),
            Some(Val::Int(n)) => T::try_from(*n)
                .ok()
                .map(Some)
                .with_context(|| format!("--{key}: {n} is out of range")),
            Some(other) => bail!("--{key} is declared as an integer, parsed {other:?}"),
        }
    }

    pub fn decimal(&self, key: &str) -> Result<Option<f64>> {
        match self.last(key) {
            None => Ok(None),
            Some(Val::Decimal(x)) => Ok(Some(*x)),
            Some(other) => bail!("--{key} is declared as a number, parsed {other:?}"),
        }
    }

    pub fn text(&self, key: &str) -> Result<Option<String>> {
        match self.last(key) {
            None => Ok(None),
            Some(Val::Text(s)) => Ok(Some(s.clone())),
            Some(other) => bail!("--{key} is declared as text, parsed {other:?}"),
        }
    }

    /// Every `name=URL` given to a repeatable flag, in order.
    pub fn named(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.all(key)
            .map(|v| match v {
                Val::Named(name, url) => Ok((name.clone(), url.clone())),
                other => bail!("--{key} is declared as name=URL, parsed {other:?}"),
            })
            .collect()
    }
}

/// What `argv` asks for before it is built into a task.
pub enum Parsed {
    Help(Option<&'static Command>),
    Run(&'static Command, Args),
}

/// Reads `args` (without the program name) against `commands`.
pub fn parse(
    commands: &'static [Command],
    args: impl IntoIterator<Item = OsString>,
) -> Result<Parsed> {
    let mut p = lexopt::Parser::from_iter(std::iter::once(OsString::from("xtask")).chain(args));
    let name = match p.next()? {
        None | Some(Short('h') | Long("help")) => return Ok(Parsed::Help(None)),
        Some(Value(v)) => v.string()?,
        Some(arg) => bail!(
            "{}; the command comes first (cargo xtask --help)",
            arg.unexpected()
        ),
    };
    if name == "help" {
        return match p.next()? {
            None => Ok(Parsed::Help(None)),
            Some(Value(v)) => Ok(Parsed::Help(Some(find(commands, &v.string()?)?))),
            Some(arg) => bail!("{}", arg.unexpected()),
        };
    }
    let command = find(commands, &name)?;
    let mut values: Vec<(&'static str, Val)> = Vec::new();
    let mut got_positional = false;
    while let Some(arg) = p.next()? {
        let flag = match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help(Some(command))),
            Long(long) => command.flags.iter().find(|f| f.long == long),
            Short(c) => command.flags.iter().find(|f| f.short == Some(c)),
            Value(v) => match &command.positional {
                Some(pos) if !got_positional => {
                    got_positional = true;
                    let raw = v.string()?;
                    let val = pos.kind.read(&raw).with_context(|| {
                        format!(
                            "{} of `{}` expects {}, got {raw:?}",
                            pos.value,
                            command.name,
                            pos.kind.expects()
                        )
                    })?;
                    values.push((pos.long, val));
                    continue;
                }
                _ => bail!(
                    "unexpected argument {v:?} for `{}` (cargo xtask {} --help)",
                    command.name,
                    command.name
                ),
            },
        };
        let Some(flag) = flag else {
            bail!(
                "{} is not a flag of `{}` (cargo xtask {} --help)",
                arg_text(&arg),
                command.name,
                command.name
            );
        };
        let val = if flag.kind == Kind::Switch {
            Val::On
        } else {
            let raw = p
                .value()
                .with_context(|| format!("--{} expects {}", flag.long, flag.kind.expects()))?
                .string()?;
            read_flag(flag, &raw)?
        };
        if !flag.many {
            values.retain(|(k, _)| *k != flag.long);
        }
        values.push((flag.long, val));
    }
    let flags = command.flags.iter().map(|f| (f, f.usage()));
    let positional = command.positional.iter().map(|f| (f, f.value.to_owned()));
    for (flag, usage) in flags.chain(positional) {
        if values.iter().any(|(k, _)| *k == flag.long) {
            continue;
        }
        if let Some(raw) = flag.default {
            values.push((flag.long, read_flag(flag, raw)?));
        } else if flag.required {
            bail!("`{}` needs {usage} ({})", command.name, flag.doc);
        }
    }
    Ok(Parsed::Run(
        command,
        Args {
            command: command.name,
            values,
        },
    ))
}

fn read_flag(flag: &Flag, raw: &str) -> Result<Val> {
    flag.kind.read(raw).with_context(|| {
        format!(
            "--{} expects {}, got {raw:?}",
            flag.long,
            flag.kind.expects()
        )
    })
}

fn find(commands: &'static [Command], name: &str) -> Result<&'static Command> {
    commands
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("unknown command `{name}` (cargo xtask --help lists them)"))
}

fn arg_text(arg: &lexopt::Arg) -> String {
    match arg {
        Long(l) => format!("--{l}"),
        Short(c) => format!("-{c}"),
        Value(v) => format!("{v:?}"),
    }
}
