//! The `--help` text, written from [`super::declare::COMMANDS`] alone: the overview lists
//! every visible command with every flag; `cargo xtask COMMAND --help` adds each flag's doc,
//! value kind and default.

use std::fmt::Write;

use super::args::{Command, Flag, Kind};

/// Lines of the help are wrapped before this column (a terminal of 100 columns, as rustfmt).
const WIDTH: usize = 100;

/// Where a command's doc starts in the overview, under its synopsis.
const DOC_INDENT: usize = 8;

/// `cargo xtask --help`.
pub fn overview(commands: &[Command]) -> String {
    let mut out = String::from(
        "cargo xtask <COMMAND> [FLAGS]   (cargo xtask <COMMAND> --help: each flag's meaning, \
         value and default)\n\nCommands:\n",
    );
    for c in commands.iter().filter(|c| !c.hidden) {
        wrap(&mut out, "  ", 6, &synopsis(c));
        wrap(&mut out, &" ".repeat(DOC_INDENT), DOC_INDENT, c.doc);
    }
    out
}

/// `cargo xtask COMMAND --help`.
pub fn command(c: &Command) -> String {
    let mut out = String::new();
    wrap(&mut out, "", 4, &format!("cargo xtask {}", synopsis(c)));
    out.push('\n');
    wrap(&mut out, "", 0, c.doc);
    let rows: Vec<(String, String)> = c
        .positional
        .iter()
        .map(|p| (p.value.to_owned(), describe(p)))
        .chain(c.flags.iter().map(|f| {
            let usage = match f.short {
                Some(s) => format!("-{s}, {}", f.usage()),
                None => f.usage(),
            };
            (usage, describe(f))
        }))
        .collect();
    if !rows.is_empty() {
        out.push_str("\nFlags:\n");
        let col = rows.iter().map(|(u, _)| u.len()).max().unwrap_or(0) + 4;
        for (usage, doc) in rows {
            let prefix = format!("  {usage:<col$}");
            wrap(&mut out, &prefix, prefix.len(), &doc);
        }
    }
    if !c.notes.is_empty() {
        out.push('\n');
        wrap(&mut out, "", 0, c.notes);
    }
    out
}

/// `up --commands N --queries M [--replicas R] [-d|--detach] …`
fn synopsis(c: &Command) -> String {
    let mut parts = vec![c.name.to_owned()];
    if let Some(p) = &c.positional {
        // A positional that stands for a required flag (`rebuild NAME`) is shown with it.
        let shares_flag = c.flags.iter().any(|f| f.long == p.long);
        if !shares_flag {
            parts.push(optional(p, p.value.to_owned()));
        }
    }
    for f in c.flags {
        let usage = match f.short {
            Some(s) if f.kind == Kind::Switch => format!("-{s}|--{}", f.long),
            _ => f.usage(),
        };
        parts.push(optional(f, usage));
    }
    parts.join(" ")
}

fn optional(f: &Flag, usage: String) -> String {
    let usage = if f.many {
        format!("{usage} …")
    } else {
        usage
    };
    if f.required {
        usage
    } else {
        format!("[{usage}]")
    }
}

/// A flag's doc, then what it takes and its default or that it is required.
fn describe(f: &Flag) -> String {
    let mut s = f.doc.to_owned();
    let mut facts = Vec::new();
    // Text is whatever the placeholder says; the doc tells what it means.
    if !matches!(f.kind, Kind::Switch | Kind::Text) {
        facts.push(f.kind.expects());
    }
    if let Some(d) = f.default.or(f.otherwise) {
        facts.push(format!("default {d}"));
    }
    if f.required {
        facts.push("required".to_owned());
    }
    if f.many {
        facts.push("repeatable".to_owned());
    }
    if !facts.is_empty() {
        let _ = write!(s, " ({})", facts.join("; "));
    }
    s
}

/// Appends `text` word-wrapped at [`WIDTH`]: the first line after `prefix`, the others
/// indented by `rest`.
fn wrap(out: &mut String, prefix: &str, rest: usize, text: &str) {
    let mut line = prefix.to_owned();
    let mut fresh = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !fresh && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(rest);
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}
